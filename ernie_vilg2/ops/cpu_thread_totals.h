// The parameter gradients' sums of the CPU operators (the norms' dgamma / dbeta, GEGLU's bias
// gradient): each thread adds its blocks' float partial sums into its own double totals, which
// are added in thread order at the end, so the sums are the same for the same thread count
// whatever the schedule gave each thread.
#pragma once

#include <omp.h>

#include <cstdint>
#include <vector>

namespace ernie_vilg2 {

class ThreadTotals {
 public:
  ThreadTotals(int threads, int64_t width)
      : threads_(threads), width_(width), sums_(static_cast<size_t>(threads) * width, 0.0) {}

  // The calling OpenMP thread's totals, width of them.
  double* mine() { return sums_.data() + static_cast<size_t>(omp_get_thread_num()) * width_; }

  // out[j] = the threads' totals at offset + j, for j < count, added in thread order.
  void add_up(int64_t offset, int64_t count, float* out) const {
    for (int64_t j = 0; j < count; ++j) {
      double sum = 0.0;
      for (int t = 0; t < threads_; ++t) sum += sums_[static_cast<size_t>(t) * width_ + offset + j];
      out[j] = static_cast<float>(sum);
    }
  }

 private:
  int threads_;
  int64_t width_;
  std::vector<double> sums_;
};

}  // namespace ernie_vilg2
