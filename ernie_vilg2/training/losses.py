"""Denoising losses."""
from __future__ import annotations

from typing import Optional

import paddle


def per_sample_weighted_mse(
    pred: paddle.Tensor, target: paddle.Tensor, weight: Optional[paddle.Tensor] = None
) -> paddle.Tensor:
    """Per-sample weighted mean of squared errors, shape [B].

    ``weight`` ([B, 1, h, w] or broadcastable) is the visual-knowledge map (1 outside
    salient boxes, 1 + w_v inside). Normalising by the weight sum keeps the loss a
    proper weighted mean, so its scale does not drift with box area; an all-ones map
    gives exactly the plain MSE.
    """
    se = (pred.astype("float32") - target.astype("float32")) ** 2
    axes = list(range(1, se.ndim))
    if weight is None:
        return se.mean(axis=axes)
    weight = paddle.broadcast_to(weight.astype("float32"), se.shape)
    return (se * weight).sum(axis=axes) / weight.sum(axis=axes)
