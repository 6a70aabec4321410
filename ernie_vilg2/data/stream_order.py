"""The order in which streamed shards are read: a pure function of (seed, ranks, workers, step).

The stream of (rank ``r``, logical worker ``w``) of ``R`` ranks x ``W`` workers is infinite,
epoch after epoch:

1. epoch ``e`` orders the shards by ``default_rng([seed, e]).permutation``; the stream takes
   shards ``r * W + w``, then every ``R * W``-th of that order (so ranks and workers read
   disjoint shards, and every shard once an epoch);
2. it reads their valid samples (:class:`~.shards.ShardReader`) in that order through a shuffle
   buffer of ``shuffle_buffer`` samples drawn by ``default_rng([seed, e, r, w])``, emptied
   (shuffled) at the end of the epoch;
3. the stream's batch ``b`` is its samples ``b * L`` to ``(b + 1) * L - 1`` (``L``: the rank's
   share of the global batch), and step ``k`` of the rank is batch ``k // W`` of worker ``k % W``.

So nothing but the step is needed to resume: a stream started at sample ``s`` replays its epoch
up to ``s`` reading only tar headers, captions and image headers (images are seeked over;
samples still in the shuffle buffer at ``s`` have their images read when they come out), and
skips whole earlier epochs whose shards it has counted (one header pass per shard). The order
changes with ``data.num_workers`` and the number of ranks, so a run resumes exactly with the
same ones (changing them needs ``--allow-config-change``).
"""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Sequence

import numpy as np

from .jsonl import DatasetError
from .shards import ShardReader


def stream_shards(num_shards: int, seed: int, epoch: int, rank: int, world: int, worker: int,
                  workers: int) -> List[int]:
    """The shard numbers (rank, worker) reads in ``epoch``, in order."""
    order = np.random.default_rng([seed, epoch]).permutation(num_shards)
    return [int(i) for i in order[rank * workers + worker::world * workers]]


def buffer_shuffle(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """``items`` shuffled through a buffer of ``size``: once it is full each new item takes the
    place of a random one, which is yielded; at the end the rest come out shuffled."""
    if size <= 1:
        yield from items
        return
    buffer: List = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


class ShardStream:
    """The samples of one (rank, logical worker) stream of ``shards`` (see the module docstring)."""

    def __init__(self, shards: Sequence[str], reader: ShardReader, seed: int, rank: int, world: int,
                 worker: int, workers: int, shuffle_buffer: int):
        if len(shards) < world * workers:
            raise DatasetError(f"{len(shards)} shards for {world} rank(s) x {workers} data worker(s): each needs a "
                               "shard of its own (write smaller shards or use fewer data.num_workers)")
        self.shards = list(shards)
        self.reader = reader
        self.seed, self.rank, self.world = seed, rank, world
        self.worker, self.workers = worker, workers
        self.shuffle_buffer = shuffle_buffer
        self.counts: Dict[str, int] = {}  # valid samples of each shard read to its end

    def epoch_shards(self, epoch: int) -> List[str]:
        ids = stream_shards(len(self.shards), self.seed, epoch, self.rank, self.world, self.worker, self.workers)
        return [self.shards[i] for i in ids]

    def _read(self, shards: Sequence[str]) -> Iterator[dict]:
        for shard in shards:
            n = 0
            for record in self.reader.iter_shard(shard):
                n += 1
                yield record
            self.counts[shard] = n

    def samples(self, start: int = 0) -> Iterator[dict]:
        """The stream from its sample ``start`` on (records of :class:`~.shards.ShardReader`;
        those read while replaying have ``image`` None: :func:`~.shards.load_image`)."""
        skip, epoch = start, 0
        while True:
            shards = self.epoch_shards(epoch)
            if skip and all(s in self.counts for s in shards) and 0 < sum(self.counts[s] for s in shards) <= skip:
                skip -= sum(self.counts[s] for s in shards)  # a counted epoch: skipped without reading
                epoch += 1
                continue
            self.reader.load_images = skip == 0
            rng = np.random.default_rng([self.seed, epoch, self.rank, self.worker])
            produced = 0
            for record in buffer_shuffle(self._read(shards), self.shuffle_buffer, rng):
                produced += 1
                if skip:
                    skip -= 1
                    self.reader.load_images = skip == 0  # samples read from here on are used
                    continue
                yield record
            if not produced:
                names = ", ".join(shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
                why = (f"{self.reader.num_filtered:,} samples not in data.languages" if self.reader.num_filtered
                       else "see the warnings above")
                raise DatasetError(f"rank {self.rank}, data worker {self.worker}: no valid sample in its shards of "
                                   f"epoch {epoch} ({names}; {why}): remove or rewrite them")
            epoch += 1

    def batches(self, batch_size: int, first: int = 0) -> Iterator[List[dict]]:
        """Batch ``first``, ``first + 1``, ... of the stream (``batch_size`` samples each)."""
        samples = self.samples(first * batch_size)
        while True:
            yield [next(samples) for _ in range(batch_size)]
