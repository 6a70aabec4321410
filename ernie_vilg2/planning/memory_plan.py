"""Memory plan of a training run: parameters per component and memory per rank.

The models are built by the project's factory under :func:`~ernie_vilg2.models.lazy_init.lazy_init`
(nothing is allocated) and counted from their shapes, so the counts are those of the real
modules. The layout (``Layout``): ``gpus`` ranks in ``expert_groups`` equal groups; in the
experts stage a group owns ``num_experts / expert_groups`` experts, in the base stage every
group holds the one U-Net; within a group of ``gpus / expert_groups`` ranks sharding splits
the optimizer state (stage 1), also the gradients (2) and also the trained parameters (3).
The text encoder, when the stage trains it, is sharded the same way; frozen modules (the
VAE, a frozen text encoder) are whole on every rank.

Bytes per trained parameter: bf16 stores weights and gradients in bf16 (2 + 2) and AdamW
keeps fp32 master weights and two fp32 moments (12); fp32 stores 4 + 4 and two moments (8).
Frozen weights take the weight bytes. In the experts stage every held expert has weights and
optimizer state, but gradients exist only for the experts a step reaches: one with
``train.one_expert_per_step`` (idle experts keep ``grad=None``), else all held ones.
Activations: :mod:`ernie_vilg2.planning.footprint` for one U-Net step of the micro batch, plus
the text encoder's when it is trained.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..config import ConfigError
from ..errors import ErnieViLG2Error
from ..models.lazy_init import lazy_init
from ..training.config import ExperimentConfig
from ..training.expert_layout import expert_group_count
from ..utils.integrity import check_model_folder
from .footprint import ATTENTION_KINDS, count_parameters, text_encoder_activations, unet_activations

GiB = 2 ** 30
PLANNED_STAGES = ("base", "experts")  # the VAE stage trains 4 M-100 M parameters: not planned
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

    def validate(self, num_experts: int) -> None:
        def need(ok: bool, flag: str, message: str) -> None:
            if not ok:
                raise PlanError(f"{flag}: {message}")

        need(self.gpus >= 1, "--gpus", f"must be >= 1, got {self.gpus}")
        need(self.gpu_mem_gib > 0, "--gpu-mem", f"must be positive, got {self.gpu_mem_gib}")
        need(self.expert_groups >= 1, "--expert-groups", f"must be >= 1, got {self.expert_groups}")
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


# -- the models -----------------------------------------------------------------------------------
@dataclass
class ModelSizes:
    text_encoder: int
    expert: int
    num_experts: int
    vae: int
    unet: object  # one lazily built expert (its structure drives the activation estimate)
    text_config: object  # the ErnieModel config
    latent_size: int
    latent_channels: int
    text_length: int

    @property
    def experts(self) -> int:
        return self.expert * self.num_experts

    @property
    def total(self) -> int:
        return self.text_encoder + self.experts + self.vae


def measure_models(cfg: ExperimentConfig) -> ModelSizes:
    """Build text encoder, one expert and the VAE without allocating; count their parameters."""
    from ..models.factory import build_denoiser, build_vae  # deferred here and below: ppdiffusers, paddle
    from ..text.tokenizer import build_tokenizer

    m = cfg.model
    tokenizer = build_tokenizer(m.text_encoder.vocab_file, m.text_encoder.max_length)
    with lazy_init():
        text_encoder = _lazy_text_encoder(m, tokenizer)
        unet = build_denoiser(m, cfg.data.resolution, num_experts=1, pretrained_weights=False).experts[0]
        vae = build_vae(m.vae, cfg.data.resolution)
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
    )


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


# -- one stage --------------------------------------------------------------------------------------
@dataclass
class StagePlan:
    stage: str
    micro_batch: int
    experts_held: int  # U-Nets whose weights a rank holds
    experts_stepped: int  # U-Nets with gradients in one step
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
    stage_cfg = getattr(cfg.train, stage)
    trains_te = stage_cfg.train_text_encoder
    if stage == "experts":
        held = models.num_experts // layout.expert_groups
        stepped = 1 if cfg.train.one_expert_per_step else held
    else:
        held = stepped = 1
    r = layout.ranks_per_group
    s = layout.sharding_stage
    w = WEIGHT_BYTES[layout.precision]
    te = models.text_encoder if trains_te else 0
    trained = held * models.expert + te
    frozen = models.vae + (0 if trains_te else models.text_encoder)
    with_grads = stepped * models.expert + te
    batch = layout.micro_batch or max(1, math.ceil((stage_cfg.batch_size or cfg.train.batch_size) / layout.gpus))
    estimate = unet_activations(models.unet, models.latent_size, batch, models.text_length,
                                models.text_config.hidden_size, w, layout.attention)
    activations = estimate.peak(layout.recompute)
    if trains_te:
        activations += text_encoder_activations(models.text_config, models.text_length, batch, w)
    return StagePlan(
        stage=stage, micro_batch=batch, experts_held=held, experts_stepped=stepped, text_encoder_trained=trains_te,
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
    with the largest micro batch that fits, else what even those leave."""
    batch = plan_stage(models, cfg, layout, stage).micro_batch
    layout = dataclasses.replace(layout, micro_batch=batch)  # more GPUs: same micro batch, larger global batch

    def total(**change) -> float:
        return plan_stage(models, cfg, dataclasses.replace(layout, **change), stage).total

    def ok(**change) -> bool:
        return total(**change) <= layout.usable_bytes

    out: List[str] = []
    if not layout.recompute and ok(recompute=True):
        out.append(f"--recompute ({_gib(total(recompute=True))} GiB)")
    for s in range(layout.sharding_stage + 1, 4):
        if layout.ranks_per_group > 1 and ok(sharding_stage=s):
            out.append(f"--sharding-stage {s} ({_gib(total(sharding_stage=s))} GiB)")
            break
    for b in range(batch - 1, 0, -1):
        if ok(micro_batch=b):
            out.append(f"--micro-batch {b} ({_gib(total(micro_batch=b))} GiB; "
                       f"train.batch_size {b * layout.gpus} on {_n(layout.gpus, 'GPU')})")
            break
    if stage == "experts":
        for g in range(layout.expert_groups + 1, models.num_experts + 1):
            if models.num_experts % g == 0 and layout.gpus % g == 0 and ok(expert_groups=g):
                out.append(f"--expert-groups {g} ({models.num_experts // g} experts per group, "
                           f"{_gib(total(expert_groups=g))} GiB)")
                break
    if layout.sharding_stage > 0:
        gpus = layout.gpus * 2
        while gpus <= MAX_GPUS and not ok(gpus=gpus):
            gpus *= 2
        if gpus <= MAX_GPUS:
            out.append(f"--gpus {gpus} ({gpus // layout.expert_groups} ranks per group, "
                       f"{_gib(total(gpus=gpus))} GiB)")
    if layout.attention == "unfused" and ok(attention="fused"):
        out.append(f"--attention fused ({_gib(total(attention='fused'))} GiB; the trainer's FastAttnProcessor "
                   f"on CUDA)")
    if not out:  # the structural changes together, then the largest micro batch that fits
        together = {"recompute": True}
        if layout.ranks_per_group > 1:
            together["sharding_stage"] = 3
        if stage == "experts":
            together["expert_groups"] = _most_groups(models, layout)
        together = {k: v for k, v in together.items() if getattr(layout, k) != v}
        b = next((b for b in range(batch, 0, -1) if ok(**together, micro_batch=b)), None)
        if b is not None:
            together.update({} if b == batch else {"micro_batch": b})
            flags = " ".join(_flag(k, v) for k, v in together.items())
            out.append(f"{flags} together ({_gib(total(**together))} GiB)")
        else:
            together["micro_batch"] = 1
            flags = " ".join(_flag(k, v) for k, v in together.items())
            out.append(f"none: even {flags} needs {_gib(total(**together))} GiB per rank; "
                       f"more GPU memory or a smaller model")
    return out


