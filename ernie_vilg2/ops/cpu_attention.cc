// softmax(scale * q k^T) v on CPU, flash-attention style, for FastAttnProcessor.
//
// q [B, N, H, d], k [B, L, H, d], v [B, L, H, e] (tokens, then heads: the layout of the
// projections' outputs, so no transposes around the call), float32, contiguous; out
// [B, N, H, e]. The scale rides on the matrix products (no pass over q).
// Each (batch, head) is processed in blocks of query rows whose scores [rows, L] stay in
// the L2 cache (its size read at run time); the forward keeps only the log-sum-exp of every
// query row, and the backward recomputes each block's probabilities from it. Matrix products
// call the MKL that ships with the Paddle wheel (the BLAS behind Paddle's own matmul),
// exponentials its vsExp; the row loops between them run the code path of this CPU (AVX-512,
// AVX2 or generic).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_attention.h"
#include "cpu_dispatch.h"
#include "paddle/extension.h"

extern "C" {
// MKL (LP64), declared here: the wheel ships the library, not its headers.
void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);
void vsExp(int n, const float* a, float* r);
int MKL_Set_Num_Threads_Local(int n);
}

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
          float beta, float* c, int ldc) {
  cblas_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, m, n, k, alpha, a, lda, b, ldb,
              beta, c, ldc);
}

using Dims = ernie_vilg2::AttentionDims;

Dims check(const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& v) {
  for (const auto* t : {&q, &k, &v}) {
    PD_CHECK(t->is_cpu(), "cpu_attention: inputs must be CPU tensors");
    PD_CHECK(t->dtype() == paddle::DataType::FLOAT32, "cpu_attention: inputs must be float32");
    PD_CHECK(t->shape().size() == 4, "cpu_attention: inputs must be [batch, tokens, heads, dim]");
    PD_CHECK(t->is_contiguous(), "cpu_attention: inputs must be contiguous");
  }
  auto qs = q.shape(), ks = k.shape(), vs = v.shape();
  PD_CHECK(qs[0] == ks[0] && qs[2] == ks[2] && ks[0] == vs[0] && ks[1] == vs[1] && ks[2] == vs[2] &&
               qs[3] == ks[3],
           "cpu_attention: q, k, v shapes do not match");
  return {qs[0], qs[2], qs[1], ks[1], qs[3], vs[3]};
}

// The row loops of each code path (cpu_row_loops.inc), and the path this process runs
// (cpu_dispatch.h: the CPU's widest, or ERNIE_VILG2_CPU_ISA's).
#define ROW_LOOPS_FILE "cpu_row_loops.inc"
#include "cpu_code_paths.inc"
#undef ROW_LOOPS_FILE

#if defined(ERNIE_VILG2_AVX512_PATH)
// Rows shorter than a few 512-bit vectors (head widths, a few text tokens) run the AVX2 code:
// there the wider loop's reductions and remainders cost more than its width saves.
namespace avx512_rows {
constexpr int64_t kShortRow = 64;
float row_max(const float* x, int64_t n) {
  return (n < kShortRow ? avx2_path::row_max : avx512_path::row_max)(x, n);
}
float row_sum(const float* x, int64_t n) {
  return (n < kShortRow ? avx2_path::row_sum : avx512_path::row_sum)(x, n);
}
float row_dot(const float* x, const float* y, int64_t n) {
  return (n < kShortRow ? avx2_path::row_dot : avx512_path::row_dot)(x, y, n);
}
void row_add(float* x, int64_t n, float c) {
  (n < kShortRow ? avx2_path::row_add : avx512_path::row_add)(x, n, c);
}
void row_scale(float* x, int64_t n, float c) {
  (n < kShortRow ? avx2_path::row_scale : avx512_path::row_scale)(x, n, c);
}
void row_softmax_grad(float* g, const float* p, int64_t n, float delta) {
  (n < kShortRow ? avx2_path::row_softmax_grad : avx512_path::row_softmax_grad)(g, p, n, delta);
}
void accumulate_at_b(float* c, const float* a, int64_t lda, float alpha, const float* b, int64_t m, int64_t cols,
                     int64_t n, bool first) {
  (n < kShortRow ? avx2_path::accumulate_at_b : avx512_path::accumulate_at_b)(c, a, lda, alpha, b, m, cols, n, first);
}
}  // namespace avx512_rows
#endif

