// 2-D convolution (NCHW, float32, groups 1) on CPU with oneDNN, forward and backward, for
// the experts' convolution layers.
//
// Paddle's own CPU conv2d lowers to im2col + GEMM; the oneDNN library that ships inside the
// Paddle wheel (paddle/libs/libdnnl.so.3, the library PyTorch's CPU convolutions use too) has
// direct convolution kernels that are 2-3x faster on the U-Net's shapes. The wheel ships the
// library but not its headers, so the few functions and constants of its stable C API (ABI
// fixed within major version 3) are declared here. Tensors stay plain NCHW / OIHW; each call
// reorders into the layouts the chosen kernel wants and back. Primitives are built once per
// shape and kept.
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "cpu_dispatch.h"
#include "paddle/extension.h"

extern "C" {
typedef struct dnnl_engine* dnnl_engine_t;
typedef struct dnnl_stream* dnnl_stream_t;
typedef struct dnnl_memory_desc* dnnl_memory_desc_t;
typedef const struct dnnl_memory_desc* const_dnnl_memory_desc_t;
typedef struct dnnl_memory* dnnl_memory_t;
typedef struct dnnl_primitive_desc* dnnl_primitive_desc_t;
typedef const struct dnnl_primitive_desc* const_dnnl_primitive_desc_t;
typedef struct dnnl_primitive* dnnl_primitive_t;
typedef const struct dnnl_primitive* const_dnnl_primitive_t;
typedef const struct dnnl_primitive_attr* const_dnnl_primitive_attr_t;
typedef int64_t dnnl_dims_t[12];
typedef struct {
  int arg;
  dnnl_memory_t memory;
} dnnl_exec_arg_t;
typedef struct {
  int major, minor, patch;
  const char* hash;
  unsigned cpu_runtime, gpu_runtime;
} dnnl_version_t;

const dnnl_version_t* dnnl_version(void);
int dnnl_engine_create(dnnl_engine_t* engine, int kind, size_t index);
int dnnl_stream_create(dnnl_stream_t* stream, dnnl_engine_t engine, unsigned flags);
int dnnl_stream_wait(dnnl_stream_t stream);
int dnnl_memory_desc_create_with_strides(dnnl_memory_desc_t* md, int ndims, const dnnl_dims_t dims, int data_type,
                                         const dnnl_dims_t strides);
int dnnl_memory_desc_create_with_tag(dnnl_memory_desc_t* md, int ndims, const dnnl_dims_t dims, int data_type,
                                     int tag);
int dnnl_memory_desc_destroy(dnnl_memory_desc_t md);
int dnnl_memory_desc_equal(const_dnnl_memory_desc_t lhs, const_dnnl_memory_desc_t rhs);
size_t dnnl_memory_desc_get_size(const_dnnl_memory_desc_t md);
int dnnl_memory_create(dnnl_memory_t* memory, const_dnnl_memory_desc_t md, dnnl_engine_t engine, void* handle);
int dnnl_memory_destroy(dnnl_memory_t memory);
int dnnl_convolution_forward_primitive_desc_create(dnnl_primitive_desc_t* pd, dnnl_engine_t engine, int prop_kind,
                                                   int alg_kind, const_dnnl_memory_desc_t src,
                                                   const_dnnl_memory_desc_t weights, const_dnnl_memory_desc_t bias,
                                                   const_dnnl_memory_desc_t dst, const dnnl_dims_t strides,
                                                   const dnnl_dims_t dilates, const dnnl_dims_t padding_l,
                                                   const dnnl_dims_t padding_r, const_dnnl_primitive_attr_t attr);
int dnnl_convolution_backward_data_primitive_desc_create(dnnl_primitive_desc_t* pd, dnnl_engine_t engine,
                                                         int alg_kind, const_dnnl_memory_desc_t diff_src,
                                                         const_dnnl_memory_desc_t weights,
                                                         const_dnnl_memory_desc_t diff_dst, const dnnl_dims_t strides,
                                                         const dnnl_dims_t dilates, const dnnl_dims_t padding_l,
                                                         const dnnl_dims_t padding_r,
                                                         const_dnnl_primitive_desc_t hint_fwd_pd,
                                                         const_dnnl_primitive_attr_t attr);
int dnnl_convolution_backward_weights_primitive_desc_create(
    dnnl_primitive_desc_t* pd, dnnl_engine_t engine, int alg_kind, const_dnnl_memory_desc_t src,
    const_dnnl_memory_desc_t diff_weights, const_dnnl_memory_desc_t diff_bias, const_dnnl_memory_desc_t diff_dst,
    const dnnl_dims_t strides, const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,
    const_dnnl_primitive_desc_t hint_fwd_pd, const_dnnl_primitive_attr_t attr);
int dnnl_reorder_primitive_desc_create(dnnl_primitive_desc_t* pd, const_dnnl_memory_desc_t src,
                                       dnnl_engine_t src_engine, const_dnnl_memory_desc_t dst,
                                       dnnl_engine_t dst_engine, const_dnnl_primitive_attr_t attr);
const_dnnl_memory_desc_t dnnl_primitive_desc_query_md(const_dnnl_primitive_desc_t pd, int what, int index);
int dnnl_primitive_create(dnnl_primitive_t* primitive, const_dnnl_primitive_desc_t pd);
int dnnl_primitive_execute(const_dnnl_primitive_t primitive, dnnl_stream_t stream, int nargs,
                           const dnnl_exec_arg_t* args);
}

