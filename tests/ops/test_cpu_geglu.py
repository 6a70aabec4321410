"""The C++ CPU GEGLU operator (ernie_vilg2/ops/cpu_geglu.cc) against float64, and FastGEGLU on it."""
import copy
import math

import numpy as np
import paddle
import pytest
from ppdiffusers.models.activations import GEGLU

from ernie_vilg2 import ops
from ernie_vilg2.models import fast_layers
from ernie_vilg2.models.fast_layers import FastGEGLU, use_fast_layers

from helpers.cpu_ops import OmpThreads, require_cpu_ops
from helpers.gradients import assert_same_grads, count_calls, grads_of

_erfc = np.frompyfunc(math.erfc, 1, 1)


def reference(hidden, gate, bias, grad_out):
    """(hidden + bias[:D]) * gelu(gate + bias[D:]) and its gradients (hidden, gate, bias) in
    float64 NumPy, the normal CDF from erfc (no cancellation in the negative tail)."""
    hidden, gate, bias, grad_out = (a.astype("float64") for a in (hidden, gate, bias, grad_out))
    d = hidden.shape[-1]
    h, x = hidden + bias[:d], gate + bias[d:]
    cdf = 0.5 * _erfc(-x / math.sqrt(2)).astype("float64")
    density = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    grad_h, grad_g = grad_out * x * cdf, grad_out * h * (cdf + x * density)
    rows = (-1, d)
    return (h * x * cdf, grad_h, grad_g,
            np.concatenate([grad_h.reshape(rows).sum(0), grad_g.reshape(rows).sum(0)]))


def run(arrays, trainable=(True, True, True)):
    tensors = [paddle.to_tensor(a, stop_gradient=not t) for a, t in zip(arrays[:3], trainable)]
    out = ops.cpu_geglu(*tensors)
    (out * paddle.to_tensor(arrays[3])).sum().backward()
    return [out] + [t.grad for t in tensors]


def inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    d = shape[-1]
    return [rng.standard_normal(shape).astype("float32"), (rng.standard_normal(shape) * 3).astype("float32"),
            rng.standard_normal(2 * d).astype("float32"), rng.standard_normal(shape).astype("float32")]


def assert_matches(got, want, rows):
    for name, g, w, atol in zip(("out", "grad hidden", "grad gate", "grad bias"), got, want,
                                (1e-6, 1e-6, 1e-5, 1e-5 * rows**0.5)):
        assert list(g.shape) == list(w.shape), name
        np.testing.assert_allclose(g.numpy(), w, atol=atol, rtol=2e-6, err_msg=name)


# One element; widths that are not a multiple of 16 (vector remainders) and row counts that are
# not a multiple of the 32-row blocks; the 32x32 U-Net's transformer width (spread over the threads).
@pytest.mark.parametrize("shape", [(1, 1), (3, 37, 70), (1001, 5), (2, 9, 33), (4, 130, 512), (2, 517, 64)])
@pytest.mark.parametrize("threads", [1, 3])
def test_geglu_equals_the_reference(shape, threads):
    require_cpu_ops()
    arrays = inputs(shape)
    with OmpThreads(threads):
        got = run(arrays)
    assert_matches(got, reference(*arrays), int(np.prod(shape[:-1])))


def test_geglu_equals_the_reference_across_the_gate_range():
    """Gate values from -12 to 12: each output within a few float roundings of float64 relative
    to itself, also in the negative tail, where 1 + erf(x / sqrt 2) in float cancels to nothing
    (the exponent -x^2 / 2 is rounded, so the relative error grows to a few 1e-6 at -12)."""
    require_cpu_ops()
    gate = np.linspace(-12, 12, 24001, dtype="float32").reshape(1, -1)
    ones, zeros = np.ones_like(gate), np.zeros(2 * gate.shape[-1], "float32")
    got = run([ones, gate, zeros, ones])
    want = reference(ones, gate, zeros, ones)
    bulk = gate >= -8
    for name, g, w in zip(("out", "grad hidden"), got, want):  # both gelu(gate)
        np.testing.assert_allclose(g.numpy(), w, rtol=5e-6, atol=0, err_msg=name)
        np.testing.assert_allclose(g.numpy()[bulk], w[bulk], rtol=1.5e-6, atol=0, err_msg=name)
    np.testing.assert_allclose(got[2].numpy(), want[2], rtol=2e-6, atol=3e-7, err_msg="grad gate")  # crosses zero


def test_geglu_non_finite_gates():
    """NaN stays NaN (never a silent 0 or 1); infinities give what the formula gives."""
    require_cpu_ops()
    gate = np.array([[np.nan, np.inf, -np.inf, 1.0]], "float32")
    out = ops.cpu_geglu(paddle.ones([1, 4]), paddle.to_tensor(gate), paddle.zeros([8])).numpy()
    assert np.isnan(out[0, 0]) and out[0, 1] == np.inf and np.isnan(out[0, 2])
    np.testing.assert_allclose(out[0, 3], 0.5 * (1 + math.erf(1 / math.sqrt(2))), rtol=1e-6)