struct RowLoops {
  float (*max)(const float*, int64_t);
  float (*sum)(const float*, int64_t);
  float (*dot)(const float*, const float*, int64_t);
  void (*add)(float*, int64_t, float);
  void (*scale)(float*, int64_t, float);
  void (*softmax_grad)(float*, const float*, int64_t, float);
  void (*accumulate_at_b)(float*, const float*, int64_t, float, const float*, int64_t, int64_t, int64_t, bool);
};
#define LOOPS RowLoops
#define LOOPS_OF(path)                                                                                     \
  RowLoops {                                                                                               \
    path::row_max, path::row_sum, path::row_dot, path::row_add, path::row_scale, path::row_softmax_grad, \
        path::accumulate_at_b                                                                              \
  }
#define AVX512_LOOPS_NAMESPACE avx512_rows
#include "cpu_path_choice.inc"

// A block of query rows' scores [rows, L] takes a quarter of the L2 cache (the backward holds
// two such blocks, with K and V beside them), at most 128 KiB: on the 1,024-token
// self-attention that measured fastest of 32 KiB-1 MiB with a 512 KiB L2 and with a 2 MiB one.
int64_t block_bytes_for(int64_t l2) { return std::clamp<int64_t>(l2 / 4, 16 << 10, 128 << 10); }
int64_t block_bytes() { return block_bytes_for(ernie_vilg2::cpu_caches().l2); }

int64_t block_rows(int64_t l) {
  return std::max<int64_t>(1, std::min<int64_t>(1024, block_bytes() / int64_t{sizeof(float)} / std::max<int64_t>(l, 1)));
}

constexpr int64_t kNarrowHead = 32;

// out [n, cols] (row stride ld) = in [cols, n]^T
void transpose_into(float* out, int64_t ld, const float* in, int64_t cols, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t col = 0; col < cols; ++col) out[j * ld + col] = in[col * n + j];
}

// Rows of fewer keys are exponentiated a block at a time: one vsExp call costs more than a
// short row's work.
constexpr int64_t kBlockExpKeys = 256;

// MKL runs single-threaded inside our OpenMP threads, and as configured outside them.
struct SerialBlas {
  int previous;
  SerialBlas() : previous(MKL_Set_Num_Threads_Local(1)) {}
  ~SerialBlas() { MKL_Set_Num_Threads_Local(previous); }
};

}  // namespace

