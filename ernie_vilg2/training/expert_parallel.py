"""Expert-parallel stage 2 on Paddle: process groups, gradient synchronisation, checkpoints.

Layout and its rules: :mod:`.expert_layout`. APIs and why:

- ``paddle.distributed.init_parallel_env`` + ``new_group`` per expert group, not Fleet's
  hybrid topology: Fleet's ``ep_degree`` takes effect only with ``order`` including "ep"
  and then forces dp = 1, and 4-rank Fleet hybrid setups failed to create their groups
  over gloo here. Each group is created on a store of its own, and again on every rank if
  any rank failed (:mod:`.process_groups`). Groups of one rank are not created (nothing to
  reduce).
- No DataParallel wrapper in the experts stage: its reducer all-reduces over all ranks,
  but expert gradients must stay within their group. After ``backward`` the trainer calls
  :class:`GradientSync`: expert gradients are summed within the group, the others (the text
  encoder, when trained) over all ranks, with Fleet's coalescing helper
  ``fused_allreduce_gradients_with_group``, both divided by the number of ranks. That is
  exactly the gradient of the mean loss of the global batch, the gradient one process
  holding all experts would compute for the same rows and timesteps; it is then clipped by
  the global norm of the whole model (one scalar all-reduce), as that process would clip it.
- Sharding within a group (``train.sharding_degree`` = ranks per group, GPU only):
  ``paddle.distributed.sharding.group_sharded_parallel`` with the group; it reduces the
  gradients itself (group mean) and clips by the group's norm (``GroupShardedClipGrad``).

Checkpoints: the group's first rank writes its experts (one ``expert-XX/`` part each) into a
staging folder that rank 0 created; after a barrier rank 0 adds the shared part, records
every file's size and SHA-256 and renames the folder into place (:mod:`.checkpoint`).
The final model is assembled the same way: per-expert files, a barrier, then rank 0 builds
the whole bank on the host (without initialising it) and saves the usual pipeline folder.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
from typing import Dict, List, Optional

import paddle
import paddle.distributed as dist

from ..errors import ErnieViLG2Error
from ..models.expert_bank import MixtureOfDenoisingExperts
from ..models.lazy_init import lazy_init
from ..utils.io import atomic_file
from .checkpoint import commit_checkpoint, load_checkpoint, staging_dir, start_checkpoint, write_checkpoint_part
from .expert_layout import ExpertLayout, expert_of, part_name
from .loop import LoopHooks
from .process_groups import GroupCreationFailed, barrier, create_groups

logger = logging.getLogger(__name__)


class ExpertGroupError(ErnieViLG2Error, RuntimeError):
    """Joining the job or creating the expert groups failed (over gloo this happens now and then: run again)."""


def connect(layout: ExpertLayout):
    """Join the job (``init_parallel_env``) and create the expert groups; this rank's group
    (None when groups have one rank). Every rank creates every group, in the same order, each
    group on its own store and with retries (:mod:`.process_groups`)."""
    what = f"expert-parallel: connecting {layout.world_size} ranks into {layout.groups} expert groups failed"
    again = "run the job again (with --resume it continues where it stopped)"
    try:
        if layout.world_size > 1:
            dist.init_parallel_env()
    except Exception as exc:  # gloo: RuntimeError(... TIMEOUT ...); NCCL: its own errors
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExpertGroupError(f"{what} ({first_line[:300]}); {again}") from None
    mine = None
    if layout.ranks_per_group > 1:
        try:
            groups = create_groups([layout.group_ranks(g) for g in range(layout.groups)])
        except GroupCreationFailed as exc:
            raise ExpertGroupError(f"{what} ({exc}); {again}") from None
        mine = groups[layout.group]
    logger.info("expert-parallel: %s", layout.describe())
    return mine


class GradientSync:
    """Called after ``backward``: makes the gradients of all ranks those of the global batch.

    Gradients that exist on some ranks of a group only (an expert a rank's rows did not
    reach) are zero-filled on the others first; those no rank of the group computed stay
    None, so AdamW leaves idle experts alone, as in one process.
    """

    def __init__(self, params: Dict[str, paddle.Tensor], layout: ExpertLayout, group, max_grad_norm: Optional[float]):
        self.layout = layout
        self.group = group
        self.max_grad_norm = max_grad_norm
        self.expert_params = [p for n, p in params.items() if expert_of(n) is not None]
        self.shared_params = [p for n, p in params.items() if expert_of(n) is None]

    @paddle.no_grad()
    def __call__(self) -> None:
        lay = self.layout
        if lay.world_size > 1:
            self._reduce(self.expert_params, self.group, lay.ranks_per_group)
            self._reduce(self.shared_params, None, lay.world_size)
        if self.max_grad_norm:
            self._clip()

    def _reduce(self, params: List[paddle.Tensor], group, size: int) -> None:
        from paddle.distributed.fleet.utils.hybrid_parallel_util import fused_allreduce_gradients_with_group

        if not params:
            return
        has_grad = paddle.to_tensor([int(p.grad is not None) for p in params], dtype="int32")
        if size > 1:
            dist.all_reduce(has_grad, op=dist.ReduceOp.MAX, group=group)
        active = []
        for p, flag in zip(params, has_grad.numpy().tolist()):
            if flag:
                if p.grad is None:
                    p.grad = paddle.zeros_like(p)
                active.append(p)
        scale = 1.0 / self.layout.world_size  # local grads are of the rank's mean loss
        if size > 1 and active:
            fused_allreduce_gradients_with_group(active, group, scale=scale)
        else:
            for p in active:
                p.grad.scale_(scale)

    def _clip(self) -> None:
        """Global-norm clipping over the whole model, as ``ClipGradByGlobalNorm`` in one process:
        the shared gradients are equal everywhere, each group's experts are counted once."""
        def squares(params):
            total = paddle.zeros([1], dtype="float32")
            for p in params:
                if p.grad is not None:
                    total += paddle.square(p.grad.astype("float32")).sum()
            return total

        experts = squares(self.expert_params)
        if self.layout.world_size > 1:
            dist.all_reduce(experts)
            experts = experts / self.layout.ranks_per_group
        norm = paddle.sqrt(squares(self.shared_params) + experts)
        limit = paddle.full([1], self.max_grad_norm, dtype="float32")
        coef = limit / paddle.maximum(norm, limit)
        for p in self.expert_params + self.shared_params:
            if p.grad is not None:
                p.grad.multiply_(coef.astype(p.grad.dtype))


