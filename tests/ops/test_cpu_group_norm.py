"""The C++ CPU group-norm operator (ernie_vilg2/ops/cpu_group_norm.cc) against float64, and
FastGroupNorm (ernie_vilg2/models/fast_layers.py) against Paddle's GroupNorm."""
import copy

import numpy as np
import paddle
import pytest

from ernie_vilg2 import ops
from ernie_vilg2.models import fast_layers
from ernie_vilg2.models.fast_layers import FastGroupNorm, use_fast_layers

from helpers.cpu_ops import OmpThreads, require_cpu_ops
from helpers.gradients import assert_same_grads, count_calls, grads_of


def reference(x, weight, bias, grad_out, groups, epsilon):
    """Group norm of [N, C, *] and its gradients (x, weight, bias) in float64 NumPy."""
    x, weight, bias, grad_out = (a.astype("float64") for a in (x, weight, bias, grad_out))
    shape, n, c = x.shape, x.shape[0], x.shape[1]
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((xg - mean) ** 2).mean(-1, keepdims=True) + epsilon)
    xhat = ((xg - mean) * rstd).reshape(shape)
    per_channel = (1, c) + (1,) * (x.ndim - 2)
    g = (grad_out * weight.reshape(per_channel)).reshape(n, groups, -1)
    xhat_g = xhat.reshape(n, groups, -1)
    grad_x = rstd * (g - g.mean(-1, keepdims=True) - xhat_g * (g * xhat_g).mean(-1, keepdims=True))
    sum_axes = (0,) + tuple(range(2, x.ndim))
    return (xhat * weight.reshape(per_channel) + bias.reshape(per_channel), grad_x.reshape(shape),
            (grad_out * xhat).sum(sum_axes), grad_out.sum(sum_axes))


def inputs(shape, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    return [(rng.standard_normal(shape) * 2 + offset).astype("float32"), rng.standard_normal(c).astype("float32"),
            rng.standard_normal(c).astype("float32"), rng.standard_normal(shape).astype("float32")]


def run(arrays, groups, epsilon, trainable=(True, True, True)):
    tensors = [paddle.to_tensor(a, stop_gradient=not t) for a, t in zip(arrays[:3], trainable)]
    out = ops.cpu_group_norm(*tensors, groups, epsilon)
    (out * paddle.to_tensor(arrays[3])).sum().backward()
    return [out] + [t.grad for t in tensors]


# One channel per group; odd spatial sizes (vector remainders); a 3-D and a 5-D input; a group
# far from zero (the variance around the mean); the U-Net's [8, 64, 32, 32] in 32 groups (spread
# over the threads); groups of 262,144 values (the VAE's size: sums over many chunks).
@pytest.mark.parametrize("shape,groups,offset", [((2, 4, 3, 5), 4, 0.0), ((3, 6, 7, 9), 3, 0.0), ((2, 8, 33), 2, 0.0),
                                                 ((2, 4, 3, 2, 5), 2, 0.0), ((2, 6, 5, 5), 3, 300.0),
                                                 ((1, 1, 1, 1), 1, 0.0), ((8, 64, 32, 32), 32, 0.0),
                                                 ((1, 8, 256, 256), 2, 3.0)])
@pytest.mark.parametrize("threads", [1, 3])
def test_group_norm_equals_the_reference(shape, groups, offset, threads):
    require_cpu_ops()
    arrays = inputs(shape, offset)
    with OmpThreads(threads):
        got = run(arrays, groups, 1e-5)
    want = reference(*arrays, groups, 1e-5)
    summed = int(np.prod(shape)) // shape[1]  # values per channel in dweight / dbias
    for name, g, w, atol in zip(("out", "grad x", "grad weight", "grad bias"), got, want,
                                (1e-5, 1e-4, 2e-5 * summed**0.5, 2e-5 * summed**0.5)):
        assert list(g.shape) == list(w.shape), name
        np.testing.assert_allclose(g.numpy(), w, atol=atol, rtol=1e-4, err_msg=name)


def test_group_norm_with_an_outlier_first():
    """The group's sums are taken around its first value: an outlier there costs no precision."""
    require_cpu_ops()
    arrays = inputs((4, 8, 6, 6))
    arrays[0][:, 0, 0, 0] = [1e3, -1e3, 50.0, 0.0]
    got, want = run(arrays, 4, 1e-6), reference(*arrays, 4, 1e-6)
    for name, g, w in zip(("out", "grad x", "grad weight", "grad bias"), got, want):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-4, rtol=1e-4, err_msg=name)


def test_group_norm_sums_do_not_depend_on_the_run():
    """dweight / dbias: the threads' partial sums are added in a fixed order."""
    require_cpu_ops()
    arrays = inputs((8, 64, 32, 32))
    with OmpThreads(3):
        first, second = run(arrays, 32, 1e-6), run(arrays, 32, 1e-6)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("trainable", [(True, False, False), (False, True, True), (True, True, False)])
