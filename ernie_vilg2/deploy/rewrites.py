"""Exact rewrites of two ops before export, so that the programs also run under oneDNN.

Measured on Paddle 3.3.1 (CPU wheel), with the programs' outputs compared to the dynamic graph:

* ``F.interpolate(x, scale_factor=2, mode="nearest")`` (PPDiffusers' ``Upsample2D``) cannot run
  under oneDNN on PIR programs (``ConvertPirAttribute2RuntimeAttribute`` fails on its ``scale``
  attribute). It becomes one ``expand`` of a [N, C, H, 1, W, 1] view to [N, C, H, 2, W, 2]: the
  same copy of every pixel, in one pass.
* The sinusoidal timestep embedding (``Timesteps``) comes out wrong under oneDNN (``cos``/``sin``
  of an elementwise product differ by up to 1.3; ``cos`` of a program input is right), which
  made whole U-Nets 7% wrong. It becomes a lookup in a table of the embeddings of the integer
  timesteps ``0 .. T-1``, computed by PPDiffusers' own ``Timesteps`` at export: the rows are
  those values exactly. The exported U-Nets therefore take integer timesteps in ``[0, T)``
  (float32), which is what DDIM and DPM-Solver++ produce in both runners.

With oneDNN off the rewritten programs still equal the dynamic graph bit for bit (tested);
with oneDNN on they agree to about 1e-6 relative. Only the classes of the instances change:
the parameters and their names stay, so expert weights load into the rewritten U-Net.
"""
from __future__ import annotations

import paddle
from ppdiffusers.models.embeddings import Timesteps
from ppdiffusers.models.resnet import Upsample2D


class _NearestUpsample2D(Upsample2D):
    """``Upsample2D`` with the 2x nearest upsample written as a broadcast copy."""

    def forward(self, hidden_states, output_size=None, scale: float = 1.0):
        if output_size is not None or self.use_conv_transpose or self.data_format != "NCHW":
            return super().forward(hidden_states, output_size, scale)
        height, width = hidden_states.shape[2:]  # fixed by the export; the batch stays dynamic (0, -1)
        hidden_states = hidden_states.reshape([0, 0, height, 1, width, 1]).expand([-1, -1, height, 2, width, 2])
        hidden_states = hidden_states.reshape([0, 0, 2 * height, 2 * width])
        if self.use_conv:
            hidden_states = (self.conv if self.name == "conv" else self.Conv2d_0)(hidden_states)
        return hidden_states


class _TimestepTable(Timesteps):
    """``Timesteps`` as a lookup of precomputed rows (integer timesteps ``0 .. T-1``)."""

    def forward(self, timesteps):
        index = timesteps.cast("int64").clip(0, self.table.shape[0] - 1)
        return paddle.gather(self.table, index)


def rewrite_for_export(model: paddle.nn.Layer, num_train_timesteps: int) -> paddle.nn.Layer:
    """Rewrite ``model``'s upsamplers and timestep embedding in place (see the module doc)."""
    for layer in model.sublayers(include_self=True):
        if type(layer) is Upsample2D:
            layer.__class__ = _NearestUpsample2D
        elif type(layer) is Timesteps:
            with paddle.no_grad():
                table = Timesteps.forward(layer, paddle.arange(num_train_timesteps, dtype="float32"))
            layer.register_buffer("table", table, persistable=False)  # not a weight: not in state_dict
            layer.__class__ = _TimestepTable
    return model
