"""Where a pretrained U-Net or VAE lives in a local folder, and which weights file is read.

A folder is either a whole pipeline (the Stable Diffusion layout: ``unet/``, ``vae/`` ...) or one
component folder (``config.json`` + weights). The weights are safetensors only, in diffusers'
PyTorch layout (``diffusion_pytorch_model.safetensors``) or PPDiffusers' Paddle layout
(``diffusion_paddle_model.safetensors``), either one file or shards named by an ``.index.json``.
Pickle files (``.bin``, ``.ckpt``, ``.pt``, ``.pth``, ``.pdparams``) are never read: unpickling
runs whatever code the file holds. Free of Paddle: the config reads it.
"""
from __future__ import annotations

import os
from typing import List, NamedTuple

from ..utils.integrity import NUMPY_WEIGHT_DTYPES, DamagedFileError, check_safetensors, read_json_file

# (file name, PyTorch layout), in the order they are preferred.
_WEIGHTS = (
    ("diffusion_paddle_model.safetensors", False),
    ("diffusion_pytorch_model.safetensors", True),
)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pdparams")
CONVERT_HINT = ("convert it to safetensors in PyTorch: diffusers' <Class>.from_pretrained(FOLDER)"
                ".save_pretrained(FOLDER, safe_serialization=True), or for a single-file .ckpt "
                "StableDiffusionPipeline.from_single_file(FILE).save_pretrained(DIR)")


class WeightFiles(NamedTuple):
    folder: str  # the component folder (config.json and the weights)
    files: List[str]  # the safetensors files, in load order
    pytorch_layout: bool  # diffusers' layout: PPDiffusers converts it on load


def component_folder(path: str, component: str) -> str:
    """``path/component`` of a pipeline folder, or ``path`` itself if it is the component's folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DamagedFileError(path, "folder not found")
    for folder in (os.path.join(path, component), path):
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    raise DamagedFileError(path, f"neither a pipeline folder with {component}/config.json nor a {component} folder "
                                 "with config.json")


def component_config(path: str, component: str) -> dict:
    """The ``config.json`` of the component (a JSON object, else a one-line error naming it)."""
    config_path = os.path.join(component_folder(path, component), "config.json")
    config = read_json_file(config_path)
    if not isinstance(config, dict):
        raise DamagedFileError(config_path, "not a model config (expected a JSON object)")
    return config


def _shards(folder: str, index_name: str) -> List[str]:
    index_path = os.path.join(folder, index_name)
    index = read_json_file(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise DamagedFileError(index_path, "not a shard index (expected a non-empty weight_map)")
    names = sorted(set(weight_map.values()))
    for name in names:
        if not (isinstance(name, str) and name.endswith(".safetensors") and os.sep not in name):
            raise DamagedFileError(index_path, f"names shard {name!r} (expected a .safetensors file beside it)")
    return [os.path.join(folder, name) for name in names]


def weight_files(path: str, component: str) -> WeightFiles:
    """The component's safetensors weights, checked (:func:`check_safetensors`); a folder with
    only pickle weights, or none, is a one-line :class:`DamagedFileError` naming it."""
    folder = component_folder(path, component)
    names = sorted(os.listdir(folder))
    for name, pytorch_layout in _WEIGHTS:
        if name + ".index.json" in names:
            files = _shards(folder, name + ".index.json")
        elif name in names:
            files = [os.path.join(folder, name)]
        else:
            continue
        for file in files:
            check_safetensors(file, NUMPY_WEIGHT_DTYPES)
        return WeightFiles(folder, files, pytorch_layout)
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise DamagedFileError(os.path.join(folder, pickles[0]),
                               f"pickle weights are never loaded (they can run code); {CONVERT_HINT}")
    raise DamagedFileError(folder, f"no weights file (expected {' or '.join(n for n, _ in _WEIGHTS)})")


NOISE_SCHEDULE_FIELDS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


def schedule_differences(path: str, schedule: dict) -> List[str]:
    """``field: ours vs the folder's`` for each noise-schedule field of ``schedule`` that differs from
    the pipeline folder's ``scheduler/scheduler_config.json`` (none without one)."""
    config_path = os.path.join(os.fspath(path), "scheduler", "scheduler_config.json")
    if not os.path.isfile(config_path):
        return []
    folder = read_json_file(config_path)
    if not isinstance(folder, dict):
        raise DamagedFileError(config_path, "not a scheduler config (expected a JSON object)")
    return [f"model.{name}: {schedule[name]!r} vs {folder[name]!r}" for name in NOISE_SCHEDULE_FIELDS
            if name in folder and name in schedule and schedule[name] != folder[name]]
