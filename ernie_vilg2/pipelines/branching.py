"""Stage 2 initialisation: branch a stage-1 (single U-Net) pipeline into N experts (full
copies or LoRA adapters), and the reverse step for LoRA experts: merge them into full ones."""
from __future__ import annotations

import os
from typing import Dict, Optional

from ..models.expert_bank import MixtureOfDenoisingExperts
from ..models.lora_experts import LoRAExperts
from ..models.routing import resolve_boundaries
from ..utils.io import atomic_directory
from .loading import load_pipeline


def branch_pipeline(pipe, num_experts: int, expert_boundaries="uniform", lora: Optional[Dict] = None):
    """A new pipeline whose denoiser holds ``num_experts`` copies of ``pipe``'s one U-Net, or
    with ``lora`` (LoRAExperts' ``lora_rank``, ``lora_alpha``, ``lora_targets``) one copy and an
    adapter set per expert.

    ``expert_boundaries`` (``uniform``, ``snr`` over ``pipe``'s noise schedule, or ``N - 1``
    timesteps) is where the experts switch (:mod:`ernie_vilg2.models.routing`). The VAE, text
    encoder, tokenizer and scheduler are shared with ``pipe`` (same objects), so only the
    experts cost new memory. ``pipe`` itself is not changed.
    """
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive integer, got {num_experts!r}")
    unet = pipe.unet
    if not isinstance(unet, MixtureOfDenoisingExperts):
        raise TypeError(f"unet: expected a MixtureOfDenoisingExperts, got {type(unet).__name__}")
    if unet.num_experts != 1:
        raise ValueError(
            f"unet: can only branch a stage-1 model with 1 expert, this one has {unet.num_experts}"
        )
    boundaries = None
    if expert_boundaries != "uniform":
        steps = unet.config.num_train_timesteps
        try:
            boundaries = resolve_boundaries(expert_boundaries, num_experts, steps,
                                            pipe.scheduler.alphas_cumprod.numpy().tolist())
        except ValueError as exc:
            raise ValueError(f"expert_boundaries: {exc}") from None
    if lora is None:
        branched = MixtureOfDenoisingExperts.branch(unet, num_experts, expert_boundaries=boundaries)
    else:
        branched = LoRAExperts.from_unet(unet.experts[0], num_experts, unet.config.num_train_timesteps, boundaries,
                                         **lora)
    branched.train(unet.training)
    return type(pipe)(**{**pipe.components, "unet": branched})


def branch_pipeline_folder(model_dir: str, num_experts: int, out_dir: str, overwrite: bool = False,
                           expert_boundaries="uniform", lora: Optional[Dict] = None) -> str:
    """Load the stage-1 pipeline in ``model_dir``, branch it and save it to ``out_dir``.

    The folder is written atomically (a temporary folder beside ``out_dir`` renamed
    at the end), so an interrupted run never leaves a half-written model.
    """
    if os.path.abspath(model_dir) == os.path.abspath(out_dir):
        raise ValueError(f"out_dir must differ from model_dir ({model_dir}): the stage-1 model is kept")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"out_dir already exists: {out_dir} (use overwrite to replace it)")
    pipe = load_pipeline(model_dir)
    branched = branch_pipeline(pipe, num_experts, expert_boundaries, lora)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        branched.save_pretrained(str(tmp))
    return out_dir


def merge_lora_pipeline(pipe):
    """``pipe`` with its LoRA experts merged into full ones (:meth:`LoRAExperts.merge`); a
    pipeline of full experts is returned as it is. The other components are shared."""
    if not isinstance(pipe.unet, LoRAExperts):
        return pipe
    return type(pipe)(**{**pipe.components, "unet": pipe.unet.merge()})


def merge_lora_folder(model_dir: str, out_dir: str, overwrite: bool = False) -> str:
    """Load the LoRA-expert pipeline in ``model_dir``, merge its experts and save the pipeline of
    full experts to ``out_dir`` (atomically, as :func:`branch_pipeline_folder`)."""
    if os.path.abspath(model_dir) == os.path.abspath(out_dir):
        raise ValueError(f"out_dir must differ from model_dir ({model_dir}): the LoRA model is kept")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"out_dir already exists: {out_dir} (use overwrite to replace it)")
    pipe = load_pipeline(model_dir)
    if not isinstance(pipe.unet, LoRAExperts):
        raise ValueError(f"{model_dir}: its experts are full U-Nets already ({type(pipe.unet).__name__}), "
                         "nothing to merge")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        merge_lora_pipeline(pipe).save_pretrained(str(tmp))
    return out_dir
