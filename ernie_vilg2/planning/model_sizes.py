"""Parameters of the configured models, counted without allocating them.

The text encoder, one U-Net and the VAE are built by the project's factory under
:func:`~ernie_vilg2.models.lazy_init.lazy_init` and counted from their shapes, so the counts
are those of the real modules. LoRA experts (``model.expert_type: lora``) add, per expert,
PPDiffusers' ``LoRALinearLayer`` on every target layer of that U-Net, built the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

from ..config import ConfigError
from ..models.lazy_init import lazy_init
from ..training.config import ExperimentConfig
from ..utils.integrity import check_model_folder
from .footprint import count_parameters


@dataclass
class ModelSizes:
    text_encoder: int
    expert: int  # one U-Net: each full expert, or the LoRA experts' shared base
    num_experts: int
    vae: int
    unet: object  # one lazily built U-Net (its structure drives the activation estimate)
    text_config: object  # the ErnieModel config
    latent_size: int
    latent_channels: int
    text_length: int
    expert_type: str  # full or lora
    adapter_set: int  # LoRA experts: one expert's adapters on all target layers; full: 0
    lora_rank: int  # LoRA experts: the adapters' rank; full: 0
    lora_layers: List[str]  # LoRA experts: the U-Net's layers carrying adapters; full: []

    @property
    def lora(self) -> bool:
        return self.expert_type == "lora"

    @property
    def adapters(self) -> int:
        """The adapters of all experts (0 for full experts)."""
        return self.adapter_set * self.num_experts

    @property
    def experts(self) -> int:
        """The whole bank: N U-Nets, or one U-Net and N adapter sets."""
        return self.expert + self.adapters if self.lora else self.expert * self.num_experts

    @property
    def total(self) -> int:
        return self.text_encoder + self.experts + self.vae


def measure_models(cfg: ExperimentConfig) -> ModelSizes:
    """Build the text encoder, one U-Net (with LoRA experts: one expert's adapters too) and the
    VAE of ``cfg`` without allocating; count their parameters."""
    from ..models.factory import build_denoiser, build_vae  # deferred here and below: ppdiffusers, paddle
    from ..text.tokenizer import build_tokenizer

    m = cfg.model
    tokenizer = build_tokenizer(m.text_encoder.vocab_file, m.text_encoder.max_length)
    lora = m.expert_type == "lora"
    with lazy_init():
        text_encoder = _lazy_text_encoder(m, tokenizer)
        unet = build_denoiser(m, cfg.data.resolution, num_experts=1, pretrained_weights=False).experts[0]
        vae = build_vae(m.vae, cfg.data.resolution)
        layers = _lora_layers(unet, m.lora.targets) if lora else []
        adapter_set = sum(_adapter_parameters(unet.get_sublayer(name), m.lora) for name in layers)
    return ModelSizes(
        text_encoder=count_parameters(text_encoder),
        expert=count_parameters(unet),
        num_experts=m.num_experts,
        vae=count_parameters(vae),
        unet=unet,
        text_config=text_encoder.config,
        latent_size=cfg.data.resolution // m.vae.scale_factor,
        latent_channels=m.vae.latent_channels,
        text_length=m.text_encoder.max_length,
        expert_type=m.expert_type,
        adapter_set=adapter_set,
        lora_rank=m.lora.rank if lora else 0,
        lora_layers=layers,
    )


def _lora_layers(unet, targets) -> List[str]:
    """The layers LoRAExperts puts adapters on; a target matching none is an error naming the field."""
    from ..models.lora_experts import find_targets

    try:
        return find_targets(unet, list(targets))
    except ValueError as exc:
        raise ConfigError("model.lora.targets", str(exc).removeprefix("targets: ")) from None


def _adapter_parameters(layer, lora_cfg) -> int:
    """One expert's adapter on ``layer`` (a linear layer, weight ``[in, out]``), as LoRAExperts builds it."""
    from ppdiffusers.models.lora import LoRALinearLayer

    in_features, out_features = layer.weight.shape
    return count_parameters(LoRALinearLayer(in_features, out_features, lora_cfg.rank, lora_cfg.alpha))


def _lazy_text_encoder(model_cfg, tokenizer):
    """The configured ERNIE; a pretrained folder is built from its config.json (weights unread)."""
    from ..models.factory import build_text_encoder_from_config

    pretrained = model_cfg.text_encoder.pretrained
    if not pretrained:
        return build_text_encoder_from_config(model_cfg, tokenizer)
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    if not os.path.isfile(os.path.join(pretrained, "config.json")):  # never a model-hub name
        raise FileNotFoundError(f"model.text_encoder.pretrained: no config.json in {pretrained}")
    check_model_folder(pretrained)  # a damaged file: one line naming it, as when training loads it
    config = ErnieConfig.from_pretrained(pretrained)
    config.vocab_size = max(config.vocab_size, len(tokenizer))  # build_text_encoder grows it so
    return ErnieModel(config)
