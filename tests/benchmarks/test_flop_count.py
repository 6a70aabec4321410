"""The flops the benchmarks count from layer shapes (benchmarks/flop_count.py) and the achieved rate's line."""
import os
import sys

import paddle

from helpers.paths import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import flop_count  # noqa: E402


def test_a_convolution_counts_its_multiply_adds_twice():
    conv = paddle.nn.Conv2D(6, 8, 3, stride=2, padding=1, groups=2)  # output 3x3, 3 input channels per group
    x = paddle.randn([2, 6, 5, 5])
    assert flop_count.count_flops(conv, lambda: conv(x)) == {
        "convolution": 2 * (2 * 8 * 3 * 3) * 3 * 3 * 3, "linear": 0, "attention": 0}


def test_an_attention_layer_counts_its_projections_and_both_products():
    from ppdiffusers.models.attention_processor import Attention

    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    hidden, context = paddle.randn([2, 10, 16]), paddle.randn([2, 7, 12])
    got = flop_count.count_flops(attn, lambda: attn(hidden, encoder_hidden_states=context))
    batch, queries, keys, inner = 2, 10, 7, 16
    projections = 2 * batch * (queries * 16 * inner + 2 * keys * 12 * inner + queries * inner * 16)  # q, k, v, out
    assert got == {"convolution": 0, "linear": projections, "attention": 4 * batch * queries * keys * inner}
    # the hooks are gone afterwards
    assert flop_count.count_flops(paddle.nn.Linear(2, 2), lambda: attn(hidden, encoder_hidden_states=context)) == {
        "convolution": 0, "linear": 0, "attention": 0}


def test_the_rate_line_gives_the_share_of_the_cores_peak():
    assert flop_count.gflops_line("training step", 6e9, 0.5, 2, 100.0) == (
        "training step: 6.0 GFLOP counted, 12.0 GFLOP/s achieved, 6.0% of the float32 peak of 2 core(s)")
    assert flop_count.gflops_line("sampling step", 1e9, 1.0, 1, None) == (
        "sampling step: 1.0 GFLOP counted, 1.0 GFLOP/s achieved")
