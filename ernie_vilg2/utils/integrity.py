"""File integrity: one-line errors for damaged weight files, and size/checksum records.

Loading a truncated ``.safetensors`` file through the libraries gives a long traceback
that never names the file. :func:`check_safetensors` reads only the header (8-byte
length + JSON) and checks that every tensor's bytes lie inside the file, so a damaged
file is reported as ``FILE: reason (expected ..., found ...)`` before any library sees
it. :func:`describe_files` / :func:`verify_files` record and check sizes and SHA-256
sums of the files of a folder (checkpoints, exported models). :func:`check_model_folder`
checks a ``from_pretrained`` folder (its JSON files and weights) the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any, Dict, Iterable, Mapping

# A safetensors header is a little-endian u64 length followed by that much JSON; the
# format caps the header at 100 MB.
_MAX_HEADER = 100 * 1024 * 1024


class DamagedFileError(ValueError):
    """A file is missing, truncated or not what it claims to be. ``str()`` is one line
    that names the file."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def check_safetensors(path: str) -> Dict[str, dict]:
    """Validate the structure of a ``.safetensors`` file; return its tensor entries.

    Raises :class:`DamagedFileError` (naming ``path``) when the file is missing, empty,
    truncated, or its header is not valid safetensors JSON.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DamagedFileError(path, "file not found")
    size = os.path.getsize(path)
    if size < 8:
        raise DamagedFileError(path, f"not a safetensors file (expected at least 8 bytes, found {size})")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > _MAX_HEADER:
            raise DamagedFileError(path, f"not a safetensors file (header length {header_len} is implausible)")
        if 8 + header_len > size:
            raise DamagedFileError(
                path, f"truncated (header needs {8 + header_len} bytes, file has {size})"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DamagedFileError(path, "not a safetensors file (header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise DamagedFileError(path, "not a safetensors file (header is not a JSON object)")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    data_end = 0
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise DamagedFileError(path, f"not a safetensors file (tensor {name!r} has no valid data_offsets)")
        data_end = max(data_end, offsets[1])
    expected = 8 + header_len + data_end
    if size < expected:
        raise DamagedFileError(path, f"truncated (expected {expected} bytes, found {size})")
    return tensors


def sha256_file(path: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: str, names: Iterable[str], checksum: bool = True) -> Dict[str, dict]:
    """``{name: {"size": bytes, "sha256": hex}}`` for files of ``folder`` (sha256 only
    with ``checksum``), to be written beside them and checked by :func:`verify_files`."""
    records = {}
    for name in names:
        path = os.path.join(folder, name)
        record = {"size": os.path.getsize(path)}
        if checksum:
            record["sha256"] = sha256_file(path)
        records[name] = record
    return records


def verify_files(folder: str, records: Mapping[str, Mapping], checksum: bool = True) -> None:
    """Check the files of ``folder`` against :func:`describe_files` records.

    Sizes are always compared (cheap); SHA-256 sums too when ``checksum`` and the record
    has one. Raises :class:`DamagedFileError` naming the first bad file.
    """
    for name, record in records.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DamagedFileError(path, "file not found")
        size = os.path.getsize(path)
        if size != record.get("size"):
            raise DamagedFileError(path, f"wrong size (expected {record.get('size')} bytes, found {size})")
        if checksum and "sha256" in record and sha256_file(path) != record["sha256"]:
            raise DamagedFileError(path, "SHA-256 checksum differs from the one written with it")


def read_json_file(path: str) -> Any:
    """``json.load`` of ``path``; a missing or malformed file is a :class:`DamagedFileError`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DamagedFileError(path, "file not found") from None
    except UnicodeDecodeError:
        raise DamagedFileError(path, "not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise DamagedFileError(path, f"not valid JSON ({exc})") from None


# Weight files a from_pretrained folder may hold (PPDiffusers / PaddleNLP names vary).
_WEIGHT_SUFFIXES = (".safetensors", ".pdparams", ".bin")


def check_model_folder(folder: str) -> None:
    """Check one model folder of ``from_pretrained`` before a library reads it.

    Every ``*.json`` file must parse; every ``*.safetensors`` file (and each shard a
    ``*.index.json`` names) must be complete (:func:`check_safetensors`); other weight
    files must not be empty; a folder with a ``config.json`` must hold a weight file.
    Raises :class:`DamagedFileError` naming the first bad file.
    """
    folder = os.fspath(folder)
    names = sorted(os.listdir(folder))
    for name in names:
        path = os.path.join(folder, name)
        if name.endswith(".json"):
            data = read_json_file(path)
            if name.endswith(".index.json") and isinstance(data, dict) and isinstance(data.get("weight_map"), dict):
                for shard in sorted(set(data["weight_map"].values())):
                    if shard.endswith(".safetensors"):
                        check_safetensors(os.path.join(folder, shard))
        elif name.endswith(".safetensors"):
            check_safetensors(path)
        elif name.endswith(_WEIGHT_SUFFIXES) and os.path.getsize(path) == 0:
            raise DamagedFileError(path, "empty weight file (expected a saved state dict)")
    if "config.json" in names and not any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
        raise DamagedFileError(
            folder, "no weight file beside config.json (expected a *.safetensors or *.pdparams file)"
        )
