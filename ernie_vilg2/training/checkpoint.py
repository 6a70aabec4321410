"""Atomic, pickle-free training checkpoints.

A checkpoint is a folder ``step-000200/`` holding ``model.safetensors`` (trainable
modules), ``optimizer.safetensors`` + ``optimizer.json`` (the optimizer's tensors and
its scalar state), ``ema.safetensors`` when EMA is on, and ``state.json`` (step and
metadata). It is written to a temporary folder and renamed into place, and the
``latest`` pointer is replaced atomically last, so an interrupted save never hides the
previous good checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional, Tuple

import paddle
from safetensors.paddle import load_file, save_file

from ..utils.io import atomic_directory, atomic_write_text

LATEST = "latest"


def _split_state(state: dict, prefix: str = "") -> Tuple[Dict[str, paddle.Tensor], dict]:
    """Separate tensors (for safetensors) from JSON-able scalars, keeping nested keys."""
    tensors, scalars = {}, {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, paddle.Tensor):
            tensors[name] = value.detach().contiguous() if hasattr(value, "contiguous") else value.detach()
        elif isinstance(value, dict):
            sub_t, sub_s = _split_state(value, f"{name}/")
            tensors.update(sub_t)
            if sub_s:
                scalars[key] = sub_s
            elif not sub_t:
                scalars[key] = {}
        else:
            scalars[key] = value
    return tensors, scalars


def _join_state(tensors: Dict[str, paddle.Tensor], scalars: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        node = state
        parts = name.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def merge_scalars(node, extra):
        for key, value in extra.items():
            if isinstance(value, dict):
                merge_scalars(node.setdefault(key, {}), value)
            else:
                node[key] = value

    merge_scalars(state, scalars)
    return state


def save_checkpoint(
    folder: str,
    step: int,
    model_state: Dict[str, paddle.Tensor],
    optimizer_state: dict,
    ema_state: Optional[Dict[str, paddle.Tensor]] = None,
    meta: Optional[dict] = None,
    keep: int = 2,
) -> str:
    """Write checkpoint ``folder/step-XXXXXX`` atomically; keep the newest ``keep``."""
    os.makedirs(folder, exist_ok=True)
    name = f"step-{step:06d}"
    with atomic_directory(os.path.join(folder, name), overwrite=True) as tmp:
        save_file({k: v.detach() for k, v in model_state.items()}, os.path.join(tmp, "model.safetensors"))
        opt_tensors, opt_scalars = _split_state(optimizer_state)
        save_file(opt_tensors, os.path.join(tmp, "optimizer.safetensors"))
        with open(os.path.join(tmp, "optimizer.json"), "w", encoding="utf-8") as f:
            json.dump(opt_scalars, f)
        if ema_state is not None:
            save_file({k: v.detach() for k, v in ema_state.items()}, os.path.join(tmp, "ema.safetensors"))
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
            json.dump({"step": step, **(meta or {})}, f, indent=1)
    atomic_write_text(os.path.join(folder, LATEST), name)
    _prune(folder, keep)
    return os.path.join(folder, name)


def _prune(folder: str, keep: int) -> None:
    steps = sorted(d for d in os.listdir(folder) if d.startswith("step-"))
    for old in steps[:-keep]:
        shutil.rmtree(os.path.join(folder, old), ignore_errors=True)
    for d in os.listdir(folder):  # leftovers of interrupted saves
        if d.startswith(".step-") and d.endswith((".tmp", ".old")):
            shutil.rmtree(os.path.join(folder, d), ignore_errors=True)


def latest_checkpoint(folder: str) -> Optional[str]:
    pointer = os.path.join(folder, LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        path = os.path.join(folder, f.read().strip())
    if not os.path.isfile(os.path.join(path, "state.json")):
        raise FileNotFoundError(f"checkpoint pointer {pointer} names a missing or incomplete checkpoint: {path}")
    return path


def load_checkpoint(path: str) -> dict:
    """Return {'step', 'meta', 'model', 'optimizer', 'ema' (or None)} from a checkpoint folder."""
    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        meta = json.load(f)
    with open(os.path.join(path, "optimizer.json"), encoding="utf-8") as f:
        opt_scalars = json.load(f)
    ema_file = os.path.join(path, "ema.safetensors")
    return {
        "step": int(meta["step"]),
        "meta": meta,
        "model": load_file(os.path.join(path, "model.safetensors")),
        "optimizer": _join_state(load_file(os.path.join(path, "optimizer.safetensors")), opt_scalars),
        "ema": load_file(ema_file) if os.path.isfile(ema_file) else None,
    }
