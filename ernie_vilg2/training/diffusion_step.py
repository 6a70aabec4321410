"""One diffusion training step: records -> latents, noise, timesteps, captions -> losses."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import paddle

from ..models.routing import TimestepRouter
from .batches import group_mean, shard


class TimestepSampler:
    """Timesteps uniform on [0, T), optionally restricted to the stages of some experts.

    With ``boundaries`` (``model.expert_boundaries``) the stages may differ in length: an expert
    is then chosen with probability proportional to its stage's length and ``t`` uniformly
    within its stage, so the timesteps of a run over all experts stay uniform on [0, T) and
    every expert sees a uniform share of its own stage.

    ``one_expert_per_step`` draws one expert per step and all of the batch's timesteps
    from its stage: every expert still sees a uniform share of its own stage, but a
    step runs one U-Net on the whole batch instead of N U-Nets on slivers of it (what
    expert-parallel workers do at scale; on one CPU it makes stage 2 cost as stage 1).

    With an expert ``layout`` (:class:`~.expert_layout.ExpertLayout`) the rows of each expert
    group get timesteps of that group's experts only (one expert per group and step with
    ``one_expert_per_step``); all groups are drawn in order, so every rank draws the same
    global batch. Equal groups of equal stages keep the timesteps of the whole batch uniform
    on [0, T); with unequal stages each group still gets its equal share of the rows.
    """

    def __init__(self, num_train_timesteps: int, num_experts: int, expert_ids: Optional[List[int]] = None,
                 one_expert_per_step: bool = False, layout=None, boundaries: Optional[List[int]] = None):
        self.T = num_train_timesteps
        self.N = num_experts
        router = TimestepRouter(num_experts, num_train_timesteps, boundaries)
        self.boundaries = router.boundaries
        self.starts = np.asarray(router.edges[:-1], dtype="int64")
        self.lengths = np.asarray(router.stage_lengths(), dtype="int64")
        self.expert_ids = np.asarray(expert_ids if expert_ids else range(num_experts))
        self.restricted = bool(expert_ids)
        self.one_expert_per_step = one_expert_per_step
        self.layout = layout

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.layout is None:
            return self._draw(n, self.expert_ids, self.restricted, rng)
        t = np.empty(n, dtype="int64")
        groups = self.layout.row_groups(n)
        for g in range(self.layout.groups):
            rows = np.flatnonzero(groups == g)
            experts = self.layout.group_experts(g)
            t[rows] = self._draw(len(rows), np.asarray(experts), len(experts) < self.N, rng)
        return t

    def _draw(self, n: int, expert_ids: np.ndarray, restricted: bool, rng: np.random.Generator) -> np.ndarray:
        lengths = self.lengths[expert_ids]
        equal = bool((lengths == lengths[0]).all())
        weights = None if equal else lengths / lengths.sum()  # an expert as often as its stage is long
        if self.one_expert_per_step:
            experts = np.full(n, rng.choice(expert_ids, p=weights))
        elif restricted:
            experts = rng.choice(expert_ids, size=n, p=weights)
        else:
            return rng.integers(0, self.T, size=n).astype("int64")
        high = self.lengths[experts[0]] if equal else self.lengths[experts]
        return (self.starts[experts] + rng.integers(0, high, size=n)).astype("int64")


class DiffusionStep:
    """The ``step_fn`` of the diffusion stages (and of the knowledge benchmark).

    Every random draw is made for the whole global batch, then sharded, and each row's caption
    choices come from a generator of its own (seeded from the step's), so N ranks compute
    exactly the batch one would when they train the same rows (indexed data); with streamed
    shards each rank trains the rows its own stream gives.
    """

    def __init__(self, cfg, source, captions, model, timesteps: TimestepSampler, batch_size: int,
                 rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.source = source
        self.captions = captions
        self.model = model
        self.timesteps = timesteps
        self.batch_size = batch_size
        self.mine = shard(list(range(batch_size)), rank, world_size)
        self.bf16 = cfg.train.mixed_precision == "bf16"
        self.router = TimestepRouter(cfg.model.num_experts, cfg.model.num_train_timesteps, timesteps.boundaries)
        latent = cfg.data.resolution // cfg.model.vae.scale_factor
        self.weight_shape = (1, latent, latent)

    def __call__(self, step: int, rng: np.random.Generator) -> Tuple[paddle.Tensor, Dict[str, float]]:
        mine, n = self.mine, self.batch_size
        metas, mean, std = self.source.local_batch(step, n, self.cfg.train.seed, mine)
        shape = (n,) + mean.shape[1:]
        eps = rng.standard_normal(shape).astype("float32")[mine]
        latents = ((mean + std * eps) * self.source.scaling_factor).astype("float32")
        noise = rng.standard_normal(shape).astype("float32")[mine]
        t = self.timesteps.sample(n, rng)[mine]
        row_rngs = [np.random.default_rng(seed) for seed in rng.integers(0, 2**63 - 1, size=n)[mine]]
        batch = self.captions.training_rows(metas, row_rngs, self.weight_shape)
        weights, mask = batch["loss_weight"], batch["key_token_mask"]
        # bf16 needs no loss scaling; the loss itself is computed in float32.
        with paddle.amp.auto_cast(enable=self.bf16, dtype="bfloat16", level="O1"):
            losses = self.model(
                paddle.to_tensor(batch["input_ids"]),
                paddle.to_tensor(latents),
                paddle.to_tensor(noise),
                paddle.to_tensor(t),
                None if weights is None else paddle.to_tensor(weights),
                None if mask is None else paddle.to_tensor(mask),
            )
        logs = group_mean(losses.numpy(), self.router.expert_index(t), self.cfg.model.num_experts, "loss_stage_")
        if self.source.data_wait is not None:
            logs["data_wait_s"] = self.source.data_wait
        return losses.mean(), logs
