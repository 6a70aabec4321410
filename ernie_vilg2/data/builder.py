"""``build_dataset``: the dataset a config asks for (built-in or the user's own files)."""
from __future__ import annotations

import os

from .config import DataConfig
from .jsonl import JsonlDataset
from .prepare import prepare_builtin_dataset

SPLITS = ("train", "val")


def dataset_path(cfg: DataConfig, split: str = "train") -> str:
    """The .jsonl file or folder for ``split``; builds the built-in data when root is null."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if cfg.root is None:
        return prepare_builtin_dataset(cfg.builtin, cfg.resolution)
    if split == "val" and cfg.val_root is not None:
        return cfg.val_root
    if split == "val" and os.path.isfile(cfg.root):
        # A single .jsonl given as root: its sibling val.jsonl, if any.
        sibling = os.path.join(os.path.dirname(cfg.root), "val.jsonl")
        if os.path.isfile(sibling) and os.path.abspath(sibling) != os.path.abspath(cfg.root):
            return sibling
        raise FileNotFoundError(f"data.root is the file {cfg.root}: set data.val_root for the val split")
    return cfg.root


def build_dataset(cfg: DataConfig, split: str = "train") -> JsonlDataset:
    """Load ``split`` of the configured data (materialising the built-in set once)."""
    return JsonlDataset(
        dataset_path(cfg, split),
        cfg.resolution,
        split=split,
        languages=cfg.languages,
        image_fit=cfg.image_fit,
        max_samples=cfg.max_samples,
        max_image_pixels=cfg.max_image_pixels,
    )
