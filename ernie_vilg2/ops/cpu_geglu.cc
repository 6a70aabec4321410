// GEGLU's gate on CPU (float32), forward and backward, for FastGEGLU (the transformer blocks'
// feed-forward): out = (h + bias[:d]) * gelu(g + bias[d:]), the exact (erf) GELU, where h and g
// are the two halves of the projection without its bias and bias [2d] is the projection's.
//
// One pass over the rows each way, instead of Paddle's bias adds, GELU, product and their
// backward kernels (each a pass over the [..., d] tensors). The backward recomputes the biased
// halves from its inputs (nothing else is saved) and sums the bias gradient as the layer norm's
// does: per block of rows in float, then into the thread's own double totals, added in thread
// order at the end (the same sums for the same thread count). Rows are spread over the OpenMP
// threads of MKL's runtime (libiomp5), as the other operators'; the row loops run the code path
// of this CPU (AVX-512, AVX2 or generic).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_dispatch.h"
#include "cpu_thread_totals.h"
#include "paddle/extension.h"

namespace {

#define ROW_LOOPS_FILE "cpu_geglu_rows.inc"
#include "cpu_code_paths.inc"
#undef ROW_LOOPS_FILE

struct RowLoops {
  decltype(&generic_path::geglu_rows) forward;
  decltype(&generic_path::geglu_grad_rows) backward;
};

#define LOOPS RowLoops
#define LOOPS_OF(path) RowLoops{path::geglu_rows, path::geglu_grad_rows}
#include "cpu_path_choice.inc"

// Rows per block: the unit of the threads' work and of the float partial sums of the bias gradient.
constexpr int64_t kBlockRows = 32;
// Below this many elements one thread does the work: waking the others costs more.
constexpr int64_t kParallelElements = int64_t{1} << 16;

struct Rows {
  int64_t rows, d;
};

Rows check(const paddle::Tensor& h, const paddle::Tensor& g, const paddle::Tensor& bias) {
  for (const auto* t : {&h, &g, &bias}) {
    PD_CHECK(t->is_cpu() && t->dtype() == paddle::DataType::FLOAT32, "cpu_geglu: inputs must be float32 CPU tensors");
    PD_CHECK(t->is_contiguous(), "cpu_geglu: inputs must be contiguous");
  }
  PD_CHECK(!h.shape().empty() && h.shape() == g.shape(), "cpu_geglu: hidden and gate must have the same shape");
  const int64_t d = h.shape().back();
  PD_CHECK(d > 0, "cpu_geglu: the last dimension is empty");
  PD_CHECK(bias.numel() == 2 * d, "cpu_geglu: bias must have ", 2 * d, " elements (twice the last dimension)");
  return {h.numel() / d, d};
}

int64_t blocks_of(const Rows& s) { return (s.rows + kBlockRows - 1) / kBlockRows; }

}  // namespace

std::vector<paddle::Tensor> GegluForward(const paddle::Tensor& h, const paddle::Tensor& g, const paddle::Tensor& bias) {
  const Rows s = check(h, g, bias);
  const RowLoops& loop = chosen_loops();  // before the parallel region: it throws where the path is refused
  auto out = paddle::empty(h.shape(), paddle::DataType::FLOAT32, h.place());
  const float *hp = h.data<float>(), *gp = g.data<float>(), *bp = bias.data<float>();
  float* op = out.data<float>();
  const int64_t blocks = blocks_of(s);
#pragma omp parallel for schedule(static) if (s.rows * s.d >= kParallelElements)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kBlockRows, m = std::min(kBlockRows, s.rows - r0);
    loop.forward(hp + r0 * s.d, gp + r0 * s.d, bp, op + r0 * s.d, m, s.d);
  }
  return {out};
}

std::vector<paddle::Tensor> GegluBackward(const paddle::Tensor& h, const paddle::Tensor& g, const paddle::Tensor& bias,
                                          const paddle::Tensor& grad_out) {
  const Rows s = check(h, g, bias);
  const RowLoops& loop = chosen_loops();
  auto gy = grad_out.is_contiguous() ? grad_out : grad_out.contiguous();  // gradients may arrive as strided views
  auto gh = paddle::empty(h.shape(), paddle::DataType::FLOAT32, h.place());
  auto gg = paddle::empty(h.shape(), paddle::DataType::FLOAT32, h.place());
  auto gb = paddle::empty({2 * s.d}, paddle::DataType::FLOAT32, h.place());
  const float *hp = h.data<float>(), *gp = g.data<float>(), *bp = bias.data<float>(), *gyp = gy.data<float>();
  float *ghp = gh.data<float>(), *ggp = gg.data<float>();
  const int64_t blocks = blocks_of(s), width = 2 * s.d;
  const bool parallel = s.rows * s.d >= kParallelElements;
  const int threads = parallel ? omp_get_max_threads() : 1;
  ernie_vilg2::ThreadTotals totals(threads, width);  // the bias gradient
#pragma omp parallel num_threads(threads) if (parallel)
  {
    double* total = totals.mine();
    std::vector<float> part(width);  // one block's
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kBlockRows, m = std::min(kBlockRows, s.rows - r0), at = r0 * s.d;
      loop.backward(hp + at, gp + at, bp, gyp + at, ghp + at, ggp + at, part.data(), m, s.d);
      for (int64_t j = 0; j < width; ++j) total[j] += part[j];
    }
  }
  totals.add_up(0, width, gb.data<float>());
  return {gh, gg, gb};
}

std::vector<std::vector<int64_t>> GegluInferShape(const std::vector<int64_t>& h, const std::vector<int64_t>& g,
                                                  const std::vector<int64_t>& bias) {
  return {h};
}

std::vector<paddle::DataType> GegluInferDtype(const paddle::DataType& h, const paddle::DataType& g,
                                              const paddle::DataType& bias) {
  return {h};
}

PD_BUILD_OP(ernie_vilg2_cpu_geglu)
    .Inputs({"H", "G", "Bias"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(GegluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(GegluInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(GegluInferDtype));

PD_BUILD_GRAD_OP(ernie_vilg2_cpu_geglu)
    .Inputs({"H", "G", "Bias", paddle::Grad("Out")})
    .Outputs({paddle::Grad("H"), paddle::Grad("G"), paddle::Grad("Bias")})
    .SetKernelFn(PD_KERNEL(GegluBackward));
