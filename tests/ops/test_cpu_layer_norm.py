"""The C++ CPU layer-norm operator (ernie_vilg2/ops/cpu_layer_norm.cc) against float64."""
import numpy as np
import paddle
import pytest

from ernie_vilg2 import ops

from helpers.cpu_ops import OmpThreads, require_cpu_ops


def reference(x, weight, bias, grad_out, epsilon):
    """Layer norm over the last axis and its gradients (x, weight, bias) in float64 NumPy."""
    x, weight, bias, grad_out = (a.astype("float64") for a in (x, weight, bias, grad_out))
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + epsilon)
    xhat = (x - mean) * rstd
    g = grad_out * weight
    grad_x = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    rows = (-1, x.shape[-1])
    return (xhat * weight + bias, grad_x, (grad_out * xhat).reshape(rows).sum(0), grad_out.reshape(rows).sum(0))


def run(arrays, epsilon, trainable=(True, True, True)):
    tensors = [paddle.to_tensor(a, stop_gradient=not t) for a, t in zip(arrays[:3], trainable)]
    out = ops.cpu_layer_norm(*tensors, epsilon)
    (out * paddle.to_tensor(arrays[3])).sum().backward()
    return [out] + [t.grad for t in tensors]


def inputs(shape, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    return [(rng.standard_normal(shape) * 2 + offset).astype("float32"), rng.standard_normal(c).astype("float32"),
            rng.standard_normal(c).astype("float32"), rng.standard_normal(shape).astype("float32")]


# One element; widths that are not a multiple of 16 (vector remainders) and row counts that are
# not a multiple of the 32-row blocks; rows far from zero (the variance around the mean);
# the transformer blocks' [8, 256, 128] (spread over the threads).
@pytest.mark.parametrize("shape,offset", [((1, 1), 0.0), ((3, 37, 70), 0.0), ((1001, 5), 0.0), ((2, 9, 33), 300.0),
                                          ((8, 256, 128), 0.0), ((4, 517, 64), 0.0)])
@pytest.mark.parametrize("threads", [1, 3])
def test_layer_norm_equals_the_reference(shape, offset, threads):
    require_cpu_ops()
    arrays = inputs(shape, offset)
    with OmpThreads(threads):
        got = run(arrays, 1e-5)
    want = reference(*arrays, 1e-5)
    rows = int(np.prod(shape[:-1]))
    for name, g, w, atol in zip(("out", "grad x", "grad weight", "grad bias"), got, want,
                                (1e-5, 1e-4, 1e-5 * rows**0.5, 1e-5 * rows**0.5)):
        assert list(g.shape) == list(w.shape), name
        np.testing.assert_allclose(g.numpy(), w, atol=atol, rtol=1e-4, err_msg=name)


def test_layer_norm_row_with_an_outlier_first():
    """The row sums are taken around each row's first value: an outlier there costs no precision."""
    require_cpu_ops()
    arrays = inputs((4, 128))
    arrays[0][:, 0] = [1e3, -1e3, 50.0, 0.0]
    got, want = run(arrays, 1e-5), reference(*arrays, 1e-5)
    for name, g, w in zip(("out", "grad x", "grad weight", "grad bias"), got, want):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-5, rtol=1e-4, err_msg=name)


def test_layer_norm_sums_do_not_depend_on_the_run():
    """dgamma / dbeta: the threads' partial sums are added in a fixed order."""
    require_cpu_ops()
    arrays = inputs((8, 256, 128))
    with OmpThreads(3):
        first, second = run(arrays, 1e-6), run(arrays, 1e-6)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("trainable", [(True, False, False), (False, True, True), (True, True, False)])
def test_layer_norm_frozen_inputs_get_no_gradient(trainable):
    require_cpu_ops()
    arrays = inputs((3, 37, 70))
    got = run(arrays, 1e-5, trainable)
    want = reference(*arrays, 1e-5)
    for g, w, t in zip(got[1:], want[1:], trainable):
        if t:
            np.testing.assert_allclose(g.numpy(), w, atol=1e-4, rtol=1e-4)
        else:
            assert g is None


def test_layer_norm_takes_a_strided_gradient():
    require_cpu_ops()
    arrays = inputs((2, 6, 8))
    x, w, b = (paddle.to_tensor(a, stop_gradient=False) for a in arrays[:3])
    ops.cpu_layer_norm(x, w, b, 1e-5).transpose([0, 2, 1]).multiply(paddle.to_tensor(
        arrays[3].transpose(0, 2, 1))).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), reference(*arrays, 1e-5)[1], atol=1e-4, rtol=1e-4)


def test_layer_norm_without_grad_saves_nothing_to_backward():
    require_cpu_ops()
    x = paddle.randn([2, 5, 8])
    with paddle.no_grad():
        out = ops.cpu_layer_norm(x, paddle.ones([8]), paddle.zeros([8]), 1e-5)
    assert out.stop_gradient and list(out.shape) == [2, 5, 8]


@pytest.mark.parametrize("bad,message", [("float64", "float32"), ("weight", "weight and bias must have 8 elements")])
def test_layer_norm_bad_input_is_an_error_not_a_crash(bad, message):
    require_cpu_ops()
    x, w, b = paddle.randn([2, 5, 8]), paddle.ones([8]), paddle.zeros([8])
    if bad == "float64":
        x = x.astype("float64")
    else:
        w = paddle.ones([7])
    with pytest.raises(Exception, match=message):
        ops.cpu_layer_norm(x, w, b, 1e-5)
