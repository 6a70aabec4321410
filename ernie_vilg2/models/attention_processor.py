"""The project's attention processor: PPDiffusers' attention, faster, with key-word emphasis.

:class:`FastAttnProcessor` computes the function of PPDiffusers' stock ``AttnProcessor``

    softmax(Q K^T / sqrt(d) + M) V                          (M: the additive attention mask)

with less work and memory on CPU, and in cross-attention optionally the paper's key-word
emphasis (textual knowledge, w_t): the pre-softmax score between every image query and
text token j is multiplied by ``1 + w_t * key_token_mask[b, j]`` (mask 1 on key words
gives the paper's ``(1 + w_t)``; fractional values weight words individually)

    softmax(Q K^T / sqrt(d) * (1 + w_t m) + M) V

Every expert of the project carries it (:func:`~ernie_vilg2.models.speedups.apply_speedups`
installs it); with ``w_t`` it adds the emphasis::

    unet.set_attn_processor(FastAttnProcessor(w_t=0.01))
    unet(x, t, encoder_hidden_states=h, cross_attention_kwargs={"key_token_mask": m})

PPDiffusers 0.29 passes ``cross_attention_kwargs`` to both ``attn1`` (self-attention) and
``attn2`` (cross-attention) of every transformer block; the mask is used only where
``encoder_hidden_states`` is given.

Where the stock processor's time goes on CPU (benchmarks/profile_step.py): the score
matrix [B, heads, N, L] is written by the matmul, read and written again by the ``* scale``,
again by the softmax, kept for the backward pass, and each of those has a backward pass
over the same matrix. Here instead:

- on CPU without an attention mask, the C++ operator of :mod:`ernie_vilg2.ops` (where
  built: ``make install``) does all of it in one call, flash-attention style: query blocks
  whose scores stay in the L2 cache, the scale inside its matrix products, only the
  log-sum-exp of each query kept for the backward, which recomputes the probabilities; it
  reads q, k, v in the projections' [B, tokens, heads, d] layout and writes its output in
  the layout of ``to_out``'s input, so no transposed copies are made around it;
  the steps below are the pure-Paddle path it replaces (masks, no compiler, static graphs);
- the scale (and the emphasis factor) multiplies the queries or keys, never the
  scores: (q k_j) * s * f_j == q (k_j * s * f_j);
- when the score matrix is larger than ``chunk_bytes``, the queries are processed in row
  blocks whose scores fit in the CPU caches, and training uses a custom backward
  (:class:`_ChunkedAttention`, a ``PyLayer``) that keeps only q, k and v and
  recomputes each block's probabilities (flash-attention style): no [B, heads, N, L]
  matrix is stored, and every pass over a block hits the cache instead of memory;
- on a CUDA device it calls Paddle's ``scaled_dot_product_attention`` (flash or
  memory-efficient attention), as PPDiffusers' ``AttnProcessor2_5`` does.

Non-float32 inputs on CPU and layers with ``upcast_attention``/``upcast_softmax`` take the
stock step order (casts included), with the emphasis on the keys.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import _C_ops
from paddle.autograd import PyLayer
from ppdiffusers.models.attention_processor import Attention
from ppdiffusers.utils import USE_PEFT_BACKEND

from ernie_vilg2.ops import cpu_attention, operators_apply

# Scores per query block (benchmarks/attention_chunks.py measures the choice).
DEFAULT_CHUNK_BYTES = 4 << 20
# Scores per head from which the C++ operator computes the attention: every size, since it beats
# Paddle's ops also on the tiny U-Net's 64 x 24 cross-attention (docs/performance.md); tests and
# benchmarks/attention_chunks.py raise it to compare the paths.
CPU_OP_MIN_SCORES = 0


def _row_blocks(rows: int, row_bytes: int, chunk_bytes: int):
    """(start, stop) of query blocks whose scores take at most ``chunk_bytes`` (>= 1 row each)."""
    step = max(1, chunk_bytes // max(1, row_bytes))
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


def _block_mask(mask, start, stop):
    """The rows of an additive mask [B, heads, 1 or N, L] for queries start:stop."""
    if mask is None or mask.shape[2] == 1:
        return mask
    return mask[:, :, start:stop]


def _block_probs(q, k, mask):
    scores = paddle.matmul(q, k, transpose_y=True)
    if mask is not None:
        scores = scores + mask
    return F.softmax(scores, axis=-1)


def _blockwise(q, k, v, mask, blocks):
    # Contiguous inputs: a block of a strided view (head_to_batch_dim transposes) would be
    # copied element by element in every block's matmul.
    return paddle.concat([paddle.matmul(_block_probs(q[:, :, a:b], k, _block_mask(mask, a, b)), v)
                          for a, b in blocks], axis=2)


class _ChunkedAttention(PyLayer):
    """softmax(q k^T + mask) v over query blocks; the backward recomputes each block.

    q, k, v: [B, heads, N or L, d] (q already scaled); mask: additive, [B, heads, 1 or N, L],
    or None; no gradient flows to the mask.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, blocks):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        mask = None if mask is None else mask.contiguous()
        ctx.blocks = blocks
        ctx.frozen = [t.stop_gradient for t in (q, k, v)]  # those get None (e.g. k, v of a frozen layer)
        ctx.save_for_backward(q, k, v, mask)
        return _blockwise(q, k, v, mask, blocks)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask = ctx.saved_tensor()
        grad_out = grad_out.contiguous()
        grad_k, grad_v, grad_q = paddle.zeros_like(k), paddle.zeros_like(v), []
        for a, b in ctx.blocks:
            q_b, g_b = q[:, :, a:b], grad_out[:, :, a:b]
            probs = _block_probs(q_b, k, _block_mask(mask, a, b))
            grad_v += paddle.matmul(probs, g_b, transpose_x=True)
            # d scores = P * (dP - rowsum(P * dP)): the softmax backward kernel.
            grad_scores = _C_ops.softmax_grad(probs, paddle.matmul(g_b, v, transpose_y=True), -1)
            grad_q.append(paddle.matmul(grad_scores, k))
            grad_k += paddle.matmul(grad_scores, q_b, transpose_x=True)
        grads = [None if frozen else g for g, frozen in zip([paddle.concat(grad_q, axis=2), grad_k, grad_v],
                                                              ctx.frozen)]
        return tuple(grads) + ((None,) if mask is not None else ())


