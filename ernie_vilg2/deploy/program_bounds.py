"""The value rules of a manifest: each field's range, and each size against the program that
fixes it (:mod:`.program_info`), so that no number in a manifest can make a runner allocate
more than its programs need. The C++ runner applies the same rules (deploy/cpp/src/manifest.cc).

Sizes and the program dimension each must equal:

- ``tokenizer.max_length``: the text encoder's ``input_ids`` [-1, L] (its position table) and
  every expert's ``encoder_hidden_states`` [-1, L, H];
- ``programs.text_encoder.hidden_size``: the text encoder's output [-1, L, H];
- ``latent.channels/height/width``: every expert's ``sample`` and the VAE decoder's
  ``latents`` [-1, C, h, w];
- ``image.height/width``: the VAE decoder's output [-1, 3, H, W];
- ``router.num_train_timesteps`` (and every sampler's ``num_train_timesteps``, equal to it):
  the rows of every expert's timestep table (:mod:`.rewrites`).

``router.boundaries`` (N - 1 increasing timesteps in [1, T - 1]; absent in older exports:
uniform) must agree with every ``programs.experts[i].timesteps`` (``[b_i, b_{i+1})``).

The ``samplers`` section is checked setting by setting by :func:`.schedulers.check_samplers`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

from ..errors import ErnieViLG2Error
from ..models.routing import TimestepRouter
from .program_info import ProgramInfo, read_program_info
from .schedulers import SettingError, check_samplers

# The vocab is read whole: a real one is a few hundred KB.
MAX_VOCAB_BYTES = 64 * 1024 * 1024


class ManifestError(ErnieViLG2Error, ValueError):
    """The manifest is unreadable, from another format version, or a field is missing or
    wrong. ``str()`` is one line naming the file and the field."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_values(path: str, manifest: Mapping) -> None:
    """The ranges of the fields that do not need the programs (types are checked before)."""
    def fail(field: str, reason: str):
        raise ManifestError(f"{path}: field {field!r}: {reason}")

    for section, names, minimum in (("image", ("height", "width"), 1), ("latent", ("channels", "height", "width"), 1),
                                    ("router", ("num_experts", "num_train_timesteps"), 1),
                                    ("tokenizer", ("max_length",), 3)):
        for name in names:
            if manifest[section][name] < minimum:
                fail(f"{section}.{name}", f"must be >= {minimum}, got {manifest[section][name]}")
    scaling = manifest["latent"]["scaling_factor"]
    if isinstance(scaling, bool) or not (math.isfinite(scaling) and scaling > 0):
        fail("latent.scaling_factor", f"must be a finite number > 0, got {scaling!r}")
    router = manifest["router"]
    n, T = router["num_experts"], router["num_train_timesteps"]
    if "boundaries" not in router and T % n:  # an export from before router.boundaries: uniform
        fail("router.num_experts", f"must divide router.num_train_timesteps ({T}), got {n}")
    if not isinstance(router.get("boundaries", []), list):
        fail("router.boundaries", f"expected a list of {n - 1} timesteps, got {router['boundaries']!r}")
    try:
        edges = TimestepRouter(n, T, router.get("boundaries")).edges
    except ValueError as exc:
        fail("router.boundaries", str(exc))
    try:
        samplers = check_samplers(manifest["samplers"])
    except SettingError as exc:
        fail(exc.field, exc.reason)
    for name, sampler in samplers.items():
        if sampler.num_train_timesteps != T:
            fail(f"samplers.{name}.config.num_train_timesteps",
                 f"must equal router.num_train_timesteps ({T}), got {sampler.num_train_timesteps}")
    for i, expert in enumerate(manifest["programs"]["experts"]):
        if "timesteps" in expert:
            stage = edges[i:i + 2]
            if not (isinstance(expert["timesteps"], list) and expert["timesteps"] == stage
                    and all(_is_int(t) for t in expert["timesteps"])):
                fail(f"programs.experts[{i}].timesteps", f"expected {stage} (the router's stage {i}), "
                                                         f"got {expert['timesteps']!r}")
    hidden = manifest["programs"]["text_encoder"].get("hidden_size")
    if hidden is not None and not (_is_int(hidden) and hidden >= 1):
        fail("programs.text_encoder.hidden_size", f"must be an integer >= 1, got {hidden!r}")
    tokenizer = manifest["tokenizer"]
    if not all(isinstance(t, str) and t for t in tokenizer["never_split"]):
        fail("tokenizer.never_split", "expected a list of non-empty strings")
    if not all(isinstance(k, str) and isinstance(v, str) and len(k) == 1 and len(v) == 1
               for k, v in tokenizer["normalization"].items()):
        fail("tokenizer.normalization", "expected a map of one character to one character")


