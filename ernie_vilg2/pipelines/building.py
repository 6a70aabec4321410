"""A pipeline from the ``model:`` config section: its pretrained parts loaded, the others freshly initialised."""
from __future__ import annotations

from ..models.config import ModelConfig
from ..models.factory import build_denoiser, build_or_load_vae, build_sampler, build_text_encoder_from_config
from ..text.tokenizer import build_tokenizer
from .pipeline_ernie_vilg2 import ErnieViLG2Pipeline


def build_pipeline(cfg: ModelConfig, resolution: int, num_experts: int = 1, tokenizer=None,
                   sampler: str = "ddim", expert_type: str = "full") -> ErnieViLG2Pipeline:
    """An ErnieViLG2Pipeline of ``num_experts`` experts (copies of ``model.unet.pretrained``'s U-Net, else
    freshly initialised; ``expert_type="lora"``: LoRA experts over one), its sampler named by ``sampler``."""
    tokenizer = tokenizer or build_tokenizer(cfg.text_encoder.vocab_file, cfg.text_encoder.max_length)
    return ErnieViLG2Pipeline(
        vae=build_or_load_vae(cfg, resolution),
        text_encoder=build_text_encoder_from_config(cfg, tokenizer),
        tokenizer=tokenizer,
        unet=build_denoiser(cfg, resolution, num_experts, expert_type=expert_type),
        scheduler=build_sampler(sampler, model_cfg=cfg),
    )
