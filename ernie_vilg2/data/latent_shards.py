"""Latent shards: a data set encoded once by a run's frozen VAE, streamed by training instead of
its images (:mod:`.latent_encoding` writes them; ``tools/encode_latents.py``).

Layout (webdataset shards, as :mod:`.shards` reads; one folder per encoding)::

    latents/latents.json          the manifest: the VAE, resolution, image fit, ... (LatentSpec)
    latents/00000.tar             {key}.latent.npy  [2, C, h, w] float32 (or float16): the VAE
                                                    posterior's mean and standard deviation
                                  {key}.json        {"key", "lang", "boxes", "labels", "synthetic_caption"},
                                                    boxes in pixels of the image at data.resolution
                                  {key}.txt         the caption
    latents/00000_stats.json      the shard's counts
    latents/00000.knowledge.jsonl the source shard's stored knowledge, objects mapped like the boxes

Mean and standard deviation rather than one sample or the mean alone: training draws
``z = mean + std * eps`` with ``eps`` from the step's generator, exactly as it does from images
encoded each step and from the in-memory cache, so a run from latent shards trains on what a
run from the images would. The manifest records what the latents depend on; training refuses
latents whose VAE (a SHA-256 of its weights), scaling factor, resolution, image fit or caption
field differ from the run's, with one line naming the field.

A damaged ``.latent.npy`` member is a reported event like a damaged image: a header that is not
NumPy's, or of another shape or dtype than the manifest's, skips the sample where the shard is
read (:class:`LatentShardReader`); values that are not finite are found when the batch is made
and the sample is replaced as an undecodable image is (:func:`latent_sample`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .jsonl import DatasetError
from .problems import UNDECODABLE_LATENT
from .samples import SampleError
from .shards import ShardReader

MANIFEST = "latents.json"
FORMAT = "ernie-vilg2 latent shards"
VERSION = 1
LATENT_EXTENSION = "latent.npy"
DTYPES = ("float32", "float16")
ENCODE_COMMAND = "tools/encode_latents.py"


def vae_fingerprint(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes and values, in name order): the same
    for the VAE of a run folder and the copy in its pipelines, whatever file format holds it."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        array = np.ascontiguousarray(value.numpy() if hasattr(value, "numpy") else value)
        digest.update(f"{name}:{array.dtype.str}:{list(array.shape)}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class LatentSpec:
    """What latents depend on: recorded in the manifest, compared with a training run's."""

    vae_sha256: str  # vae_fingerprint of the encoding VAE
    scaling_factor: float  # the VAE's (training multiplies the stored latents by it)
    resolution: int  # data.resolution the images were resized/cropped to
    image_fit: str  # data.image_fit
    caption_field: Optional[str]  # data.caption_field the captions were taken with
    languages: List[str]  # data.languages of the encoding: samples of other languages are not there
    latent_shape: List[int]  # [2, C, h, w]: mean and std
    dtype: str  # of the stored latents

    @classmethod
    def from_manifest(cls, manifest: dict, path: str) -> "LatentSpec":
        missing = [f.name for f in fields(cls) if f.name not in manifest]
        if missing:
            raise DatasetError(f"{path}: not a manifest of latent shards (no {missing[0]!r})")
        spec = cls(**{f.name: manifest[f.name] for f in fields(cls)})
        if spec.dtype not in DTYPES or len(spec.latent_shape) != 4 or spec.latent_shape[0] != 2:
            raise DatasetError(f"{path}: 'dtype' must be one of {DTYPES} and 'latent_shape' [2, C, h, w]")
        return spec

    def as_dict(self) -> dict:
        return asdict(self)


def manifest_path(folder: str) -> str:
    return os.path.join(folder, MANIFEST)