namespace {

// oneDNN 3.x constants (dnnl_types.h / dnnl_common_types.h).
constexpr int kCpuEngine = 1, kInOrder = 1, kF32 = 3, kFormatAny = 1;
constexpr int kForwardTraining = 64, kConvolutionDirect = 1;
constexpr int kQuerySrc = 129, kQueryDiffSrc = 130, kQueryWeights = 131, kQueryDiffWeights = 132, kQueryDst = 133,
              kQueryDiffDst = 134;
constexpr int kArgSrc = 1, kArgDst = 17, kArgWeights = 33, kArgBias = 41, kArgDiffSrc = 129, kArgDiffDst = 145,
              kArgDiffWeights = 161, kArgDiffBias = 169;

void ok(int status, const char* what) {
  PD_CHECK(status == 0, "cpu_conv2d: oneDNN ", what, " failed (status ", status, ")");
}

struct Runtime {
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  Runtime() {
    // oneDNN picks its own kernels for the CPU (ONEDNN_MAX_CPU_ISA caps them); a path refused
    // through ERNIE_VILG2_CPU_ISA is refused here too.
    PD_CHECK(ernie_vilg2::cpu_isa().isa >= 0, ernie_vilg2::cpu_isa().error);
    PD_CHECK(dnnl_version()->major == 3, "cpu_conv2d: needs oneDNN 3.x, the wheel has ", dnnl_version()->major);
    ok(dnnl_engine_create(&engine, kCpuEngine, 0), "engine");
    ok(dnnl_stream_create(&stream, engine, kInOrder), "stream");
  }
};

Runtime& runtime() {
  static Runtime rt;
  return rt;
}

dnnl_memory_desc_t plain(const std::vector<int64_t>& shape) {
  dnnl_dims_t dims = {}, strides = {};
  int64_t stride = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    dims[i] = shape[i];
    strides[i] = stride;
    stride *= shape[i];
  }
  dnnl_memory_desc_t md;
  ok(dnnl_memory_desc_create_with_strides(&md, static_cast<int>(shape.size()), dims, kF32, strides), "plain desc");
  return md;
}

// A descriptor used only while a primitive descriptor is created, destroyed after.
struct Desc {
  dnnl_memory_desc_t md;
  explicit Desc(dnnl_memory_desc_t md_) : md(md_) {}
  Desc(const Desc&) = delete;
  ~Desc() { dnnl_memory_desc_destroy(md); }
  operator const_dnnl_memory_desc_t() const { return md; }
};

Desc any(const std::vector<int64_t>& shape) {
  dnnl_dims_t dims = {};
  for (size_t i = 0; i < shape.size(); ++i) dims[i] = shape[i];
  dnnl_memory_desc_t md;
  ok(dnnl_memory_desc_create_with_tag(&md, static_cast<int>(shape.size()), dims, kF32, kFormatAny), "desc");
  return Desc(md);
}