def _shape(info: ProgramInfo, name: str, rank: int, field: str, path: str):
    """The shape of input ``name`` (output 0 for ``None``), which must have ``rank`` dimensions."""
    shape = info.output if name is None else info.inputs.get(name)
    if shape is None or len(shape) != rank:
        what = "output" if name is None else f"input {name!r}"
        raise ManifestError(f"{path}: field {field!r}: {info.path} has no {what} of rank {rank} "
                            f"(found {shape}); not a program of this export format")
    return shape


def _agree(path: str, field: str, value: int, info: ProgramInfo, what: str, expected: int) -> None:
    if value != expected:
        raise ManifestError(f"{path}: field {field!r}: {value} does not match the program: "
                            f"{os.path.relpath(info.path, os.path.dirname(path))} has {what} {expected}")


def check_against_programs(path: str, manifest: Mapping, folder: str) -> None:
    """Each size of the manifest against the programs that fix it (the table in the module
    doc); call after the files were verified."""
    programs, latent = manifest["programs"], manifest["latent"]
    vocab = os.path.join(folder, manifest["tokenizer"]["vocab"])
    if os.path.getsize(vocab) > MAX_VOCAB_BYTES:
        raise ManifestError(f"{path}: field 'tokenizer.vocab': {vocab} is larger than "
                            f"{MAX_VOCAB_BYTES // 2**20} MiB (a vocab is a few hundred KB)")

    def info(entry):
        return read_program_info(os.path.join(folder, entry["model"]))

    text = info(programs["text_encoder"])
    ids = _shape(text, "input_ids", 2, "tokenizer.max_length", path)
    length = manifest["tokenizer"]["max_length"]
    _agree(path, "tokenizer.max_length", length, text, "input_ids length", ids[1])
    hidden = _shape(text, None, 3, "programs.text_encoder.hidden_size", path)[2]
    if "hidden_size" in programs["text_encoder"]:
        _agree(path, "programs.text_encoder.hidden_size", programs["text_encoder"]["hidden_size"], text,
               "hidden size", hidden)

    def check_latents(program: ProgramInfo, name: str) -> None:
        shape = _shape(program, name, 4, "latent", path)
        for field, value, dim in (("channels", latent["channels"], shape[1]), ("height", latent["height"], shape[2]),
                                  ("width", latent["width"], shape[3])):
            _agree(path, f"latent.{field}", value, program, f"{name} {field}", dim)

    T = manifest["router"]["num_train_timesteps"]
    for i, entry in enumerate(programs["experts"]):
        expert = info(entry)
        check_latents(expert, "sample")
        states = _shape(expert, "encoder_hidden_states", 3, f"programs.experts[{i}]", path)
        _agree(path, "tokenizer.max_length", length, expert, "encoder_hidden_states length", states[1])
        _agree(path, f"programs.experts[{i}]", hidden, expert, "encoder_hidden_states width", states[2])
        if not expert.tables:
            raise ManifestError(f"{path}: field 'router.num_train_timesteps': {expert.path} has no timestep "
                                "table (not exported by tools/export_model.py)")
        _agree(path, "router.num_train_timesteps", T, expert, "timestep table rows", expert.tables[0][0])

    decoder = info(programs["vae_decoder"])
    check_latents(decoder, "latents")
    image = _shape(decoder, None, 4, "image", path)
    for field, dim in (("height", image[2]), ("width", image[3])):
        _agree(path, f"image.{field}", manifest["image"][field], decoder, f"output {field}", dim)
