"""Multi-process training through ``python -m paddle.distributed.launch``.

Data parallelism (optionally with Fleet sharding stage 1 of the optimizer state) via
Fleet's hybrid strategy. On CPU Paddle uses gloo; model parallel and sharding stages
2/3 are GPU-only. With one process nothing is wrapped.

With ``train.expert_parallel`` (stage 2 on expert groups, :mod:`.expert_parallel`) the job
joins through ``init_parallel_env`` and ``new_group`` instead of Fleet (4-rank Fleet setups
fail to create their groups over gloo now and then; the earlier stages then use
``paddle.DataParallel``). Only with sharding within the groups (GPU) is Fleet initialised,
as dp = groups x sharding = ranks per group, whose sharding groups are then exactly the
expert groups (consecutive ranks), handed to Paddle's group-sharded API.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn, Optional, Tuple

import paddle
import paddle.distributed as dist

from ..config import ConfigError
from .expert_layout import ExpertLayout, layout_from_config
from .expert_parallel import ExpertParallelHooks, connect
from .process_groups import barrier, leave_job

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    fleet: bool = False
    experts: Optional[ExpertLayout] = None  # expert-parallel stage 2
    expert_group: Any = None  # this rank's expert group (None when a group is one rank)
    sharding: Optional[dict] = None  # group_sharded_parallel level/offload within the expert groups (GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def expert_parallel(self, stage: str) -> bool:
        return self.experts is not None and stage == "experts"

    def wrap_model(self, module: paddle.nn.Layer, stage: str = "") -> paddle.nn.Layer:
        """The data-parallel wrapper of ``module``; the module itself with one process and in
        the expert-parallel stage (its gradients are synchronised by the loop's hooks)."""
        if self.world_size == 1 or self.expert_parallel(stage):
            return module
        if self.fleet:
            from paddle.distributed import fleet

            return fleet.distributed_model(module)
        return paddle.DataParallel(module, find_unused_parameters=True)

    def wrap_optimizer(self, optimizer, stage: str = ""):
        if self.world_size == 1 or not self.fleet or self.expert_parallel(stage):
            return optimizer
        from paddle.distributed import fleet

        return fleet.distributed_optimizer(optimizer)

    def shard(self, module: paddle.nn.Layer, optimizer):
        """Module and optimizer sharded within the expert group (GPU; group_sharded_parallel
        implements stage 1 'os' as stage 2 'os_g')."""
        from paddle.distributed.sharding import group_sharded_parallel

        model, optimizer, _ = group_sharded_parallel(module, optimizer, self.sharding["level"],
                                                     group=self.expert_group, offload=self.sharding["offload"])
        return model, optimizer

    def loop_hooks(self, stage: str):
        """The training loop's hooks for ``stage`` (None: the defaults)."""
        if not self.expert_parallel(stage):
            return None
        return ExpertParallelHooks(self.experts, self.expert_group, sharded=self.sharding is not None)

    def barrier(self) -> None:
        """All ranks have arrived; counted on the launcher's store, so a rank busy alone (saving,
        sampling, verifying checkpoints) may take longer than gloo's 30 s (:mod:`.process_groups`)."""
        barrier(self.world_size)


def launch_position() -> Tuple[int, int]:
    """(rank, number of ranks) as the launcher set them, (0, 1) without one; needs no process group."""
    return dist.get_rank(), dist.get_world_size()


def end_launched_rank(code: int) -> NoReturn:
    """End this rank of a launched job: after a success, rank 0 (which serves the job's store)
    waits for the others to be done with it; then the atexit handlers, the logs flushed, and
    ``os._exit``.

    Paddle's TCP stores (the job's on rank 0, each expert group's on its first rank) keep their
    server thread until C++ static destruction, and no public call stops it. A peer that exits
    while this process is in that destruction wakes the thread, which logs through already
    destroyed objects, and the rank aborts (SIGABRT) after its work was done (docs/scale.md, "How
    a rank ends"). ``os._exit`` skips the static destructors; everything Python would do at exit
    has been done by then.
    """
    if code == 0:
        try:
            leave_job(dist.get_world_size())
        except Exception as exc:  # the work is done and saved: a peer gone early changes nothing
            logger.warning("leaving the job: %s", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
    atexit._run_exitfuncs()  # CPython's own: the handlers exit() runs (Paddle's, logging's, ...)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def is_communication_error(exc: BaseException) -> bool:
    """A collective or the launcher's store failed because a peer is gone or late (Paddle names
    the source file in the message): in a launched job mostly the echo of another rank's failure."""
    return any(source in str(exc) for source in ("/gloo/", "/distributed/store/"))


def _on_accelerator() -> bool:
    return paddle.get_device().split(":")[0] in ("gpu", "xpu")


def job_layout(cfg) -> Optional[ExpertLayout]:
    """This rank's expert layout (None without train.expert_parallel), after checking ``cfg`` (an
    ExperimentConfig) against the launched ranks: a config they cannot run raises a one-line
    ConfigError before anything joins or is written."""
    t = cfg.train
    rank, world = launch_position()
    if t.expert_parallel:
        return layout_from_config(cfg, world, rank, _on_accelerator())
    if world > 1 and world % t.sharding_degree:
        raise ConfigError("train.sharding_degree", f"{t.sharding_degree} must divide the number of workers ({world})")
    return None


def init_distributed(cfg) -> DistContext:
    """Join the job described by ``cfg`` (an ExperimentConfig) on the launcher's ranks."""
    t = cfg.train
    rank, world = launch_position()
    layout = job_layout(cfg)
    if layout is not None and t.sharding_degree == 1:
        return DistContext(rank=rank, world_size=world, experts=layout, expert_group=connect(layout))
    if world <= 1:
        return DistContext()
    from paddle.distributed import fleet

    sharding_degree = t.sharding_degree
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {
        "dp_degree": world // sharding_degree,
        "mp_degree": 1,
        "pp_degree": 1,
        "sharding_degree": sharding_degree,
    }
    # Experts a batch does not reach get no gradient in that step.
    strategy.find_unused_parameters = True
    fleet.init(is_collective=True, strategy=strategy)
    ctx = DistContext(rank=dist.get_rank(), world_size=world, fleet=True)
    logger.info("distributed: rank %d of %d (sharding degree %d)", ctx.rank, world, sharding_degree)
    if layout is not None:  # sharding within the expert groups (GPU): Fleet's sharding groups are they
        ctx.experts = layout
        ctx.expert_group = fleet.get_hybrid_communicate_group().get_sharding_parallel_group()
        ctx.sharding = {"level": "os_g" if t.sharding_stage == 2 else "os", "offload": t.sharding_offload}
        logger.info("expert-parallel: %s; optimizer state%s sharded within the group", layout.describe(),
                    " and gradients" if t.sharding_stage == 2 else "")
    return ctx
