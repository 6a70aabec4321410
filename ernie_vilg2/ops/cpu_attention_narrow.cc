// The attention operator's forward and backward for heads of 8 floats attending to 128 keys or
// more (the 32x32 U-Net's 1,024-token self-attention): the kernels of cpu_attention_narrow.inc on
// the AVX-512 and AVX2 code paths, around them the packing of each (batch, head)'s keys and
// values. cpu_attention.cc runs everything else.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_attention.h"
#include "cpu_dispatch.h"
#include "paddle/extension.h"

namespace {

using ernie_vilg2::AttentionDims;
using ernie_vilg2::kAttentionParallelScores;
using NarrowAttention = void (*)(const float*, int64_t, int64_t, const float*, const float*, int64_t, int64_t, float,
                                 float*, int64_t, float*, float*);
using NarrowAttentionGrad = void (*)(const float*, int64_t, int64_t, const float*, const float*, int64_t, float,
                                     const float*, const float*, int64_t, const float*, float*, float*, float*);
constexpr int kNarrowRows = 8;     // query rows per group in the kernels
constexpr int64_t kPackKeys = 16;  // keys per packed tile: a multiple of every path's vector width

// K and V (and their gradients) packed in tiles of kPackKeys keys, [tiles, dim, kPackKeys]: the
// offset of key `key`, dimension c. The kernels' one base pointer and small constant offsets,
// where dim rows of a [dim, keys] matrix would be dim pointers.
inline int64_t packed_offset(int64_t key, int64_t c, int64_t dim) {
  return ((key / kPackKeys) * dim + c) * kPackKeys + key % kPackKeys;
}

#define ROW_LOOPS_FILE "cpu_attention_narrow.inc"
#include "cpu_code_paths.inc"
#undef ROW_LOOPS_FILE

struct NarrowLoops {
  NarrowAttention forward;
  NarrowAttentionGrad backward;
};
#define LOOPS NarrowLoops
#define LOOPS_OF(path) \
  NarrowLoops { path::narrow_attention_8, path::narrow_attention_grad_8 }
#include "cpu_path_choice.inc"

// On the Intel Xeon the narrow forward took 0.7x the general one's time at 256 and 1,024 keys, as
// long at 128 and longer below (its per-row lane sums); a 16-float version took 1.3-1.5x (spilled
// registers), so there is none (docs/performance.md).
constexpr int64_t kNarrowMinKeys = 128;

bool narrow_shape(const AttentionDims& s) { return s.d == 8 && s.e == 8 && s.l >= kNarrowMinKeys; }

// The first 64-byte line of a buffer allocated with 16 floats to spare.
float* line_start(std::vector<float>& buffer) {
  return buffer.data() + (16 - reinterpret_cast<uintptr_t>(buffer.data()) / sizeof(float) % 16) % 16;
}

// The narrow kernels (cpu_attention_narrow.inc) per (batch, head): its keys and values first
// packed (packed_offset; zeros past the last key), and for
// the backward the two gradients beside them in the same layout. The arrays start on 64-byte
// lines, 17 lines more than their size apart: arrays a multiple of 4 KiB apart put their tiles in
// the same L1 set, and their loads behind each other's stores (the backward took 1.3x longer).
struct NarrowHead {
  const AttentionDims& s;
  int64_t tiles = (s.l + kPackKeys - 1) / kPackKeys;
  int64_t stride = std::max(s.d, s.e) * tiles * kPackKeys + 17 * 16;
  std::vector<float> buffer;
  float *kt, *vt, *gkt, *gvt;

