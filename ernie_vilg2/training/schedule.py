"""The learning-rate schedule of every trainer: linear warm-up over ``warmup_steps``, then
constant (the diffusion stages) or, with ``decay_steps``, a cosine decay to
``min_ratio`` x the base rate at ``decay_steps`` (the detector)."""
from __future__ import annotations

import math
from typing import Optional

import paddle


def lr_factor(step: int, warmup_steps: int, decay_steps: Optional[int] = None, min_ratio: float = 0.05) -> float:
    """The factor of the base learning rate at ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay_steps is None:
        return 1.0
    t = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def lr_schedule(base_lr: float, warmup_steps: int, decay_steps: Optional[int] = None,
                min_ratio: float = 0.05) -> paddle.optimizer.lr.LambdaDecay:
    """A Paddle scheduler of :func:`lr_factor`; call ``step()`` after each optimizer step. Its
    state (the step) travels in the optimizer's state dict."""
    return paddle.optimizer.lr.LambdaDecay(base_lr, lambda step: lr_factor(step, warmup_steps, decay_steps, min_ratio))
