"""``model:`` section of the config: sizes of the text encoder, the experts and the VAE."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

from ..config import ConfigError, check
from .routing import BOUNDARY_RULES, check_boundaries, resolve_boundaries

_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D", "SimpleCrossAttnDownBlock2D")
_UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D", "SimpleCrossAttnUpBlock2D")


@dataclass
class TextEncoderConfig:
    pretrained: Optional[str] = None  # local ErnieModel folder; None = build from the sizes below
    vocab_file: Optional[str] = None  # None = the 21,128-entry Chinese BERT vocab (cn_clip wheel)
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 128
    max_length: int = 32  # tokens per prompt, [CLS]/[SEP] included; longer prompts are truncated

    def __post_init__(self):
        check(self.hidden_size > 0, "model.text_encoder.hidden_size", "must be positive")
        check(
            self.hidden_size % max(self.num_attention_heads, 1) == 0 and self.num_attention_heads > 0,
            "model.text_encoder.num_attention_heads",
            f"must be positive and divide hidden_size ({self.hidden_size})",
        )
        check(self.num_hidden_layers > 0, "model.text_encoder.num_hidden_layers", "must be positive")
        check(self.max_length >= 4, "model.text_encoder.max_length", "must be at least 4")


@dataclass
class UNetConfig:
    """Per-expert UNet2DConditionModel sizes (SD-style cross-attention blocks by default)."""

    block_out_channels: List[int] = field(default_factory=lambda: [32, 64])
    down_block_types: List[str] = field(default_factory=lambda: ["CrossAttnDownBlock2D", "DownBlock2D"])
    up_block_types: List[str] = field(default_factory=lambda: ["UpBlock2D", "CrossAttnUpBlock2D"])
    layers_per_block: int = 1
    attention_head_dim: int = 4
    norm_num_groups: int = 8

    def __post_init__(self):
        n = len(self.block_out_channels)
        check(n >= 1 and all(c > 0 for c in self.block_out_channels), "model.unet.block_out_channels",
              "must be a non-empty list of positive ints")
        check(len(self.down_block_types) == n, "model.unet.down_block_types", f"needs {n} entries")
        check(len(self.up_block_types) == n, "model.unet.up_block_types", f"needs {n} entries")
        for i, b in enumerate(self.down_block_types):
            check(b in _DOWN_BLOCKS, f"model.unet.down_block_types[{i}]", f"unknown block {b!r}; use {_DOWN_BLOCKS}")
        for i, b in enumerate(self.up_block_types):
            check(b in _UP_BLOCKS, f"model.unet.up_block_types[{i}]", f"unknown block {b!r}; use {_UP_BLOCKS}")
        check(all(c % self.norm_num_groups == 0 for c in self.block_out_channels), "model.unet.norm_num_groups",
              "must divide every entry of block_out_channels")


@dataclass
class VAEConfig:
    block_out_channels: List[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8

    def __post_init__(self):
        check(len(self.block_out_channels) >= 1, "model.vae.block_out_channels", "must not be empty")
        check(all(c % self.norm_num_groups == 0 for c in self.block_out_channels), "model.vae.norm_num_groups",
              "must divide every entry of block_out_channels")
        check(self.latent_channels > 0, "model.vae.latent_channels", "must be positive")

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class ModelConfig:
    num_experts: int = 1  # experts of stage 2; stage 1 always trains one U-Net
    num_train_timesteps: int = 1000
    # where the experts switch: uniform (the paper), snr (equal shares of log-SNR) or N-1 timesteps
    expert_boundaries: Union[str, List[int]] = "uniform"
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)

    def __post_init__(self):
        check(self.num_experts >= 1, "model.num_experts", "must be >= 1")
        check(self.num_train_timesteps >= 1, "model.num_train_timesteps", "must be >= 1")
        check(self.num_train_timesteps >= self.num_experts, "model.num_experts",
              f"must be <= num_train_timesteps ({self.num_train_timesteps}), got {self.num_experts}")
        if isinstance(self.expert_boundaries, str):
            check(self.expert_boundaries in BOUNDARY_RULES, "model.expert_boundaries",
                  f"must be one of {BOUNDARY_RULES} or a list of {self.num_experts - 1} timesteps, "
                  f"got {self.expert_boundaries!r}")
            check(self.expert_boundaries != "uniform" or self.num_train_timesteps % self.num_experts == 0,
                  "model.num_experts", f"must divide num_train_timesteps ({self.num_train_timesteps}) into equal "
                                       f"stages (model.expert_boundaries: uniform), got {self.num_experts}")
        else:
            try:
                check_boundaries(self.expert_boundaries, self.num_experts, self.num_train_timesteps)
            except ValueError as exc:
                raise ConfigError("model.expert_boundaries", str(exc)) from None
        check(self.beta_schedule in ("linear", "scaled_linear"), "model.beta_schedule",
              "must be 'linear' or 'scaled_linear'")
        check(0 < self.beta_start < self.beta_end < 1, "model.beta_end", "need 0 < beta_start < beta_end < 1")
        check(self.prediction_type in ("epsilon", "v_prediction"), "model.prediction_type",
              "must be 'epsilon' or 'v_prediction'")

    def boundaries(self, alphas_cumprod=None) -> List[int]:
        """The N-1 timesteps where the experts switch; ``snr`` needs the training schedule's
        ``alphas_cumprod`` (``build_noise_scheduler(cfg).alphas_cumprod``)."""
        try:
            return resolve_boundaries(self.expert_boundaries, self.num_experts, self.num_train_timesteps,
                                      None if alphas_cumprod is None else [float(a) for a in alphas_cumprod])
        except ValueError as exc:
            raise ConfigError("model.expert_boundaries", str(exc)) from None
