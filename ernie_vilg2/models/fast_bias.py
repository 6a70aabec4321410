"""Linear and convolution layers whose bias costs less on CPU.

Two of Paddle's CPU kernels are slow around a bias (measured on the 2-core CI CPU, 1 thread):
- the backward of a broadcast add sums the gradient over the broadcast axes with a column
  reduction: 20 ms for the bias of a [8, 1024, 512] linear output, where the same sum as
  ``ones[1, 8192] @ grad[8192, 512]`` (MKL) takes 0.4 ms;
- the add of a convolution's bias reshaped to [1, C, 1, 1] (what ``F.conv2d`` does) takes
  3.1 ms on [8, 64, 32, 32], the same add with the bias as [C, 1, 1] 0.2 ms.
:func:`use_fast_bias` gives a U-Net's linear and convolution layers (PPDiffusers'
``LoRACompatibleLinear`` / ``LoRACompatibleConv``) subclasses that compute the layer without
its bias and add it themselves: through :class:`_BiasAdd` (its backward is the matrix
product) when training, and convolutions with the [C, 1, 1] bias always. Same parameters and
state dict, the same function; static graphs (export) and small outputs take the stock forward.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer
from ppdiffusers.models.lora import LoRACompatibleConv, LoRACompatibleLinear

# Outputs smaller than this (elements) keep the stock forward: the PyLayer's call costs more.
MIN_ELEMENTS = 1 << 16


def _add_bias(x, bias, axis):
    # Channels last: the bias as it is; NCHW: [C, 1, 1] (see the module docstring).
    return x + (bias if axis == -1 else bias.reshape([-1] + [1] * (x.ndim - 2)))


class _BiasAdd(PyLayer):
    """x + bias along ``axis`` (-1: channels last, 1: NCHW); the bias gradient by matmul."""

    @staticmethod
    def forward(ctx, x, bias, axis):
        ctx.axis = axis
        return _add_bias(x, bias, axis)

    @staticmethod
    def backward(ctx, grad):
        channels = grad.shape[ctx.axis]
        if ctx.axis == -1:  # [..., C]: ones[1, M] @ grad[M, C]
            rows = grad.reshape([-1, channels])
            grad_bias = paddle.matmul(paddle.ones([1, rows.shape[0]], grad.dtype), rows)
        else:  # [B, C, H, W]: grad[B*C, HW] @ ones[HW, 1], then the batch
            rows = grad.reshape([grad.shape[0] * channels, -1])
            grad_bias = paddle.matmul(rows, paddle.ones([rows.shape[1], 1], grad.dtype))
            grad_bias = grad_bias.reshape([grad.shape[0], channels]).sum(axis=0)
        return grad, grad_bias.reshape([channels])


def _bias_add(x, bias, axis):
    training = paddle.is_grad_enabled() and not (x.stop_gradient and bias.stop_gradient)
    return _BiasAdd.apply(x, bias, axis) if training else _add_bias(x, bias, axis)


def _applies(layer, x, out_elements) -> bool:
    return (layer.lora_layer is None and layer.bias is not None and paddle.in_dynamic_mode()
            and x.place.is_cpu_place() and out_elements >= MIN_ELEMENTS)


class FastBiasLinear(LoRACompatibleLinear):
    def forward(self, hidden_states, scale: float = 1.0):
        # Inference keeps F.linear: its fused bias add is as fast as the separate one.
        out_elements = hidden_states.size // max(1, hidden_states.shape[-1]) * self.weight.shape[1]
        if not (_applies(self, hidden_states, out_elements) and paddle.is_grad_enabled()):
            return super().forward(hidden_states, scale)
        return _bias_add(F.linear(hidden_states, self.weight), self.bias, -1)


class FastBiasConv(LoRACompatibleConv):
    def forward(self, hidden_states, scale: float = 1.0):
        out_elements = hidden_states.size // max(1, hidden_states.shape[1]) * self.weight.shape[0]
        if not (_applies(self, hidden_states, out_elements) and self.data_format == "NCHW"):
            return super().forward(hidden_states, scale)
        out = F.conv2d(hidden_states, self.weight, None, self._stride, self._padding, self._dilation,
                       self._groups, data_format=self.data_format)
        return _bias_add(out, self.bias, 1)


def use_fast_bias(model: paddle.nn.Layer) -> None:
    """Switch ``model``'s LoRACompatibleLinear / LoRACompatibleConv layers to the subclasses
    above, in place (their class only: parameters, buffers and state dict stay)."""
    for layer in model.sublayers(include_self=True):
        if type(layer) is LoRACompatibleLinear:
            layer.__class__ = FastBiasLinear
        elif type(layer) is LoRACompatibleConv:
            layer.__class__ = FastBiasConv
