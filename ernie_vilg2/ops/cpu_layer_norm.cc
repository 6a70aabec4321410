// Layer normalisation over the last dimension on CPU (float32), forward and backward, for
// FastLayerNorm (the transformer blocks' norm1/norm2/norm3).
//
// Forward: per row, its mean and 1/sqrt(var + epsilon), both saved for the backward. Backward:
// dx per row, and dgamma / dbeta summed over the rows as each thread goes, per block of rows
// (float, in the L1 cache) into the thread's own double totals, which are added in thread
// order at the end: no column pass over the gradient, and the same sums for the same thread
// count. Rows are spread over the OpenMP threads of MKL's runtime (libiomp5), as the other
// operators'; the row loops run the code path of this CPU (AVX-512, AVX2 or generic).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_dispatch.h"
#include "cpu_thread_totals.h"
#include "paddle/extension.h"

namespace {

#define ROW_LOOPS_FILE "cpu_layer_norm_rows.inc"
#include "cpu_code_paths.inc"
#undef ROW_LOOPS_FILE

struct RowLoops {
  decltype(&generic_path::layer_norm_rows) forward;
  decltype(&generic_path::layer_norm_grad_rows) backward;
};

#define LOOPS RowLoops
#define LOOPS_OF(path) RowLoops{path::layer_norm_rows, path::layer_norm_grad_rows}
#include "cpu_path_choice.inc"

// Rows per block: the unit of the threads' work and of the float partial sums of dgamma / dbeta.
constexpr int64_t kBlockRows = 32;
// Below this many elements one thread does the work: waking the others costs more.
constexpr int64_t kParallelElements = int64_t{1} << 16;

struct Rows {
  int64_t rows, c;
};

Rows check(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::Tensor& bias) {
  for (const auto* t : {&x, &weight, &bias}) {
    PD_CHECK(t->is_cpu() && t->dtype() == paddle::DataType::FLOAT32,
             "cpu_layer_norm: inputs must be float32 CPU tensors");
    PD_CHECK(t->is_contiguous(), "cpu_layer_norm: inputs must be contiguous");
  }
  PD_CHECK(!x.shape().empty(), "cpu_layer_norm: the input needs at least one dimension");
  const int64_t c = x.shape().back();
  PD_CHECK(c > 0, "cpu_layer_norm: the normalised dimension is empty");
  PD_CHECK(weight.numel() == c && bias.numel() == c, "cpu_layer_norm: weight and bias must have ", c,
           " elements (the input's last dimension)");
  return {x.numel() / c, c};
}

std::vector<int64_t> row_shape(const std::vector<int64_t>& x) { return {x.begin(), x.end() - 1}; }

}  // namespace

std::vector<paddle::Tensor> LayerNormForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& bias, float epsilon) {
  const Rows s = check(x, weight, bias);
  const RowLoops& loop = chosen_loops();  // before the parallel region: it throws where the path is refused
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  auto mean = paddle::empty(row_shape(x.shape()), paddle::DataType::FLOAT32, x.place());
  auto rstd = paddle::empty(row_shape(x.shape()), paddle::DataType::FLOAT32, x.place());
  const float *xp = x.data<float>(), *gp = weight.data<float>(), *bp = bias.data<float>();
  float *yp = y.data<float>(), *mp = mean.data<float>(), *rp = rstd.data<float>();
  const int64_t blocks = (s.rows + kBlockRows - 1) / kBlockRows;
#pragma omp parallel for schedule(static) if (s.rows * s.c >= kParallelElements)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kBlockRows, m = std::min(kBlockRows, s.rows - r0);
    loop.forward(xp + r0 * s.c, gp, bp, yp + r0 * s.c, mp + r0, rp + r0, m, s.c, epsilon);
  }
  return {y, mean, rstd};
}

std::vector<paddle::Tensor> LayerNormBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& bias, const paddle::Tensor& mean,
                                              const paddle::Tensor& rstd, const paddle::Tensor& grad_y) {
  const Rows s = check(x, weight, bias);
  const RowLoops& loop = chosen_loops();
  auto gy = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();  // gradients may arrive as strided views
  auto gx = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  auto gw = paddle::empty({s.c}, paddle::DataType::FLOAT32, x.place());
  auto gb = paddle::empty({s.c}, paddle::DataType::FLOAT32, x.place());
  const float *xp = x.data<float>(), *gp = weight.data<float>(), *mp = mean.data<float>(), *rp = rstd.data<float>();
  const float* gyp = gy.data<float>();
  float* gxp = gx.data<float>();
  const int64_t blocks = (s.rows + kBlockRows - 1) / kBlockRows;
  const bool parallel = s.rows * s.c >= kParallelElements;
  const int threads = parallel ? omp_get_max_threads() : 1;
  ernie_vilg2::ThreadTotals totals(threads, 2 * s.c);  // dgamma, dbeta
#pragma omp parallel num_threads(threads) if (parallel)
  {
    double* total = totals.mine();
    std::vector<float> part(2 * s.c);  // one block's dgamma, dbeta
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kBlockRows, m = std::min(kBlockRows, s.rows - r0);
      loop.backward(xp + r0 * s.c, gp, mp + r0, rp + r0, gyp + r0 * s.c, gxp + r0 * s.c, part.data(),
                    part.data() + s.c, m, s.c);
      for (int64_t j = 0; j < 2 * s.c; ++j) total[j] += part[j];
    }
  }
  totals.add_up(0, s.c, gw.data<float>());
  totals.add_up(s.c, s.c, gb.data<float>());
  return {gx, gw, gb};
}

std::vector<std::vector<int64_t>> LayerNormInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                      const std::vector<int64_t>& b) {
  return {x, row_shape(x), row_shape(x)};
}

std::vector<paddle::DataType> LayerNormInferDtype(const paddle::DataType& x, const paddle::DataType& w,
                                                  const paddle::DataType& b) {
  return {x, x, x};
}

PD_BUILD_OP(ernie_vilg2_cpu_layer_norm)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out", "Mean", "Rstd"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(LayerNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LayerNormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LayerNormInferDtype));

PD_BUILD_GRAD_OP(ernie_vilg2_cpu_layer_norm)
    .Inputs({"X", "Weight", "Bias", "Mean", "Rstd", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .SetKernelFn(PD_KERNEL(LayerNormBackward));
