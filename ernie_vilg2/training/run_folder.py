"""The run folder (``train.output_dir``): one trainer at a time, and the record of its config.

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
from typing import Optional

import yaml

from ..errors import ErnieViLG2Error
from ..utils.io import atomic_write_text

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
