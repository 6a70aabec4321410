"""Sizes of the models without allocating them: parameter counts and activation estimates.

Count models built under :func:`~ernie_vilg2.models.lazy_init.lazy_init`: under
``paddle.LazyGuard`` ``numel()`` raises, so parameters are counted from their shapes.
Importing this module imports no Paddle (the plan checks its flags before the slow imports).

Activation estimate of one U-Net training step (what autograd keeps for backward), per
piece of the forward pass, in elements of the activation dtype unless said otherwise
(n = tokens of the piece's resolution, C its channels, h heads, L text tokens):

- ResnetBlock2D (C_in -> C_out): its input, GroupNorm1's output and SiLU's output
  (3 C_in n), GroupNorm2's input and output and SiLU's output (3 C_out n).
- BasicTransformerBlock (width C, FF inner width F = 4C with GEGLU): the three LayerNorm
  inputs (3 C n); self-attention: its input, q, k, v and the output (5 C n); cross-attention:
  its input, q and the output (3 C n) and k, v of the text (2 C L); feed-forward: its input
  and GEGLU's halves, GELU output and dropout output (C n + 4 F n). With F = 4C: 28 C n.
- Unfused attention (PPDiffusers' ``AttnProcessor``) also keeps the probabilities: h n m
  elements (m = n for self-, L for cross-attention) at 4 bytes in fp32, 6 in bf16 (the fp32
  softmax output and its bf16 copy for the value product). Fused attention (flash /
  memory-efficient: ``AttnProcessor2_5``, and the project's ``FastAttnProcessor`` on CUDA,
  key-word emphasis included) keeps only q, k, v, the output and a log-sum-exp.
- Transformer2DModel around the blocks: GroupNorm input, proj_in input, proj_out input (3 C n).
- Down/upsampler: the convolution's input (C n; C 4n after a nearest upsample).
- conv_out with its GroupNorm and SiLU: 3 C n at full resolution; conv_in: its input.

Without recompute the step keeps the sum over all pieces, and during backward the
gradients of one piece come on top (its size, plus its probabilities once more: the
softmax's input and output gradients): peak = sum + the largest of those. With recompute
(PPDiffusers' gradient checkpointing: every ResnetBlock2D of the down/up blocks and of the
mid block after the first, every BasicTransformerBlock) a checkpointed piece keeps only its
input; during backward one piece is recomputed and then differentiated: peak = inputs of
the checkpointed pieces + the other pieces + the largest checkpointed piece twice (plus
its probabilities). Checked on CPU against Paddle's allocator (tests/planning/test_plan.py): the
bytes kept after the forward pass within 1%; the peak errs high, 1.07-1.53x the measured.

ERNIE (when trained): per layer 34 s h + 5 a s^2 bytes per sample at 16 bits (Korthikanti
et al. 2022, "Reducing Activation Recomputation in Large Transformer Models": s tokens,
h width, a heads; dropout masks included), doubled in fp32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

ATTENTION_KINDS = ("fused", "unfused")


def count_parameters(layer) -> int:
    """Number of parameter elements, from the shapes (works under LazyGuard)."""
    return sum(math.prod(p.shape) for p in layer.parameters())


@dataclass
class Piece:
    """One piece of the U-Net forward pass and the bytes it keeps for backward."""

    name: str
    stored: int  # bytes kept without recompute
    boundary: int  # bytes kept when it is recomputed (its input)
    checkpointed: bool  # recomputed when gradient checkpointing is on
    scores: int = 0  # bytes of its attention probabilities (unfused attention only)

    @property
    def backward(self) -> int:
        """Bytes of its gradients while backward runs through it (softmax: input and output grads)."""
        return self.stored + self.scores


@dataclass
class ActivationEstimate:
    pieces: List[Piece]
    shared: int  # bytes kept once for the whole step (the text states every cross-attention reads)

    def peak(self, recompute: bool) -> int:
        if not recompute:
            return self.shared + sum(p.stored for p in self.pieces) + max(p.backward for p in self.pieces)
        kept = sum(p.boundary if p.checkpointed else p.stored for p in self.pieces)
        largest = max((p.stored + p.backward for p in self.pieces if p.checkpointed), default=0)
        return self.shared + kept + largest


class _Counter:
    """Turns element counts into bytes for one activation dtype and attention kind."""

    def __init__(self, batch: int, act_bytes: int, attention: str, text_length: int):
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.batch = batch
        self.act_bytes = act_bytes
        self.score_bytes = 4 if act_bytes == 4 else 6
        self.fused = attention == "fused"
        self.text_length = text_length
        self.pieces: List[Piece] = []

    def add(self, name: str, elements: float, scores: float = 0.0,
            boundary_elements: float = 0.0, checkpointed: bool = False) -> None:
        b = self.batch
        score_bytes = 0 if self.fused else int(b * scores * self.score_bytes)
        stored = int(b * elements * self.act_bytes) + score_bytes
        self.pieces.append(Piece(name, stored, int(b * boundary_elements * self.act_bytes), checkpointed, score_bytes))

    # -- pieces -----------------------------------------------------------------------
    def resnet(self, name: str, resnet, n: int, checkpointed: bool) -> None:
        c_in, c_out = resnet.in_channels, resnet.out_channels
        n2 = n * 4 if resnet.up else n // 4 if resnet.down else n  # resolution after its own resampling
        shortcut = c_in * n2 if (resnet.up or resnet.down) else 0
        self.add(name, 2 * c_in * n + c_in * n2 + 3 * c_out * n2 + shortcut, boundary_elements=c_in * n,
                 checkpointed=checkpointed)

    def transformer(self, name: str, model, n: int) -> None:
        c = model.in_channels
        self.add(f"{name}.proj", 3 * c * n)
        for i, block in enumerate(model.transformer_blocks):
            self.block(f"{name}.block{i}", block, n)

    def block(self, name: str, block, n: int) -> None:
        L = self.text_length
        a1, a2 = block.attn1, block.attn2
        c = a1.inner_dim
        inner = block.ff.net[-1].weight.shape[0]  # the output Linear's input width
        elements = 3 * c * n  # LayerNorm inputs
        elements += _width(a1) * n + 4 * c * n  # self-attention: input, q, k, v, output
        scores = a1.heads * n * n
        if a2 is not None:
            elements += _width(a2) * n + 2 * c * n + 2 * c * L  # cross-attention: input, q, output; k, v
            scores += a2.heads * n * L
        elements += c * n + 4 * inner * n  # feed-forward
        self.add(name, elements, scores=scores, boundary_elements=c * n, checkpointed=True)

    def attention(self, name: str, attn, n: int) -> None:
        """A bare Attention (SimpleCrossAttn blocks: text keys/values added to the image's)."""
        c, L = attn.inner_dim, self.text_length
        m = n + L if attn.added_kv_proj_dim is not None else n
        self.add(name, 2 * _width(attn) * n + 2 * c * n + 2 * c * m, scores=attn.heads * n * m)


def unet_activations(unet, latent_size: int, batch: int, text_length: int, text_dim: int, act_bytes: int,
                     attention: str = "fused") -> ActivationEstimate:
    """Activation estimate of one training step of ``unet`` (a UNet2DConditionModel)."""
    k = _Counter(batch, act_bytes, attention, text_length)
    size = latent_size
    n = size * size
    k.add("conv_in", unet.conv_in.weight.shape[1] * n)

    for i, block in enumerate(unet.down_blocks):
        resnets, attns = list(block.resnets), list(getattr(block, "attentions", None) or [])
        for j, resnet in enumerate(resnets):
            k.resnet(f"down{i}.resnet{j}", resnet, n, checkpointed=True)
            if j < len(attns):
                _attention_piece(k, f"down{i}.attn{j}", attns[j], n)
        for sampler in getattr(block, "downsamplers", None) or []:
            if hasattr(sampler, "in_channels"):  # a ResnetBlock2D(down=True)
                k.resnet(f"down{i}.downsample", sampler, n, checkpointed=False)
            else:
                k.add(f"down{i}.downsample", sampler.channels * n)
            size = (size + 1) // 2
            n = size * size

    mid = unet.mid_block
    if mid is not None:
        resnets, attns = list(mid.resnets), list(getattr(mid, "attentions", None) or [])
        k.resnet("mid.resnet0", resnets[0], n, checkpointed=False)
        for j, resnet in enumerate(resnets[1:]):
            if j < len(attns):
                _attention_piece(k, f"mid.attn{j}", attns[j], n)
            k.resnet(f"mid.resnet{j + 1}", resnet, n, checkpointed=True)

    for i, block in enumerate(unet.up_blocks):
        resnets, attns = list(block.resnets), list(getattr(block, "attentions", None) or [])
        for j, resnet in enumerate(resnets):
            k.resnet(f"up{i}.resnet{j}", resnet, n, checkpointed=True)
            if j < len(attns):
                _attention_piece(k, f"up{i}.attn{j}", attns[j], n)
        for sampler in getattr(block, "upsamplers", None) or []:
            if hasattr(sampler, "in_channels"):  # a ResnetBlock2D(up=True)
                k.resnet(f"up{i}.upsample", sampler, n, checkpointed=False)
            else:
                k.add(f"up{i}.upsample", sampler.channels * 4 * n)
            size *= 2
            n = size * size

    k.add("conv_out", 3 * unet.conv_out.weight.shape[1] * n)
    return ActivationEstimate(k.pieces, shared=batch * text_length * text_dim * act_bytes)


def _width(attn) -> int:
    """Channels entering an Attention (Paddle's Linear weight is [in, out])."""
    return attn.to_q.weight.shape[0]


def _attention_piece(k: _Counter, name: str, attn, n: int) -> None:
    if hasattr(attn, "transformer_blocks"):
        k.transformer(name, attn, n)
    else:
        k.attention(name, attn, n)


def text_encoder_activations(config, text_length: int, batch: int, act_bytes: int) -> int:
    """Bytes an ERNIE forward keeps for backward (Korthikanti et al.; see the module docstring)."""
    s, h, a = text_length, config.hidden_size, config.num_attention_heads
    per_layer = 34 * s * h + 5 * a * s * s  # bytes per sample at 16 bits
    return int(batch * config.num_hidden_layers * per_layer * act_bytes / 2)
