"""Memory plan of a training run: parameters per component and memory per rank of each
diffusion stage for a layout of GPUs (``tools/plan.py``).

The parts: the layout (:mod:`.layout`), the models' sizes (:mod:`.model_sizes`), one stage's
memory and what to change (:mod:`.stage_plan`), the output (:mod:`.plan_report`). This module
puts them together and is where callers import them from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from ..training.config import ExperimentConfig
from .layout import Layout, PlanError, default_layout
from .model_sizes import ModelSizes, measure_models
from .plan_report import format_plan, plan_to_dict
from .stage_plan import StagePlan, fits, plan_stage, suggest

__all__ = ["Layout", "ModelSizes", "Plan", "PlanError", "StagePlan", "build_plan", "default_layout", "fits", "format_plan",
           "measure_models", "plan_stage", "plan_to_dict", "planned_stages", "suggest"]

PLANNED_STAGES = ("base", "experts")  # the VAE stage trains 4 M-100 M parameters: not planned


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
    """The plan of ``cfg`` on ``layout``, with what to change for
    each stage that does not fit; ``models``: sizes measured before (else measured here)."""
    layout.validate(cfg.model)
    models = models or measure_models(cfg)
    stages = {}
    for stage in planned_stages(cfg):
        plan = plan_stage(models, cfg, layout, stage)
        if not fits(plan, layout):
            plan.suggestions = suggest(models, cfg, layout, stage)
        stages[stage] = plan
    return Plan(config_path, models, layout, stages)
