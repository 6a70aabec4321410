"""Comparing a fast layer with the stock one: outputs and gradients, and calls of an operator."""
import numpy as np
import paddle


def grads_of(layer, x, *args, **kwargs):
    """The output and the gradients of x and of every parameter (by name) for a fixed weighting
    of the output; ``layer(x, *args, **kwargs)``."""
    x = x.detach()
    x.stop_gradient = False
    out = layer(x, *args, **kwargs)
    weights = paddle.to_tensor(np.random.default_rng(1).standard_normal(out.shape).astype("float32"))
    (out * weights).sum().backward()
    grads = {"out": out.numpy(), "x": x.grad.numpy()}
    grads.update({name: p.grad.numpy() for name, p in layer.named_parameters() if p.grad is not None})
    layer.clear_gradients()
    return grads


def assert_same_grads(got, want, rtol, atol):
    """Two :func:`grads_of` results: the same entries, each within the tolerances."""
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


def count_calls(monkeypatch, owner, name, replacement=None):
    """Count the calls of ``owner.name`` (a list that grows by one per call); ``replacement``,
    if given, is called instead of it."""
    calls = []
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a: calls.append(1) or (replacement or original)(*a))
    return calls