def test_geglu_sums_do_not_depend_on_the_run():
    """The bias gradient: the threads' partial sums are added in a fixed order."""
    require_cpu_ops()
    arrays = inputs((8, 130, 96))
    with OmpThreads(3):
        first, second = run(arrays), run(arrays)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("trainable", [(True, True, False), (False, True, False), (True, False, True)])
def test_geglu_frozen_inputs_get_no_gradient(trainable):
    require_cpu_ops()
    arrays = inputs((3, 37, 70))
    got, want = run(arrays, trainable), reference(*arrays)
    for g, w, t in zip(got[1:], want[1:], trainable):
        if t:
            np.testing.assert_allclose(g.numpy(), w, atol=1e-4, rtol=1e-5)
        else:
            assert g is None


def test_geglu_takes_strided_inputs_and_gradient():
    require_cpu_ops()
    arrays = inputs((2, 6, 8))
    hidden, gate = (paddle.to_tensor(a.transpose(0, 2, 1).copy(), stop_gradient=False) for a in arrays[:2])
    bias = paddle.to_tensor(arrays[2], stop_gradient=False)
    out = ops.cpu_geglu(hidden.transpose([0, 2, 1]), gate.transpose([0, 2, 1]), bias)
    out.transpose([0, 2, 1]).multiply(paddle.to_tensor(arrays[3].transpose(0, 2, 1))).sum().backward()
    want = reference(*arrays)
    np.testing.assert_allclose(out.numpy(), want[0], atol=1e-6, rtol=2e-6)
    np.testing.assert_allclose(gate.grad.numpy().transpose(0, 2, 1), want[2], atol=1e-5, rtol=2e-6)


def test_geglu_without_grad_saves_nothing_to_backward():
    require_cpu_ops()
    x = paddle.randn([2, 5, 8])
    with paddle.no_grad():
        out = ops.cpu_geglu(x, x, paddle.zeros([16]))
    assert out.stop_gradient and list(out.shape) == [2, 5, 8]


@pytest.mark.parametrize("bad,message", [("float64", "float32"), ("bias", "bias must have 16 elements"),
                                         ("shape", "the same shape")])
def test_geglu_bad_input_is_an_error_not_a_crash(bad, message):
    require_cpu_ops()
    h, g, b = paddle.randn([2, 5, 8]), paddle.randn([2, 5, 8]), paddle.zeros([16])
    if bad == "float64":
        h = h.astype("float64")
    elif bad == "bias":
        b = paddle.zeros([8])
    else:
        g = paddle.randn([2, 5, 9])
    with pytest.raises(Exception, match=message):
        ops.cpu_geglu(h, g, b)


@pytest.mark.parametrize("frozen", [False, True])
def test_fast_geglu_in_a_transformer_block_equals_the_stock(frozen, monkeypatch):
    """A U-Net transformer block whose feed-forward's GEGLU is the fast one (at a size where it
    takes the operator) against the stock block: training, with all parameters trainable or
    frozen (the base U-Net of LoRA experts: the input's gradient only), and inference."""
    from ppdiffusers.models.attention import BasicTransformerBlock

    require_cpu_ops()
    paddle.seed(0)
    stock = BasicTransformerBlock(64, 4, 16, cross_attention_dim=32)
    if frozen:
        for p in stock.parameters():
            p.stop_gradient = True
    fast = copy.deepcopy(stock)
    for layer in fast.sublayers():
        if type(layer) is GEGLU:
            layer.__class__ = FastGEGLU
    x, context = paddle.randn([2, 512, 64]) * 2, paddle.randn([2, 7, 32])
    calls = count_calls(monkeypatch, fast_layers, "cpu_geglu")
    got = grads_of(fast, x, encoder_hidden_states=context)
    want = grads_of(stock, x, encoder_hidden_states=context)
    assert len(calls) == 1 and (len(want) == 2) == frozen
    assert_same_grads(got, want, rtol=1e-4, atol=1e-5)
    with paddle.no_grad():
        np.testing.assert_allclose(fast(x, encoder_hidden_states=context).numpy(),
                                   stock(x, encoder_hidden_states=context).numpy(), rtol=1e-4, atol=1e-5)
    assert len(calls) == 2


@pytest.mark.parametrize("kind", ["small", "float64"])
def test_fast_geglu_elsewhere_takes_paddle_ops(kind, monkeypatch):
    """Outputs under MIN_ELEMENTS and other dtypes: Paddle's ops, the same function (where the
    operator is not built: tests/models/test_fast_layers.py)."""
    paddle.seed(0)
    stock = GEGLU(24, 20)
    x = paddle.randn([3, 37, 24])
    if kind == "float64":
        stock, x = stock.to(dtype="float64"), x.astype("float64")
        monkeypatch.setattr(fast_layers, "MIN_ELEMENTS", 0)
    calls = count_calls(monkeypatch, fast_layers, "cpu_geglu")
    fast = copy.deepcopy(stock)
    use_fast_layers(fast)
    x.stop_gradient = False
    for layer in (fast, stock):
        (layer(x) * 1.5).sum().backward()
    for p, q in zip(fast.parameters(), stock.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast(x).numpy(), stock(x).numpy(), rtol=1e-5, atol=1e-6)
    assert not calls