def _most_groups(models: ModelSizes, layout: Layout) -> int:
    return max(g for g in range(1, models.num_experts + 1) if models.num_experts % g == 0 and layout.gpus % g == 0)


def _flag(field: str, value) -> str:
    name = "--" + field.replace("_", "-")
    return name if value is True else f"{name} {value}"


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


# -- the whole plan ---------------------------------------------------------------------------------
@dataclass
class Plan:
    config_path: Optional[str]
    models: ModelSizes
    layout: Layout
    stages: Dict[str, StagePlan]

    @property
    def fits(self) -> bool:
        return all(fits(p, self.layout) for p in self.stages.values())


def planned_stages(cfg: ExperimentConfig) -> List[str]:
    """The diffusion stages of ``train.stages`` (both if it lists neither); no experts stage for N = 1."""
    stages = [s for s in PLANNED_STAGES if s in cfg.train.stages] or list(PLANNED_STAGES)
    return [s for s in stages if s != "experts" or cfg.model.num_experts > 1]


def build_plan(cfg: ExperimentConfig, layout: Layout, config_path: Optional[str] = None,
               models: Optional[ModelSizes] = None) -> Plan:
    layout.validate(cfg.model.num_experts)
    models = models or measure_models(cfg)
    stages = {}
    for stage in planned_stages(cfg):
        plan = plan_stage(models, cfg, layout, stage)
        if not fits(plan, layout):
            plan.suggestions = suggest(models, cfg, layout, stage)
        stages[stage] = plan
    return Plan(config_path, models, layout, stages)



