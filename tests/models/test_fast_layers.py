"""The experts' linear, convolution and layer-norm layers made cheaper on CPU (models/fast_layers.py)."""
import copy

import numpy as np
import paddle
import pytest
from ppdiffusers.models.activations import GEGLU
from ppdiffusers.models.lora import LoRACompatibleConv, LoRACompatibleLinear

from ernie_vilg2.models import fast_layers
from ernie_vilg2.models.fast_layers import FastConv, FastConv2D, FastGEGLU, FastLayerNorm, FastLinear, use_fast_layers

from helpers.cpu_ops import require_cpu_ops
from helpers.gradients import assert_same_grads, count_calls, grads_of


# conv: the C++ convolution operator, bias included; "conv, no operator" (where it is not built),
# "same" padding and groups (the operator's cases exclude them): Paddle's conv2d without the
# bias, then _BiasAdd; geglu: two products, each with _BiasAdd (where the GEGLU operator is not
# built; tests/ops/test_cpu_geglu.py tests it).
@pytest.mark.parametrize("kind", ["linear", "geglu", "conv", "conv stride 2", "plain conv", "conv, no operator", "conv 'same' padding",
                                  "conv groups 2"])
def test_same_function_and_gradients(kind, monkeypatch):
    monkeypatch.setattr(fast_layers, "MIN_ELEMENTS", 0)  # the fast path at these small sizes
    paddle.seed(0)
    if kind == "linear":
        stock, x = LoRACompatibleLinear(24, 40), paddle.randn([3, 37, 24])
    elif kind == "geglu":
        stock, x = GEGLU(24, 20), paddle.randn([3, 37, 24])
    else:
        padding = "same" if "same" in kind else 1
        stock = (paddle.nn.Conv2D if "plain" in kind else LoRACompatibleConv)(6, 10, 3, stride=2 if "2" in kind else 1, padding=padding,
                                   groups=2 if "groups" in kind else 1)
        x = paddle.randn([3, 6, 9, 11])
    fast = copy.deepcopy(stock)
    use_fast_layers(fast)
    assert type(fast) is {"linear": FastLinear, "geglu": FastGEGLU, "plain conv": FastConv2D}.get(kind, FastConv)
    assert fast.state_dict().keys() == stock.state_dict().keys()
    operator = kind in ("conv", "conv stride 2", "plain conv")
    if operator:
        require_cpu_ops()
    op_calls = count_calls(monkeypatch, fast_layers, "cpu_conv2d",
                           (lambda *a: None) if kind == "conv, no operator" else None)
    bias_calls = count_calls(monkeypatch, fast_layers._BiasAdd, "apply")
    monkeypatch.setattr(fast_layers, "cpu_geglu", lambda *a: None)
    assert_same_grads(grads_of(fast, x), grads_of(stock, x), rtol=1e-5, atol=1e-5)
    with paddle.no_grad():  # inference: the same function
        np.testing.assert_allclose(fast(x).numpy(), stock(x).numpy(), rtol=1e-5, atol=1e-5)
    # _BiasAdd in training only: inference adds the bias without the PyLayer.
    assert len(bias_calls) == (0 if operator else 2 if kind == "geglu" else 1)
    assert len(op_calls) == (2 if operator or kind == "conv, no operator" else 0)


def test_every_expert_carries_them_once_applied():
    from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts
    from ernie_vilg2.models.speedups import apply_speedups

    model = apply_speedups(MixtureOfDenoisingExperts(num_experts=2, unet=dict(
        sample_size=8, block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=4,
        norm_num_groups=8, cross_attention_dim=16)))
    kinds = {type(m) for e in model.experts for m in e.sublayers()}
    assert {FastLinear, FastConv, FastConv2D, FastGEGLU, FastLayerNorm} <= kinds
    assert not {LoRACompatibleLinear, LoRACompatibleConv, paddle.nn.Conv2D, GEGLU, paddle.nn.LayerNorm} & kinds


