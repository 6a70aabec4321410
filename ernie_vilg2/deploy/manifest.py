"""The export folder's manifest (``manifest.json``): write, read and validate it.

The manifest makes an export folder self-describing: the runners (Python and C++) need
nothing else. Its layout is specified in deploy/README.md. Every other file of the folder
is recorded with its size and SHA-256 (:func:`ernie_vilg2.utils.integrity.describe_files`)
and checked when the folder is opened, so a missing, truncated or tampered file is
reported by name before Paddle Inference sees it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

from ..utils.integrity import DamagedFileError, describe_files, verify_files
from ..utils.io import atomic_write_text
from .json_limits import JsonLimitError, check_json_text
from .program_bounds import ManifestError, check_against_programs, check_values

FORMAT = "ernie-vilg2-inference"
# 2: the resolved sampler settings (``samplers``) replace the saved scheduler config; a
# version-1 export is refused (re-export), since reading it would need the sampler rules here.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
VERIFY_MODES = ("sha256", "size")
# A manifest is a few KB (a sampler's trained_betas list of T numbers is the largest part).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

__all__ = [
    "DamagedFileError",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ManifestError",
    "VERIFY_MODES",
    "read_manifest",
    "write_manifest",
]

# field path -> accepted type(s); checked on load so that a hand-edited or foreign manifest
# fails with the field's name instead of a KeyError deep in the runner.
_REQUIRED = {
    "image.height": int,
    "image.width": int,
    "latent.channels": int,
    "latent.height": int,
    "latent.width": int,
    "latent.scaling_factor": (int, float),
    "router.num_experts": int,
    "router.num_train_timesteps": int,
    "samplers": dict,
    "tokenizer.vocab": str,
    "tokenizer.max_length": int,
    "tokenizer.do_lower_case": bool,
    "tokenizer.unk_token": str,
    "tokenizer.cls_token": str,
    "tokenizer.sep_token": str,
    "tokenizer.pad_token": str,
    "tokenizer.never_split": list,
    "tokenizer.normalization": dict,
    "programs.text_encoder.model": str,
    "programs.text_encoder.params": str,
    "programs.experts": list,
    "programs.vae_decoder.model": str,
    "programs.vae_decoder.params": str,
    "files": dict,
}


def write_manifest(folder: str, manifest: Mapping[str, Any]) -> Dict[str, Any]:
    """Record size and SHA-256 of every file under ``folder`` in ``manifest["files"]`` and
    write ``folder/manifest.json`` (atomically). Returns the written manifest."""
    names = sorted(
        os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
        for root, _, files in os.walk(folder)
        for f in files
    )
    names = [n for n in names if n != MANIFEST_NAME]
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    record["files"] = describe_files(folder, names)
    atomic_write_text(os.path.join(folder, MANIFEST_NAME), json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    return record


def _cpu_ops_files(path: str, manifest: Mapping, programs) -> list:
    """The files of the optional programs with the C++ CPU operators and of their library
    (:mod:`.cpu_ops`), after checking their fields."""
    entry = manifest.get("cpu_ops")
    if entry is None:
        return []
    for key in ("library", "paddle_version", "paddle_commit", "source_sha256"):
        if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
            raise ManifestError(f"{path}: field 'cpu_ops.{key}' is missing or not a string")
    files = [entry["library"]]
    for program in programs:
        for key in ("model_with_cpu_ops", "params_with_cpu_ops"):
            if key in program:
                if not isinstance(program[key], str):
                    raise ManifestError(f"{path}: field {key!r} of a program is not a string")
                files.append(program[key])
    return files


def _field(manifest: Mapping, path: str):
    value: Any = manifest
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise KeyError(path)
        value = value[key]
    return value


def read_manifest(folder: str, verify: str = "sha256") -> Dict[str, Any]:
    """Load and validate ``folder/manifest.json`` and check the folder's files against it.

    ``verify="sha256"`` (default) hashes every file (a tiny 10-expert export: well under a
    second; a real one: tens of seconds per 10 GB); ``"size"`` compares sizes only, which
    still catches missing and truncated files. Every size the runners allocate by is bounded
    here, before they do: the file's size and nesting, each field's range, and each size against
    the program that fixes it (:mod:`.program_bounds`). Raises ``FileNotFoundError`` (no folder,
    no manifest), :class:`ManifestError` (bad JSON, other format or version, a field missing,
    out of range or disagreeing with the programs)
    or :class:`~ernie_vilg2.utils.integrity.DamagedFileError` (a file missing, truncated
    or changed), each with a one-line message naming the file or field.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"export folder not found: {folder}")
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no manifest (not an export folder; make one with tools/export_model.py)")
    size = os.path.getsize(path)
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: {size} bytes, more than a manifest can be ({MAX_MANIFEST_BYTES // 2**20} MiB)")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        check_json_text(text)
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, JsonLimitError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: field 'format': expected {FORMAT!r}, got {manifest.get('format')!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: field 'format_version': this runner reads version {FORMAT_VERSION}, "
            f"the export is version {version!r} (re-export with this version's tools/export_model.py)"
        )
    for name, kind in _REQUIRED.items():
        try:
            value = _field(manifest, name)
        except KeyError:
            raise ManifestError(f"{path}: field {name!r} is missing") from None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"{path}: field {name!r} has the wrong type ({type(value).__name__})")
    for name in manifest["files"]:
        parts = name.split("/")
        if os.path.isabs(name) or ".." in parts or not all(parts):
            raise ManifestError(f"{path}: field 'files': {name!r} is not a path inside the export folder")
    experts = manifest["programs"]["experts"]
    n = manifest["router"]["num_experts"]
    if len(experts) != n:
        raise ManifestError(f"{path}: field 'programs.experts' lists {len(experts)} experts, router.num_experts is {n}")
    for i, expert in enumerate(experts):
        if not (isinstance(expert, dict) and isinstance(expert.get("model"), str) and isinstance(expert.get("params"), str)):
            raise ManifestError(f"{path}: field 'programs.experts[{i}]' needs 'model' and 'params' paths")
    check_values(path, manifest)
    programs = [manifest["programs"]["text_encoder"], *experts, manifest["programs"]["vae_decoder"]]
    listed = [p[k] for p in programs for k in ("model", "params")] + [manifest["tokenizer"]["vocab"]]
    listed += _cpu_ops_files(path, manifest, programs)
    for name in listed:
        if name not in manifest["files"]:
            raise ManifestError(f"{path}: field 'files' has no record of {name}")
    # The operators' library is checked when a runner uses it (a missing one: the plain programs).
    library = (manifest.get("cpu_ops") or {}).get("library")
    verify_files(folder, {k: v for k, v in manifest["files"].items() if k != library}, checksum=verify == "sha256")
    check_against_programs(path, manifest, folder)
    return manifest
