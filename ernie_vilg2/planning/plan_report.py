"""A memory plan as Markdown tables (``format_plan``) and as JSON-ready data (``plan_to_dict``)."""
from __future__ import annotations

from .layout import gib, plural
from .stage_plan import fits


def _short(n: float) -> str:
    """1.26 B, 803.2 M, 954.6 k: parameter counts at a glance."""
    for unit, size in (("B", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "B" else f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.1f} k"


def _count(n: int) -> str:
    return f"{n:,} ({_short(n)})"


def _expert_rows(m) -> list:
    if not m.lora:
        return [f"| expert U-Net, each | {_count(m.expert)} |",
                f"| experts, all {m.num_experts} | {_count(m.experts)} |"]
    return [f"| base U-Net, shared by the experts | {_count(m.expert)} |",
            f"| LoRA adapters, {m.num_experts} sets of rank {m.lora_rank} on {len(m.lora_layers)} layers | "
            f"{_count(m.adapters)}; {m.adapters / m.expert:.2%} of one U-Net |",
            f"| experts, all {m.num_experts} (one U-Net + adapters) | {_count(m.experts)} |"]


def _layout_line(m, lay) -> str:
    r = lay.ranks_per_group
    if m.lora:
        ranks = (f"{plural(lay.gpus, 'GPU')} x {lay.gpu_mem_gib:g} GiB, data parallel (LoRA experts: no expert "
                 f"groups; every rank holds the base U-Net and all {m.num_experts} adapter sets)")
        over = f"over the {plural(r, 'rank')}"
    else:
        ranks = (f"{plural(lay.gpus, 'GPU')} x {lay.gpu_mem_gib:g} GiB = {plural(lay.expert_groups, 'expert group')} "
                 f"x {plural(r, 'rank')}, {plural(m.num_experts // lay.expert_groups, 'expert')} per group")
        over = "within a group"
    sharding = f"sharding stage {lay.sharding_stage} {over}" if lay.sharding_stage else "no sharding"
    return (f"Layout: {ranks}; {sharding}; {lay.precision}; recompute {'on' if lay.recompute else 'off'}; "
            f"{lay.attention} attention; latents {m.latent_size}x{m.latent_size}x{m.latent_channels}, "
            f"{m.text_length} text tokens; {gib(lay.usable_bytes)} GiB usable per GPU ({lay.margin:.0%} kept free).")


def format_plan(plan) -> str:
    """The plan (a ``memory_plan.Plan``) as Markdown tables (they paste into a README as they are)."""
    m, lay = plan.models, plan.layout
    lines = [f"Memory plan of {plan.config_path or 'the config'}", "",
             "| component | parameters |", "|---|---:|",
             f"| text encoder (ErnieModel) | {_count(m.text_encoder)} |",
             *_expert_rows(m),
             f"| VAE (AutoencoderKL) | {_count(m.vae)} |",
             f"| total | {_count(m.total)} |", "", _layout_line(m, lay)]
    stages = list(plan.stages.values())
    rows = [
        ("micro batch per rank", lambda p: str(p.micro_batch)),
        ("U-Nets held / with gradients", lambda p: f"{p.experts_held} / {p.experts_stepped}"),
    ]
    if m.lora:
        rows.append(("LoRA adapter sets held / with gradients",
                     lambda p: f"{p.adapter_sets_held} / {p.adapter_sets_stepped}" if p.adapter_sets_held else "-"))
    rows += [
        ("text encoder", lambda p: "trained" if p.text_encoder_trained else "frozen"),
        ("trained parameters", lambda p: _short(p.trained_parameters)),
        ("parameters (GiB)", lambda p: gib(p.params)),
        ("gradients (GiB)", lambda p: gib(p.grads)),
        ("optimizer state (GiB)", lambda p: gib(p.optimizer)),
        ("activations (GiB)", lambda p: gib(p.activations)),
        ("**total (GiB)**", lambda p: f"**{gib(p.total)}**"),
        (f"fits in {gib(lay.usable_bytes)} GiB", lambda p: "yes" if fits(p, lay) else "**no**"),
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


def plan_to_dict(plan) -> dict:
    m, lay = plan.models, plan.layout
    parameters = {"text_encoder": m.text_encoder, "expert_type": m.expert_type, "expert": m.expert,
                  "num_experts": m.num_experts, "experts": m.experts, "vae": m.vae, "total": m.total}
    if m.lora:
        parameters["lora_adapters"] = {"total": m.adapters, "per_expert": m.adapter_set, "rank": m.lora_rank,
                                       "layers": len(m.lora_layers), "ratio_to_unet": m.adapters / m.expert}
    return {
        "config": plan.config_path,
        "parameters": parameters,
        "layout": {**{k: getattr(lay, k) for k in ("gpus", "gpu_mem_gib", "expert_groups", "sharding_stage",
                                                     "precision", "recompute", "attention", "margin")},
                   "ranks_per_group": lay.ranks_per_group, "usable_bytes": int(lay.usable_bytes),
                   "latent_shape": [m.latent_channels, m.latent_size, m.latent_size], "text_length": m.text_length},
        "stages": {
            p.stage: {"micro_batch": p.micro_batch, "experts_held": p.experts_held,
                      "experts_stepped": p.experts_stepped, "adapter_sets_held": p.adapter_sets_held,
                      "adapter_sets_stepped": p.adapter_sets_stepped, "text_encoder_trained": p.text_encoder_trained,
                      "trained_parameters": p.trained_parameters,
                      "bytes": {k: int(getattr(p, k))
                                for k in ("params", "grads", "optimizer", "activations", "total")},
                      "fits": fits(p, lay), "suggestions": p.suggestions}
            for p in plan.stages.values()},
        "fits": plan.fits,
    }