# -- output -------------------------------------------------------------------------------------------
def _short(n: float) -> str:
    """1.26 B, 803.2 M, 954.6 k: parameter counts at a glance."""
    for unit, size in (("B", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "B" else f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.1f} k"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _count(n: int) -> str:
    return f"{n:,} ({_short(n)})"


def format_plan(plan: Plan) -> str:
    """The plan as Markdown tables (they paste into a README as they are)."""
    m, lay = plan.models, plan.layout
    lines = [f"Memory plan of {plan.config_path or 'the config'}", "",
             "| component | parameters |", "|---|---:|",
             f"| text encoder (ErnieModel) | {_count(m.text_encoder)} |",
             f"| expert U-Net, each | {_count(m.expert)} |",
             f"| experts, all {m.num_experts} | {_count(m.experts)} |",
             f"| VAE (AutoencoderKL) | {_count(m.vae)} |",
             f"| total | {_count(m.total)} |", ""]
    r = lay.ranks_per_group
    sharding = f"sharding stage {lay.sharding_stage} within a group" if lay.sharding_stage else "no sharding"
    lines.append(
        f"Layout: {_n(lay.gpus, 'GPU')} x {lay.gpu_mem_gib:g} GiB = {_n(lay.expert_groups, 'expert group')} x "
        f"{_n(r, 'rank')}, {_n(m.num_experts // lay.expert_groups, 'expert')} per group; {sharding}; {lay.precision}; "
        f"recompute {'on' if lay.recompute else 'off'}; {lay.attention} attention; latents "
        f"{m.latent_size}x{m.latent_size}x{m.latent_channels}, {m.text_length} text tokens; "
        f"{_gib(lay.usable_bytes)} GiB usable per GPU ({lay.margin:.0%} kept free).")
    stages = list(plan.stages.values())
    rows = [
        ("micro batch per rank", lambda p: str(p.micro_batch)),
        ("U-Nets held / with gradients", lambda p: f"{p.experts_held} / {p.experts_stepped}"),
        ("text encoder", lambda p: "trained" if p.text_encoder_trained else "frozen"),
        ("trained parameters", lambda p: _short(p.trained_parameters)),
        ("parameters (GiB)", lambda p: _gib(p.params)),
        ("gradients (GiB)", lambda p: _gib(p.grads)),
        ("optimizer state (GiB)", lambda p: _gib(p.optimizer)),
        ("activations (GiB)", lambda p: _gib(p.activations)),
        ("**total (GiB)**", lambda p: f"**{_gib(p.total)}**"),
        (f"fits in {_gib(lay.usable_bytes)} GiB", lambda p: "yes" if fits(p, lay) else "**no**"),
    ]
    lines += ["", "| per rank | " + " | ".join(f"{p.stage} stage" for p in stages) + " |",
              "|---|" + "---:|" * len(stages)]
    lines += [f"| {name} | " + " | ".join(cell(p) for p in stages) + " |" for name, cell in rows]
    for p in stages:
        if p.suggestions:
            lines += ["", f"The {p.stage} stage does not fit. What to change:"]
            lines += [f"- {s}" for s in p.suggestions]
    lines += ["", "It fits." if plan.fits else "It does not fit."]
    return "\n".join(lines)


def plan_to_dict(plan: Plan) -> dict:
    m, lay = plan.models, plan.layout
    return {
        "config": plan.config_path,
        "parameters": {"text_encoder": m.text_encoder, "expert": m.expert, "num_experts": m.num_experts,
                       "experts": m.experts, "vae": m.vae, "total": m.total},
        "layout": {**{k: getattr(lay, k) for k in ("gpus", "gpu_mem_gib", "expert_groups", "sharding_stage",
                                                     "precision", "recompute", "attention", "margin")},
                   "ranks_per_group": lay.ranks_per_group, "usable_bytes": int(lay.usable_bytes),
                   "latent_shape": [m.latent_channels, m.latent_size, m.latent_size], "text_length": m.text_length},
        "stages": {
            p.stage: {"micro_batch": p.micro_batch, "experts_held": p.experts_held,
                      "experts_stepped": p.experts_stepped, "text_encoder_trained": p.text_encoder_trained,
                      "trained_parameters": p.trained_parameters,
                      "bytes": {k: int(getattr(p, k))
                                for k in ("params", "grads", "optimizer", "activations", "total")},
                      "fits": fits(p, lay), "suggestions": p.suggestions}
            for p in plan.stages.values()},
        "fits": plan.fits,
    }
