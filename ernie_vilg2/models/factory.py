"""Build models and schedulers from the ``model:`` config section."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

from ppdiffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

from ..config import ConfigError
from ..utils.integrity import check_model_folder
from .config import ModelConfig, VAEConfig
from .expert_bank import MixtureOfDenoisingExperts
from .lora_experts import LoRAExperts
from .pretrained import load_pretrained_unet, load_pretrained_vae, pretrained_unet_kwargs
from .speedups import apply_speedups
from .text_encoder import build_text_encoder

SAMPLERS = ("ddim", "dpm")


def build_vae(cfg: VAEConfig, resolution: int) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=resolution,
    )


def context_dim(cfg: ModelConfig) -> int:
    """Width of the text context the U-Net attends to (the text encoder projects to it)."""
    return cfg.unet.cross_attention_dim or cfg.text_encoder.hidden_size


def unet_kwargs(cfg: ModelConfig, latent_size: int) -> dict:
    u = cfg.unet
    return dict(
        sample_size=latent_size,
        in_channels=cfg.vae.latent_channels,
        out_channels=cfg.vae.latent_channels,
        down_block_types=list(u.down_block_types),
        up_block_types=list(u.up_block_types),
        block_out_channels=list(u.block_out_channels),
        layers_per_block=u.layers_per_block,
        attention_head_dim=u.attention_head_dim,
        norm_num_groups=u.norm_num_groups,
        cross_attention_dim=context_dim(cfg),
    )


def build_or_load_vae(cfg: ModelConfig, resolution: int) -> AutoencoderKL:
    """``model.vae.pretrained``'s VAE, else a freshly initialised one."""
    return load_pretrained_vae(cfg.vae.pretrained) if cfg.vae.pretrained else build_vae(cfg.vae, resolution)


def load_vae(cfg: ModelConfig, stage_vae_dir: str) -> AutoencoderKL:
    """The frozen VAE of the diffusion stages: ``model.vae.pretrained``'s, else the one the vae
    stage saved in ``stage_vae_dir``."""
    if cfg.vae.pretrained:
        return load_pretrained_vae(cfg.vae.pretrained)
    check_model_folder(stage_vae_dir)  # a damaged file: one line naming it
    return AutoencoderKL.from_pretrained(stage_vae_dir)


def build_denoiser(cfg: ModelConfig, resolution: int, num_experts: int = 1,
                   expert_ids: Optional[Sequence[int]] = None, pretrained_weights: bool = True,
                   expert_type: str = "full") -> Union[MixtureOfDenoisingExperts, LoRAExperts]:
    """A bank of ``num_experts`` experts (or ``expert_ids`` of them) with the project's speed-ups:
    copies of ``model.unet.pretrained``'s U-Net, else freshly initialised. ``pretrained_weights=False``:
    the pretrained architecture, freshly initialised (e.g. under LazyGuard, to count parameters).
    ``expert_type="lora"`` (stage 2 of ``model.expert_type: lora``): adapters over one such U-Net."""
    if resolution % cfg.vae.scale_factor:
        raise ValueError(
            f"data.resolution ({resolution}) must be a multiple of the VAE downsampling factor "
            f"({cfg.vae.scale_factor})"
        )
    latent_size = resolution // cfg.vae.scale_factor
    if cfg.unet.pretrained and pretrained_weights:
        unet = load_pretrained_unet(cfg.unet.pretrained)
        unet.register_to_config(sample_size=latent_size)  # the pipeline's default image size: the data's
        return branch_denoiser(cfg, unet, num_experts, expert_ids, expert_type)
    kwargs = ({**pretrained_unet_kwargs(cfg.unet.pretrained), "sample_size": latent_size} if cfg.unet.pretrained
              else unet_kwargs(cfg, latent_size))
    if expert_type == "lora":
        return branch_denoiser(cfg, UNet2DConditionModel(**kwargs), num_experts, expert_ids, expert_type)
    boundaries = expert_boundaries(cfg) if num_experts == cfg.num_experts else None
    return apply_speedups(MixtureOfDenoisingExperts(num_experts=num_experts, num_train_timesteps=cfg.num_train_timesteps,
                                                    unet=kwargs, expert_ids=expert_ids, expert_boundaries=boundaries))