def attention(q, k, v, mask, chunk_bytes: int, scale: float = 1.0):
    """softmax(scale * q k^T + mask) v in Paddle's ops; q, k, v [B, heads, N or L, d], mask
    additive. A static graph (export: the batch is dynamic) takes the whole-matrix path."""
    if scale != 1.0:
        q = q * scale
    blocks = None
    if paddle.in_dynamic_mode():
        row_bytes = q.shape[0] * q.shape[1] * k.shape[2] * q.element_size()
        blocks = _row_blocks(q.shape[2], row_bytes, chunk_bytes)
    if blocks is None or len(blocks) == 1:
        # Scores fit in the cache: autograd's own backward is the cheapest.
        return paddle.matmul(_block_probs(q, k, mask), v)
    if paddle.is_grad_enabled() and not (q.stop_gradient and k.stop_gradient and v.stop_gradient):
        if mask is not None and not mask.stop_gradient:
            raise ValueError("attention_mask: a mask that needs gradients is not supported")
        return _ChunkedAttention.apply(q, k, v, mask, blocks)
    return _blockwise(q.contiguous(), k.contiguous(), v.contiguous(), mask, blocks)


class FastAttnProcessor:
    """PPDiffusers' ``AttnProcessor`` computed faster, with optional key-word emphasis.

    Args:
        w_t: emphasis strength in cross-attention (paper: 0.01); 0 disables it.
        chunk_bytes: the largest score block [B, heads, rows, L] computed at once on CPU
            (bytes); a larger score matrix is processed in query blocks.

    Call keyword ``key_token_mask``: float [B, L_text] (paddle Tensor or numpy), B equal
    to the batch of ``encoder_hidden_states`` or 1 (shared by all samples); None disables
    the emphasis.
    """

    def __init__(self, w_t: float = 0.0, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        if not (isinstance(w_t, (int, float)) and math.isfinite(w_t) and w_t >= 0):
            raise ValueError(f"w_t must be a finite number >= 0, got {w_t!r}")
        if not (isinstance(chunk_bytes, int) and chunk_bytes > 0):
            raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
        self.w_t = float(w_t)
        self.chunk_bytes = chunk_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(w_t={self.w_t})"

    def __call__(
        self,
        attn: Attention,
        hidden_states: paddle.Tensor,
        encoder_hidden_states: Optional[paddle.Tensor] = None,
        attention_mask: Optional[paddle.Tensor] = None,
        temb: Optional[paddle.Tensor] = None,
        scale: float = 1.0,
        key_token_mask=None,
        **kwargs,
    ) -> paddle.Tensor:
        # The steps of the stock AttnProcessor around the attention itself.
        residual = hidden_states
        args = () if USE_PEFT_BACKEND else (scale,)
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.reshape([batch_size, channel, height * width]).transpose([0, 2, 1])
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose([0, 2, 1])).transpose([0, 2, 1])

        emphasis = key_token_mask is not None and self.w_t != 0.0 and encoder_hidden_states is not None
        query = attn.to_q(hidden_states, *args)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states, *args)
        value = attn.to_v(encoder_hidden_states, *args)
        mask = self._key_token_mask(key_token_mask, batch_size, sequence_length, key.dtype) if emphasis else None

        # Static graphs keep the plain ops, which every inference engine runs, unless traced with
        # the C++ operators (ernie_vilg2.ops.into_programs).
        if paddle.in_dynamic_mode() and query.place.is_gpu_place():
            hidden_states = self._sdpa(attn, query, key, value, attention_mask, mask)
        else:
            hidden_states = self._cpu(attn, query, key, value, attention_mask, mask)

        hidden_states = attn.to_out[0](hidden_states, *args)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose([0, 2, 1]).reshape([batch_size, channel, height, width])
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _key_token_mask(self, key_token_mask, batch_size: int, text_length: int, dtype):
        """The checked mask, [B or 1, L] in the keys' dtype."""
        if isinstance(key_token_mask, np.ndarray):
            key_token_mask = paddle.to_tensor(key_token_mask)
        if not isinstance(key_token_mask, paddle.Tensor):
            raise TypeError(f"key_token_mask: expected a paddle Tensor or numpy array, "
                            f"got {type(key_token_mask).__name__}")
        if key_token_mask.ndim != 2 or key_token_mask.shape[1] != text_length or \
                key_token_mask.shape[0] not in (1, batch_size):
            raise ValueError(f"key_token_mask: expected shape [{batch_size} or 1, {text_length}] "
                             f"(batch, text tokens), got {list(key_token_mask.shape)}")
        return key_token_mask if key_token_mask.dtype == dtype else key_token_mask.astype(dtype)

    def _key_factor(self, mask, scale: float, shape):
        """scale * (1 + w_t * mask) in one op, reshaped to broadcast over the keys."""
        return paddle.scale(mask, scale=self.w_t * scale, bias=scale).reshape(shape)

    @staticmethod
    def _operator_applies(attn, query, key, attention_mask) -> bool:
        return (attention_mask is None and operators_apply(query)
                and query.dtype == paddle.float32 and not (attn.upcast_attention or attn.upcast_softmax)
                and query.shape[1] * key.shape[1] >= CPU_OP_MIN_SCORES)

    def _tokens_heads(self, attn, query, key, value, mask, key_scale: float):
        """q, k, v as [B, tokens, heads, d] views, the emphasis (times key_scale) on the keys."""
        query, key, value = (attn.head_to_batch_dim(t, transpose=False) for t in (query, key, value))
        if mask is not None:
            key = key * self._key_factor(mask, key_scale, [mask.shape[0], mask.shape[1], 1, 1])
        return query, key, value

    def _cpu(self, attn, query, key, value, attention_mask, mask):
        if self._operator_applies(attn, query, key, attention_mask):
            # The C++ operator takes the projections' [B, tokens, heads, d] layout: no copies.
            q, k, v = self._tokens_heads(attn, query, key, value, mask, attn.scale)
            scale = 1.0 if mask is not None else attn.scale  # with emphasis, the keys carry it
            out = cpu_attention(q, k, v, scale)
            if out is not None:
                return out.reshape([out.shape[0], out.shape[1], -1])
        query = attn.head_to_batch_dim(query)  # [B, heads, N, d]
        key = attn.head_to_batch_dim(key)  # [B, heads, L, d]
        value = attn.head_to_batch_dim(value)
        if mask is not None:
            key = key * self._key_factor(mask, attn.scale, [mask.shape[0], 1, mask.shape[1], 1])
            scale_query = False
        else:
            scale_query = True
        if query.dtype != paddle.float32 or attn.upcast_attention or attn.upcast_softmax:
            out = self._stock_order(attn, query, key, value, attention_mask, scale_query)
        else:
            out = attention(query, key, value, attention_mask, self.chunk_bytes,
                            attn.scale if scale_query else 1.0)
        return attn.batch_to_head_dim(out)

    @staticmethod
    def _stock_order(attn, query, key, value, attention_mask, scale_query):
        """The stock get_attention_scores (casts and all), keys pre-scaled when emphasised."""
        dtype = query.dtype
        if attn.upcast_attention:
            query, key = query.cast(paddle.float32), key.cast(paddle.float32)
        scores = paddle.matmul(query, key, transpose_y=True)
        if scale_query:
            scores = scores * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        if attn.upcast_softmax:
            scores = scores.cast(paddle.float32)
        probs = F.softmax(scores, axis=-1)
        if attn.upcast_softmax or attn.upcast_attention:
            probs = probs.cast(dtype)
        return paddle.matmul(probs, value)

    def _sdpa(self, attn, query, key, value, attention_mask, mask):
        """CUDA: Paddle's fused attention (flash / memory-efficient), layout [B, S, heads, d]."""
        query, key, value = self._tokens_heads(attn, query, key, value, mask, 1.0)
        if attention_mask is not None:
            attention_mask = attention_mask.astype(query.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                             is_causal=False, training=attn.training, scale=attn.scale)
        return attn.batch_to_head_dim(out, transpose=False)

