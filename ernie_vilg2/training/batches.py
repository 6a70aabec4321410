"""Deterministic batches: data order, latents and captions for a training step.

The order of step ``k`` is a pure function of (seed, k): epoch ``e`` visits the records
in ``default_rng([seed, e]).permutation(n)``. Nothing about the data position needs
to be checkpointed for an exact resume.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import paddle
from tqdm import tqdm

logger = logging.getLogger(__name__)

META_KEYS = ("caption", "lang", "boxes", "labels", "synthetic_caption", "index")


def batch_indices(step: int, batch_size: int, num_records: int, seed: int) -> List[int]:
    """Record indices of global batch ``step`` (epochs reshuffled with their own seed)."""
    if num_records <= 0:
        raise ValueError("the dataset has no records")
    out: List[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, num_records)
        order = np.random.default_rng([seed, epoch]).permutation(num_records)
        take = min(batch_size - len(out), num_records - offset)
        out.extend(int(i) for i in order[offset : offset + take])
        position += take
    return out


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
    """Latents and metadata of dataset records, with the frozen VAE.

    ``cache=True`` encodes every distinct image once (posterior mean/std kept in memory)
    and draws ``z = mean + std * eps`` per step: the same distribution as encoding
    each step, at a fraction of the cost. ``cache=False`` decodes and encodes per step
    (large datasets).
    """

    def __init__(self, dataset, vae, scaling_factor: float, cache: bool = True, show_progress: bool = True):
        self.dataset = dataset
        self.vae = vae
        self.scaling_factor = scaling_factor
        self.cache = cache
        self._meta: Optional[List[dict]] = None
        if cache:
            self._build_cache(show_progress)

    def __len__(self) -> int:
        return len(self.dataset)

    def _build_cache(self, show_progress: bool) -> None:
        metas, image_of_record, pixels, seen = [], [], [], {}
        for i in tqdm(range(len(self.dataset)), desc="encode latents", disable=not show_progress):
            sample = self.dataset[i]
            metas.append({k: sample.get(k) for k in META_KEYS})
            # zh and en records of one image share it: encode each image once.
            key = self.dataset.image_path(i)
            if key not in seen:
                seen[key] = len(pixels)
                pixels.append(sample["pixel_values"])
            image_of_record.append(seen[key])
        self._meta = metas
        self._image_of_record = np.asarray(image_of_record)
        self._mean, self._std = encode_images(self.vae, np.stack(pixels))

    def meta(self, index: int) -> dict:
        if self._meta is not None:
            return self._meta[index]
        sample = self.dataset[index]
        return {k: sample.get(k) for k in META_KEYS}

    def latents(self, indices: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        if self.cache:
            rows = self._image_of_record[list(indices)]
            mean, std = self._mean[rows], self._std[rows]
        else:
            pixels = np.stack([self.dataset[i]["pixel_values"] for i in indices])
            mean, std = encode_images(self.vae, pixels)
        eps = rng.standard_normal(mean.shape).astype("float32")
        return ((mean + std * eps) * self.scaling_factor).astype("float32")


def estimate_scaling_factor(vae, dataset, max_images: int = 512, seed: int = 0) -> float:
    """1 / std of posterior samples, so diffusion sees unit-variance latents (as SD's 0.18215)."""
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(dataset))[:max_images]
    pixels = np.stack([dataset[int(i)]["pixel_values"] for i in picks])
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