struct Buffer {  // 64-byte aligned scratch for a reordered tensor
  std::unique_ptr<float, decltype(&std::free)> data{nullptr, &std::free};
  explicit Buffer(size_t bytes) : data(static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)), &std::free) {
    PD_CHECK(data != nullptr, "cpu_conv2d: out of memory");
  }
};

// One argument of a primitive: the user's plain tensor and, where the kernel wants another
// layout, the reorder into it (inputs) or out of it (outputs).
struct Arg {
  int id = 0;
  bool output = false;
  dnnl_memory_desc_t user = nullptr;
  const_dnnl_memory_desc_t inner = nullptr;  // owned by the primitive descriptor
  dnnl_primitive_t reorder = nullptr;

  // query / index: the primitive descriptor's memory desc for this argument (bias: weights, 1).
  Arg(int id_, bool output_, const std::vector<int64_t>& shape, const_dnnl_primitive_desc_t pd, int query,
      int index = 0)
      : id(id_), output(output_), user(plain(shape)), inner(dnnl_primitive_desc_query_md(pd, query, index)) {
    PD_CHECK(inner != nullptr, "cpu_conv2d: oneDNN query failed");
    if (dnnl_memory_desc_equal(user, inner)) return;
    auto& rt = runtime();
    dnnl_primitive_desc_t rpd;
    ok(output ? dnnl_reorder_primitive_desc_create(&rpd, inner, rt.engine, user, rt.engine, nullptr)
              : dnnl_reorder_primitive_desc_create(&rpd, user, rt.engine, inner, rt.engine, nullptr),
       "reorder desc");
    ok(dnnl_primitive_create(&reorder, rpd), "reorder");
  }
};

class Memory {  // a dnnl_memory_t over a pointer, released at scope end
 public:
  Memory(const_dnnl_memory_desc_t md, void* data) { ok(dnnl_memory_create(&mem_, md, runtime().engine, data), "memory"); }
  ~Memory() { dnnl_memory_destroy(mem_); }
  dnnl_memory_t get() const { return mem_; }

 private:
  dnnl_memory_t mem_ = nullptr;
};

// A convolution primitive with its arguments; run() takes the user's pointers in Arg order.
struct Step {
  dnnl_primitive_t primitive = nullptr;
  std::vector<Arg> args;

  void run(const std::vector<void*>& data) const {
    auto& rt = runtime();
    std::vector<std::unique_ptr<Memory>> mems;
    std::vector<Buffer> buffers;
    buffers.reserve(args.size());
    std::vector<dnnl_exec_arg_t> exec;
    std::vector<std::tuple<dnnl_primitive_t, dnnl_memory_t, dnnl_memory_t>> after;  // output reorders
    for (size_t i = 0; i < args.size(); ++i) {
      const Arg& a = args[i];
      mems.emplace_back(new Memory(a.user, data[i]));
      dnnl_memory_t user = mems.back()->get();
      if (a.reorder == nullptr) {
        exec.push_back({a.id, user});
        continue;
      }
      buffers.emplace_back(dnnl_memory_desc_get_size(a.inner));
      mems.emplace_back(new Memory(a.inner, buffers.back().data.get()));
      dnnl_memory_t inner = mems.back()->get();
      exec.push_back({a.id, inner});
      if (a.output) {
        after.emplace_back(a.reorder, inner, user);
      } else {
        dnnl_exec_arg_t r[2] = {{kArgSrc, user}, {kArgDst, inner}};
        ok(dnnl_primitive_execute(a.reorder, rt.stream, 2, r), "reorder");
      }
    }
    ok(dnnl_primitive_execute(primitive, rt.stream, static_cast<int>(exec.size()), exec.data()), "convolution");
    for (auto& [reorder, from, to] : after) {
      dnnl_exec_arg_t r[2] = {{kArgSrc, from}, {kArgDst, to}};
      ok(dnnl_primitive_execute(reorder, rt.stream, 2, r), "reorder");
    }
    ok(dnnl_stream_wait(rt.stream), "stream wait");
  }
};

