"""Linear, convolution, GEGLU, layer-norm and group-norm layers that cost less on CPU.

Convolutions: Paddle's CPU conv2d is im2col + GEMM; where the project's C++ operators are built
(:mod:`ernie_vilg2.ops`), a float32 NCHW convolution with zero padding runs oneDNN's direct
convolution instead (the library inside Paddle's wheel), bias included, forward and backward:
the same function within float rounding, in less time.

Layer norms: where the operators are built, a training ``LayerNorm`` with weight and bias over
the last dimension (the transformer blocks' norm1/norm2/norm3) of a float32 CPU input runs the
C++ layer-norm operator, forward and backward: Paddle's CPU layer-norm backward is several
times slower.

Group norms: where the operators are built, a ``GroupNorm`` with weight and bias of a float32
NCHW CPU input (ResnetBlock2D's norm1/norm2, Transformer2DModel's norm, conv_norm_out, the
VAE's) runs the C++ group-norm operator, forward and backward, in training and inference:
Paddle's CPU group norm is slower in both.

Biases: two of Paddle's CPU kernels are slow around a bias:
- the backward of a broadcast add sums the gradient over the broadcast axes with a column
  reduction, where the same sum as the matrix product ``ones[1, M] @ grad[M, C]`` (MKL) costs
  a small part of it;
- the add of a convolution's bias reshaped to [1, C, 1, 1] (what ``F.conv2d`` does) is much
  slower than the same add with the bias as [C, 1, 1].
:func:`use_fast_layers` gives a U-Net's linear and convolution layers (PPDiffusers'
``LoRACompatibleLinear`` / ``LoRACompatibleConv``, Paddle's ``Conv2D``) subclasses:
convolutions take the operator, or else compute the layer without its bias and add it
themselves, as linear layers do when training, through :class:`_BiasAdd` (its backward is the
matrix product). GEGLU (the feed-forward's gate) computes its two halves with two products
instead of splitting one (the split copies), and the C++ GEGLU operator adds their biases and
applies the gate, forward and backward. Same parameters and state dict, the same
function; static graphs and small outputs take the stock forward, except that the convolutions,
group norms and GEGLUs of a program traced inside :func:`ernie_vilg2.ops.into_programs` call the
operators. The measurements:
docs/performance.md.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer
from ppdiffusers.models.activations import GEGLU
from ppdiffusers.models.lora import LoRACompatibleConv, LoRACompatibleLinear

from ..ops import cpu_conv2d, cpu_geglu, cpu_group_norm, cpu_layer_norm, operators_apply

# Outputs smaller than this (elements) keep the stock forward: the PyLayer's call costs more.
MIN_ELEMENTS = 1 << 16
# The norm operators: from this size they beat Paddle's kernels (training; the group norm's
# forward too; docs/performance.md).
NORM_MIN_ELEMENTS = 1 << 12


def _add_bias(x, bias, axis):
    # Channels last: the bias as it is; NCHW: [C, 1, 1] (see the module docstring).
    return x + (bias if axis == -1 else bias.reshape([-1] + [1] * (x.ndim - 2)))


class _BiasAdd(PyLayer):
    """x + bias along ``axis`` (-1: channels last, 1: NCHW); the bias gradient by matmul."""

    @staticmethod
    def forward(ctx, x, bias, axis):
        ctx.axis = axis
        ctx.x_frozen = x.stop_gradient  # a PyLayer returns None for an input that takes no gradient
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
        return None if ctx.x_frozen else grad, grad_bias.reshape([channels])


def _bias_add(x, bias, axis):
    # A frozen bias (e.g. the base U-Net of LoRA experts) needs no bias gradient: the plain add.
    training = paddle.is_grad_enabled() and not bias.stop_gradient
    return _BiasAdd.apply(x, bias, axis) if training else _add_bias(x, bias, axis)


def _plain(layer) -> bool:
    return getattr(layer, "lora_layer", None) is None and layer.bias is not None


def _on_cpu(layer, x) -> bool:
    return _plain(layer) and paddle.in_dynamic_mode() and x.place.is_cpu_place()


def _applies(layer, x, out_elements) -> bool:
    return _on_cpu(layer, x) and out_elements >= MIN_ELEMENTS


def _conv_padding(layer):
    """[pad_h, pad_w] of a convolution the operator computes (zero padding, the same on both
    sides, groups 1, NCHW, float32); None otherwise."""
    padding = layer._padding
    if isinstance(padding, int):
        padding = [padding, padding]
    if not (isinstance(padding, (list, tuple)) and len(padding) == 2 and all(isinstance(p, int) for p in padding)):
        return None
    if layer._padding_mode != "zeros" or layer._groups != 1 or layer._data_format != "NCHW" or \
            layer.weight.dtype != paddle.float32:
        return None
    return list(padding)


def _linear(x, weight, bias):
    # Inference keeps F.linear: its fused bias add is as fast as the separate one.
    if paddle.is_grad_enabled() and x.size // max(1, x.shape[-1]) * weight.shape[1] >= MIN_ELEMENTS:
        return _bias_add(F.linear(x, weight), bias, -1)
    return F.linear(x, weight, bias)


class FastLinear(LoRACompatibleLinear):
    def forward(self, hidden_states, scale: float = 1.0):
        if not _on_cpu(self, hidden_states):
            return super().forward(hidden_states, scale)
        return _linear(hidden_states, self.weight, self.bias)


def _geglu_by_operator(x, weight, half) -> bool:
    if x.dtype != paddle.float32 or weight.dtype != paddle.float32:
        return False
    # A program's batch is open: there the operator whatever the size.
    return not paddle.in_dynamic_mode() or x.size // max(1, x.shape[-1]) * half >= MIN_ELEMENTS


class FastGEGLU(GEGLU):
    """GEGLU with its two halves from two products instead of one product split in two: the
    split copies both halves. Float32 outputs from MIN_ELEMENTS (training and inference; any
    size in a program traced with the operators) take the products without the bias, and the C++
    operator adds it and applies the gate in one pass each way (Paddle's bias adds, GELU and
    product are a pass each)."""

    def forward(self, hidden_states, scale: float = 1.0):
        # operators_apply: also a program traced with the operators (the exporter's)
        if not (_plain(self.proj) and operators_apply(hidden_states)):
            return super().forward(hidden_states, scale)
        half = self.proj.weight.shape[1] // 2
        weight, bias = self.proj.weight, self.proj.bias
        if not _geglu_by_operator(hidden_states, weight, half):
            if not paddle.in_dynamic_mode():
                return super().forward(hidden_states, scale)
            hidden = _linear(hidden_states, weight[:, :half], bias[:half])
            return hidden * self.gelu(_linear(hidden_states, weight[:, half:], bias[half:]))
        hidden, gate = F.linear(hidden_states, weight[:, :half]), F.linear(hidden_states, weight[:, half:])
        out = cpu_geglu(hidden, gate, bias)
        if out is None:  # the operators are not built: _linear's bias adds
            out = _bias_add(hidden, bias[:half], -1) * self.gelu(_bias_add(gate, bias[half:], -1))
        return out


def _operator_conv(layer, x):
    """The convolution's output from the C++ operator; None where that does not apply."""
    # operators_apply: also a program traced with the operators (the exporter's)
    padding = _conv_padding(layer) if _plain(layer) and operators_apply(x) and x.dtype == paddle.float32 else None
    if padding is None:
        return None
    return cpu_conv2d(x, layer.weight, layer.bias, layer._stride, padding, layer._dilation)