std::vector<paddle::Tensor> AttentionForward(const paddle::Tensor& q, const paddle::Tensor& k,
                                             const paddle::Tensor& v, float scale) {
  const Dims s = check(q, k, v);
  const RowLoops& loop = chosen_loops();  // before the parallel region: it throws where the path is refused
  auto out = paddle::empty({s.batch, s.n, s.heads, s.e}, paddle::DataType::FLOAT32, q.place());
  auto lse = paddle::empty({s.batch, s.heads, s.n}, paddle::DataType::FLOAT32, q.place());
  const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>();
  float *op = out.data<float>(), *lp = lse.data<float>();
  if (ernie_vilg2::narrow_attention_forward(s, qp, kp, vp, scale, op, lp)) return {out, lse};
  const int64_t rows = block_rows(s.l);
  const int64_t ldqk = s.ld_qk(), ldv = s.ld_v();
#pragma omp parallel if (s.heads_total() * s.n * s.l >= ernie_vilg2::kAttentionParallelScores)
  {
    SerialBlas serial;
    std::vector<float> scores(rows * s.l), inv_sum(rows);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < s.heads_total(); ++bh) {
      const float* kb = kp + s.at(bh, s.l, 0, s.d);
      const float* vb = vp + s.at(bh, s.l, 0, s.e);
      for (int64_t r0 = 0; r0 < s.n; r0 += rows) {
        const int64_t m = std::min(rows, s.n - r0);
        const int64_t row = bh * s.n + r0;  // in lse [B, H, N]
        gemm(false, true, m, s.l, s.d, scale, qp + s.at(bh, s.n, r0, s.d), ldqk, kb, ldqk, 0.0f, scores.data(), s.l);
        // Each row's maximum goes to lse, its log-sum-exp added once the row is exponentiated: row
        // by row while it is in the L1 cache, or for short rows the whole block in one vsExp call.
        const bool block_exp = s.l < kBlockExpKeys;
        auto normalise = [&](int64_t i) {
          const float sum = loop.sum(scores.data() + i * s.l, s.l);
          inv_sum[i] = 1.0f / sum;
          lp[row + i] += std::log(sum);
        };
        for (int64_t i = 0; i < m; ++i) {
          float* si = scores.data() + i * s.l;
          lp[row + i] = loop.max(si, s.l);
          loop.add(si, s.l, -lp[row + i]);
          if (!block_exp) {
            vsExp(s.l, si, si);
            normalise(i);
          }
        }
        if (block_exp) {
          vsExp(m * s.l, scores.data(), scores.data());
          for (int64_t i = 0; i < m; ++i) normalise(i);
        }
        // O = exp(S - max) V, normalised afterwards: e values per row instead of L.
        float* ob = op + s.at(bh, s.n, r0, s.e);
        gemm(false, false, m, s.e, s.l, 1.0f, scores.data(), s.l, vb, ldv, 0.0f, ob, ldv);
        for (int64_t i = 0; i < m; ++i) loop.scale(ob + i * ldv, s.e, inv_sum[i]);
      }
    }
  }
  return {out, lse};
}