def branch_denoiser(cfg: ModelConfig, unet: UNet2DConditionModel, num_experts: int,
                    expert_ids: Optional[Sequence[int]] = None, expert_type: str = "full"
                    ) -> Union[MixtureOfDenoisingExperts, LoRAExperts]:
    """``num_experts`` experts (``expert_ids`` of them) starting as ``unet``, switching where
    ``model.expert_boundaries`` says, with the project's speed-ups: full copies of it, or with
    ``expert_type="lora"`` ``model.lora``'s adapters over it (all N: LoRA banks are never partial)."""
    boundaries = expert_boundaries(cfg) if num_experts == cfg.num_experts else None
    if expert_type == "lora":
        if expert_ids is not None:
            raise ValueError("expert_ids: a LoRA bank holds all its experts' adapters")
        try:
            bank = LoRAExperts.from_unet(unet, num_experts, cfg.num_train_timesteps, boundaries,
                                         lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
                                         lora_targets=list(cfg.lora.targets))
        except ValueError as exc:  # a target that names no linear layer of this U-Net
            raise ConfigError("model.lora.targets", str(exc).removeprefix("targets: ")) from None
    else:
        bank = MixtureOfDenoisingExperts.from_unet(unet, num_experts, cfg.num_train_timesteps, expert_ids, boundaries)
    return apply_speedups(bank)


def build_text_encoder_from_config(cfg: ModelConfig, tokenizer):
    """ERNIE (``model.text_encoder.pretrained``'s or fresh), with a learned projection to the
    U-Net's context width where its hidden size differs (:func:`context_dim`)."""
    te = cfg.text_encoder
    return build_text_encoder(
        vocab_size=len(tokenizer),
        pretrained=te.pretrained,
        hidden_size=te.hidden_size,
        num_hidden_layers=te.num_hidden_layers,
        num_attention_heads=te.num_attention_heads,
        intermediate_size=te.intermediate_size,
        max_position_embeddings=te.max_length,
        pad_token_id=tokenizer.pad_token_id,
        context_dim=context_dim(cfg),
    )


def _schedule_kwargs(cfg: ModelConfig) -> dict:
    return dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
    )


def expert_boundaries(cfg: ModelConfig) -> Optional[List[int]]:
    """``model.expert_boundaries`` as timesteps over the training schedule; None for the paper's
    uniform split (a bank saved with it has a config as without the option)."""
    if cfg.expert_boundaries == "uniform" or cfg.num_experts == 1:
        return None
    return cfg.boundaries(build_noise_scheduler(cfg).alphas_cumprod.numpy())


def build_noise_scheduler(cfg: ModelConfig) -> DDPMScheduler:
    """The training (forward-process) scheduler."""
    return DDPMScheduler(**_schedule_kwargs(cfg))


# What a sampler takes from the config of another scheduler class: the noise schedule. Its
# own settings (timestep_spacing, steps_offset, solver options) keep the sampler's defaults.
# PPDiffusers does this in memory (``_use_default_values``) but a saved scheduler_config.json
# loses that record, so without this rule DPM-Solver++ built from a reloaded DDIM config would
# take DDIM's "leading" timesteps, and from the same config in memory "linspace" ones.
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                       "prediction_type")
_SAMPLER_CLASSES = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}


def build_sampler(name: str, config: Optional[dict] = None, model_cfg: Optional[ModelConfig] = None):
    """A sampling scheduler by name, from a saved scheduler config or the model config.

    A config of the same class keeps all its settings; one of another class gives only its
    noise schedule (:data:`NOISE_SCHEDULE_KEYS`). These rules live here only: the export writes
    their result into its manifest, from which the deploy runners build their samplers.
    """
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    if config is None:
        config = _schedule_kwargs(model_cfg or ModelConfig())
    cls = _SAMPLER_CLASSES[name]
    if config.get("_class_name", cls.__name__) != cls.__name__:
        config = {k: config[k] for k in NOISE_SCHEDULE_KEYS if k in config}
    if name == "ddim":
        return cls.from_config(config, clip_sample=False, set_alpha_to_one=False)
    return cls.from_config(config, algorithm_type="dpmsolver++", solver_order=2)