int64_t out_size(int64_t in, int k, int stride, int padding, int dilation) {
  return (in + 2 * padding - dilation * (k - 1) - 1) / stride + 1;
}

struct Geometry {
  std::vector<int64_t> x, w, b, y;
  dnnl_dims_t strides = {}, dilates = {}, pad_l = {}, pad_r = {};
};

Geometry geometry(const std::vector<int64_t>& x, const std::vector<int64_t>& w, const std::vector<int>& strides,
                  const std::vector<int>& paddings, const std::vector<int>& dilations) {
  PD_CHECK(x.size() == 4 && w.size() == 4, "cpu_conv2d: input and weight must be 4-D (NCHW, OIHW)");
  PD_CHECK(strides.size() == 2 && paddings.size() == 2 && dilations.size() == 2,
           "cpu_conv2d: strides, paddings and dilations take 2 values");
  PD_CHECK(x[1] == w[1], "cpu_conv2d: input channels ", x[1], " do not match the weight's ", w[1]);
  Geometry g{x, w, {w[0]}, {x[0], w[0], 0, 0}};
  for (int i = 0; i < 2; ++i) {
    g.strides[i] = strides[i];
    g.dilates[i] = dilations[i] - 1;  // oneDNN counts the gaps
    g.pad_l[i] = g.pad_r[i] = paddings[i];
    g.y[2 + i] = out_size(x[2 + i], w[2 + i], strides[i], paddings[i], dilations[i]);
  }
  return g;
}

struct Conv {  // everything built for one geometry
  dnnl_primitive_desc_t forward_pd = nullptr;
  Step forward, backward_data, backward_weights;  // the backward ones built at the first backward
};

std::mutex cache_mutex;

const Conv& conv_for(const Geometry& g, bool backward) {
  std::string key;
  for (const auto* v : {&g.x, &g.w}) key += std::to_string((*v)[0]) + "," + std::to_string((*v)[1]) + "," +
                                            std::to_string((*v)[2]) + "," + std::to_string((*v)[3]) + ";";
  for (int i = 0; i < 2; ++i)
    key += std::to_string(g.strides[i]) + "," + std::to_string(g.dilates[i]) + "," + std::to_string(g.pad_l[i]) + ";";
  static std::map<std::string, Conv> cache;
  std::lock_guard<std::mutex> lock(cache_mutex);
  Conv& c = cache[key];
  auto& rt = runtime();
  if (c.forward_pd == nullptr) {
    ok(dnnl_convolution_forward_primitive_desc_create(&c.forward_pd, rt.engine, kForwardTraining, kConvolutionDirect,
                                                       any(g.x), any(g.w), Desc(plain(g.b)), any(g.y), g.strides,
                                                       g.dilates, g.pad_l, g.pad_r, nullptr),
       "convolution desc");
    ok(dnnl_primitive_create(&c.forward.primitive, c.forward_pd), "convolution");
    c.forward.args = {Arg(kArgSrc, false, g.x, c.forward_pd, kQuerySrc),
                      Arg(kArgWeights, false, g.w, c.forward_pd, kQueryWeights),
                      Arg(kArgBias, false, g.b, c.forward_pd, kQueryWeights, 1),
                      Arg(kArgDst, true, g.y, c.forward_pd, kQueryDst)};
  }
  if (backward && c.backward_data.primitive == nullptr) {
    dnnl_primitive_desc_t data_pd, weights_pd;
    ok(dnnl_convolution_backward_data_primitive_desc_create(&data_pd, rt.engine, kConvolutionDirect, any(g.x),
                                                             any(g.w), any(g.y), g.strides, g.dilates, g.pad_l,
                                                             g.pad_r, c.forward_pd, nullptr),
       "backward data desc");
    ok(dnnl_primitive_create(&c.backward_data.primitive, data_pd), "backward data");
    c.backward_data.args = {Arg(kArgDiffDst, false, g.y, data_pd, kQueryDiffDst),
                            Arg(kArgWeights, false, g.w, data_pd, kQueryWeights),
                            Arg(kArgDiffSrc, true, g.x, data_pd, kQueryDiffSrc)};
    ok(dnnl_convolution_backward_weights_primitive_desc_create(&weights_pd, rt.engine, kConvolutionDirect, any(g.x),
                                                                any(g.w), Desc(plain(g.b)), any(g.y), g.strides,
                                                                g.dilates, g.pad_l, g.pad_r, c.forward_pd, nullptr),
       "backward weights desc");
    ok(dnnl_primitive_create(&c.backward_weights.primitive, weights_pd), "backward weights");
    c.backward_weights.args = {Arg(kArgSrc, false, g.x, weights_pd, kQuerySrc),
                               Arg(kArgDiffDst, false, g.y, weights_pd, kQueryDiffDst),
                               Arg(kArgDiffWeights, true, g.w, weights_pd, kQueryDiffWeights),
                               Arg(kArgDiffBias, true, g.b, weights_pd, kQueryDiffWeights, 1)};
  }
  return c;
}

