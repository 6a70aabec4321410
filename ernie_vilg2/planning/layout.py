"""The GPU layout a plan is made for (``Layout``), the one the config implies, and the bytes
per parameter of each precision.

``gpus`` ranks in ``expert_groups`` equal groups; in the experts stage a group owns
``num_experts / expert_groups`` experts, in the base stage every group holds the one U-Net;
within a group of ``gpus / expert_groups`` ranks sharding splits the optimizer state
(stage 1), also the gradients (2) and also the trained parameters (3). LoRA experts have no
expert groups: every rank holds the base U-Net and all adapters (the trainer refuses
``train.expert_parallel`` with them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import ConfigError
from ..errors import ErnieViLG2Error
from ..training.config import ExperimentConfig
from ..training.expert_layout import expert_group_count
from .footprint import ATTENTION_KINDS

GiB = 2 ** 30
WEIGHT_BYTES = {"bf16": 2, "fp32": 4}
OPTIMIZER_BYTES = {"bf16": 12, "fp32": 8}  # fp32 master copy (bf16 only) + two fp32 AdamW moments


class PlanError(ErnieViLG2Error, ValueError):
    """A layout that cannot be planned; the message names the flag."""


@dataclass
class Layout:
    gpus: int
    gpu_mem_gib: float
    expert_groups: int = 1
    sharding_stage: int = 1  # 0 = none, 1 optimizer state, 2 + gradients, 3 + parameters
    micro_batch: Optional[int] = None  # per rank; None = the stage's batch size / gpus
    precision: str = "bf16"
    recompute: bool = True
    attention: str = "fused"
    margin: float = 0.1  # fraction of the GPU memory kept free (CUDA context, allocator, buffers)

    @property
    def ranks_per_group(self) -> int:
        return self.gpus // self.expert_groups

    @property
    def usable_bytes(self) -> float:
        return self.gpu_mem_gib * GiB * (1.0 - self.margin)

    def validate(self, model_cfg) -> None:
        """Refuse a layout ``model_cfg`` (the ``model:`` section) cannot be trained on."""
        def need(ok: bool, flag: str, message: str) -> None:
            if not ok:
                raise PlanError(f"{flag}: {message}")

        num_experts = model_cfg.num_experts
        need(self.gpus >= 1, "--gpus", f"must be >= 1, got {self.gpus}")
        need(self.gpu_mem_gib > 0, "--gpu-mem", f"must be positive, got {self.gpu_mem_gib}")
        need(self.expert_groups >= 1, "--expert-groups", f"must be >= 1, got {self.expert_groups}")
        need(self.expert_groups == 1 or model_cfg.expert_type != "lora", "--expert-groups",
             f"LoRA experts (model.expert_type: lora) have no expert groups: every rank holds the base U-Net and "
             f"all {num_experts} adapter sets (train.expert_parallel must be false); leave the flag out, got "
             f"{self.expert_groups}")
        need(self.gpus % self.expert_groups == 0, "--gpus",
             f"{self.gpus} GPUs cannot be split into {self.expert_groups} equal expert groups")
        need(num_experts % self.expert_groups == 0, "--expert-groups",
             f"{self.expert_groups} groups cannot own equal shares of model.num_experts ({num_experts})")
        need(self.sharding_stage in (0, 1, 2, 3), "--sharding-stage", f"must be 0-3, got {self.sharding_stage}")
        need(self.micro_batch is None or self.micro_batch >= 1, "--micro-batch",
             f"must be >= 1, got {self.micro_batch}")
        need(self.precision in WEIGHT_BYTES, "--precision", f"must be bf16 or fp32, got {self.precision!r}")
        need(self.attention in ATTENTION_KINDS, "--attention", f"must be fused or unfused, got {self.attention!r}")
        need(0 <= self.margin < 1, "--margin", f"must be in [0, 1), got {self.margin}")


def default_layout(cfg: ExperimentConfig, gpus: int, gpu_mem_gib: float, **given) -> Layout:
    """The layout the config implies; ``given`` (flags) override it (None = not given).

    Expert groups as the trainer forms them: with ``train.expert_parallel``
    ``train.expert_groups`` or else ``min(num_experts, gpus)``
    (:func:`~.expert_layout.expert_group_count`), without it one group (every rank holds all experts).
    """
    groups = 1
    if cfg.train.expert_parallel and given.get("expert_groups") is None and gpus >= 1:
        try:
            groups = expert_group_count(cfg.model.num_experts, gpus, cfg.train.expert_groups)
        except ConfigError as exc:
            raise PlanError(f"--expert-groups (from the config): {exc}") from None
    implied = dict(
        expert_groups=groups,
        sharding_stage=cfg.train.sharding_stage if cfg.train.sharding_degree > 1 else 0,
        precision="bf16" if cfg.train.mixed_precision == "bf16" else "fp32",
        recompute=cfg.train.recompute,
        # Every expert carries FastAttnProcessor: on CUDA it calls Paddle's fused attention
        # (flash / memory-efficient), with the key-word emphasis of textual knowledge too.
        attention="fused",
    )
    implied.update({k: v for k, v in given.items() if v is not None})
    return Layout(gpus=gpus, gpu_mem_gib=gpu_mem_gib, **implied)


def gib(n: float) -> str:
    """Bytes as GiB with two decimals, as the plan prints them."""
    return f"{n / GiB:.2f}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
