"""What a rank's batch of each training step holds, made where the loader runs them (its worker
processes, or the training process with ``data.num_workers: 0``).

A plan's ``batches(first_step, stride)`` yields the batches of steps ``first_step``,
``first_step + stride``, ...: worker ``p`` of ``W`` makes steps ``start + p``, ``start + p + W``,
... (:mod:`.loader`). Each batch is decoded, resized and cropped, its boxes mapped
(:func:`~.samples.decode_sample`), the shards' knowledge sidecars joined; tokenizing and the
knowledge's random choices stay in the training step (they draw from the step's generator).

- :class:`MapPlan` (JSON lines, COCO): step ``k`` is the rank's rows (``rank::world``) of
  :func:`batch_indices` of ``k``; the order does not depend on the workers.
- :class:`ShardPlan` (webdataset): step ``k`` is batch ``k // W`` of logical worker ``k % W``'s
  stream (:mod:`.stream_order`). An image that fails to decode although its header read fine
  is reported and replaced by the next decoded sample of its batch, so every batch takes the
  same samples from its stream whatever decodes.
- :class:`LatentShardPlan` (latent shards): as :class:`ShardPlan`, each sample's stored posterior
  (:func:`~.latent_shards.latent_sample`) in place of its decoded image.
"""
from __future__ import annotations

import functools

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from .jsonl import DatasetError
from .latent_shards import LatentShardReader, latent_sample
from .problems import UNDECODABLE_LATENT, UNREADABLE_SIDECAR, Problem
from .samples import OVERSIZED_IMAGE, UNDECODABLE_IMAGE, SampleError, decode_sample
from .shards import ShardReader, load_image, read_sidecar, sidecar_path
from .sources import LatentShardSet, MapDataset, ShardSet
from .stream_order import ShardStream

META_KEYS = ("caption", "lang", "boxes", "labels", "synthetic_caption", "index", "key", "knowledge")
SIDECAR_CACHE = 8  # shards whose sidecars a worker keeps (the shuffle buffer mixes a few at a time)


@functools.lru_cache(maxsize=2)  # the epoch a step reads, and the next one at its end
def epoch_order(seed: int, epoch: int, num_records: int) -> np.ndarray:
    """The records' order in ``epoch``: made once per epoch, not once per step, since it costs
    O(records). int32 halves its memory and gives the same order as ``permutation(num_records)``."""
    dtype = np.int32 if num_records < 2**31 else np.int64
    order = np.random.default_rng([seed, epoch]).permutation(np.arange(num_records, dtype=dtype))
    order.flags.writeable = False
    return order


def batch_indices(step: int, batch_size: int, num_records: int, seed: int) -> List[int]:
    """Record indices of global batch ``step`` (epochs reshuffled with their own seed)."""
    if num_records <= 0:
        raise ValueError("the dataset has no records")
    out: List[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, num_records)
        order = epoch_order(seed, epoch, num_records)
        take = min(batch_size - len(out), num_records - offset)
        out.extend(int(i) for i in order[offset : offset + take])
        position += take
    return out


@dataclass
class Batch:
    """A rank's batch of one step: ``pixels`` uint8 [B, R, R, 3] (or, from latent shards,
    ``latents`` float32 [B, 2, C, h, w]: posterior mean and std) and one meta dict per sample."""

    step: int
    pixels: Optional[np.ndarray]
    metas: List[Dict[str, Any]]
    problems: List[Problem] = field(default_factory=list)
    latents: Optional[np.ndarray] = None


def collate(step: int, samples: List[Dict[str, Any]], problems: List[Problem]) -> Batch:
    metas = [{k: s.get(k) for k in META_KEYS} for s in samples]
    if "latent" in samples[0]:
        return Batch(step, None, metas, problems, latents=np.stack([s["latent"] for s in samples]))
    return Batch(step, np.stack([s["pixels"] for s in samples]), metas, problems)


def local_batch_size(batch_size: int, rank: int, world: int) -> int:
    """The rows ``rank::world`` of a global batch: this rank's share."""
    return len(range(rank, batch_size, world))


class MapPlan:
    def __init__(self, dataset: MapDataset, seed: int, rank: int, world: int, batch_size: int):
        self.dataset = dataset
        self.seed, self.rank, self.world, self.batch_size = seed, rank, world, batch_size

    def batches(self, first_step: int, stride: int) -> Iterator[Batch]:
        for step in itertools.count(first_step, stride):
            rows = batch_indices(step, self.batch_size, len(self.dataset), self.seed)[self.rank::self.world]
            samples = [self.dataset.sample(i) for i in rows]
            yield collate(step, samples, self.dataset.take_problems())


