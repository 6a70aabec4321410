// What the attention operator's two kernels share (cpu_attention.cc: the general one;
// cpu_attention_narrow.cc: heads of 8 floats): the shape of a call and the narrow kernel's entry.
#pragma once

#include <cstdint>

namespace ernie_vilg2 {

// q [batch, n, heads, d], k [batch, l, heads, d], v [batch, l, heads, e]
struct AttentionDims {
  int64_t batch, heads, n, l, d, e;
  int64_t heads_total() const { return batch * heads; }
  // Row strides: one token's row holds every head.
  int64_t ld_qk() const { return heads * d; }
  int64_t ld_v() const { return heads * e; }
  // The first row of (batch, head) bh, token t, in a tensor whose rows are `dim` wide per head.
  int64_t at(int64_t bh, int64_t tokens, int64_t t, int64_t dim) const {
    return ((bh / heads * tokens + t) * heads + bh % heads) * dim;
  }
};

// Below this many scores in a call, threads cost more than they save (the tiny U-Net's
// 64-token attention at 2 threads: 1.3x slower than one).
constexpr int64_t kAttentionParallelScores = int64_t{1} << 20;

// The forward (out, lse) and backward (gq, gk, gv) of cpu_attention_narrow.cc; false, with
// nothing written, for a call it does not take (heads other than 8 floats, fewer than 128 keys,
// the generic code path).
bool narrow_attention_forward(const AttentionDims& s, const float* q, const float* k, const float* v, float scale,
                              float* out, float* lse);
bool narrow_attention_backward(const AttentionDims& s, const float* q, const float* k, const float* v,
                               const float* out, const float* lse, const float* grad_out, float scale, float* gq,
                               float* gk, float* gv);

}  // namespace ernie_vilg2
