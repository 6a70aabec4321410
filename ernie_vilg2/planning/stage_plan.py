"""Memory per rank of one diffusion stage for a layout, and the layout changes with which a
stage that does not fit would fit.

Bytes per trained parameter: bf16 stores weights and gradients in bf16 (2 + 2) and AdamW
keeps fp32 master weights and two fp32 moments (12); fp32 stores 4 + 4 and two moments (8).
Frozen weights take the weight bytes and are whole on every rank (the VAE, a frozen text
encoder, the base U-Net of LoRA experts); the trained ones (U-Nets or adapters, the text
encoder when the stage trains it) are sharded as the layout says.

In the experts stage every held expert has weights and optimizer state, but gradients exist
only for the experts a step reaches: one with ``train.one_expert_per_step`` (idle experts
keep ``grad=None``), else all held ones. Full experts: a rank holds its group's U-Nets. LoRA
experts: every rank holds the frozen base U-Net and all N adapter sets (the adapters are
what is trained). Activations: :mod:`ernie_vilg2.planning.footprint` for one U-Net step of
the micro batch (LoRA experts run the base once for the whole batch; the adapters' own,
rank-wide activations are left out), plus the text encoder's when it is trained.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List

from ..training.config import ExperimentConfig
from .footprint import text_encoder_activations, unet_activations
from .layout import OPTIMIZER_BYTES, WEIGHT_BYTES, Layout, gib, plural
from .model_sizes import ModelSizes


@dataclass
class StagePlan:
    stage: str
    micro_batch: int
    experts_held: int  # U-Nets whose weights a rank holds
    experts_stepped: int  # U-Nets with gradients in one step
    adapter_sets_held: int  # LoRA experts: adapter sets a rank holds (0 otherwise)
    adapter_sets_stepped: int  # LoRA experts: adapter sets with gradients in one step
    text_encoder_trained: bool
    trained_parameters: int  # per rank, before sharding
    params: float  # bytes per rank
    grads: float
    optimizer: float
    activations: float
    suggestions: List[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations


def plan_stage(models: ModelSizes, cfg: ExperimentConfig, layout: Layout, stage: str) -> StagePlan:
    """Memory per rank of ``stage`` (base or experts) of ``cfg``."""
    stage_cfg = getattr(cfg.train, stage)
    trains_te = stage_cfg.train_text_encoder
    te = models.text_encoder if trains_te else 0
    frozen = models.vae + (0 if trains_te else models.text_encoder)
    if stage == "experts" and models.lora:
        held, stepped = 1, 0  # the frozen base
        sets_held = models.num_experts
        sets_stepped = 1 if cfg.train.one_expert_per_step else sets_held
        trained = sets_held * models.adapter_set + te
        with_grads = sets_stepped * models.adapter_set + te
        frozen += models.expert
    else:
        held = models.num_experts // layout.expert_groups if stage == "experts" else 1
        stepped = 1 if cfg.train.one_expert_per_step else held
        sets_held = sets_stepped = 0
        trained = held * models.expert + te
        with_grads = stepped * models.expert + te
    r = layout.ranks_per_group
    s = layout.sharding_stage
    w = WEIGHT_BYTES[layout.precision]
    batch = layout.micro_batch or max(1, math.ceil((stage_cfg.batch_size or cfg.train.batch_size) / layout.gpus))
    estimate = unet_activations(models.unet, models.latent_size, batch, models.text_length,
                                models.text_config.hidden_size, w, layout.attention)
    activations = estimate.peak(layout.recompute)
    if trains_te:
        activations += text_encoder_activations(models.text_config, models.text_length, batch, w)
    return StagePlan(
        stage=stage, micro_batch=batch, experts_held=held, experts_stepped=stepped,
        adapter_sets_held=sets_held, adapter_sets_stepped=sets_stepped, text_encoder_trained=trains_te,
        trained_parameters=trained,
        params=trained * w / (r if s >= 3 else 1) + frozen * w,
        grads=with_grads * w / (r if s >= 2 else 1),
        optimizer=trained * OPTIMIZER_BYTES[layout.precision] / (r if s >= 1 else 1),
        activations=activations,
    )


def fits(plan: StagePlan, layout: Layout) -> bool:
    return plan.total <= layout.usable_bytes


# -- what to change -------------------------------------------------------------------------------
MAX_GPUS = 100_000  # search limit for "more ranks per group"


def suggest(models: ModelSizes, cfg: ExperimentConfig, layout: Layout, stage: str) -> List[str]:
    """Changes of the layout with which the stage fits: each alone (recompute, sharding stage,
    micro batch, expert groups, more GPUs, fused attention), else the structural ones together
    with the largest micro batch that fits, else what even those leave. LoRA experts get no
    expert groups, and a line saying so."""
    batch = plan_stage(models, cfg, layout, stage).micro_batch
    layout = dataclasses.replace(layout, micro_batch=batch)  # more GPUs: same micro batch, larger global batch
    groups_apply = stage == "experts" and not models.lora

    def total(**change) -> float:
        return plan_stage(models, cfg, dataclasses.replace(layout, **change), stage).total

    def ok(**change) -> bool:
        return total(**change) <= layout.usable_bytes

    out: List[str] = []
    if not layout.recompute and ok(recompute=True):
        out.append(f"--recompute ({gib(total(recompute=True))} GiB)")
    for s in range(layout.sharding_stage + 1, 4):
        if layout.ranks_per_group > 1 and ok(sharding_stage=s):
            out.append(f"--sharding-stage {s} ({gib(total(sharding_stage=s))} GiB)")
            break
    for b in range(batch - 1, 0, -1):
        if ok(micro_batch=b):
            out.append(f"--micro-batch {b} ({gib(total(micro_batch=b))} GiB; "
                       f"train.batch_size {b * layout.gpus} on {plural(layout.gpus, 'GPU')})")
            break
    if groups_apply:
        for g in range(layout.expert_groups + 1, models.num_experts + 1):
            if models.num_experts % g == 0 and layout.gpus % g == 0 and ok(expert_groups=g):
                out.append(f"--expert-groups {g} ({models.num_experts // g} experts per group, "
                           f"{gib(total(expert_groups=g))} GiB)")
                break
    if layout.sharding_stage > 0:
        gpus = layout.gpus * 2
        while gpus <= MAX_GPUS and not ok(gpus=gpus):
            gpus *= 2
        if gpus <= MAX_GPUS:
            out.append(f"--gpus {gpus} ({gpus // layout.expert_groups} ranks per group, "
                       f"{gib(total(gpus=gpus))} GiB)")
    if layout.attention == "unfused" and ok(attention="fused"):
        out.append(f"--attention fused ({gib(total(attention='fused'))} GiB; the trainer's FastAttnProcessor "
                   f"on CUDA)")
    if not out:  # the structural changes together, then the largest micro batch that fits
        together = {"recompute": True}
        if layout.ranks_per_group > 1:
            together["sharding_stage"] = 3
        if groups_apply:
            together["expert_groups"] = _most_groups(models, layout)
        together = {k: v for k, v in together.items() if getattr(layout, k) != v}
        b = next((b for b in range(batch, 0, -1) if ok(**together, micro_batch=b)), None)
        if b is not None:
            together.update({} if b == batch else {"micro_batch": b})
            flags = " ".join(_flag(k, v) for k, v in together.items())
            out.append(f"{flags} together ({gib(total(**together))} GiB)")
        else:
            together["micro_batch"] = 1
            flags = " ".join(_flag(k, v) for k, v in together.items())
            out.append(f"none: even {flags} needs {gib(total(**together))} GiB per rank; "
                       f"more GPU memory or a smaller model")
    if stage == "experts" and models.lora:
        out.append(f"expert groups do not apply: LoRA experts train data-parallel, every rank holding the base "
                   f"U-Net and all {models.num_experts} adapter sets")
    return out


def _most_groups(models: ModelSizes, layout: Layout) -> int:
    return max(g for g in range(1, models.num_experts + 1) if models.num_experts % g == 0 and layout.gpus % g == 0)


def _flag(field: str, value) -> str:
    name = "--" + field.replace("_", "-")
    return name if value is True else f"{name} {value}"
