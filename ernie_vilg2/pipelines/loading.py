"""Load a saved ErnieViLG2Pipeline folder with clear errors and an optional sampler swap."""
from __future__ import annotations

import os
from typing import Optional

from ..models.factory import SAMPLERS, build_sampler
from ..utils.integrity import MODEL_INDEX
from .pipeline_ernie_vilg2 import ErnieViLG2Pipeline


def load_pipeline(model_dir: str, sampler: Optional[str] = None, expert_offload: Optional[str] = None):
    """``ErnieViLG2Pipeline.from_pretrained(model_dir, expert_offload=expert_offload)``; ``sampler``
    ("ddim" or "dpm") replaces the saved scheduler with one built from the same noise-schedule config.

    A missing folder is a FileNotFoundError; a damaged file in it a
    :class:`~ernie_vilg2.utils.integrity.DamagedFileError` (a ValueError) naming the file.
    """
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    if not os.path.isfile(os.path.join(model_dir, MODEL_INDEX)):
        raise FileNotFoundError(
            f"not a saved pipeline folder (no {MODEL_INDEX}): {model_dir}"
        )
    pipe = ErnieViLG2Pipeline.from_pretrained(model_dir, expert_offload=expert_offload)  # checks the files first
    if sampler is not None:
        pipe.scheduler = build_sampler(sampler, dict(pipe.scheduler.config))
    return pipe
