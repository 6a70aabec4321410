"""The whole experiment config (one YAML file, see configs/) and its loader."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

from ..config import ConfigError, check, from_dict, merge, parse_overrides, read_yaml
from ..data.config import DataConfig
from ..knowledge.textual.config import TextualKnowledgeConfig
from ..knowledge.visual.config import VisualKnowledgeConfig
from ..models.config import ModelConfig
from ..pipelines.checks import expert_guidance_scales

STAGES = ("vae", "base", "experts")


@dataclass
class StageConfig:
    """Optimisation settings of one training stage (AdamW, constant lr after warm-up)."""

    steps: int = 100
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_grad_norm: Optional[float] = 1.0  # None disables clipping
    ema_decay: Optional[float] = None  # e.g. 0.999; the saved model then holds the EMA weights
    train_text_encoder: bool = True  # ignored by the vae stage
    batch_size: Optional[int] = None  # None = train.batch_size
    kl_weight: float = 1e-6  # vae stage only: weight of the KL term

    def validate(self, n: str) -> None:
        """Check values; ``n`` is the section's dotted name for error messages."""
        check(self.steps >= 0, f"{n}.steps", "must be >= 0")
        check(self.lr > 0, f"{n}.lr", "must be positive")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{n}.betas", "need two values in [0, 1)")
        check(self.weight_decay >= 0, f"{n}.weight_decay", "must be >= 0")
        check(self.warmup_steps >= 0, f"{n}.warmup_steps", "must be >= 0")
        check(self.max_grad_norm is None or self.max_grad_norm > 0, f"{n}.max_grad_norm", "must be positive or null")
        check(self.ema_decay is None or 0 < self.ema_decay < 1, f"{n}.ema_decay", "must be in (0, 1) or null")
        check(self.batch_size is None or self.batch_size > 0, f"{n}.batch_size", "must be positive")
        check(self.kl_weight >= 0, f"{n}.kl_weight", "must be >= 0")


@dataclass
class TrainConfig:
    output_dir: str = "output/run"
    seed: int = 0
    batch_size: int = 16
    caption_dropout: float = 0.1  # empty caption -> the unconditional branch of CFG
    stages: List[str] = field(default_factory=lambda: list(STAGES))
    vae: StageConfig = field(default_factory=lambda: StageConfig(steps=300, lr=1e-3))
    base: StageConfig = field(default_factory=lambda: StageConfig(steps=1000, lr=1e-3))
    experts: StageConfig = field(default_factory=lambda: StageConfig(steps=500, lr=5e-4, train_text_encoder=False))
    # Stage-2 experts this process trains; None = all. A worker given one expert draws its
    # timesteps from that expert's stage only (one job per expert, by hand).
    expert_ids: Optional[List[int]] = None
    # Stage 2 in one job on expert groups: the ranks split into equal groups, each building,
    # training and synchronising only its experts (see training/expert_layout.py).
    expert_parallel: bool = False
    expert_groups: Optional[int] = None  # null: min(model.num_experts, number of ranks)
    # Stage 2: draw one expert per step and the whole batch from its timestep stage, so a
    # step runs one U-Net (false: per-sample timesteps; the batch is split across experts).
    one_expert_per_step: bool = True
    cache_latents: bool = True  # encode every image once with the frozen VAE (small datasets)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0  # 0 = sample images to VisualDL only at the end of a stage
    mixed_precision: str = "no"  # "bf16": autocast the diffusion forward (GPU only)
    recompute: bool = False  # gradient checkpointing of the U-Net blocks (GPU memory)
    sharding_degree: int = 1  # Fleet sharding stage 1 over data-parallel workers; with expert_parallel
    # the ranks of an expert group (group-sharded API, GPU only)
    sharding_stage: int = 1  # with sharding_degree > 1: 1 optimizer state, 2 also gradients (expert_parallel)
    sharding_offload: bool = False  # expert_parallel sharding: optimizer state in host memory (GPU only)

    def __post_init__(self):
        check(self.batch_size > 0, "train.batch_size", "must be positive")
        check(0 <= self.caption_dropout < 1, "train.caption_dropout", "must be in [0, 1)")
        for i, s in enumerate(self.stages):
            check(s in STAGES, f"train.stages[{i}]", f"unknown stage {s!r}; use {STAGES}")
        check(self.checkpoint_every > 0, "train.checkpoint_every", "must be positive")
        check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        check(self.log_every > 0, "train.log_every", "must be positive")
        check(self.sample_every >= 0, "train.sample_every", "must be >= 0")
        check(self.mixed_precision in ("no", "bf16"), "train.mixed_precision", "use 'no' or 'bf16'")
        check(self.sharding_degree >= 1, "train.sharding_degree", "must be >= 1")
        check(self.expert_groups is None or self.expert_groups >= 1, "train.expert_groups", "must be >= 1 or null")
        check(self.expert_groups is None or self.expert_parallel, "train.expert_groups",
              "needs train.expert_parallel: true")
        check(self.sharding_stage in (1, 2), "train.sharding_stage",
              "must be 1 or 2 (stage 3 shards the weights themselves, and the trainer's per-expert checkpoints "
              "need them whole on the group's first rank)")
        check(self.sharding_stage == 1 or self.expert_parallel, "train.sharding_stage",
              "stage 2 needs train.expert_parallel: true (Fleet's data-parallel sharding here is stage 1)")
        check(not self.sharding_offload or self.expert_parallel, "train.sharding_offload",
              "needs train.expert_parallel: true")
        for stage in STAGES:
            getattr(self, stage).validate(f"train.{stage}")