def test_group_norm_frozen_inputs_get_no_gradient(trainable):
    require_cpu_ops()
    arrays = inputs((3, 6, 7, 9))
    got = run(arrays, 3, 1e-5, trainable)
    want = reference(*arrays, 3, 1e-5)
    for g, w, t in zip(got[1:], want[1:], trainable):
        if t:
            np.testing.assert_allclose(g.numpy(), w, atol=1e-4, rtol=1e-4)
        else:
            assert g is None


def test_group_norm_takes_a_strided_gradient():
    require_cpu_ops()
    arrays = inputs((2, 6, 4, 8))
    x, w, b = (paddle.to_tensor(a, stop_gradient=False) for a in arrays[:3])
    ops.cpu_group_norm(x, w, b, 3, 1e-5).transpose([0, 1, 3, 2]).multiply(paddle.to_tensor(
        arrays[3].transpose(0, 1, 3, 2))).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), reference(*arrays, 3, 1e-5)[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad,message", [("float64", "float32"), ("weight", "weight and bias must have 8 elements"),
                                         ("groups", r"groups \(3\) must divide the 8 channels"),
                                         ("1-D", r"the input must be \[N, C, ...\]")])
def test_group_norm_bad_input_is_an_error_not_a_crash(bad, message):
    require_cpu_ops()
    x, w, b, groups = paddle.randn([2, 8, 5]), paddle.ones([8]), paddle.zeros([8]), 4
    if bad == "float64":
        x = x.astype("float64")
    elif bad == "weight":
        w = paddle.ones([7])
    elif bad == "groups":
        groups = 3
    else:
        x = paddle.randn([8])
    with pytest.raises(Exception, match=message):
        ops.cpu_group_norm(x, w, b, groups, 1e-5)


def test_a_resnet_block_has_the_same_outputs_and_gradients(monkeypatch):
    """A U-Net ResnetBlock2D (norm1 and norm2 through the operator) against the stock block, in
    training and in inference, at the size where the operator applies."""
    from ppdiffusers.models.resnet import ResnetBlock2D

    require_cpu_ops()
    paddle.seed(0)
    stock = ResnetBlock2D(in_channels=64, out_channels=96, temb_channels=32, groups=32)
    fast = copy.deepcopy(stock)
    use_fast_layers(fast)
    assert [type(fast.norm1), type(fast.norm2)] == [FastGroupNorm, FastGroupNorm]
    assert fast.state_dict().keys() == stock.state_dict().keys()
    x, temb = paddle.randn([2, 64, 32, 32]) * 2 + 1, paddle.randn([2, 32])
    assert x.size >= fast_layers.MIN_ELEMENTS
    calls = count_calls(monkeypatch, fast_layers, "cpu_group_norm")
    got, want = grads_of(fast, x, temb), grads_of(stock, x, temb)
    assert len(calls) == 2 and got.keys() == want.keys()
    for name in want:  # the convolutions' weight gradients are sums of 2,048 products: float rounding of their size
        atol = 2e-4 * max(1.0, float(np.abs(want[name]).max()) / 10)
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=atol, err_msg=name)
    with paddle.no_grad():  # inference: the operator too
        np.testing.assert_allclose(fast(x, temb).numpy(), stock(x, temb).numpy(), rtol=1e-4, atol=1e-4)
    assert len(calls) == 4


# The operator: weight and bias, NCHW, float32, a large input. The stock forward: no affine
# parameters, channels last, float64, a small input.
@pytest.mark.parametrize("kind,operator_calls", [("operator", 1), ("no affine", 0), ("NHWC", 0), ("float64", 0),
                                                 ("small", 0)])
def test_group_norm_layer_same_function_and_gradients(kind, operator_calls, monkeypatch):
    if operator_calls:
        require_cpu_ops()
    paddle.seed(0)
    shape = [2, 16, 4, 4] if kind == "small" else [2, 16, 64, 64]
    x = paddle.randn(shape) * 3 + 1
    if kind == "no affine":
        stock = paddle.nn.GroupNorm(8, 16, affine=False)
    elif kind == "NHWC":
        stock, x = paddle.nn.GroupNorm(8, 16, data_format="NHWC"), x.transpose([0, 2, 3, 1])
    else:
        stock = paddle.nn.GroupNorm(8, 16, epsilon=1e-6)
    if kind == "float64":
        stock, x = stock.to(dtype="float64"), x.astype("float64")
    fast = copy.deepcopy(stock)
    use_fast_layers(fast)
    assert type(fast) is FastGroupNorm and fast.state_dict().keys() == stock.state_dict().keys()
    calls = count_calls(monkeypatch, fast_layers, "cpu_group_norm")
    assert_same_grads(grads_of(fast, x), grads_of(stock, x), rtol=1e-4, atol=1e-4)
    assert len(calls) == operator_calls
    with paddle.no_grad():  # inference: the same choice
        np.testing.assert_allclose(fast(x).numpy(), stock(x).numpy(), rtol=1e-5, atol=1e-5)
    assert len(calls) == 2 * operator_calls
