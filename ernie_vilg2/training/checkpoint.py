"""Atomic, pickle-free, verifiable training checkpoints.

A checkpoint is a folder ``step-000200/`` holding ``model.safetensors`` (trainable
modules), ``optimizer.safetensors`` + ``optimizer.json`` (the optimizer's tensors and
its scalar state), ``ema.safetensors`` when EMA is on, ``config.yaml`` (the experiment
config it was made with) and ``state.json`` (step, metadata, and the size and SHA-256 of
every other file). It is written to a temporary folder and renamed into place, and the
``latest`` pointer is replaced atomically last, so an interrupted save never hides the
previous good checkpoint. :func:`find_resume_checkpoint` verifies checkpoints newest
first and returns the newest intact one with the damaged ones it passed over.

Expert-parallel checkpoints (:mod:`.expert_parallel`) hold the shared tensors at the top
and each expert's in a part folder ``expert-XX/`` (``model``, ``ema`` and one or more
``optimizer*.safetensors``), written by several ranks into a staging folder that one rank
then commits; ``state.json`` lists the parts and records their files as well. A loader
reads the top and the parts it asks for, so one process can load all parts and an expert
group only its own.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
from typing import Collection, Dict, List, Optional, Tuple

import paddle
import yaml
from safetensors.paddle import load_file, save_file

from ..errors import ErnieViLG2Error
from ..utils.integrity import (
    PADDLE_WEIGHT_DTYPES, DamagedFileError, check_safetensors, describe_files, read_json_file, verify_files,
)
from ..utils.io import apply_umask, atomic_directory, atomic_write_text, disk_full_as_error

logger = logging.getLogger(__name__)

LATEST = "latest"
STATE = "state.json"
CONFIG = "config.yaml"
DAMAGED_SUFFIX = ".damaged"
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointMismatch(ErnieViLG2Error, ValueError):
    """An intact checkpoint that does not fit the model being trained (another config)."""


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


def _nbytes(*states: Optional[Dict[str, paddle.Tensor]]) -> int:
    """The bytes of the tensors of ``states``: what a checkpoint of them needs on disk."""
    return sum(int(v.numel()) * v.element_size() for state in states if state for v in state.values())


def _write_state_files(folder: str, model_state: Optional[Dict[str, paddle.Tensor]],
                       optimizer_tensors: Optional[Dict[str, paddle.Tensor]],
                       ema_state: Optional[Dict[str, paddle.Tensor]],
                       optimizer_file: str = "optimizer.safetensors") -> None:
    if model_state is not None:
        save_file({k: v.detach() for k, v in model_state.items()}, os.path.join(folder, "model.safetensors"))
    if optimizer_tensors is not None:
        save_file(optimizer_tensors, os.path.join(folder, optimizer_file))
    if ema_state is not None:
        save_file({k: v.detach() for k, v in ema_state.items()}, os.path.join(folder, "ema.safetensors"))


def _finish(tmp: str, step: int, optimizer_scalars: dict, meta: Optional[dict], config: Optional[dict],
            parts: List[str]) -> None:
    """Write optimizer.json, config.yaml and state.json (sizes and SHA-256 of every file; the
    parts' records come from the ``files-*.json`` their writers left)."""
    with open(os.path.join(tmp, "optimizer.json"), "w", encoding="utf-8") as f:
        json.dump(optimizer_scalars, f)
    if config is not None:
        with open(os.path.join(tmp, CONFIG), "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, allow_unicode=True, sort_keys=False)
    files = describe_files(tmp, sorted(n for n in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, n))))
    for part in parts:
        for record in sorted(glob.glob(os.path.join(tmp, part, "files-*.json"))):
            with open(record, encoding="utf-8") as f:
                files.update({f"{part}/{name}": r for name, r in json.load(f).items()})
            os.remove(record)
    extra = {"parts": parts} if parts else {}
    with open(os.path.join(tmp, STATE), "w", encoding="utf-8") as f:
        json.dump({"step": step, **(meta or {}), **extra, "files": files}, f, indent=1)


