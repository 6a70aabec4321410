"""Load a saved ErnieViLG2Pipeline folder with clear errors and an optional sampler swap."""
from __future__ import annotations

import os
from typing import Optional

from ..utils.integrity import NUMPY_WEIGHT_DTYPES, DamagedFileError, check_model_folder, read_json_file

MODEL_INDEX = "model_index.json"


def check_pipeline_folder(model_dir: str) -> None:
    """Check ``model_index.json`` and every component folder it lists (JSON files parse,
    weight files are well formed and hold floats, which the loader reads through NumPy)
    before the libraries read them, so that a damaged file is one :class:`DamagedFileError`
    naming it instead of a traceback of library internals (or integers cast into weights)."""
    index_path = os.path.join(model_dir, MODEL_INDEX)
    index = read_json_file(index_path)
    if not isinstance(index, dict):
        raise DamagedFileError(index_path, "not a pipeline index (expected a JSON object)")
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or None in spec:
            continue  # metadata, or an optional component that was saved as None
        folder = os.path.join(model_dir, name)
        if not os.path.isdir(folder):
            raise DamagedFileError(folder, f"folder not found ({MODEL_INDEX} lists component {name}: {spec[-1]})")
        check_model_folder(folder, NUMPY_WEIGHT_DTYPES)


def load_pipeline(model_dir: str, sampler: Optional[str] = None, expert_offload: Optional[str] = None):
    """``ErnieViLG2Pipeline.from_pretrained(model_dir, expert_offload=expert_offload)``; ``sampler``
    ("ddim" or "dpm") replaces the saved scheduler with one built from the same noise-schedule config.

    A missing folder is a FileNotFoundError; a damaged file in it a
    :class:`~ernie_vilg2.utils.integrity.DamagedFileError` (a ValueError) naming the file.
    """
    from ..models.factory import SAMPLERS, build_sampler
    from .pipeline_ernie_vilg2 import ErnieViLG2Pipeline

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