class FastConv(LoRACompatibleConv):
    def forward(self, hidden_states, scale: float = 1.0):
        out = _operator_conv(self, hidden_states)
        if out is not None:
            return out
        out_elements = hidden_states.size // max(1, hidden_states.shape[1]) * self.weight.shape[0]
        if not (_applies(self, hidden_states, out_elements) and self.data_format == "NCHW"):
            return super().forward(hidden_states, scale)
        out = F.conv2d(hidden_states, self.weight, None, self._stride, self._padding, self._dilation,
                       self._groups, data_format=self.data_format)
        return _bias_add(out, self.bias, 1)


class FastConv2D(paddle.nn.Conv2D):
    """A plain ``Conv2D`` (a U-Net's conv_in and conv_out) through the C++ operator."""

    def forward(self, x):
        out = _operator_conv(self, x)
        return super().forward(x) if out is None else out


def _layer_norm_by_operator(layer, x) -> bool:
    """Whether the C++ operator computes this layer norm: training (a gradient to take), weight
    and bias, the last dimension normalised, float32 on CPU, dynamic graph, a large input.
    Inference keeps the stock forward: as fast, without the operator's call overhead."""
    weight, bias = layer.weight, layer.bias
    if weight is None or bias is None or not paddle.in_dynamic_mode() or not paddle.is_grad_enabled():
        return False
    if x.stop_gradient and weight.stop_gradient and bias.stop_gradient:
        return False
    return (x.place.is_cpu_place() and x.dtype == paddle.float32 and weight.dtype == paddle.float32
            and x.ndim >= 1 and layer._normalized_shape == [x.shape[-1]] and x.size >= NORM_MIN_ELEMENTS)