def save_checkpoint(
    folder: str,
    step: int,
    model_state: Dict[str, paddle.Tensor],
    optimizer_state: dict,
    ema_state: Optional[Dict[str, paddle.Tensor]] = None,
    meta: Optional[dict] = None,
    keep: int = 2,
    config: Optional[dict] = None,
) -> str:
    """Write checkpoint ``folder/step-XXXXXX`` atomically; keep the newest ``keep``.

    ``config`` (the experiment config as a dict) is stored as ``config.yaml`` beside the
    weights; ``state.json`` records the size and SHA-256 of every file for verification.
    """
    os.makedirs(folder, exist_ok=True)
    name = f"step-{step:06d}"
    opt_tensors, opt_scalars = _split_state(optimizer_state)
    needed = _nbytes(model_state, opt_tensors, ema_state)
    with atomic_directory(os.path.join(folder, name), overwrite=True, needed=needed) as tmp:
        _write_state_files(str(tmp), model_state, opt_tensors, ema_state)
        _finish(str(tmp), step, opt_scalars, meta, config, parts=[])
    atomic_write_text(os.path.join(folder, LATEST), name)
    _prune(folder, keep, step)
    return os.path.join(folder, name)


def staging_dir(folder: str, step: int) -> str:
    """Where several ranks write checkpoint ``step`` before :func:`commit_checkpoint` (pruned if left)."""
    return os.path.join(folder, f".step-{step:06d}.tmp")


def start_checkpoint(staging: str) -> None:
    """Create the empty staging folder (one rank, before the others write their parts)."""
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted save
    os.makedirs(staging)


def write_checkpoint_part(staging: str, part: str, model_state: Optional[Dict[str, paddle.Tensor]],
                          optimizer_tensors: Optional[Dict[str, paddle.Tensor]],
                          ema_state: Optional[Dict[str, paddle.Tensor]], writer: int = 0) -> None:
    """Write one part (e.g. an expert's tensors) into ``staging/part/``, with the sizes and
    SHA-256 of its files in ``files-<writer>.json``. Writer ``k`` > 0 writes only optimizer
    tensors, to ``optimizer-<k>.safetensors`` (a slice of a sharded optimizer's state)."""
    folder = os.path.join(staging, part)
    os.makedirs(folder, exist_ok=True)
    optimizer_file = "optimizer.safetensors" if writer == 0 else f"optimizer-{writer}.safetensors"
    with disk_full_as_error(folder, _nbytes(model_state, optimizer_tensors, ema_state)):
        _write_state_files(folder, model_state, optimizer_tensors, ema_state, optimizer_file)
    names = [n for n, state in (("model.safetensors", model_state), (optimizer_file, optimizer_tensors),
                                ("ema.safetensors", ema_state)) if state is not None]
    atomic_write_text(os.path.join(folder, f"files-{writer}.json"), json.dumps(describe_files(folder, names)))