class ExpertParallelHooks(LoopHooks):
    """The training loop's distributed parts in expert-parallel stage 2 (see the module doc)."""

    def __init__(self, layout: ExpertLayout, group, sharded: bool = False):
        self.layout = layout
        self.group = group
        self.sharded = sharded  # group-sharded optimizer: every rank of a group holds a slice of its state
        self.sync: Optional[GradientSync] = None

    @property
    def clips_gradients(self) -> bool:
        return not self.sharded  # the group-sharded optimizer clips by itself

    def setup(self, params: Dict[str, paddle.Tensor], max_grad_norm: Optional[float]) -> None:
        if not self.sharded:
            self.sync = GradientSync(params, self.layout, self.group, max_grad_norm)

    def after_backward(self) -> None:
        if self.sync is not None:
            self.sync()

    def holds(self, name: str) -> bool:
        return self.layout.holds(name)

    def writes_checkpoints(self, is_main: bool) -> bool:
        return True  # a collective: every rank takes part

    def save_checkpoint(self, folder: str, step: int, model_state, optimizer_state, ema_state, meta, keep, config):
        lay = self.layout
        staging = staging_dir(folder, step)
        if lay.rank == 0:
            start_checkpoint(staging)
        barrier(lay.world_size)
        if lay.is_group_leader or self.sharded:  # sharded: every rank holds a slice of the optimizer state
            optimizer_tensors = _flat_tensors(optimizer_state)
            for expert in lay.experts:
                mine = lambda state: {k: v for k, v in state.items() if expert_of(k) == expert}  # noqa: E731
                write_checkpoint_part(
                    staging, part_name(expert),
                    model_state=mine(model_state) if lay.is_group_leader else None,
                    optimizer_tensors=mine(optimizer_tensors),
                    ema_state=mine(ema_state) if lay.is_group_leader and ema_state is not None else None,
                    writer=lay.rank % lay.ranks_per_group if self.sharded else 0,
                )
        barrier(lay.world_size)
        path = os.path.join(folder, f"step-{step:06d}")
        if lay.rank == 0:
            shared = lambda state: {k: v for k, v in state.items() if expert_of(k) is None}  # noqa: E731
            commit_checkpoint(folder, step, staging, shared(model_state), _drop_expert_tensors(optimizer_state),
                              None if ema_state is None else shared(ema_state),
                              meta={**(meta or {}), "expert_groups": lay.groups}, keep=keep, config=config)
        return path

    def load_checkpoint(self, path: str) -> dict:
        ckpt = load_checkpoint(path, checksum=False, parts={part_name(e) for e in self.layout.experts})
        groups = ckpt["meta"].get("expert_groups")
        if groups is not None and groups != self.layout.groups:
            logger.warning("checkpoint %s was made with %d expert groups, this job has %d: the timesteps of the "
                           "global batch are assigned differently from here on (not an exact continuation)",
                           path, groups, self.layout.groups)
        return ckpt


