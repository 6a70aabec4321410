"""Deterministic batches: data order, latents and captions for a training step.

The order of step ``k`` is a pure function of (seed, k) for indexed data
(:func:`~ernie_vilg2.data.batch_plans.batch_indices`: epoch ``e`` visits the records in
``default_rng([seed, e]).permutation(n)``) and of (seed, ranks, data workers, k) for streamed
shards (:mod:`ernie_vilg2.data.stream_order`). Nothing about the data position needs to be
checkpointed for an exact resume.

A latent source gives a step the rows of the global batch this rank trains
(``local_batch(step, batch_size, seed, rows)`` -> metas, posterior mean, std): from the
in-memory cache (:class:`LatentSource`, small indexed data), by encoding the loader's batch
(:class:`StreamedLatents`) or as the loader read them from latent shards (:class:`StoredLatents`).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import paddle
from tqdm import tqdm

from ..data.batch_plans import batch_indices

logger = logging.getLogger(__name__)

META_KEYS = ("caption", "lang", "boxes", "labels", "synthetic_caption", "index", "key")


def shard(items: Sequence, rank: int, world: int) -> list:
    """This worker's share of a global batch (rows rank, rank+world, ...)."""
    return list(items[rank::world])


@paddle.no_grad()
def encode_images(vae, pixels: np.ndarray, batch_size: int = 64):
    """Posterior mean and std of ``pixels`` [N,3,H,W] in [-1,1] (numpy float32)."""
    means, stds = [], []
    for start in range(0, len(pixels), batch_size):
        dist = vae.encode(paddle.to_tensor(pixels[start : start + batch_size])).latent_dist
        means.append(dist.mean.numpy())
        stds.append(dist.std.numpy())
    return np.concatenate(means), np.concatenate(stds)


class LatentSource:
    """The in-memory latent cache of indexed data (small sets): every distinct image encoded once
    by the frozen VAE (posterior mean/std kept in memory); a step draws ``z = mean + std * eps``,
    the same distribution as encoding each step, at a fraction of the cost."""

    data_wait = None  # nothing is read during training

    def __init__(self, dataset, vae, scaling_factor: float, show_progress: bool = True):
        self.dataset = dataset
        self.vae = vae
        self.scaling_factor = scaling_factor
        metas, image_of_record, pixels, seen = [], [], [], {}
        for i in tqdm(range(len(dataset)), desc="encode latents", disable=not show_progress):
            sample = dataset[i]
            metas.append({k: sample.get(k) for k in META_KEYS})
            # zh and en records of one image share it: encode each image once.
            key = dataset.image_path(i)
            if key not in seen:
                seen[key] = len(pixels)
                pixels.append(sample["pixel_values"])
            image_of_record.append(seen[key])
        self._meta = metas
        self._image_of_record = np.asarray(image_of_record)
        self._mean, self._std = encode_images(vae, np.stack(pixels))

    def __len__(self) -> int:
        return len(self.dataset)

    def meta(self, index: int) -> dict:
        return self._meta[index]

    def local_batch(self, step: int, batch_size: int, seed: int, rows: Sequence[int]):
        """Metas, posterior mean and std of ``rows`` of global batch ``step`` (this rank's)."""
        indices = batch_indices(step, batch_size, len(self), seed)
        mine = [indices[i] for i in rows]
        images = self._image_of_record[mine]
        return [self._meta[i] for i in mine], self._mean[images], self._std[images]


class StreamedLatents:
    """The loader's batch of each step (:class:`~.data_feed.StageBatches`), encoded by the VAE."""

    data_wait = 0.0  # seconds the last step waited for its batch

    def __init__(self, batches, vae, scaling_factor: float):
        self.batches = batches
        self.vae = vae
        self.scaling_factor = scaling_factor

    def local_batch(self, step: int, batch_size: int, seed: int, rows: Sequence[int]):
        pixels, metas, self.data_wait = self.batches.get(step)
        mean, std = encode_images(self.vae, pixels)
        return metas, mean, std


class StoredLatents:
    """The loader's batch of each step from latent shards: the posterior mean and std stored by
    ``tools/encode_latents.py``, drawn from as encoded ones are."""

    data_wait = 0.0

    def __init__(self, batches, scaling_factor: float):
        self.batches = batches
        self.scaling_factor = scaling_factor

    def local_batch(self, step: int, batch_size: int, seed: int, rows: Sequence[int]):
        batch, self.data_wait = self.batches.get_batch(step)
        return batch.metas, batch.latents[:, 0], batch.latents[:, 1]


def estimate_scaling_factor(vae, pixels: np.ndarray, seed: int = 0) -> float:
    """1 / std of posterior samples of ``pixels``, so diffusion sees unit-variance latents (as SD's 0.18215)."""
    rng = np.random.default_rng(seed)
    mean, std = encode_images(vae, pixels)
    z = mean + std * rng.standard_normal(mean.shape)
    return float(1.0 / max(z.std(), 1e-6))


def stack_weight_maps(maps: List[Optional[np.ndarray]], shape) -> Optional[np.ndarray]:
    """[B,1,h,w] loss weights, or None when no sample of the batch has a map."""
    if all(m is None for m in maps):
        return None
    ones = np.ones(shape, dtype="float32")
    return np.stack([ones if m is None else np.asarray(m, dtype="float32").reshape(shape) for m in maps])


def group_mean(values: np.ndarray, groups: np.ndarray, num_groups: int, prefix: str) -> Dict[str, float]:
    """Mean of ``values`` per group id present (for per-expert-stage loss curves)."""
    return {f"{prefix}{g}": float(values[groups == g].mean()) for g in range(num_groups) if (groups == g).any()}
