"""Floating-point operations of a Paddle model's forward call, counted from its layers' shapes.

Counted: convolutions (2 x output elements x input channels per group x kernel area), linear
layers (2 x output elements x input features) and attention's two matrix products (scores
q k^T and probabilities x v: 4 x batch x queries x keys x inner width, from the shapes of the
attention layer's to_q and to_k outputs). Not counted: normalisation, activations, softmax and
other elementwise work (memory-bound, a few percent of the U-Nets' flops). Count on the model as
PPDiffusers builds it (the project's faster layers compute the same products another way, and
some bypass the layers' own forward). A training step is taken as 3x the forward (the backward
computes the gradients of the inputs and of the weights, 2x).
"""
from __future__ import annotations

import math


def count_flops(model, call) -> dict:
    """Run ``call()`` (a forward of ``model``) with counting hooks; return flops by kind:
    {"convolution": n, "linear": n, "attention": n}."""
    import paddle

    counts = {"convolution": 0, "linear": 0, "attention": 0}
    queries = {}  # id(attention layer) -> its to_q output shape

    def conv(layer, inputs, output):
        out_channels, in_per_group, kh, kw = layer.weight.shape
        counts["convolution"] += 2 * math.prod(output.shape) * in_per_group * kh * kw

    def linear(layer, inputs, output):
        counts["linear"] += 2 * math.prod(output.shape) * layer.weight.shape[0]

    def query(owner):
        def hook(layer, inputs, output):
            queries[owner] = output.shape
        return hook

    def key(owner):
        def hook(layer, inputs, output):
            batch, n = queries.pop(owner)[:2]
            counts["attention"] += 4 * batch * n * output.shape[1] * output.shape[-1]
        return hook

    handles = []
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.Conv2D):
            handles.append(layer.register_forward_post_hook(conv))
        elif isinstance(layer, paddle.nn.Linear):
            handles.append(layer.register_forward_post_hook(linear))
        if hasattr(layer, "to_q") and hasattr(layer, "to_k"):  # an attention layer
            handles.append(layer.to_q.register_forward_post_hook(query(id(layer))))
            handles.append(layer.to_k.register_forward_post_hook(key(id(layer))))
    try:
        with paddle.no_grad():
            call()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def gflops_line(step: str, flops: float, seconds: float, threads: int, peak_per_core) -> str:
    """'<step>: F GFLOP ..., G GFLOP/s, P% of the peak of T core(s)' (no share without a peak)."""
    rate = flops / seconds / 1e9
    line = f"{step}: {flops / 1e9:,.1f} GFLOP counted, {rate:,.1f} GFLOP/s achieved"
    if peak_per_core:
        line += f", {rate / (peak_per_core * threads):.1%} of the float32 peak of {threads} core(s)"
    return line