def _flat_tensors(state: dict, prefix: str = "") -> Dict[str, paddle.Tensor]:
    """Optimizer tensors by their full key (``master_weights/<name>`` for nested ones)."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(_flat_tensors(value, f"{prefix}{key}/"))
        elif isinstance(value, paddle.Tensor):
            out[f"{prefix}{key}"] = value
    return out


def _drop_expert_tensors(state: dict) -> dict:
    """``state`` without the experts' tensors (nested dicts such as master_weights included)."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out[key] = _drop_expert_tensors(value)
        elif not (isinstance(value, paddle.Tensor) and expert_of(key) is not None):
            out[key] = value
    return out


# -- the final model --------------------------------------------------------------------------------
def write_final_experts(unet, layout: ExpertLayout, folder: str) -> None:
    """The group's first rank writes each of its experts' weights to ``folder/expert-XX.safetensors``."""
    from safetensors.numpy import save_file

    if not layout.is_group_leader:
        return
    os.makedirs(folder, exist_ok=True)
    state = unet.state_dict()
    for expert in layout.experts:
        tensors = {k: v.numpy() for k, v in state.items() if expert_of(k) == expert}
        with atomic_file(os.path.join(folder, f"{part_name(expert)}.safetensors")) as tmp:
            save_file(tensors, str(tmp))


def assemble_bank(unet, folder: str):
    """The whole bank of ``unet``'s config from the per-expert files of ``folder``, on the host.

    Built lazily (``paddle.LazyGuard``) so nothing is initialised: each parameter is created
    from its file (the bank of the 24B config is 89 GB in float32: host memory, not GPU).
    """
    from safetensors.numpy import load_file

    files = sorted(glob.glob(os.path.join(folder, "expert-*.safetensors")))
    state = {}
    for path in files:
        state.update(load_file(path))
    device = paddle.get_device()
    paddle.set_device("cpu")
    try:
        with lazy_init():
            bank = MixtureOfDenoisingExperts.from_config(unet.config)
        missing = sorted({k.split(".")[1] for k in bank.state_dict() if k not in state})
        if missing:
            raise FileNotFoundError(f"{folder}: no weights for experts {missing} (expected expert-XX.safetensors "
                                    "from every group's first rank)")
        bank.set_state_dict(state)
    finally:
        paddle.set_device(device)
    bank.eval()
    return bank


def remove_final_experts(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
