"""The run folder (``train.output_dir``): its stages, one trainer at a time, the record of its config.

Layout of ``train.output_dir``::

    .lock                   held by the running trainer (pid, host, start time)
    config.yaml             the resolved config the run started with (never rewritten)
    config_changes.jsonl    config changes accepted on --resume --allow-config-change
    vae/                    trained AutoencoderKL (frozen afterwards)
    base/                   stage-1 pipeline (one U-Net), from_pretrained-ready
    experts/                stage-2 pipeline (N experts): the final model (expert-parallel runs
                            assemble it from checkpoints/experts/.final/expert-XX.safetensors)
    checkpoints/<stage>/    step-XXXXXX checkpoints (weights, optimizer, config.yaml, checksums)
                            and the `latest` pointer; damaged ones set aside as *.damaged
    samples/<stage>.png     sample grid at the end of each diffusion stage
    vdl/                    VisualDL logs (visualdl --logdir OUTPUT/vdl)

``RunLock`` holds an exclusive ``flock`` on ``OUTPUT/.lock``, which names the holder
(pid, host, start time). The kernel drops the lock when the process dies, however it
dies, so a dead trainer never blocks the folder; the holder's details left in the file
tell the next trainer that the previous one did not end cleanly (a stale lock), which is
reported and taken over. A clean exit empties the file.

``config.yaml`` is written once, when a run starts in a folder that holds nothing yet;
config changes accepted on ``--resume --allow-config-change`` are appended to
``config_changes.jsonl`` (each checkpoint also stores the config it was made with).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from typing import Callable, List, Optional

import yaml

from ..errors import ErnieViLG2Error
from ..utils.io import atomic_directory, atomic_write_text
from .config import STAGES, ExperimentConfig

logger = logging.getLogger(__name__)

LOCK = ".lock"
RUN_CONFIG = "config.yaml"
CONFIG_CHANGES = "config_changes.jsonl"


class RunFolderLocked(ErnieViLG2Error, RuntimeError):
    """Another live trainer holds the run folder."""


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


def _describe(holder: dict) -> str:
    if not holder:
        return "no details written yet"
    if "pid" not in holder:
        return f"lock file content {holder.get('raw', '')[:80]!r}"
    return f"pid {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


class RunLock:
    """Exclusive lock of a run folder; ``with RunLock(folder):`` or ``acquire()``/``release()``."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK)
        self._fd: Optional[int] = None

    def _holder(self, fd: int) -> dict:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if not raw:
            return {}
        try:
            holder = json.loads(raw)
        except json.JSONDecodeError:
            return {"raw": raw}
        return holder if isinstance(holder, dict) else {"raw": raw}

    def acquire(self) -> "RunLock":
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise RunFolderLocked(
                f"train.output_dir {self.folder} is in use by another trainer ({_describe(holder)}; "
                f"lock file {self.path}): wait for it to end or choose another train.output_dir"
            ) from None
        previous = self._holder(fd)
        if previous:
            logger.warning("train.output_dir %s: stale lock of %s, which ended without releasing it "
                           "(killed?); taking it over", self.folder, _describe(previous))
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("utf-8"), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_run_config(folder: str, config: dict, new_run: bool) -> None:
    """``OUTPUT/config.yaml``: written when a run starts (``new_run``) or if missing, never
    rewritten afterwards, so it keeps describing the run's first checkpoints."""
    path = os.path.join(folder, RUN_CONFIG)
    if new_run or not os.path.isfile(path):
        atomic_write_text(path, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))


def record_config_changes(folder: str, record: dict) -> str:
    """Append one accepted set of config changes to ``OUTPUT/config_changes.jsonl``."""
    path = os.path.join(folder, CONFIG_CHANGES)
    line = json.dumps({"time": _now(), "pid": os.getpid(), "host": socket.gethostname(), **record},
                      ensure_ascii=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


STAGE_OUTPUT_MARKER = {"vae": "config.json", "base": "model_index.json", "experts": "model_index.json"}


def stage_dir(cfg: ExperimentConfig, stage: str) -> str:
    return os.path.join(cfg.train.output_dir, stage)


def stage_done(cfg: ExperimentConfig, stage: str) -> bool:
    return os.path.isfile(os.path.join(stage_dir(cfg, stage), STAGE_OUTPUT_MARKER[stage]))


def final_model_dir(cfg: ExperimentConfig) -> Optional[str]:
    """The newest finished pipeline (experts, else base); None before stage 1 is done."""
    for stage in ("experts", "base"):
        if stage_done(cfg, stage):
            return stage_dir(cfg, stage)
    return None


def save_atomically(save_fn: Callable[[str], None], target: str) -> None:
    """Call ``save_fn(tmp_dir)`` and move the finished folder to ``target`` in one rename."""
    with atomic_directory(target, overwrite=True) as tmp:
        save_fn(str(tmp))


def saved_state(cfg: ExperimentConfig) -> List[str]:
    """What the run folder already holds: finished stages, or 'checkpoints'."""
    existing = [s for s in STAGES if stage_done(cfg, s)]
    if not existing and os.path.isdir(os.path.join(cfg.train.output_dir, "checkpoints")):
        existing = ["checkpoints"]
    return existing


def check_output_dir(cfg: ExperimentConfig, resume: bool) -> None:
    existing = saved_state(cfg)
    if existing and not resume:
        raise FileExistsError(
            f"train.output_dir {cfg.train.output_dir!r} already holds a run ({', '.join(existing)}); "
            "pass --resume to continue it or choose another train.output_dir"
        )


def stages_to_run(cfg: ExperimentConfig, selected: List[str], reopen) -> List[str]:
    """The stages of ``selected`` that still train, in order: not finished, or reopened by
    ``--resume --allow-config-change`` with more steps (``reopen``)."""
    todo = []
    for stage in STAGES:
        if stage not in selected:
            continue
        if stage == "experts" and cfg.model.num_experts == 1:
            logger.info("model.num_experts is 1: no expert stage (the base U-Net is the model)")
        elif stage == "vae" and cfg.model.vae.pretrained:
            logger.info("model.vae.pretrained is set: no vae stage (the pretrained VAE is used, frozen)")
        elif stage_done(cfg, stage) and stage not in reopen:
            logger.info("stage %s already finished: %s", stage, stage_dir(cfg, stage))
        else:
            todo.append(stage)
    return todo
