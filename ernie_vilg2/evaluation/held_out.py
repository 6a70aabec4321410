"""The prompts of an evaluation: a prompt file, or by default the held-out captions of the
data the model was trained on, found through the run's ``config.yaml`` (the training output
folder holds the model folder and that file)."""
from __future__ import annotations

import os
from typing import List, Optional

from ..config import from_dict, read_yaml
from ..data.config import DataConfig
from ..errors import ErnieViLG2Error
from ..utils.prompts import read_prompts


class HeldOutDataError(ErnieViLG2Error, ValueError):
    """The model's held-out data cannot be found; the message says why (no flag names)."""


def held_out_data(model_dir: str) -> str:
    """The val.jsonl of the data the model was trained on. Only the run config's ``data:``
    section is read (evaluation never imports training); its paths are relative to the
    working directory, as they were for the trainer."""
    from ..data.builder import dataset_path  # deferred, as the data modules below: they import paddle
    from ..data.jsonl import resolve_jsonl_path
    from ..data.prepare import resolve_out_dir

    config = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "config.yaml")
    if not os.path.isfile(config):
        raise HeldOutDataError(f"no training config.yaml beside the model ({config})")
    try:
        data = from_dict(DataConfig, read_yaml(config).get("data"), "data")
        folder = resolve_out_dir(data.builtin, data.resolution) if data.root is None else dataset_path(data, "val")
        return resolve_jsonl_path(folder, "val")
    except (FileNotFoundError, ValueError) as exc:
        raise HeldOutDataError(f"the model's held-out data is not usable ({exc}; from {config}, relative to the "
                               "working directory)") from None


def read_evaluation_prompts(source: str, column: Optional[str] = None, limit: Optional[int] = None) -> List[str]:
    """The captions of a .jsonl dataset's records, else the prompts of a prompt file
    (:func:`~ernie_vilg2.utils.prompts.read_prompts`: a CSV/TSV ``column`` or one per line)."""
    from ..data.jsonl import read_jsonl_records  # deferred: imports paddle

    if source.lower().endswith(".jsonl"):
        records, _ = read_jsonl_records(source, check_images=False)
        return [r["caption"] for r in records][:limit]
    return read_prompts(source, column=column, limit=limit)