def read_manifest(path: str) -> dict:
    """The manifest at ``path``; a :class:`DatasetError` naming it when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the manifest of latent shards ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a manifest of latent shards (no \"format\": \"{FORMAT}\")")
    if manifest.get("version") != VERSION:
        raise DatasetError(f"{path}: latent shards of version {manifest.get('version')!r}; this version reads "
                           f"{VERSION}: encode the data again ({ENCODE_COMMAND})")
    return manifest


def has_manifest(shards: Sequence[str]) -> bool:
    """Whether the folder of the first of ``shards`` holds a manifest (the shards are latents)."""
    return bool(shards) and os.path.isfile(manifest_path(os.path.dirname(shards[0])))


def shards_spec(shards: Sequence[str]) -> Tuple[LatentSpec, str]:
    """(spec, manifest path) of latent shards, from the manifest of each folder holding some of
    them: each must be complete, and all must agree."""
    first: Optional[Tuple[LatentSpec, str]] = None
    for folder in dict.fromkeys(os.path.dirname(s) for s in shards):
        path = manifest_path(folder)
        if not os.path.isfile(path):
            raise DatasetError(f"{folder}: no {MANIFEST} beside these latent shards (written by {ENCODE_COMMAND})")
        manifest = read_manifest(path)
        if not manifest.get("complete"):
            raise DatasetError(f"{path}: the encoding of these latents did not finish: run {ENCODE_COMMAND} "
                               "with the same arguments again to complete it")
        spec = LatentSpec.from_manifest(manifest, path)
        if first is None:
            first = spec, path
            continue
        for name, value in spec.as_dict().items():
            if value != getattr(first[0], name):
                raise DatasetError(f"{path}: {name} {value!r} differs from {getattr(first[0], name)!r} in "
                                   f"{first[1]}: the shards of one run must come from one encoding")
    return first


def check_data_settings(spec: LatentSpec, where: str, resolution: int, image_fit: str,
                        caption_field: Optional[str], languages: Sequence[str]) -> None:
    """A :class:`DatasetError` naming the first ``data.*`` setting the latents were not made with."""
    for name, ours in (("resolution", resolution), ("image_fit", image_fit), ("caption_field", caption_field)):
        theirs = getattr(spec, name)
        if theirs != ours:
            raise DatasetError(f"data.{name}: the latent shards ({where}) were encoded with {name} {theirs!r}, "
                               f"this run has {ours!r}: encode the data again with this setting ({ENCODE_COMMAND})")
    missing = [lang for lang in languages if lang not in spec.languages]
    if missing:
        raise DatasetError(f"data.languages: the latent shards ({where}) hold the languages {spec.languages} only, "
                           f"this run asks for {missing[0]!r} too: set data.languages or encode the data again")


def check_vae(spec: LatentSpec, where: str, fingerprint: str, scaling_factor: float, vae_dir: str) -> None:
    """A :class:`DatasetError` naming ``vae_sha256`` or ``scaling_factor`` when the run's VAE is not
    the one the latents were encoded with."""
    if spec.vae_sha256 != fingerprint:
        raise DatasetError(f"vae_sha256: the latent shards ({where}) were encoded by another VAE "
                           f"({spec.vae_sha256[:12]}..., this run's {vae_dir} is {fingerprint[:12]}...): encode "
                           f"them with this run's VAE ({ENCODE_COMMAND} --vae {vae_dir})")
    if spec.scaling_factor != scaling_factor:
        raise DatasetError(f"scaling_factor: the latent shards ({where}) were encoded with scaling factor "
                           f"{spec.scaling_factor!r}, this run's VAE {vae_dir} has {scaling_factor!r}")


# -- reading ---------------------------------------------------------------------------------------
def npy_header(f) -> Tuple[Tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of a .npy file; ValueError when it is not one."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unknown .npy version {version}")
    return shape, dtype


class LatentShardReader(ShardReader):
    """:class:`~.shards.ShardReader` of latent shards: a sample's payload is its
    ``.latent.npy`` member (in the record's ``image`` field, so loading, replaying and resuming a
    stream are those of image shards), judged by its header."""

    payload_extensions = (LATENT_EXTENSION,)
    payload_name = "latent"

    def __init__(self, spec: LatentSpec, languages: Optional[Sequence[str]] = None, on_problem=None):
        super().__init__(None, languages, None, on_problem)  # the caption is the .txt the encoding chose
        self.shape, self.dtype = tuple(spec.latent_shape), np.dtype(spec.dtype)

    def _payload_error(self, member, name: str) -> Optional[Tuple[str, str]]:
        try:
            shape, dtype = npy_header(member)
        except (ValueError, SyntaxError, OSError) as exc:
            return UNDECODABLE_LATENT, f"{UNDECODABLE_LATENT} {name} (not a NumPy array: {exc})"
        if shape != self.shape or dtype != self.dtype:
            return UNDECODABLE_LATENT, (f"{UNDECODABLE_LATENT} {name} ({dtype} {list(shape)}, the manifest's "
                                        f"{self.dtype} {list(self.shape)})")
        return None


def latent_sample(record: Dict[str, Any], spec: LatentSpec) -> Dict[str, Any]:
    """The training sample of a latent shard's record: ``latent`` float32 [2, C, h, w] (mean,
    std), ``boxes`` float32 [K, 4] (already in the frame of the image at ``spec.resolution``),
    the other fields as they are. :class:`~.samples.SampleError` when the array cannot be used."""
    name = record["image_name"]
    try:
        latent = np.load(io.BytesIO(record["image"]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SampleError(f"{UNDECODABLE_LATENT} {name} ({exc})") from None
    if latent.shape != tuple(spec.latent_shape) or latent.dtype != np.dtype(spec.dtype):
        raise SampleError(f"{UNDECODABLE_LATENT} {name} ({latent.dtype} {list(latent.shape)})")
    if not np.isfinite(latent).all() or (latent[1] < 0).any():
        raise SampleError(f"{UNDECODABLE_LATENT} {name} (values that are not finite, or a negative std)")
    sample = {k: v for k, v in record.items() if k not in ("image", "image_name", "boxes")}
    sample["latent"] = latent.astype(np.float32)
    sample["boxes"] = np.asarray(record.get("boxes") or [], np.float32).reshape(-1, 4)
    return sample
