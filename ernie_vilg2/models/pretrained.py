"""Load a pretrained U-Net or VAE from a local folder, PPDiffusers or diffusers format.

PPDiffusers reads both: ``from_pretrained(..., from_diffusers=True)`` converts diffusers'
PyTorch layout (linear weights transposed). Its ``from_pretrained`` picks the weights file
itself and falls back to pickle files (``diffusion_pytorch_model.bin``, ``model_state.pdparams``)
when it finds no safetensors of the name it tries first; so the file is chosen here
(:func:`~.pretrained_folder.weight_files`: safetensors only) and handed to PPDiffusers' loader
of a resolved file list, which converts the layout and reports missing and unexpected weights.
"""
from __future__ import annotations

import os

from ppdiffusers import AutoencoderKL, UNet2DConditionModel

from ..utils.integrity import DamagedFileError
from .pretrained_folder import component_folder, weight_files


def _load(cls, path: str, component: str):
    found = weight_files(path, component)
    config = cls.load_config(found.folder)
    model = cls.from_config(config)
    try:
        # PPDiffusers 0.29's loader of resolved files (from_pretrained's second half).
        model, missing, unexpected, _, _ = cls._load_pretrained_model(
            model, list(found.files), found.folder, from_diffusers=found.pytorch_layout)
    except RuntimeError as exc:  # size mismatches: the weights are not of config.json's architecture
        detail = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise DamagedFileError(found.files[0], f"does not fit config.json's architecture ({detail})") from None
    where = found.files[0] if len(found.files) == 1 else found.folder
    if missing:
        raise DamagedFileError(where, f"lacks {len(missing)} weights of config.json's architecture, e.g. {missing[0]}")
    if unexpected:
        raise DamagedFileError(where, f"has {len(unexpected)} weights config.json's architecture lacks, "
                                      f"e.g. {unexpected[0]}")
    model.register_to_config(_name_or_path=os.path.abspath(found.folder))
    model.eval()
    return model


def load_pretrained_unet(path: str) -> UNet2DConditionModel:
    """The U-Net of a pipeline folder (``unet/``) or of a U-Net folder."""
    return _load(UNet2DConditionModel, path, "unet")


def load_pretrained_vae(path: str) -> AutoencoderKL:
    """The VAE of a pipeline folder (``vae/``) or of a VAE folder, with its scaling factor."""
    return _load(AutoencoderKL, path, "vae")


def pretrained_unet_kwargs(path: str) -> dict:
    """The keyword config of the folder's U-Net (its architecture; no weights read)."""
    config = UNet2DConditionModel.load_config(component_folder(path, "unet"))
    return UNet2DConditionModel.extract_init_dict(config)[0]