  NarrowHead(const AttentionDims& dims, bool grads) : s(dims), buffer(stride * (grads ? 4 : 2) + 16, 0.0f) {
    kt = line_start(buffer);
    vt = kt + stride;
    gkt = grads ? vt + stride : nullptr;
    gvt = grads ? gkt + stride : nullptr;
  }
  void pack(float* dst, const float* src, int64_t ld, int64_t dim) const {  // src [l, dim], row stride ld
    for (int64_t j = 0; j < s.l; ++j)
      for (int64_t c = 0; c < dim; ++c) dst[packed_offset(j, c, dim)] = src[j * ld + c];
  }
  void unpack(float* dst, int64_t ld, const float* src, int64_t dim) const {
    for (int64_t j = 0; j < s.l; ++j)
      for (int64_t c = 0; c < dim; ++c) dst[j * ld + c] = src[packed_offset(j, c, dim)];
  }
  void load(int64_t bh, const float* kp, const float* vp) {
    pack(kt, kp + s.at(bh, s.l, 0, s.d), s.ld_qk(), s.d);
    pack(vt, vp + s.at(bh, s.l, 0, s.e), s.ld_v(), s.e);
    if (gkt != nullptr) std::fill(gkt, gvt + stride, 0.0f);
  }
};

void narrow_forward(NarrowAttention kernel, const AttentionDims& s, const float* qp, const float* kp, const float* vp,
                    float scale, float* op, float* lp) {
#pragma omp parallel if (s.heads_total() * s.n * s.l >= kAttentionParallelScores)
  {
    NarrowHead head(s, false);
    // Rows of scores an odd number of 64-byte lines apart: rows a multiple of 4 KiB apart share
    // an L1 set.
    const int64_t ld = (head.tiles | 1) * kPackKeys;
    std::vector<float> scores(kNarrowRows * ld + 16);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < s.heads_total(); ++bh) {
      head.load(bh, kp, vp);
      kernel(qp + s.at(bh, s.n, 0, s.d), s.ld_qk(), s.n, head.kt, head.vt, s.l, ld, scale,
             op + s.at(bh, s.n, 0, s.e), s.ld_v(), lp + bh * s.n, line_start(scores));
    }
  }
}

void narrow_backward(NarrowAttentionGrad kernel, const AttentionDims& s, const float* qp, const float* kp,
                     const float* vp, const float* op, const float* lp, const float* gop, float scale, float* gqp,
                     float* gkp, float* gvp) {
#pragma omp parallel if (s.heads_total() * s.n * s.l >= kAttentionParallelScores)
  {
    NarrowHead head(s, true);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < s.heads_total(); ++bh) {
      head.load(bh, kp, vp);
      kernel(qp + s.at(bh, s.n, 0, s.d), s.ld_qk(), s.n, head.kt, head.vt, s.l, scale, op + s.at(bh, s.n, 0, s.e),
             gop + s.at(bh, s.n, 0, s.e), s.ld_v(), lp + bh * s.n, gqp + s.at(bh, s.n, 0, s.d), head.gkt, head.gvt);
      head.unpack(gkp + s.at(bh, s.l, 0, s.d), s.ld_qk(), head.gkt, s.d);
      head.unpack(gvp + s.at(bh, s.l, 0, s.e), s.ld_v(), head.gvt, s.e);
    }
  }
}
}  // namespace

namespace ernie_vilg2 {

bool narrow_attention_forward(const AttentionDims& s, const float* q, const float* k, const float* v, float scale,
                              float* out, float* lse) {
  const NarrowLoops& loops = chosen_loops();
  if (!narrow_shape(s) || loops.forward == nullptr) return false;
  narrow_forward(loops.forward, s, q, k, v, scale, out, lse);
  return true;
}

bool narrow_attention_backward(const AttentionDims& s, const float* q, const float* k, const float* v,
                               const float* out, const float* lse, const float* grad_out, float scale, float* gq,
                               float* gk, float* gv) {
  const NarrowLoops& loops = chosen_loops();
  if (!narrow_shape(s) || loops.backward == nullptr) return false;
  narrow_backward(loops.backward, s, q, k, v, out, lse, grad_out, scale, gq, gk, gv);
  return true;
}

}  // namespace ernie_vilg2