class ShardPlan:
    def __init__(self, shards: ShardSet, seed: int, rank: int, world: int, batch_size: int, workers: int,
                 shuffle_buffer: int, knowledge: bool):
        self.shards = shards
        self.seed, self.rank, self.world = seed, rank, world
        self.local_batch = local_batch_size(batch_size, rank, world)
        self.workers = max(1, workers)  # 0 workers: one stream, in the training process
        self.shuffle_buffer = shuffle_buffer
        self.knowledge = knowledge
        self.stream(0, [])  # too few shards for the ranks and workers: an error before training

    def reader(self, problems: List[Problem]) -> ShardReader:
        s = self.shards
        return ShardReader(s.caption_field, s.languages, s.max_image_pixels, on_problem=problems.append)

    def sample(self, record: dict) -> Dict[str, Any]:
        """The training sample of a record (:class:`~.samples.SampleError` when it cannot be used)."""
        s = self.shards
        return decode_sample(record, s.resolution, s.image_fit, s.max_image_pixels)

    def stream(self, worker: int, problems: List[Problem]) -> ShardStream:
        return ShardStream(self.shards.shards, self.reader(problems), self.seed, self.rank, self.world, worker,
                           self.workers, self.shuffle_buffer)

    def batches(self, first_step: int, stride: int) -> Iterator[Batch]:
        if stride != self.workers:
            raise ValueError(f"a shard plan of {self.workers} workers runs with stride {self.workers}, not {stride}")
        problems: List[Problem] = []
        stream = self.stream(first_step % self.workers, problems)
        sidecars: "OrderedDict[str, Dict[str, dict]]" = OrderedDict()
        for step, records in zip(itertools.count(first_step, stride),
                                 stream.batches(self.local_batch, first_step // self.workers)):
            samples = self._decode(records, sidecars, problems)
            yield collate(step, samples, problems[:])
            problems.clear()

    def _sidecar(self, shard: str, cache: "OrderedDict[str, Dict[str, dict]]", problems: List[Problem]) -> Dict:
        if shard not in cache:
            path = sidecar_path(shard)
            try:
                cache[shard] = read_sidecar(path)
            except FileNotFoundError:
                cache[shard] = {}  # sidecars are optional
            except (OSError, DatasetError) as exc:
                problems.append(Problem(UNREADABLE_SIDECAR, path, f"{exc}; the samples of {shard} train without "
                                                                  "their stored knowledge"))
                cache[shard] = {}
            if len(cache) > SIDECAR_CACHE:
                cache.popitem(last=False)
        return cache[shard]

    def _decode(self, records: List[dict], sidecars, problems: List[Problem]) -> List[Dict[str, Any]]:
        samples: List[Optional[Dict[str, Any]]] = []
        for record in records:
            try:
                if record["image"] is None:
                    record = {**record, "image": load_image(record)}
                if self.knowledge:
                    knowledge = self._sidecar(record["shard"], sidecars, problems).get(record["key"])
                    record = {**record, "knowledge": knowledge}
                samples.append(self.sample(record))
            except (SampleError, OSError) as exc:
                reason = str(exc)
                kind = next((k for k in (OVERSIZED_IMAGE, UNDECODABLE_LATENT) if reason.startswith(k)),
                            UNDECODABLE_IMAGE)
                problems.append(Problem(kind, f"{record['shard']}:{record['member']}",
                                        f"{reason}; replaced by another sample of its batch"))
                samples.append(None)
        good = [i for i, sample in enumerate(samples) if sample is not None]
        if not good:
            names = ", ".join(r["image_name"] for r in records[:3])
            raise DatasetError(f"no sample of a batch could be decoded ({names}{', ...' if len(records) > 3 else ''}): "
                               "the shards are likely damaged")
        # The next decoded sample of the batch, cyclically, takes a failed one's place.
        return [sample if sample is not None else samples[next((j for j in good if j > i), good[0])]
                for i, sample in enumerate(samples)]


class LatentShardPlan(ShardPlan):
    """Latent shards: the records' ``.latent.npy`` members instead of their images."""

    def reader(self, problems: List[Problem]) -> LatentShardReader:
        return LatentShardReader(self.shards.latent_spec, self.shards.languages, on_problem=problems.append)

    def sample(self, record: dict) -> Dict[str, Any]:
        return latent_sample(record, self.shards.latent_spec)


def make_plan(source, seed: int, rank: int, world: int, batch_size: int, workers: int = 0,
              shuffle_buffer: int = 0, knowledge: bool = False):
    """The plan of ``source`` (a :class:`MapDataset`, :class:`ShardSet` or :class:`LatentShardSet`)
    for one rank."""
    if isinstance(source, LatentShardSet):
        return LatentShardPlan(source, seed, rank, world, batch_size, workers, shuffle_buffer, knowledge)
    if isinstance(source, ShardSet):
        return ShardPlan(source, seed, rank, world, batch_size, workers, shuffle_buffer, knowledge)
    return MapPlan(source, seed, rank, world, batch_size)