std::vector<paddle::Tensor> AttentionBackward(const paddle::Tensor& q, const paddle::Tensor& k,
                                              const paddle::Tensor& v, const paddle::Tensor& out,
                                              const paddle::Tensor& lse, const paddle::Tensor& grad_out,
                                              float scale) {
  const Dims s = check(q, k, v);
  const RowLoops& loop = chosen_loops();
  auto gq = paddle::empty(q.shape(), paddle::DataType::FLOAT32, q.place());
  auto gk = paddle::empty(k.shape(), paddle::DataType::FLOAT32, q.place());
  auto gv = paddle::empty(v.shape(), paddle::DataType::FLOAT32, q.place());
  const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>();
  const float *op = out.data<float>(), *lp = lse.data<float>(), *gop = grad_out.data<float>();
  float *gqp = gq.data<float>(), *gkp = gk.data<float>(), *gvp = gv.data<float>();
  if (ernie_vilg2::narrow_attention_backward(s, qp, kp, vp, op, lp, gop, scale, gqp, gkp, gvp)) return {gq, gk, gv};
  const int64_t rows = block_rows(s.l);
  const int64_t ldqk = s.ld_qk(), ldv = s.ld_v();
#pragma omp parallel if (s.heads_total() * s.n * s.l >= ernie_vilg2::kAttentionParallelScores)
  {
    SerialBlas serial;
    std::vector<float> probs(rows * s.l), grads(rows * s.l), delta(rows);
    const bool narrow = s.d <= kNarrowHead && s.e <= kNarrowHead;
    std::vector<float> gk_t(narrow ? s.d * s.l : 0), gv_t(narrow ? s.e * s.l : 0);  // [dim, L]
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < s.heads_total(); ++bh) {
      const float* kb = kp + s.at(bh, s.l, 0, s.d);
      const float* vb = vp + s.at(bh, s.l, 0, s.e);
      float* gkb = gkp + s.at(bh, s.l, 0, s.d);
      float* gvb = gvp + s.at(bh, s.l, 0, s.e);
      for (int64_t r0 = 0; r0 < s.n; r0 += rows) {
        const int64_t m = std::min(rows, s.n - r0);
        const int64_t row = bh * s.n + r0;  // in lse [B, H, N]
        const float* qb = qp + s.at(bh, s.n, r0, s.d);
        const float* gob = gop + s.at(bh, s.n, r0, s.e);
        const float* ob = op + s.at(bh, s.n, r0, s.e);
        // P = exp(scale q k^T - lse): the forward's probabilities, recomputed.
        gemm(false, true, m, s.l, s.d, scale, qb, ldqk, kb, ldqk, 0.0f, probs.data(), s.l);
        for (int64_t i = 0; i < m; ++i) {
          loop.add(probs.data() + i * s.l, s.l, -lp[row + i]);
          // delta_i = sum_j P_ij dP_ij = dO_i . O_i
          delta[i] = loop.dot(gob + i * ldv, ob + i * ldv, s.e);
        }
        vsExp(m * s.l, probs.data(), probs.data());
        // dV += P^T dO;  dP = dO V^T;  dS = P (dP - delta)
        if (narrow)
          loop.accumulate_at_b(gv_t.data(), gob, ldv, 1.0f, probs.data(), m, s.e, s.l, r0 == 0);
        else
          gemm(true, false, s.l, s.e, m, 1.0f, probs.data(), s.l, gob, ldv, r0 == 0 ? 0.0f : 1.0f, gvb, ldv);
        gemm(false, true, m, s.l, s.e, 1.0f, gob, ldv, vb, ldv, 0.0f, grads.data(), s.l);
        for (int64_t i = 0; i < m; ++i)
          loop.softmax_grad(grads.data() + i * s.l, probs.data() + i * s.l, s.l, delta[i]);
        // dQ = scale dS K;  dK += scale dS^T Q
        gemm(false, false, m, s.d, s.l, scale, grads.data(), s.l, kb, ldqk, 0.0f, gqp + s.at(bh, s.n, r0, s.d), ldqk);
        if (narrow)
          loop.accumulate_at_b(gk_t.data(), qb, ldqk, scale, grads.data(), m, s.d, s.l, r0 == 0);
        else
          gemm(true, false, s.l, s.d, m, scale, grads.data(), s.l, qb, ldqk, r0 == 0 ? 0.0f : 1.0f, gkb, ldqk);
      }
      if (narrow) {
        transpose_into(gkb, ldqk, gk_t.data(), s.d, s.l);
        transpose_into(gvb, ldv, gv_t.data(), s.e, s.l);
      }
    }
  }
  return {gq, gk, gv};
}

std::vector<std::vector<int64_t>> AttentionInferShape(const std::vector<int64_t>& q, const std::vector<int64_t>& k,
                                                      const std::vector<int64_t>& v) {
  return {{q[0], q[1], q[2], v[3]}, {q[0], q[2], q[1]}};
}

std::vector<paddle::DataType> AttentionInferDtype(const paddle::DataType& q, const paddle::DataType& k,
                                                  const paddle::DataType& v) {
  return {q, q};
}

PD_BUILD_OP(ernie_vilg2_cpu_attention)
    .Inputs({"Q", "K", "V"})
    .Outputs({"Out", "Lse"})
    .Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(AttentionForward))
    .SetInferShapeFn(PD_INFER_SHAPE(AttentionInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(AttentionInferDtype));

PD_BUILD_GRAD_OP(ernie_vilg2_cpu_attention)
    .Inputs({"Q", "K", "V", "Out", "Lse", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Q"), paddle::Grad("K"), paddle::Grad("V")})
    .Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(AttentionBackward));

// Bytes of scores per block of query rows, for an L2 of l2 bytes (0: this CPU's).
extern "C" __attribute__((visibility("default"))) int64_t ernie_vilg2_attention_block_bytes(int64_t l2) {
  return l2 > 0 ? block_bytes_for(l2) : block_bytes();
}