class FastLayerNorm(paddle.nn.LayerNorm):
    """A ``LayerNorm`` through the C++ operator where :func:`_layer_norm_by_operator` says so."""

    def forward(self, input):
        out = None
        if _layer_norm_by_operator(self, input):
            out = cpu_layer_norm(input, self.weight, self.bias, self._epsilon)
        return super().forward(input) if out is None else out


def _group_norm_by_operator(layer, x) -> bool:
    """Whether the C++ operator computes this group norm: weight and bias, channels first
    (NCHW), float32 on CPU, a large input in the dynamic graph or a program traced with the
    operators; training or inference (unlike the layer norm, Paddle's forward is slower too)."""
    weight, bias = layer.weight, layer.bias
    # operators_apply: also a program traced with the operators (the exporter's), whose batch is open
    if weight is None or bias is None or layer._data_format != "NCHW" or not operators_apply(x):
        return False
    return (x.dtype == paddle.float32 and weight.dtype == paddle.float32 and x.ndim >= 3
            and x.shape[1] == layer._num_channels and (not paddle.in_dynamic_mode() or x.size >= NORM_MIN_ELEMENTS))


class FastGroupNorm(paddle.nn.GroupNorm):
    """A ``GroupNorm`` through the C++ operator where :func:`_group_norm_by_operator` says so."""

    def forward(self, input):
        out = None
        if _group_norm_by_operator(self, input):
            out = cpu_group_norm(input, self.weight, self.bias, self._num_groups, self._epsilon)
        return super().forward(input) if out is None else out


def use_fast_layers(model: paddle.nn.Layer) -> None:
    """Switch ``model``'s LoRACompatibleLinear / LoRACompatibleConv / Conv2D / GEGLU / LayerNorm /
    GroupNorm layers to the subclasses above, in place (their class only: parameters, buffers and state dict stay)."""
    for layer in model.sublayers(include_self=True):
        if type(layer) is LoRACompatibleLinear:
            layer.__class__ = FastLinear
        elif type(layer) is GEGLU:
            layer.__class__ = FastGEGLU
        elif type(layer) is LoRACompatibleConv:
            layer.__class__ = FastConv
        elif type(layer) is paddle.nn.Conv2D:
            layer.__class__ = FastConv2D
        elif type(layer) is paddle.nn.LayerNorm:
            layer.__class__ = FastLayerNorm
        elif type(layer) is paddle.nn.GroupNorm:
            layer.__class__ = FastGroupNorm
