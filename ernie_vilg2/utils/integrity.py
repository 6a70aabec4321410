"""File integrity: one-line errors for damaged weight files, and size/checksum records.

Loading a truncated ``.safetensors`` file through the libraries gives a long traceback
that never names the file, and so does a malformed header. :func:`check_safetensors`
reads only the header (8-byte length + JSON) and checks each tensor's dtype, shape and
offsets and that the tensors fill the file, so a damaged file is reported as
``FILE: reason (expected ..., found ...)`` before any library sees it.
:func:`describe_files` / :func:`verify_files` record and check sizes and SHA-256 sums of
the files of a folder (checkpoints, exported models). :func:`check_model_folder` checks a
``from_pretrained`` folder (its JSON files and weights) the same way, and
:func:`check_pipeline_folder` a saved pipeline's folders.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Any, Collection, Dict, Iterable, Mapping, Optional

from ..errors import ErnieViLG2Error

# A safetensors header is a little-endian u64 length followed by that much JSON; the
# format caps the header at 100 MB.
_MAX_HEADER = 100 * 1024 * 1024
# Bits per element of the format's dtypes (sub-byte ones are packed).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# Floating-point dtypes the weight loaders read: from_pretrained reads through NumPy, which
# has no bfloat16; checkpoints are read through Paddle.
NUMPY_WEIGHT_DTYPES = ("F16", "F32", "F64")
PADDLE_WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")
MODEL_INDEX = "model_index.json"  # a saved pipeline's list of components


class DamagedFileError(ErnieViLG2Error, ValueError):
    """A file is missing, truncated or not what it claims to be. ``str()`` is one line
    that names the file."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def check_safetensors(path: str, dtypes: Optional[Collection[str]] = None) -> Dict[str, dict]:
    """Validate the structure of a ``.safetensors`` file; return its tensor entries.

    Checks what the safetensors loader would refuse with a traceback: every tensor has a
    known dtype, a shape of non-negative integers and ``[begin, end]`` data offsets holding
    exactly its bytes; the tensors fill the data section without gaps or overlaps and the
    file ends where they do. ``dtypes``: the dtypes its loader accepts, e.g.
    :data:`PADDLE_WEIGHT_DTYPES` for weights and optimizer state, which are all floats (an
    integer tensor would be cast into a float parameter).
    Raises :class:`DamagedFileError` (naming ``path``) otherwise, or when the file is
    missing, empty, truncated, or its header is not valid safetensors JSON.
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
    metadata = header.get("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise DamagedFileError(path, "invalid header (__metadata__ must map names to strings)")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in tensors.items():
        _check_tensor_entry(path, name, entry, dtypes)
    data_end = _check_layout(path, tensors)
    expected = 8 + header_len + data_end
    if size < expected:
        raise DamagedFileError(path, f"truncated (expected {expected} bytes, found {size})")
    if size > expected:
        raise DamagedFileError(path, f"bytes after the last tensor (expected {expected} bytes, found {size})")
    return tensors


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tensor_entry(path: str, name: str, entry, dtypes: Optional[Collection[str]]) -> None:
    """One header entry: known dtype, shape of non-negative ints, offsets holding its bytes."""
    if not isinstance(entry, dict):
        raise DamagedFileError(path, f"invalid header (tensor {name!r} is not a JSON object)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise DamagedFileError(path, f"invalid header (tensor {name!r} has unknown dtype {dtype!r})")
    if dtypes is not None and dtype not in dtypes:
        raise DamagedFileError(path, f"tensor {name!r} has dtype {dtype} (expected floating-point weights: "
                                     f"{' or '.join(dtypes)})")
    if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
        raise DamagedFileError(path, f"invalid header (tensor {name!r} has shape {shape!r}; expected a list of "
                                     "non-negative integers)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise DamagedFileError(path, f"invalid header (tensor {name!r} has data_offsets {offsets!r}; expected "
                                     "[begin, end] with 0 <= begin <= end)")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        raise DamagedFileError(path, f"invalid header (tensor {name!r}: shape {shape} of {dtype} needs "
                                     f"{bits / 8:g} bytes, its data_offsets {offsets} hold {offsets[1] - offsets[0]})")


def _check_layout(path: str, tensors: Mapping[str, dict]) -> int:
    """The tensors' data must follow one another from offset 0 without gap or overlap (as
    the format requires); return where the last one ends."""
    end, previous = 0, None
    for name, entry in sorted(tensors.items(), key=lambda item: tuple(item[1]["data_offsets"])):
        begin = entry["data_offsets"][0]
        if begin < end:
            raise DamagedFileError(path, f"invalid header (tensor {name!r} at data_offsets {entry['data_offsets']} "
                                         f"overlaps tensor {previous!r}, which ends at {end})")
        if begin > end:
            where = f"after tensor {previous!r}" if previous is not None else "at the start of the data"
            raise DamagedFileError(path, f"invalid header (a gap of {begin - end} bytes {where}: tensor {name!r} "
                                         f"starts at {begin}, expected {end})")
        end, previous = entry["data_offsets"][1], name
    return end


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


def check_model_folder(folder: str, dtypes: Optional[Collection[str]] = None) -> None:
    """Check one model folder of ``from_pretrained`` before a library reads it.

    Every ``*.json`` file must parse; every ``*.safetensors`` file (and each shard a
    ``*.index.json`` names) must be well formed (:func:`check_safetensors`, with ``dtypes``);
    other weight files must not be empty; a folder with a ``config.json`` must hold a
    weight file. Raises :class:`DamagedFileError` naming the first bad file.
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
                        check_safetensors(os.path.join(folder, shard), dtypes)
        elif name.endswith(".safetensors"):
            check_safetensors(path, dtypes)
        elif name.endswith(_WEIGHT_SUFFIXES) and os.path.getsize(path) == 0:
            raise DamagedFileError(path, "empty weight file (expected a saved state dict)")
    if "config.json" in names and not any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
        raise DamagedFileError(
            folder, "no weight file beside config.json (expected a *.safetensors or *.pdparams file)"
        )


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
