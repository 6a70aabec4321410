"""Who trains what in expert-parallel stage 2 (``train.expert_parallel``); no Paddle here.

``W`` ranks form ``G`` equal groups of ``R = W / G`` consecutive ranks (a group on as few
nodes as possible); group ``g`` owns the ``N / G`` consecutive experts
``g*N/G .. (g+1)*N/G - 1``. Every rank draws the same global batch of ``B`` rows and
computes rows ``rank, rank + W, ...`` (as in data parallelism); the rows of group ``g``'s
ranks get timesteps from group ``g``'s experts only.

Why the splits must be even: each group computes ``B / G`` rows per step and spreads them
uniformly over the stages of its ``N / G`` experts, so every stage gets ``B / N`` rows per
step in expectation and the timesteps of the whole job are uniform on ``[0, T)``, the
distribution a single process draws. Unequal groups (or unequal expert shares) would train
the stages of some experts more often than others, so they are refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..config import ConfigError

_EXPERT_PARAM = re.compile(r"(?:^|\.)experts\.(\d+)\.")


def expert_of(name: str) -> Optional[int]:
    """The expert a parameter (or optimizer/EMA state key) belongs to, None for shared ones.

    ``unet.experts.3.conv_in.weight`` -> 3; ``master_weights/unet.experts.3.x`` -> 3;
    ``text_encoder.embeddings...`` -> None.
    """
    match = _EXPERT_PARAM.search(name.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def part_name(expert: int) -> str:
    """Checkpoint part (folder) of an expert's tensors; the shared ones live at the checkpoint's top."""
    return f"expert-{expert:02d}"


def expert_group_count(num_experts: int, world_size: int, requested: Optional[int] = None) -> int:
    """Number of expert groups: ``requested`` (train.expert_groups), else one group per expert
    when there are enough ranks (``min(N, W)``). Uneven splits raise a one-line ConfigError."""
    groups = requested if requested is not None else min(num_experts, world_size)
    field = "train.expert_groups" if requested is not None else "train.expert_parallel"
    if num_experts % groups or world_size % groups:
        common = [g for g in range(1, min(num_experts, world_size) + 1)
                  if num_experts % g == 0 and world_size % g == 0]
        raise ConfigError(field, f"{world_size} ranks and model.num_experts {num_experts} cannot form {groups} "
                                 f"equal expert groups (equal ranks and experts per group keep the timesteps "
                                 f"uniform); set train.expert_groups to one of {common} or change the number of ranks")
    return groups


@dataclass(frozen=True)
class ExpertLayout:
    num_experts: int
    world_size: int
    groups: int
    rank: int = 0

    def __post_init__(self):
        expert_group_count(self.num_experts, self.world_size, self.groups)

    @property
    def ranks_per_group(self) -> int:
        return self.world_size // self.groups

    @property
    def experts_per_group(self) -> int:
        return self.num_experts // self.groups

    @property
    def group(self) -> int:
        return self.rank // self.ranks_per_group

    @property
    def is_group_leader(self) -> bool:
        """The group's first rank: it writes the group's experts to checkpoints."""
        return self.rank % self.ranks_per_group == 0

    def group_ranks(self, group: int) -> List[int]:
        r = self.ranks_per_group
        return list(range(group * r, (group + 1) * r))

    def group_experts(self, group: int) -> List[int]:
        k = self.experts_per_group
        return list(range(group * k, (group + 1) * k))

    @property
    def experts(self) -> List[int]:
        """The experts this rank builds and trains."""
        return self.group_experts(self.group)

    def row_groups(self, batch_size: int) -> np.ndarray:
        """The group computing each row of the global batch (row i is rank i % W's)."""
        return (np.arange(batch_size) % self.world_size) // self.ranks_per_group

    def holds(self, name: str) -> bool:
        """Whether this rank has the parameter (or state key) ``name``."""
        expert = expert_of(name)
        return expert is None or expert in self.experts

    def describe(self) -> str:
        return (f"{self.groups} expert group(s) x {self.ranks_per_group} rank(s), {self.experts_per_group} "
                f"expert(s) per group; rank {self.rank} is in group {self.group} (ranks "
                f"{self.group_ranks(self.group)}) with experts {self.experts}")


def layout_from_config(cfg, world_size: int, rank: int, on_gpu: bool) -> ExpertLayout:
    """The layout of ``cfg`` (an ExperimentConfig with train.expert_parallel) on ``world_size``
    ranks, after the checks that need the number of ranks or the device."""
    t = cfg.train
    layout = ExpertLayout(cfg.model.num_experts, world_size,
                          expert_group_count(cfg.model.num_experts, world_size, t.expert_groups), rank)
    for stage in ("vae", "base", "experts"):
        if stage in t.stages:
            batch = getattr(t, stage).batch_size or t.batch_size
            if batch % world_size:
                field = f"train.{stage}.batch_size" if getattr(t, stage).batch_size else "train.batch_size"
                raise ConfigError(field, f"{batch} must be a multiple of the number of ranks ({world_size}) with "
                                         "train.expert_parallel (equal rows per rank and per expert group)")
    if t.sharding_degree > 1:
        if not on_gpu:
            raise ConfigError("train.sharding_degree", "sharding within an expert group uses Paddle's group-sharded "
                                                       "API (paddle.distributed.sharding.group_sharded_parallel), "
                                                       "which Paddle 3.3.1 runs only on GPU/XPU; set it to 1 on CPU")
        if t.sharding_degree != layout.ranks_per_group:
            raise ConfigError("train.sharding_degree", f"with train.expert_parallel it must be 1 or the ranks of "
                                                       f"an expert group ({layout.ranks_per_group}), "
                                                       f"got {t.sharding_degree}")
        if t.experts.train_text_encoder:
            raise ConfigError("train.experts.train_text_encoder",
                              "must be false with sharding in expert-parallel training (the group-sharded API "
                              "reduces gradients within a group; the shared text encoder needs all ranks)")
    if t.sharding_offload and t.sharding_degree == 1:
        raise ConfigError("train.sharding_offload", "needs train.sharding_degree > 1")
    return layout
