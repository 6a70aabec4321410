"""``model:`` section of the config: sizes of the text encoder, the experts and the VAE."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

from ..config import ConfigError, check
from ..utils.integrity import DamagedFileError
from .pretrained_folder import component_config, component_folder
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


def _architecture(cfg, section: str, component: str, defaults: dict) -> None:
    """Fill the architecture fields left out (None): from the pretrained folder's config.json if
    ``cfg.pretrained`` is set, else from ``defaults``. A field given that contradicts the folder
    is an error naming it."""
    if cfg.pretrained is None:
        for name, value in defaults.items():
            if getattr(cfg, name) is None:
                setattr(cfg, name, value)
        return
    try:
        folder = component_folder(cfg.pretrained, component)
        config = component_config(folder, component)
    except DamagedFileError as exc:
        raise ConfigError(f"{section}.pretrained", str(exc)) from None
    expected = _PRETRAINED_CLASSES[component]
    check(config.get("_class_name", expected) == expected, f"{section}.pretrained",
          f"{folder}/config.json is a {config.get('_class_name')} config, expected {expected}")
    for name in defaults:
        found = config.get(name)
        given = getattr(cfg, name)
        if given is None:
            setattr(cfg, name, list(found) if isinstance(found, (list, tuple)) else found)
        elif _plain(given) != _plain(found):
            raise ConfigError(f"{section}.{name}", f"{given!r} contradicts the pretrained {component}'s {found!r} "
                                                   f"({folder}/config.json): leave it out to take the folder's")


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


_PRETRAINED_CLASSES = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}


@dataclass
class UNetConfig:
    """Per-expert UNet2DConditionModel sizes (SD-style cross-attention blocks by default).

    ``pretrained``: a local U-Net folder or a pipeline folder with ``unet/`` (diffusers or
    PPDiffusers format, safetensors): the architecture and weights are the folder's; the
    fields below may then be left out (null), and one given must agree with the folder.
    """

    pretrained: Optional[str] = None
    block_out_channels: Optional[List[int]] = None  # null: [32, 64]
    down_block_types: Optional[List[str]] = None  # null: [CrossAttnDownBlock2D, DownBlock2D]
    up_block_types: Optional[List[str]] = None  # null: [UpBlock2D, CrossAttnUpBlock2D]
    layers_per_block: Optional[int] = None  # null: 1
    attention_head_dim: Optional[Union[int, List[int]]] = None  # null: 4
    norm_num_groups: Optional[int] = None  # null: 8
    # Width of the text context the U-Net attends to; null: the text encoder's hidden size (or the
    # pretrained folder's). Where the two differ, a learned projection sits between them.
    cross_attention_dim: Optional[int] = None

    def __post_init__(self):
        _architecture(self, "model.unet", "unet", dict(
            block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=4,
            norm_num_groups=8, cross_attention_dim=None))
        if self.pretrained is not None:
            return  # PPDiffusers builds what the folder describes
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
        check(self.cross_attention_dim is None or self.cross_attention_dim > 0, "model.unet.cross_attention_dim",
              "must be positive or null")


@dataclass
class VAEConfig:
    """The AutoencoderKL's sizes; ``pretrained``: a local VAE folder or a pipeline folder with
    ``vae/`` (as for the U-Net). A pretrained VAE is not trained (the vae stage is skipped) and
    keeps its folder's latent scaling factor."""

    pretrained: Optional[str] = None
    block_out_channels: Optional[List[int]] = None  # null: [32, 64, 64]
    layers_per_block: Optional[int] = None  # null: 1
    latent_channels: Optional[int] = None  # null: 4
    norm_num_groups: Optional[int] = None  # null: 8

    def __post_init__(self):
        _architecture(self, "model.vae", "vae", dict(block_out_channels=[32, 64, 64], layers_per_block=1,
                                                     latent_channels=4, norm_num_groups=8))
        if self.pretrained is not None:
            return
        check(len(self.block_out_channels) >= 1, "model.vae.block_out_channels", "must not be empty")
        check(all(c % self.norm_num_groups == 0 for c in self.block_out_channels), "model.vae.norm_num_groups",
              "must divide every entry of block_out_channels")
        check(self.latent_channels > 0, "model.vae.latent_channels", "must be positive")

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class LoRAConfig:
    """The adapters of LoRA experts (``model.expert_type: lora``)."""

    rank: int = 4
    alpha: Optional[float] = None  # the update is scaled by alpha / rank; null: 1
    # linear layers to adapt: a name or the end of one (diffusers' target_modules rule)
    targets: List[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    def __post_init__(self):
        check(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1, "model.lora.rank",
              "must be a positive integer")
        check(self.alpha is None or (isinstance(self.alpha, (int, float)) and self.alpha > 0), "model.lora.alpha",
              "must be positive or null")
        check(isinstance(self.targets, list) and len(self.targets) > 0
              and all(isinstance(t, str) and t.strip() for t in self.targets), "model.lora.targets",
              "must be a non-empty list of layer names (e.g. [to_q, to_k, to_v, to_out.0])")


EXPERT_TYPES = ("full", "lora")


@dataclass
class ModelConfig:
    num_experts: int = 1  # experts of stage 2; stage 1 always trains one U-Net
    num_train_timesteps: int = 1000
    # where the experts switch: uniform (the paper), snr (equal shares of log-SNR) or N-1 timesteps
    expert_boundaries: Union[str, List[int]] = "uniform"
    # full: each expert its own U-Net (the paper); lora: one frozen base U-Net + an adapter per expert
    expert_type: str = "full"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
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
        check(self.expert_type in EXPERT_TYPES, "model.expert_type", f"must be one of {EXPERT_TYPES}, "
                                                                     f"got {self.expert_type!r}")
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