@pytest.mark.parametrize("kind", ["linear", "geglu", "conv", "conv, no operator", "layer norm"])
def test_frozen_weights_train_the_input_only(kind, monkeypatch):
    """A frozen layer (the base U-Net of LoRA experts) passes the input's gradient on and gives
    its parameters none, on the fast paths as in the stock layer."""
    monkeypatch.setattr(fast_layers, "MIN_ELEMENTS", 0)
    if kind == "conv, no operator":
        monkeypatch.setattr(fast_layers, "cpu_conv2d", lambda *a: None)
    elif kind in ("conv", "layer norm"):
        require_cpu_ops()
    paddle.seed(0)
    stock = {"linear": lambda: LoRACompatibleLinear(24, 40), "geglu": lambda: GEGLU(24, 20),
             "layer norm": lambda: paddle.nn.LayerNorm(24)}.get(kind, lambda: LoRACompatibleConv(6, 10, 3, padding=1))()
    x = paddle.randn([3, 6, 9, 11]) if "conv" in kind else paddle.randn([3, 37, 24])
    fast = copy.deepcopy(stock)
    use_fast_layers(fast)
    results = []
    for layer in (fast, stock):
        for p in layer.parameters():
            p.stop_gradient = True
        inp = x.detach()
        inp.stop_gradient = False
        (layer(inp) * 1.5).sum().backward()
        assert all(p.grad is None for p in layer.parameters())
        results.append(inp.grad.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)


# The operator: a LayerNorm over the last dimension with weight and bias, float32, training.
# The stock forward: no weight and bias, two normalised dimensions, float64, inference.
@pytest.mark.parametrize("kind,operator_calls", [("layer norm", 1), ("no weight", 0), ("two dims", 0),
                                                 ("float64", 0)])
def test_layer_norm_same_function_and_gradients(kind, operator_calls, monkeypatch):
    monkeypatch.setattr(fast_layers, "MIN_ELEMENTS", 0)
    if operator_calls:
        require_cpu_ops()
    paddle.seed(0)
    x = paddle.randn([3, 37, 70]) * 3 + 1
    if kind == "no weight":
        stock = paddle.nn.LayerNorm(70, weight_attr=False, bias_attr=False)
    elif kind == "two dims":
        stock = paddle.nn.LayerNorm([37, 70])
    else:
        stock = paddle.nn.LayerNorm(70, epsilon=1e-6)
    if kind == "float64":
        stock, x = stock.to(dtype="float64"), x.astype("float64")
    fast = copy.deepcopy(stock)
    use_fast_layers(fast)
    assert type(fast) is FastLayerNorm and fast.state_dict().keys() == stock.state_dict().keys()
    calls = count_calls(monkeypatch, fast_layers, "cpu_layer_norm")
    assert_same_grads(grads_of(fast, x), grads_of(stock, x), rtol=1e-4, atol=1e-5)
    assert len(calls) == operator_calls
    with paddle.no_grad():  # inference: the stock forward
        np.testing.assert_array_equal(fast(x).numpy(), stock(x).numpy())
    assert len(calls) == operator_calls


def test_a_transformer_block_has_the_same_outputs_and_gradients(monkeypatch):
    """A U-Net transformer block (norm1/norm2/norm3 through the operator, its linear layers and
    GEGLU fast too) against the stock block, at the size where the operator applies."""
    from ppdiffusers.models.attention import BasicTransformerBlock

    require_cpu_ops()
    paddle.seed(0)
    stock = BasicTransformerBlock(64, 4, 16, cross_attention_dim=32)
    fast = copy.deepcopy(stock)
    use_fast_layers(fast)
    assert sum(type(m) is FastLayerNorm for m in fast.sublayers()) == 3
    x, context = paddle.randn([2, 512, 64]), paddle.randn([2, 7, 32])
    assert x.size >= fast_layers.MIN_ELEMENTS
    calls = count_calls(monkeypatch, fast_layers, "cpu_layer_norm")
    got = grads_of(fast, x, encoder_hidden_states=context)
    want = grads_of(stock, x, encoder_hidden_states=context)
    assert len(calls) == 3
    assert_same_grads(got, want, rtol=1e-4, atol=2e-4)
