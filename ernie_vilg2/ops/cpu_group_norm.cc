// Group normalisation of NCHW tensors on CPU (float32), forward and backward, for
// FastGroupNorm (the U-Net's ResnetBlock2D norm1/norm2, Transformer2DModel.norm, conv_norm_out).
//
// The input is [N, C, *spatial]; its C channels form `groups` groups of C / groups channels, and
// each (sample, group) is one contiguous block of C / groups * spatial values. Forward: per
// block, its mean and 1/sqrt(var + epsilon) (saved for the backward, [N, groups]) and the output
// with each channel's scale and shift. Backward: dx per block, and dgamma / dbeta summed into
// each thread's own double totals, added in thread order at the end: the same sums for the same
// thread count. Blocks are spread over the OpenMP threads of MKL's runtime (libiomp5), as the
// other operators'; their loops run the code path of this CPU (AVX-512, AVX2 or generic).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_dispatch.h"
#include "cpu_thread_totals.h"
#include "paddle/extension.h"

namespace {

#define ROW_LOOPS_FILE "cpu_group_norm_rows.inc"
#include "cpu_code_paths.inc"
#undef ROW_LOOPS_FILE

struct GroupLoops {
  decltype(&generic_path::group_norm_group) forward;
  decltype(&generic_path::group_norm_grad_group) backward;
};

#define LOOPS GroupLoops
#define LOOPS_OF(path) GroupLoops{path::group_norm_group, path::group_norm_grad_group}
#include "cpu_path_choice.inc"

// Below this many elements one thread does the work: waking the others costs more.
constexpr int64_t kParallelElements = int64_t{1} << 16;

struct Groups {
  int64_t blocks;    // samples x groups
  int64_t channels;  // per group
  int64_t spatial;   // values per channel
  int64_t groups;
};

Groups check(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::Tensor& bias, int groups) {
  for (const auto* t : {&x, &weight, &bias}) {
    PD_CHECK(t->is_cpu() && t->dtype() == paddle::DataType::FLOAT32,
             "cpu_group_norm: inputs must be float32 CPU tensors");
    PD_CHECK(t->is_contiguous(), "cpu_group_norm: inputs must be contiguous");
  }
  const auto& shape = x.shape();
  PD_CHECK(shape.size() >= 2, "cpu_group_norm: the input must be [N, C, ...]");
  const int64_t c = shape[1];
  PD_CHECK(groups > 0 && c % groups == 0, "cpu_group_norm: groups (", groups, ") must divide the ", c, " channels");
  PD_CHECK(weight.numel() == c && bias.numel() == c, "cpu_group_norm: weight and bias must have ", c,
           " elements (the input's channels)");
  int64_t spatial = 1;
  for (size_t i = 2; i < shape.size(); ++i) spatial *= shape[i];
  PD_CHECK(spatial > 0, "cpu_group_norm: the input's spatial dimensions are empty");
  return {shape[0] * groups, c / groups, spatial, groups};
}

}  // namespace

std::vector<paddle::Tensor> GroupNormForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& bias, int groups, float epsilon) {
  const Groups s = check(x, weight, bias, groups);
  const GroupLoops& loop = chosen_loops();  // before the parallel region: it throws where the path is refused
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  auto mean = paddle::empty({x.shape()[0], s.groups}, paddle::DataType::FLOAT32, x.place());
  auto rstd = paddle::empty({x.shape()[0], s.groups}, paddle::DataType::FLOAT32, x.place());
  const float *xp = x.data<float>(), *gp = weight.data<float>(), *bp = bias.data<float>();
  float *yp = y.data<float>(), *mp = mean.data<float>(), *rp = rstd.data<float>();
  const int64_t size = s.channels * s.spatial;
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelElements)
  for (int64_t b = 0; b < s.blocks; ++b) {
    const int64_t c0 = b % s.groups * s.channels;
    loop.forward(xp + b * size, gp + c0, bp + c0, yp + b * size, mp + b, rp + b, s.channels, s.spatial, epsilon);
  }
  return {y, mean, rstd};
}

std::vector<paddle::Tensor> GroupNormBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& bias, const paddle::Tensor& mean,
                                              const paddle::Tensor& rstd, const paddle::Tensor& grad_y, int groups) {
  const Groups s = check(x, weight, bias, groups);
  const GroupLoops& loop = chosen_loops();
  auto gy = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();  // gradients may arrive as strided views
  auto gx = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  const int64_t c = s.channels * s.groups, size = s.channels * s.spatial;
  auto gw = paddle::empty({c}, paddle::DataType::FLOAT32, x.place());
  auto gb = paddle::empty({c}, paddle::DataType::FLOAT32, x.place());
  const float *xp = x.data<float>(), *gp = weight.data<float>(), *mp = mean.data<float>(), *rp = rstd.data<float>();
  const float* gyp = gy.data<float>();
  float* gxp = gx.data<float>();
  const bool parallel = x.numel() >= kParallelElements;
  const int threads = parallel ? omp_get_max_threads() : 1;
  ernie_vilg2::ThreadTotals totals(threads, 2 * c);  // dgamma, dbeta
#pragma omp parallel num_threads(threads) if (parallel)
  {
    double* total = totals.mine();
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.blocks; ++b) {
      const int64_t c0 = b % s.groups * s.channels;
      loop.backward(xp + b * size, gp + c0, mp[b], rp[b], gyp + b * size, gxp + b * size, total + c0,
                    total + c + c0, s.channels, s.spatial);
    }
  }
  totals.add_up(0, c, gw.data<float>());
  totals.add_up(c, c, gb.data<float>());
  return {gx, gw, gb};
}

std::vector<std::vector<int64_t>> GroupNormInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                      const std::vector<int64_t>& b, int groups, float epsilon) {
  return {x, {x[0], groups}, {x[0], groups}};
}

std::vector<paddle::DataType> GroupNormInferDtype(const paddle::DataType& x, const paddle::DataType& w,
                                                  const paddle::DataType& b) {
  return {x, x, x};
}

PD_BUILD_OP(ernie_vilg2_cpu_group_norm)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out", "Mean", "Rstd"})
    .Attrs({"groups: int", "epsilon: float"})
    .SetKernelFn(PD_KERNEL(GroupNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(GroupNormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(GroupNormInferDtype));

PD_BUILD_GRAD_OP(ernie_vilg2_cpu_group_norm)
    .Inputs({"X", "Weight", "Bias", "Mean", "Rstd", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"groups: int"})
    .SetKernelFn(PD_KERNEL(GroupNormBackward));
