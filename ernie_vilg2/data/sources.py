"""The training data a config names, opened: JSON lines, a COCO folder or webdataset shards.

``data.format: auto`` tells them apart by ``data.root``:

- a ``.jsonl`` file, or a folder holding ``train.jsonl`` -> ``jsonl`` (null root: the built-in data);
- a folder holding ``annotations/captions_*.json`` -> ``coco``;
- a ``.tar`` file, a folder of ``.tar`` files, a brace pattern (``shards/{00000..00999}.tar``) or a
  ``.txt`` list of shard paths -> ``webdataset``, or ``latents`` when ``latents.json`` is beside
  them (latent shards, :mod:`.latent_shards`: streamed as shards, no image decoded).

JSON lines and COCO are indexed records (:class:`MapDataset`): the order of training step
``k`` is :func:`~.batch_plans.batch_indices` of ``k``, images are decoded when read. Shards
are streamed (:class:`ShardSet`, :mod:`.stream_order`). Every problem that stops a run is found
here, before the first step: a missing root, file or shard, a file without a valid record.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from .coco import CocoCaptions
from .config import DataConfig
from .jsonl import DatasetError, resolve_jsonl_path
from .jsonl_index import JsonlIndex
from .latent_shards import LatentSpec, check_data_settings, has_manifest, manifest_path, shards_spec
from .prepare import prepare_builtin_dataset
from .problems import MISSING_IMAGE, Problem
from .samples import OVERSIZED_IMAGE, UNDECODABLE_IMAGE, SampleError, decode_sample, to_pixel_values
from .shards import is_shard_spec, list_shards

logger = logging.getLogger(__name__)


def detect_format(root: str) -> str:
    """``jsonl``, ``coco``, ``webdataset`` or ``latents`` for ``data.root`` (see the module docstring;
    a pattern or list of latent shards is told apart when the shards are listed)."""
    if os.path.isdir(root):
        if os.path.isfile(manifest_path(root)):
            return "latents"
        if os.path.isfile(os.path.join(root, "train.jsonl")):
            return "jsonl"
        if glob.glob(os.path.join(root, "annotations", "captions_*.json")):
            return "coco"
        if glob.glob(os.path.join(root, "*.tar")):
            return "webdataset"
        raise DatasetError(f"data.root {root}: a folder without train.jsonl, annotations/captions_*.json or .tar "
                           "shards; set data.format if it is one of them")
    if is_shard_spec(root):
        return "webdataset"
    if os.path.isfile(root):
        return "jsonl"  # the content decides (a .csv is refused with its name)
    raise DatasetError(f"data.root not found: {root}")


def coco_split(root: str, split: Optional[str]) -> str:
    """``split``, else the folder's only captions split, else its only ``train*`` one."""
    if split is not None:
        return split
    names = sorted(os.path.basename(p)[len("captions_"):-len(".json")]
                   for p in glob.glob(os.path.join(root, "annotations", "captions_*.json")))
    train = [n for n in names if n.startswith("train")]
    if len(names) == 1 or len(train) == 1:
        return names[0] if len(names) == 1 else train[0]
    raise DatasetError(f"data.root {root} holds the COCO splits {', '.join(names) or 'none'}: set data.coco_split")


class CocoRecords:
    """A COCO split as indexed records (``index`` = position), the first ``max_samples`` of them."""

    def __init__(self, coco: CocoCaptions, max_samples: Optional[int]):
        self.coco = coco
        self.path = coco.captions_json
        self.size = len(coco) if max_samples is None else min(len(coco), max_samples)
        past = len(coco) - self.size
        self.summary = coco.summary + (f"; {past:,} past data.max_samples" if past else "")
        logger.info("%s", self.summary)

    def __len__(self) -> int:
        return self.size

    def record(self, i: int) -> dict:
        return {**self.coco[i], "index": int(i)}

    def describe(self, record: dict) -> str:
        return f"{self.path}: caption {record['key']}"


