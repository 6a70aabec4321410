"""Multi-process training through ``python -m paddle.distributed.launch``.

Data parallelism (optionally with Fleet sharding stage 1 of the optimizer state) via
Fleet's hybrid strategy. On CPU Paddle uses gloo; model parallel and sharding stages
2/3 are GPU-only. With one process nothing is wrapped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import paddle
import paddle.distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    fleet: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, module: paddle.nn.Layer) -> paddle.nn.Layer:
        if self.world_size == 1:
            return module
        from paddle.distributed import fleet

        return fleet.distributed_model(module)

    def wrap_optimizer(self, optimizer):
        if self.world_size == 1:
            return optimizer
        from paddle.distributed import fleet

        return fleet.distributed_optimizer(optimizer)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed(sharding_degree: int = 1) -> DistContext:
    world = dist.get_world_size()
    if world <= 1:
        return DistContext()
    from paddle.distributed import fleet

    if world % sharding_degree:
        raise ValueError(f"train.sharding_degree ({sharding_degree}) must divide the number of workers ({world})")
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
    return ctx
