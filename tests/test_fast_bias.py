"""The experts' linear and convolution layers with cheaper biases on CPU (models/fast_bias.py)."""
import copy

import numpy as np
import paddle
import pytest
from ppdiffusers.models.lora import LoRACompatibleConv, LoRACompatibleLinear

from ernie_vilg2.models import fast_bias
from ernie_vilg2.models.fast_bias import FastBiasConv, FastBiasLinear, use_fast_bias


def outputs_and_grads(layer, x):
    x = x.detach()
    x.stop_gradient = False
    out = layer(x)
    weights = paddle.to_tensor(np.random.default_rng(1).standard_normal(out.shape).astype("float32"))
    (out * weights).sum().backward()
    grads = [x.grad.numpy()] + [p.grad.numpy() for p in layer.parameters()]
    layer.clear_gradients()
    return [out.numpy()] + grads


@pytest.mark.parametrize("kind", ["linear", "conv", "conv stride 2"])
def test_same_function_and_gradients(kind, monkeypatch):
    monkeypatch.setattr(fast_bias, "MIN_ELEMENTS", 0)  # the fast path at these small sizes
    paddle.seed(0)
    if kind == "linear":
        stock, x = LoRACompatibleLinear(24, 40), paddle.randn([3, 37, 24])
    else:
        stock = LoRACompatibleConv(6, 10, 3, stride=2 if "2" in kind else 1, padding=1)
        x = paddle.randn([3, 6, 9, 11])
    fast = copy.deepcopy(stock)
    use_fast_bias(fast)
    assert type(fast) is (FastBiasLinear if kind == "linear" else FastBiasConv)
    assert fast.state_dict().keys() == stock.state_dict().keys()
    calls = []
    apply = fast_bias._BiasAdd.apply
    monkeypatch.setattr(fast_bias._BiasAdd, "apply", lambda *a: calls.append(1) or apply(*a))
    for got, want in zip(outputs_and_grads(fast, x), outputs_and_grads(stock, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert calls  # the fast path ran
    with paddle.no_grad():  # inference: the same function, without the PyLayer
        np.testing.assert_allclose(fast(x).numpy(), stock(x).numpy(), rtol=1e-5, atol=1e-5)
    assert len(calls) == 1


def test_mode_experts_carry_them():
    from ernie_vilg2.models.mode import MixtureOfDenoisingExperts

    model = MixtureOfDenoisingExperts(num_experts=2, unet=dict(
        sample_size=8, block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=4,
        norm_num_groups=8, cross_attention_dim=16))
    kinds = {type(m) for e in model.experts for m in e.sublayers()}
    assert {FastBiasLinear, FastBiasConv} <= kinds and not {LoRACompatibleLinear, LoRACompatibleConv} & kinds
