"""Cross-attention emphasis on key-word tokens (paper: textual knowledge, w_t).

:class:`KnowledgeAttnProcessor` is a PPDiffusers attention processor. In cross-attention
it multiplies the pre-softmax score between every image query and text token j by
``1 + w_t * key_token_mask[b, j]`` (mask 1 on key-word tokens gives the paper's
``(1 + w_t)``; fractional mask values weight words individually):

    softmax(Q K^T / sqrt(d) * (1 + w_t m)) V

Usage::

    unet.set_attn_processor(KnowledgeAttnProcessor(w_t=0.01))
    unet(x, t, encoder_hidden_states=h, cross_attention_kwargs={"key_token_mask": m})

PPDiffusers 0.29 passes ``cross_attention_kwargs`` unfiltered to both ``attn1``
(self-attention) and ``attn2`` (cross-attention) of every transformer block, so the
processor receives the mask in both and uses it only where ``encoder_hidden_states``
is given. In self-attention, without a mask, or with ``w_t == 0`` it calls the stock
``AttnProcessor``, so its output is the stock one bit for bit.

Op order of the emphasised path: the per-column factor (and the 1/sqrt(d) scale) is
applied to the keys ([B, heads, L, d]) instead of the score matrix ([B, heads, N, L]):
(q k_j) * s * f_j == q (k_j * s * f_j), with one multiply on the small tensor instead of
two on the large one.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import paddle
import paddle.nn.functional as F
from ppdiffusers.models.attention_processor import Attention, AttnProcessor
from ppdiffusers.utils import USE_PEFT_BACKEND


class KnowledgeAttnProcessor:
    """AttnProcessor with key-word emphasis in cross-attention.

    Args:
        w_t: emphasis strength (paper: 0.01); 0 makes the processor the stock one.

    Call keyword ``key_token_mask``: float [B, L_text] (paddle Tensor or numpy), B equal
    to the batch of ``encoder_hidden_states`` or 1 (shared by all samples); None disables
    the emphasis.
    """

    def __init__(self, w_t: float = 0.0):
        if not (isinstance(w_t, (int, float)) and math.isfinite(w_t) and w_t >= 0):
            raise ValueError(f"w_t must be a finite number >= 0, got {w_t!r}")
        self.w_t = float(w_t)
        self._stock = AttnProcessor()

    def __repr__(self) -> str:
        return f"KnowledgeAttnProcessor(w_t={self.w_t})"

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
        if key_token_mask is None or self.w_t == 0.0 or encoder_hidden_states is None:
            return self._stock(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                               attention_mask=attention_mask, temb=temb, scale=scale, **kwargs)
        return self._emphasised(attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale,
                                key_token_mask)

    def _column_factor(self, key_token_mask, batch_size: int, text_length: int, attn: Attention, dtype):
        """[B or 1, 1, L, 1] factor attn.scale * (1 + w_t * mask) for keys of shape [B, heads, L, d]."""
        if isinstance(key_token_mask, np.ndarray):
            key_token_mask = paddle.to_tensor(key_token_mask)
        if not isinstance(key_token_mask, paddle.Tensor):
            raise TypeError(f"key_token_mask: expected a paddle Tensor or numpy array, "
                            f"got {type(key_token_mask).__name__}")
        if key_token_mask.ndim != 2 or key_token_mask.shape[1] != text_length or \
                key_token_mask.shape[0] not in (1, batch_size):
            raise ValueError(f"key_token_mask: expected shape [{batch_size} or 1, {text_length}] "
                             f"(batch, text tokens), got {list(key_token_mask.shape)}")
        mask = key_token_mask if key_token_mask.dtype == dtype else key_token_mask.astype(dtype)
        # One op: mask * (w_t * s) + s == s * (1 + w_t * mask).
        factor = paddle.scale(mask, scale=self.w_t * attn.scale, bias=attn.scale)
        return factor.reshape([mask.shape[0], 1, text_length, 1])

    def _emphasised(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale,
                    key_token_mask):
        # Same steps as the stock AttnProcessor; only the score computation differs.
        residual = hidden_states
        args = () if USE_PEFT_BACKEND else (scale,)

        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.reshape([batch_size, channel, height * width]).transpose([0, 2, 1])

        batch_size, sequence_length, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose([0, 2, 1])).transpose([0, 2, 1])

        query = attn.to_q(hidden_states, *args)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states, *args)
        value = attn.to_v(encoder_hidden_states, *args)

        query = attn.head_to_batch_dim(query)  # [B, heads, N, d]
        key = attn.head_to_batch_dim(key)  # [B, heads, L, d]
        value = attn.head_to_batch_dim(value)

        dtype = query.dtype
        if attn.upcast_attention:
            query = query.cast(paddle.float32)
            key = key.cast(paddle.float32)
        key = key * self._column_factor(key_token_mask, batch_size, sequence_length, attn, key.dtype)
        scores = paddle.matmul(query, key, transpose_y=True)
        if attention_mask is not None:
            scores = scores + attention_mask
        if attn.upcast_softmax:
            scores = scores.cast(paddle.float32)
        attention_probs = F.softmax(scores, axis=-1)
        if attn.upcast_softmax or attn.upcast_attention:
            attention_probs = attention_probs.cast(dtype)

        hidden_states = paddle.matmul(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states, *args)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose([0, 2, 1]).reshape([batch_size, channel, height, width])
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states
