"""Outputs and gradients of a layer, to compare a fast layer with the stock one."""
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
