"""The models a diffusion stage starts from when no earlier stage of the run made them: those
the config describes, each pretrained (``model.*.pretrained``) or fresh."""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import paddle

from ..config import ConfigError, to_dict
from ..models.factory import build_denoiser, build_text_encoder_from_config, load_vae
from ..models.pretrained_folder import schedule_differences
from ..models.text_encoder import context_width
from ..text.tokenizer import build_tokenizer
from .config import ExperimentConfig

logger = logging.getLogger(__name__)


def models_from_config(cfg: ExperimentConfig, stage: str, vae_dir: str, num_experts: int,
                       expert_ids: Optional[Sequence[int]] = None):
    """(vae, text_encoder, tokenizer, unet) of ``stage``: the VAE from ``vae_dir`` (the pretrained
    one or the vae stage's), the text encoder and a bank of ``num_experts`` experts (``expert_ids``
    of them) from the config. A projection between the text encoder and the U-Net made here is
    new, so the stage must train the text side. A noise schedule other than the pretrained
    pipeline folder's is warned of (fine-tuning may change it on purpose)."""
    unet_folder = cfg.model.unet.pretrained
    differences = schedule_differences(unet_folder, to_dict(cfg.model)) if unet_folder else []
    if differences:
        logger.warning("the noise schedule differs from the pretrained model's (%s): %s",
                       os.path.join(unet_folder, "scheduler"), "; ".join(differences))
    paddle.seed(cfg.train.seed)
    vae = load_vae(cfg.model, vae_dir)
    tokenizer = build_tokenizer(cfg.model.text_encoder.vocab_file, cfg.model.text_encoder.max_length)
    text_encoder = build_text_encoder_from_config(cfg.model, tokenizer)
    if hasattr(text_encoder, "context_projection") and not getattr(cfg.train, stage).train_text_encoder:
        raise ConfigError(f"train.{stage}.train_text_encoder",
                          f"must be true: the projection of the text encoder's states to the U-Net's context "
                          f"({context_width(text_encoder)} wide) is new in this stage and trains with the text side")
    unet = build_denoiser(cfg.model, cfg.data.resolution, num_experts=num_experts, expert_ids=expert_ids,
                          expert_type=cfg.model.expert_type if stage == "experts" else "full")
    return vae, text_encoder, tokenizer, unet
