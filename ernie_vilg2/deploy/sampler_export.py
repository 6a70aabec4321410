"""The manifest's ``samplers`` section: each sampler as ``build_sampler`` builds it from the saved
scheduler config, written as the settings the runners read.

:func:`ernie_vilg2.models.factory.build_sampler` is the one place that decides how a sampler is
built from a saved config (which keys carry over, the DDIM and DPM-Solver++ overrides); the
step limit is :func:`ernie_vilg2.pipelines.checks.max_inference_steps`. The exporter applies them
here once, and both runners construct their samplers from the result with no rules of their own
(:mod:`.schedulers`, deploy/cpp/src/scheduler.cc). Export side: imports PPDiffusers.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from .schedulers import CLASS_NAMES, SETTINGS, scheduler_from_settings


def _plain(value):
    """A config value as JSON writes it (trained betas may be an array)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def _public(config) -> Dict:
    return {key: _plain(value) for key, value in dict(config).items() if not key.startswith("_")}


def sampler_settings(name: str, saved: Dict) -> Dict:
    """``samplers[name]``: ``{"class", "max_steps", "config"}`` of the sampler ``build_sampler``
    builds from the saved scheduler config ``saved``. Raises ValueError (or PPDiffusers'
    NotImplementedError) naming a setting the runners do not implement."""
    from ..models.factory import build_sampler
    from ..pipelines.checks import max_inference_steps

    sampler = build_sampler(name, saved)
    resolved = _public(sampler.config)
    config = {key: resolved[key] for key in SETTINGS[name]}
    # Every other setting of the class must be the one PPDiffusers takes without it, or the
    # runners, which read only these, would compute another sampler.
    rebuilt = _public(type(sampler).from_config(config).config)
    for key, value in rebuilt.items():
        if resolved.get(key, value) != value:
            raise ValueError(f"{key}: {resolved[key]!r} is not implemented by the deploy runners")
    entry = {"class": type(sampler).__name__, "max_steps": max_inference_steps(sampler), "config": config}
    scheduler_from_settings(name, entry)  # and the runners must take these settings as they are
    return entry


def resolve_samplers(saved: Dict, log: Callable[[str], None]) -> Dict:
    """The ``samplers`` section for the saved scheduler config ``saved``: every sampler the runners
    can run (one they cannot is left out, and ``log`` says why), and ``default``, the saved
    pipeline's own sampler if offered (else dpm, the tools' default, else ddim). Raises ValueError
    if neither can be run."""
    from ..models.factory import SAMPLERS

    section, reasons = {}, []
    for name in SAMPLERS:
        try:
            section[name] = sampler_settings(name, saved)
        except (ValueError, NotImplementedError) as exc:
            reasons.append(f"{name}: {exc}")
            log(f"sampler {name} not exported: {exc}")
    if not section:
        raise ValueError(f"the deploy runners can run neither sampler ({'; '.join(reasons)})")
    own = {class_name: name for name, class_name in CLASS_NAMES.items()}.get(saved.get("_class_name"))
    section["default"] = own if own in section else "dpm" if "dpm" in section else "ddim"
    return section