def commit_checkpoint(folder: str, step: int, staging: str, model_state: Dict[str, paddle.Tensor],
                      optimizer_state: dict, ema_state: Optional[Dict[str, paddle.Tensor]] = None,
                      meta: Optional[dict] = None, keep: int = 2, config: Optional[dict] = None) -> str:
    """Add the shared tensors and the records to the parts written into ``staging`` and move it
    into place as ``folder/step-XXXXXX`` (replacing one of that step), then point ``latest`` at it."""
    opt_tensors, opt_scalars = _split_state(optimizer_state)
    with disk_full_as_error(staging, _nbytes(model_state, opt_tensors, ema_state)):
        _write_state_files(staging, model_state, opt_tensors, ema_state)
        parts = sorted(d for d in os.listdir(staging) if os.path.isdir(os.path.join(staging, d)))
        _finish(staging, step, opt_scalars, meta, config, parts)
    apply_umask(staging)
    name = f"step-{step:06d}"
    target = os.path.join(folder, name)
    if os.path.exists(target):
        old = os.path.join(folder, f".{name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    atomic_write_text(os.path.join(folder, LATEST), name)
    _prune(folder, keep, step)
    return target


def checkpoint_step(path: str) -> int:
    return int(_STEP_DIR.fullmatch(os.path.basename(path)).group(1))


def _checkpoints(folder: str) -> List[str]:
    """``step-*`` folders of ``folder``, oldest first (damaged ones set aside are not listed)."""
    if not os.path.isdir(folder):
        return []
    names = [d for d in os.listdir(folder) if _STEP_DIR.fullmatch(d) and os.path.isdir(os.path.join(folder, d))]
    return [os.path.join(folder, d) for d in sorted(names, key=lambda d: int(d[5:]))]


def _prune(folder: str, keep: int, step: int) -> None:
    """Keep the newest ``keep`` checkpoints up to ``step`` (the one just written); later
    ones are left alone: they can only be damaged ones the run fell back from."""
    mine = [p for p in _checkpoints(folder) if checkpoint_step(p) <= step]
    for old in mine[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
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


def verify_checkpoint(path: str, checksum: bool = True) -> dict:
    """Check a checkpoint folder against the sizes and SHA-256 sums in its ``state.json``
    (when it has those records), and the structure of every safetensors file :func:`load_checkpoint`
    reads (float tensors only) in any case: a checksum only says the file is the one that was
    written. Returns the state; raises :class:`DamagedFileError` naming the first bad file."""
    state_path = os.path.join(path, STATE)
    state = read_json_file(state_path)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedFileError(state_path, "not a checkpoint state (expected a JSON object with a step)")
    if "files" in state:
        verify_files(path, state["files"], checksum=checksum)
    else:
        for name in ("model.safetensors", "optimizer.safetensors"):  # a checkpoint written before the records
            if not os.path.isfile(os.path.join(path, name)):
                raise DamagedFileError(os.path.join(path, name), "file not found")
        read_json_file(os.path.join(path, "optimizer.json"))
    parts = state.get("parts", [])
    if not (isinstance(parts, list) and all(isinstance(p, str) for p in parts)):
        raise DamagedFileError(state_path, "not a checkpoint state (parts must be a list of folder names)")
    for folder in [path] + [os.path.join(path, p) for p in parts]:
        for name in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
            check_safetensors(name, PADDLE_WEIGHT_DTYPES)
    return state


def find_resume_checkpoint(
    folder: str, hint: str = "move the folder away to train this stage from the start"
) -> Tuple[Optional[str], List[Tuple[str, DamagedFileError]]]:
    """The newest intact checkpoint of ``folder`` (None if there is none at all) and the
    damaged newer ones passed over, as ``(path, error)``. If every checkpoint is damaged,
    raises a one-line :class:`DamagedFileError` naming each and ending in ``hint``."""
    damaged = []
    for path in reversed(_checkpoints(folder)):
        try:
            verify_checkpoint(path)
        except DamagedFileError as exc:
            damaged.append((path, exc))
            continue
        return path, damaged
    if damaged:
        reasons = "; ".join(f"{os.path.relpath(exc.path, folder)}: {exc.reason}" for _, exc in damaged)
        raise DamagedFileError(folder, f"no intact checkpoint to resume from ({reasons}); {hint}")
    return None, []


def set_aside_damaged(damaged: List[Tuple[str, DamagedFileError]], resume_from: str) -> None:
    """Rename damaged checkpoints to ``step-XXXXXX.damaged`` (kept for inspection, out of
    the way of new saves and pruning), warn about each and point ``latest`` at ``resume_from``."""
    for path, exc in damaged:
        kept, n = path + DAMAGED_SUFFIX, 1
        while os.path.exists(kept):
            kept, n = f"{path}{DAMAGED_SUFFIX}-{n}", n + 1
        os.replace(path, kept)
        logger.warning("checkpoint %s is damaged: %s: %s; kept as %s, resuming from the older %s",
                       path, os.path.relpath(exc.path, path), exc.reason, os.path.basename(kept), resume_from)
    if damaged:
        atomic_write_text(os.path.join(os.path.dirname(resume_from), LATEST), os.path.basename(resume_from))


def read_checkpoint_config(path: str) -> Optional[dict]:
    """The experiment config a checkpoint was made with (None for older checkpoints)."""
    config = os.path.join(path, CONFIG)
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_checkpoint(path: str, checksum: bool = True, parts: Optional[Collection[str]] = None) -> dict:
    """Return {'step', 'meta', 'model', 'optimizer', 'ema' (or None)} from a checkpoint folder,
    after :func:`verify_checkpoint` (``checksum=False``: sizes only, when already verified).

    The tensors of the top and of the ``parts`` asked for (None: all parts) are merged.
    """
    meta = verify_checkpoint(path, checksum=checksum)
    folders = [path] + [os.path.join(path, p) for p in meta.get("parts", []) if parts is None or p in parts]
    model, optimizer, ema = {}, {}, {}
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "model.safetensors")):
            model.update(load_file(os.path.join(folder, "model.safetensors")))
        for name in sorted(glob.glob(os.path.join(folder, "optimizer*.safetensors"))):
            optimizer.update(load_file(name))
        if os.path.isfile(os.path.join(folder, "ema.safetensors")):
            ema.update(load_file(os.path.join(folder, "ema.safetensors")))
    with open(os.path.join(path, "optimizer.json"), encoding="utf-8") as f:
        opt_scalars = json.load(f)
    return {
        "step": int(meta["step"]),
        "meta": meta,
        "model": model,
        "optimizer": _join_state(optimizer, opt_scalars),
        "ema": ema if os.path.isfile(os.path.join(path, "ema.safetensors")) else None,
    }
