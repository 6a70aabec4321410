"""The project's faster attention and layers, installed on a denoiser from outside it.

A :class:`~ernie_vilg2.models.expert_bank.MixtureOfDenoisingExperts` (or a U-Net) is built
plain, as PPDiffusers builds it; whoever builds one to run it (the model factory, the
pipeline, the trainer, the expert-offload slot, the exporter) calls :func:`apply_speedups`,
as diffusers' pipelines set attention processors on their models. The function is the same
as the stock one's within float rounding (tests/models/test_attention_processor.py,
tests/models/test_fast_layers.py).
"""
from __future__ import annotations

import paddle
from ppdiffusers.models.attention_processor import Attention

from .attention_processor import FastAttnProcessor
from .fast_layers import use_fast_layers


def apply_speedups(model: paddle.nn.Layer, layers: bool = True) -> paddle.nn.Layer:
    """Give every attention layer of ``model`` a :class:`FastAttnProcessor` (one that already
    has one keeps it, with its key-word emphasis) and, with ``layers``, switch its linear,
    convolution and GEGLU layers to the faster ones (:func:`use_fast_layers`). In place;
    returns ``model``."""
    fast = FastAttnProcessor()
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, Attention) and not isinstance(layer.processor, FastAttnProcessor):
            layer.set_processor(fast)
    if layers:
        use_fast_layers(model)
    return model
