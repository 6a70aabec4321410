"""The exported programs: the layers whose ``forward`` is a program's signature, their static
graphs, and how each is saved (``inference.json`` + ``inference.pdiparams``, ``paddle.jit.save``)."""
from __future__ import annotations

import os
from typing import Dict

from ..models.text_encoder import encode_text
from ..utils.io import DiskFullError
from .cpu_ops import save_with_operators
from .program_info import read_program_info

PROGRAM = "inference"  # paddle.jit.save prefix: inference.json + inference.pdiparams


def save_program(static_layer, root: str, folder: str, with_cpu_ops=None) -> Dict[str, str]:
    """Save a program to ``root/folder``, and ``with_cpu_ops`` (the same layer's second static
    function), if given, traced with the C++ CPU operators (:mod:`.cpu_ops`); return the
    manifest entry (paths relative to root).

    Paddle's writer does not report a full disk (it leaves a short ``.pdiparams``), so the
    file must hold at least the values of the parameters its program lists."""
    _write_program(static_layer, os.path.join(root, folder, PROGRAM))
    entry = {"model": f"{folder}/{PROGRAM}.json", "params": f"{folder}/{PROGRAM}.pdiparams"}
    if with_cpu_ops:
        entry.update(save_with_operators(with_cpu_ops, root, folder, PROGRAM, _write_program))
    return entry


def _write_program(static_layer, prefix: str) -> None:
    import paddle

    paddle.jit.save(static_layer, prefix)
    weights = read_program_info(prefix + ".json").parameter_bytes
    if os.path.getsize(prefix + ".pdiparams") < weights:
        raise DiskFullError(prefix + ".pdiparams", needed=weights)


def static_program(layer, specs):
    import paddle

    layer.eval()
    return paddle.jit.to_static(layer, input_spec=specs, full_graph=True)


def program_layers():
    """Layers whose ``forward`` is exactly the program's signature (inputs named as in the contract)."""
    import paddle

    class TextEncoderProgram(paddle.nn.Layer):
        def __init__(self, text_encoder):
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, input_ids):
            return encode_text(self.text_encoder, input_ids)

    class ExpertProgram(paddle.nn.Layer):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states).sample

    class VAEDecoderProgram(paddle.nn.Layer):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latents):
            return self.vae.decode(latents).sample

    return TextEncoderProgram, ExpertProgram, VAEDecoderProgram