void check(const paddle::Tensor& t, const char* name) {
  PD_CHECK(t.is_cpu() && t.dtype() == paddle::DataType::FLOAT32, "cpu_conv2d: ", name, " must be a float32 CPU tensor");
  PD_CHECK(t.is_contiguous(), "cpu_conv2d: ", name, " must be contiguous");
}

paddle::Tensor contiguous(const paddle::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

void* ptr(const paddle::Tensor& t) { return const_cast<float*>(t.data<float>()); }

}  // namespace

std::vector<paddle::Tensor> ConvForward(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& b,
                                        const std::vector<int>& strides, const std::vector<int>& paddings,
                                        const std::vector<int>& dilations) {
  check(x, "input");
  check(w, "weight");
  check(b, "bias");
  Geometry g = geometry(x.shape(), w.shape(), strides, paddings, dilations);
  auto y = paddle::empty(g.y, paddle::DataType::FLOAT32, paddle::CPUPlace());
  conv_for(g, false).forward.run({ptr(x), ptr(w), ptr(b), y.data<float>()});
  return {y};
}

std::vector<paddle::Tensor> ConvBackward(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& b,
                                         const paddle::Tensor& grad_y, const std::vector<int>& strides,
                                         const std::vector<int>& paddings, const std::vector<int>& dilations) {
  auto gy = contiguous(grad_y);  // gradients may arrive as strided views
  check(gy, "output gradient");
  Geometry g = geometry(x.shape(), w.shape(), strides, paddings, dilations);
  auto gx = paddle::empty(g.x, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto gw = paddle::empty(g.w, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto gb = paddle::empty(g.b, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const Conv& c = conv_for(g, true);
  c.backward_data.run({ptr(gy), ptr(w), gx.data<float>()});
  c.backward_weights.run({ptr(x), ptr(gy), gw.data<float>(), gb.data<float>()});
  return {gx, gw, gb};
}

std::vector<std::vector<int64_t>> ConvInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                 const std::vector<int64_t>& b, const std::vector<int>& strides,
                                                 const std::vector<int>& paddings, const std::vector<int>& dilations) {
  std::vector<int64_t> y = {x[0], w[0], -1, -1};
  for (int i = 0; i < 2; ++i)
    if (x[2 + i] >= 0) y[2 + i] = out_size(x[2 + i], w[2 + i], strides[i], paddings[i], dilations[i]);
  return {y};
}

std::vector<paddle::DataType> ConvInferDtype(const paddle::DataType& x, const paddle::DataType& w,
                                             const paddle::DataType& b) {
  return {x};
}

PD_BUILD_OP(ernie_vilg2_cpu_conv2d)
    .Inputs({"X", "W", "B"})
    .Outputs({"Out"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>", "dilations: std::vector<int>"})
    .SetKernelFn(PD_KERNEL(ConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ConvInferDtype));

PD_BUILD_GRAD_OP(ernie_vilg2_cpu_conv2d)
    .Inputs({"X", "W", "B", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W"), paddle::Grad("B")})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>", "dilations: std::vector<int>"})
    .SetKernelFn(PD_KERNEL(ConvBackward));
