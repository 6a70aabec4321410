"""Write a bank of experts for the PyTorch ecosystem: each expert as a diffusers-format U-Net folder.

PPDiffusers does the conversion (``save_pretrained(..., to_diffusers=True)``: linear weights
transposed to PyTorch's layout, ``diffusion_pytorch_model.safetensors``, a ``config.json``
diffusers reads). Layout of the folder::

    experts.json        num_experts, num_train_timesteps and each expert's folder and timesteps [lo, hi)
    expert-00/ ...      config.json + diffusion_pytorch_model.safetensors (diffusers' UNet2DConditionModel)
    vae/                the VAE in the same format (AutoencoderKL), if given
    scheduler/          the sampler's scheduler_config.json, if given

The text encoder (PaddleNLP ERNIE) has no diffusers counterpart and is not written.
"""
from __future__ import annotations

import json
import os

from ..utils.io import atomic_directory
from .expert_bank import MixtureOfDenoisingExperts

EXPERTS_JSON = "experts.json"


def expert_folder_name(expert_id: int) -> str:
    return f"expert-{expert_id:02d}"


def export_to_diffusers(unet: MixtureOfDenoisingExperts, out_dir: str, vae=None, scheduler=None,
                        overwrite: bool = False) -> dict:
    """Write ``unet``'s experts (and ``vae``, ``scheduler``) to ``out_dir`` atomically; return the
    experts.json record."""
    if unet.is_partial:
        raise ValueError(f"unet: this bank holds experts {unet.expert_ids} of {unet.num_experts}; "
                         "the export needs all of them")
    router = unet.router
    record = {
        "num_experts": unet.num_experts,
        "num_train_timesteps": router.num_train_timesteps,
        "experts": [{"folder": expert_folder_name(i), "timesteps": list(router.stage(i))}
                    for i in range(unet.num_experts)],
    }
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for i, expert in enumerate(unet.experts):
            expert.save_pretrained(os.path.join(tmp, expert_folder_name(i)), to_diffusers=True,
                                   safe_serialization=True)
        if vae is not None:
            vae.save_pretrained(os.path.join(tmp, "vae"), to_diffusers=True, safe_serialization=True)
        if scheduler is not None:
            scheduler.save_pretrained(os.path.join(tmp, "scheduler"), to_diffusers=True)
        with open(os.path.join(tmp, EXPERTS_JSON), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    return record
