"""What ``--resume`` continues from, and whether the requested config may continue it.

The requested config is compared with the one the run's newest checkpoint was made with
(``config.yaml`` inside it; for a run without checkpoints yet, ``OUTPUT/config.yaml``):

- fields that shape the model (``model.*``, ``data.resolution``) must be equal: a
  checkpoint cannot continue another model;
- any other difference (lr, batch size, steps, logging, knowledge, ...) voids the exact
  resume and needs ``allow_config_change`` (``--allow-config-change``);
- a finished stage whose ``steps`` were raised continues from its last checkpoint up to
  the new count (with the flag), as PaddleNLP's Trainer does when ``max_steps`` is raised,
  unless a later stage was already trained on it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import yaml

from ..errors import ErnieViLG2Error
from ..utils.integrity import DamagedFileError
from .checkpoint import CONFIG, checkpoint_step, find_resume_checkpoint, read_checkpoint_config
from .config import STAGES
from .run_folder import RUN_CONFIG

logger = logging.getLogger(__name__)

# Where the run is and which stages this invocation runs: not part of how it trains.
IGNORED_FIELDS = ("train.output_dir", "train.stages")
MODEL_FIELDS = ("data.resolution",)  # besides the whole model section


class ResumeRefused(ErnieViLG2Error, ValueError):
    """``--resume`` with a config that cannot (or may not, without the flag) continue the run."""


def is_model_field(name: str) -> bool:
    """Fields that change the model's parameters: a checkpoint cannot continue with them."""
    return name.startswith("model.") or name in MODEL_FIELDS


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        dump = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
        return f"{self.field}: {dump(self.old)} -> {dump(self.new)}"

    def as_record(self) -> dict:
        return {"field": self.field, "from": self.old, "to": self.new}


def _normalized(config: dict) -> dict:
    # The same YAML round trip as the stored configs (tuples become lists, floats stay floats).
    return yaml.safe_load(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))


def config_changes(old: dict, new: dict) -> List[Change]:
    """Differing leaves of two config dicts as dotted fields, in the order of ``new``.

    Keys present in only one of them (a config written by an older or newer version of
    this package, whose defaults keep the old behaviour) are not compared.
    """
    changes: List[Change] = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in b:
                if key in a:
                    walk(a[key], b[key], f"{prefix}{key}.")
        elif a != b and prefix[:-1] not in IGNORED_FIELDS:
            changes.append(Change(prefix[:-1], a, b))

    walk(_normalized(old), _normalized(new), "")
    return changes


def checkpoint_dir(output_dir: str, stage: str) -> str:
    return os.path.join(output_dir, "checkpoints", stage)


@dataclass
class ResumePlan:
    checkpoints: Dict[str, str] = field(default_factory=dict)  # stage -> newest intact checkpoint
    damaged: Dict[str, List[Tuple[str, DamagedFileError]]] = field(default_factory=dict)  # passed over
    reference: Optional[str] = None  # the config file the requested config was compared with
    changes: List[Change] = field(default_factory=list)  # accepted (allow_config_change)
    notes: List[str] = field(default_factory=list)  # what the accepted changes do
    reopen: Set[str] = field(default_factory=set)  # finished stages that train further

    @property
    def newest_checkpoint(self) -> Optional[str]:
        stages = [s for s in STAGES if s in self.checkpoints]
        return self.checkpoints[stages[-1]] if stages else None

    def record(self) -> dict:
        return {"resumed_from": self.newest_checkpoint, "compared_with": self.reference,
                "changes": [c.as_record() for c in self.changes], "notes": self.notes}


def _reference_config(output_dir: str, plan: ResumePlan) -> Tuple[Optional[str], Optional[dict]]:
    newest = plan.newest_checkpoint
    config = read_checkpoint_config(newest) if newest else None
    if config is not None:
        return os.path.join(newest, CONFIG), config
    path = os.path.join(output_dir, RUN_CONFIG)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return path, yaml.safe_load(f)
    return None, None


def plan_resume(output_dir: str, requested: dict, finished: Set[str], selected: Sequence[str],
                allow_config_change: bool) -> ResumePlan:
    """Find each stage's checkpoint to resume from and check ``requested`` against the
    run's config. Raises :class:`ResumeRefused` (one line listing the fields) or, when a
    stage has checkpoints but none intact, :class:`DamagedFileError`."""
    plan = ResumePlan()
    for stage in STAGES:
        path, damaged = find_resume_checkpoint(checkpoint_dir(output_dir, stage))
        if path is not None:
            plan.checkpoints[stage] = path
        if damaged:
            plan.damaged[stage] = damaged
    plan.reference, reference = _reference_config(output_dir, plan)
    if reference is None:
        logger.warning("%s holds no recorded config (an older run, or stage folders copied in): "
                       "config changes are not checked", output_dir)
        return plan
    changes = config_changes(reference, requested)
    model = [c for c in changes if is_model_field(c.field)]
    if model:
        raise ResumeRefused(
            f"--resume: {output_dir} holds another model; these fields change the model's parameters: "
            f"{'; '.join(map(str, model))} (compared with {plan.reference}): resume with the model config it was "
            "made with, or train the new model in another train.output_dir"
        )
    blockers, extended = [], []  # extended: (stage, finished at step, its checkpoint, new steps)
    for stage in STAGES:
        if stage not in finished:
            continue
        for change in (c for c in changes if c.field.startswith(f"train.{stage}.")):
            ckpt = plan.checkpoints.get(stage)
            done = checkpoint_step(ckpt) if ckpt else change.old
            if change.field != f"train.{stage}.steps" or change.new <= done:
                plan.notes.append(f"{change}: stage {stage} is finished, no effect")
                continue
            later = [s for s in STAGES[STAGES.index(stage) + 1:] if s in finished or s in plan.checkpoints]
            if later:
                blockers.append(f"{change}: stage {stage} is finished and stage {later[0]} was trained on it; "
                                f"train a longer {stage} stage in another train.output_dir")
            elif ckpt is None:
                blockers.append(f"{change}: stage {stage} is finished and has no checkpoint to continue from")
            elif stage not in selected:
                blockers.append(f"{change}: stage {stage} is finished and not among the stages of this run")
            else:
                extended.append((stage, done, ckpt, change.new))
    if blockers:
        raise ResumeRefused("--resume: " + "; ".join(blockers))
    if changes and not allow_config_change:
        what = "".join(f" (stage {stage} is finished at step {done}: with the flag it continues from its last "
                       f"checkpoint to step {new})" for stage, done, _, new in extended)
        raise ResumeRefused(
            f"--resume: the config differs from the one the run was made with ({plan.reference}): "
            f"{'; '.join(map(str, changes))}{what}; pass --allow-config-change to continue with the new "
            "values (recorded in config_changes.jsonl; the result then differs from an uninterrupted run)"
        )
    plan.changes = changes
    for stage, done, ckpt, new in extended:
        plan.reopen.add(stage)
        plan.notes.append(f"stage {stage} is finished at step {done}; it continues from {ckpt} to step {new} "
                          "and its model folder is saved again")
    return plan