@dataclass
class SampleConfig:
    """Prompts and settings for the sample grids (VisualDL and the demo)."""

    prompts: List[str] = field(default_factory=lambda: ["红苹果", "a red apple"])
    negative_prompt: str = ""
    steps: int = 25
    # One scale, or model.num_experts (expert 0, the least noisy, first): the experts stage's
    # grids guide each expert with its own; the base stage (one U-Net) samples with the first.
    guidance_scale: Union[float, List[float]] = 2.1
    sampler: str = "ddim"
    seed: int = 0

    def __post_init__(self):
        check(len(self.prompts) > 0, "sample.prompts", "needs at least one prompt")
        for i, p in enumerate(self.prompts):
            check(bool(p.strip()), f"sample.prompts[{i}]", "the prompt is empty")
        check(self.steps > 0, "sample.steps", "must be positive")
        check(self.sampler in ("ddim", "dpm"), "sample.sampler", "must be 'ddim' or 'dpm'")

    def guidance_for(self, num_experts: int):
        """``guidance_scale`` for a pipeline of ``num_experts`` experts: a list (one per expert)
        is the experts stage's; a one-expert pipeline (the base stage) takes its first scale."""
        if isinstance(self.guidance_scale, list) and num_experts == 1:
            return self.guidance_scale[0]
        return self.guidance_scale


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    textual_knowledge: TextualKnowledgeConfig = field(default_factory=TextualKnowledgeConfig)
    visual_knowledge: VisualKnowledgeConfig = field(default_factory=VisualKnowledgeConfig)

    def __post_init__(self):
        check(self.data.resolution % self.model.vae.scale_factor == 0, "data.resolution",
              f"must be a multiple of the VAE downsampling factor {self.model.vae.scale_factor}")
        try:  # the pipelines' rules and messages ("guidance_scale must be ...")
            expert_guidance_scales(self.sample.guidance_scale, self.model.num_experts)
        except ValueError as exc:
            raise ConfigError("sample.guidance_scale", str(exc).split(" ", 1)[1]) from None
        check(not (self.train.expert_parallel and self.train.expert_ids is not None), "train.expert_ids",
              "must be null with train.expert_parallel: true (the expert groups are assigned their experts)")
        check(not (self.train.expert_parallel and self.model.expert_type == "lora"), "train.expert_parallel",
              "must be false with model.expert_type: lora (LoRA experts share one base U-Net, about one U-Net "
              "of memory: train them data-parallel)")
        if self.train.expert_ids is not None:
            for i, e in enumerate(self.train.expert_ids):
                check(0 <= e < self.model.num_experts, f"train.expert_ids[{i}]",
                      f"expert {e} out of range 0..{self.model.num_experts - 1}")


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> ExperimentConfig:
    """Read YAML ``path`` (optional), apply ``section.key=value`` overrides, validate."""
    raw = read_yaml(path) if path else {}
    raw = merge(raw, parse_overrides(overrides or []))
    return from_dict(ExperimentConfig, raw)


def stage_config(cfg: ExperimentConfig, stage: str) -> StageConfig:
    return getattr(cfg.train, stage)