class MapDataset:
    """Indexed records (a :class:`~.jsonl_index.JsonlIndex` or :class:`CocoRecords`) decoded when
    read. A record whose image is missing or cannot be decoded is reported (as a
    :class:`~.problems.Problem` in :attr:`problems`, each time it is met) and the next readable
    record takes its place, so an item is a pure function of the data."""

    def __init__(self, records, resolution: int, image_fit: str = "center_crop",
                 max_image_pixels: Optional[int] = None):
        self.records = records
        self.summary = records.summary
        self.resolution = int(resolution)
        self.image_fit = image_fit
        self.max_image_pixels = max_image_pixels
        self.problems: List[Problem] = []
        self._bad: Dict[int, Problem] = {}  # records found unreadable, not read again

    def __len__(self) -> int:
        return len(self.records)

    def record(self, i: int) -> dict:
        return self.records.record(int(i))

    def image_path(self, i: int) -> str:
        return self.record(i)["image"]

    def _decode(self, record: dict) -> Dict[str, Any]:
        if not os.path.isfile(record["image"]):
            raise SampleError(f"{MISSING_IMAGE}: not found or not a regular file: {record['image']}")
        return decode_sample(record, self.resolution, self.image_fit, self.max_image_pixels)

    def sample(self, i: int) -> Dict[str, Any]:
        """Record ``i`` decoded (:func:`~.samples.decode_sample`), or the next one that decodes."""
        n = len(self)
        for j in (int(i + k) % n for k in range(n)):
            if j not in self._bad:
                record = self.record(j)
                try:
                    return self._decode(record)
                except SampleError as exc:
                    reason = str(exc)
                    kind = next((k for k in (MISSING_IMAGE, UNDECODABLE_IMAGE, OVERSIZED_IMAGE)
                                 if reason.startswith(k)), UNDECODABLE_IMAGE)
                    self._bad[j] = Problem(kind, record["image"], f"{self.records.describe(record)}: {reason}; "
                                                                  "another record is read in its place")
            self.problems.append(self._bad[j])  # each reader of the data counts it
        raise DatasetError(f"{self.records.path}: no image of the data set could be decoded")

    def take_problems(self) -> List[Problem]:
        problems, self.problems = self.problems, []
        return problems

    def __getitem__(self, i: int) -> Dict[str, Any]:
        """:meth:`sample` with ``pixel_values`` float32 [3, R, R] in [-1, 1] (the in-memory cache's form)."""
        sample = self.sample(i)
        sample["pixel_values"] = to_pixel_values(sample.pop("pixels"))
        return sample


@dataclass
class ShardSet:
    """webdataset shards (:mod:`.shards`) and how to read them."""

    spec: str
    shards: List[str]
    caption_field: Optional[str]
    languages: Optional[List[str]]
    resolution: int
    image_fit: str
    max_image_pixels: Optional[int]

    @property
    def summary(self) -> str:
        return f"{self.spec}: {len(self.shards):,} shards"


@dataclass
class LatentShardSet(ShardSet):
    """Latent shards (:mod:`.latent_shards`): streamed like image shards, the stored posterior
    of each sample instead of its image."""

    latent_spec: Optional[LatentSpec] = None
    manifest: str = ""  # the manifest's path

    @property
    def summary(self) -> str:
        return f"{self.spec}: {len(self.shards):,} latent shards"


def open_source(cfg: DataConfig, split: str = "train") -> Union[MapDataset, ShardSet, LatentShardSet]:
    """The ``split`` data of ``cfg`` (the built-in data is written first when root is null)."""
    root = prepare_builtin_dataset(cfg.builtin, cfg.resolution) if cfg.root is None else cfg.root
    kind = detect_format(root) if cfg.format == "auto" else cfg.format
    if kind in ("webdataset", "latents"):
        if cfg.max_samples is not None:
            raise DatasetError("data.max_samples applies to jsonl and coco data; for shards name fewer of them")
        paths = list_shards(root)
        if kind == "latents" or (cfg.format == "auto" and has_manifest(paths)):
            spec, manifest = shards_spec(paths)
            check_data_settings(spec, manifest, cfg.resolution, cfg.image_fit, cfg.caption_field, cfg.languages)
            shards = LatentShardSet(root, paths, None, cfg.languages, cfg.resolution, cfg.image_fit, None,
                                    latent_spec=spec, manifest=manifest)
        else:
            shards = ShardSet(root, paths, cfg.caption_field, cfg.languages, cfg.resolution, cfg.image_fit,
                              cfg.max_image_pixels)
        logger.info("%s", shards.summary)
        return shards
    if kind == "coco":
        if "en" not in cfg.languages:
            raise DatasetError(f"data.root {root}: COCO's captions are English, data.languages is {cfg.languages}")
        records = CocoRecords(CocoCaptions(root, coco_split(root, cfg.coco_split)), cfg.max_samples)
    else:
        records = JsonlIndex(resolve_jsonl_path(root, split), cfg.languages, cfg.max_samples)
    return MapDataset(records, cfg.resolution, cfg.image_fit, cfg.max_image_pixels)
