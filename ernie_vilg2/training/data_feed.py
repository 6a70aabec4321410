"""The training data of a run, opened before the first step, and each stage's batches for this rank.

:func:`open_training_data` opens what ``data:`` names (:func:`~ernie_vilg2.data.sources.open_source`)
and refuses settings that do not fit it. :class:`StageBatches` runs a stage's loader
(:class:`~ernie_vilg2.data.loader.BatchLoader`): started at the step the stage starts or resumes
from, restarted if a step is asked for out of turn, and at the end of the stage it logs what
the data cost (samples read, problems skipped, as a warning when there were any).
"""
from __future__ import annotations

import logging
from typing import Optional, Set

import numpy as np

from ..config import ConfigError
from ..data.batch_plans import make_plan
from ..data.latent_shards import check_vae, vae_fingerprint
from ..data.loader import BatchLoader
from ..data.problems import DataReport
from ..data.samples import batch_pixel_values
from ..data.sources import LatentShardSet, ShardSet, open_source

logger = logging.getLogger(__name__)


def open_training_data(cfg):
    """The training data of ``cfg`` (an ExperimentConfig): a MapDataset, ShardSet or LatentShardSet."""
    source = open_source(cfg.data)
    if isinstance(source, ShardSet):
        for section in ("textual_knowledge", "visual_knowledge"):
            if getattr(getattr(cfg, section), "annotations", None):
                raise ConfigError(f"{section}.annotations", "an annotation file is keyed by JSON-lines record; "
                                  "shards take their knowledge from NAME.knowledge.jsonl beside NAME.tar")
        if cfg.train.cache_latents and not isinstance(source, LatentShardSet):
            logger.info("train.cache_latents does not apply to streamed shards: latents are encoded each step")
    return source


def check_latent_vae(source, vae, vae_dir: str) -> None:
    """Latent shards must come from the run's VAE (its weights and scaling factor)."""
    if isinstance(source, LatentShardSet):
        check_vae(source.latent_spec, source.manifest, vae_fingerprint(vae.state_dict()),
                  float(vae.config.scaling_factor), vae_dir)


class StageBatches:
    """This rank's batches of one stage: ``get(step)`` -> (pixel_values float32 [b, 3, R, R],
    metas, seconds waited), for steps asked in order from any start."""

    def __init__(self, source, cfg, stage: str, batch_size: int, rank: int = 0, world: int = 1,
                 num_workers: Optional[int] = None, warned: Optional[Set[str]] = None):
        data = cfg.data
        self.num_workers = data.num_workers if num_workers is None else num_workers
        knowledge = cfg.textual_knowledge.enabled or cfg.visual_knowledge.enabled
        self.plan = make_plan(source, cfg.train.seed, rank, world, batch_size, self.num_workers, data.shuffle_buffer,
                              knowledge)
        self.prefetch = data.prefetch
        self.report = DataReport(f"data of stage {stage}", warned)
        self._loader: Optional[BatchLoader] = None

    def get_batch(self, step: int):
        """(the loader's :class:`~ernie_vilg2.data.batch_plans.Batch` of ``step``, seconds waited)."""
        if self._loader is None or self._loader.next_step != step:
            if self._loader is not None:
                self._loader.close()
            self._loader = BatchLoader(self.plan, step, self.num_workers, self.prefetch, self.report)
        return self._loader.get(), self._loader.wait

    def get(self, step: int):
        batch, wait = self.get_batch(step)
        return batch_pixel_values(batch.pixels), batch.metas, wait

    def close(self, log: bool = True) -> None:
        """Stop the loader; log the stage's data summary."""
        if self._loader is not None:
            self._loader.close()
            self._loader = None
        if log and self.report.samples:
            logger.log(logging.WARNING if self.report.num_problems else logging.INFO, "%s", self.report.summary)

    def __enter__(self) -> "StageBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def report_read_problems(dataset, name: str, samples: int, warned: Optional[Set[str]] = None) -> None:
    """Warn of (once each) and count what reading ``samples`` items of an indexed dataset in this
    process skipped (the in-memory latent cache, the scaling factor's images)."""
    report = DataReport(name, warned)
    report.samples = samples
    report.add(dataset.take_problems())
    if report.num_problems:
        logger.warning("%s", report.summary)


def scaling_pixels(source, cfg, batch_size: int, rank: int = 0, world: int = 1, max_images: int = 512,
                   warned: Optional[Set[str]] = None) -> np.ndarray:
    """The images the VAE's latent scaling factor is estimated on, float32 [N, 3, R, R]: seeded
    picks of indexed data, the first batches of this rank's stream of shards."""
    if not isinstance(source, ShardSet):
        picks = np.random.default_rng(cfg.train.seed).permutation(len(source))[:max_images]
        pixels = np.stack([source[int(i)]["pixel_values"] for i in picks])
        report_read_problems(source, "data of the VAE's scaling factor", len(picks), warned)
        return pixels
    pixels, batches = [], StageBatches(source, cfg, "vae", batch_size, rank, world, num_workers=0, warned=warned)
    try:
        while sum(len(p) for p in pixels) < max_images:
            pixels.append(batches.get(len(pixels))[0])
    finally:
        batches.close(log=False)
    return np.concatenate(pixels)[:max_images]
