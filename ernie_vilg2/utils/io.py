"""Atomic writes: a reader (or a crash) never sees a half-written file or folder.

Every file or folder the package writes goes through :func:`atomic_file` or
:func:`atomic_directory`, which

- write to a temporary name beside the target and rename it into place when complete;
- give the result the mode a plain ``open``/``mkdir`` would (``0666``/``0777`` less the
  umask): temporary files are created owner-only, and so are the safetensors writer's files;
- turn a full disk (``ENOSPC``, ``EDQUOT``) into one :class:`DiskFullError` naming the path,
  the space the write needed and the space left, after removing the partial write.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

from ..errors import ErnieViLG2Error

PathLike = Union[str, os.PathLike]

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How the disk-full errors of writers that do not raise OSError read: Rust's std::io::Error
# (the safetensors writer) ends with "(os error N)"; numpy's tofile (np.save to a file) has no errno.
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")
_NUMPY_NO_SPACE = "Not enough free space to write"


# -- file modes ----------------------------------------------------------------------------------
def current_umask() -> int:
    """The process's umask. Read from ``/proc/self/status`` on Linux, since setting and
    restoring it (the only portable way) briefly changes it for every thread."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode ``mkdir`` (``directory``) or ``open`` would give a new file under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def apply_umask(path: PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes of the umask;
    files that were executable stay executable."""
    mask = current_umask()

    def fix(p: str, directory: bool) -> None:
        executable = not directory and os.stat(p).st_mode & 0o111
        os.chmod(p, (0o777 if directory or executable else 0o666) & ~mask)

    path = os.fspath(path)
    if not os.path.isdir(path):
        fix(path, False)
        return
    fix(path, True)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                fix(os.path.join(root, name), True)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                fix(os.path.join(root, name), False)


# -- a full disk -------------------------------------------------------------------------------------
def free_space(path: PathLike) -> int:
    """Bytes free on the file system of ``path`` (or of its nearest existing parent)."""
    path = os.path.abspath(os.fspath(path))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def _size_text(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size >= 1024:
            size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


class DiskFullError(ErnieViLG2Error, ValueError):
    """Writing ``path`` failed for lack of space. ``str()`` is one line naming the path, the
    space the write needed (an estimate: ``needed`` bytes, or more than the ``written`` bytes
    it got to) and the space free there."""

    def __init__(self, path: PathLike, needed: Optional[int] = None, written: Optional[int] = None):
        self.path, self.needed, self.written = os.fspath(path), needed, written
        self.free = free_space(self.path)
        free = f"{_size_text(self.free)} free there"
        if needed is not None:
            space = f"writing it needs about {_size_text(needed)}, {free}"
        elif written:
            space = f"writing it needs more than {_size_text(written)}, {free}"
        else:
            space = free
        super().__init__(f"{self.path}: not enough space on the device ({space}); free some space or write elsewhere")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or quota is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        code = _OS_ERROR_CODE.search(str(exc))
        if code and int(code.group(1)) in _DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, OSError) and str(exc).startswith(_NUMPY_NO_SPACE):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def disk_full_as_error(path: PathLike, needed: Optional[int] = None) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into :class:`DiskFullError` (``needed``: an
    estimate of the bytes the write needs); other errors pass unchanged."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        if needed is None and isinstance(exc, DiskFullError):  # keep the inner write's estimate
            raise DiskFullError(path, exc.needed, exc.written) from exc
        raise DiskFullError(path, needed) from exc


def _tree_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(path) for name in files
               if os.path.isfile(os.path.join(root, name)))


def _discard(tmp: str, exc: BaseException, target: Path, needed: Optional[int]) -> None:
    """Remove a failed temporary write; a full disk becomes :class:`DiskFullError`."""
    full = is_disk_full(exc)
    written = _tree_size(tmp) if full and os.path.exists(tmp) else None
    if os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if full:
        raise DiskFullError(target, needed, written) from exc


# -- atomic writes -----------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: PathLike, suffix: str = ".tmp", needed: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``) to write; on success it
    gets the umask's mode and is renamed to ``path``. On error it is removed and ``path`` is
    untouched; a full disk is a :class:`DiskFullError` (``needed``: estimated bytes)."""
    path = Path(path)
    with disk_full_as_error(path, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp, exc, path, needed)
        raise


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_save_image(image, path: PathLike, **save_kwargs) -> Path:
    """Save a PIL image atomically; the format follows ``path``'s suffix."""
    path = Path(path)
    with atomic_file(path, suffix=path.suffix) as tmp:
        image.save(tmp, **save_kwargs)
    return path


@contextlib.contextmanager
def atomic_directory(path: PathLike, overwrite: bool = False, needed: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it (and all in it) gets the
    umask's modes and is renamed to ``path``.

    On error the temporary folder is removed and an existing ``path`` is untouched; a full
    disk is a :class:`DiskFullError` (``needed``: estimated bytes). An existing ``path`` is an
    error unless ``overwrite``; then it is swapped out by rename and deleted only after the
    new folder is in place.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite to replace it)")
    with disk_full_as_error(path, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        yield Path(tmp)
        apply_umask(tmp)
    except BaseException as exc:
        _discard(tmp, exc, path, needed)
        raise
    old = None
    if path.exists():
        old = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
