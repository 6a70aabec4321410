"""Process groups and barriers of a launched job that a slow or racing rank does not break (gloo).

Why not plain ``paddle.distributed.new_group`` and ``barrier``:

- Paddle's ``ProcessGroupGloo`` connects a second gloo context through the job's TCP store under
  bare keys, the rank within the group ("0", "1", ...), whatever the group. A group created after
  ``init_parallel_env`` finds the global group's values already under those keys, and groups
  created at the same time by different ranks overwrite each other's, so a rank can read a stale
  or foreign address and connect to the wrong process: the creation hangs, is refused, or a
  collective gives up later. Each group here meets on a TCP store of its own, served by its first
  rank, where those keys are fresh.
- After creating its groups every rank reports to the job's store whether it succeeded; if any
  rank failed, every rank creates them again (new stores, new group ids), ``attempts`` times at
  most, so all ranks leave with the same outcome.
- Gloo gives up on a collective, a barrier included, when a peer is 30 s late (its default,
  which Paddle does not let Python change). :func:`barrier` counts arrivals on the job's store
  instead and waits up to the process-group timeout (``PADDLE_PG_TIMEOUT``, 30 min by default),
  so work done by one rank only (verifying or committing a checkpoint, sampling, assembling the
  final model) may take longer; a rank that dies ends the job through the launcher.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import List, Sequence

import paddle.distributed as dist

from ..errors import ErnieViLG2Error

logger = logging.getLogger(__name__)

GROUP_STORE_TIMEOUT = 120  # seconds a group's members wait for each other on its store
_PREFIX = "ernie_vilg2"
_group_stores: List[object] = []  # the groups' stores stay open for the life of the process
_barriers = 0  # barriers passed by this process (the same sequence on every rank)


class GroupCreationFailed(ErnieViLG2Error, RuntimeError):
    """The groups could not be created in any attempt; the message says what the last one saw."""


def job_store():
    """The launcher's TCP store that ``init_parallel_env`` connected (served by rank 0)."""
    from paddle.base import core

    return core.create_or_get_global_tcp_store()


def _wait_for_count(store, key: str, count: int, what: str, poll: float = 0.02) -> None:
    """Wait until the counter ``key`` of ``store`` reaches ``count`` (ranks that arrived)."""
    timeout = dist.ParallelEnv().pg_timeout / 1000
    deadline = time.monotonic() + timeout
    while True:
        value = store.add(key, 0)
        if value >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {value} of {count} ranks arrived within {timeout:.0f} s (PADDLE_PG_TIMEOUT)")
        time.sleep(poll)
        poll = min(poll * 1.5, 0.2)


def barrier(world_size: int) -> None:
    """Every rank of the job has arrived (see the module doc for why not ``dist.barrier``)."""
    global _barriers
    if world_size <= 1:
        return
    _barriers += 1
    store = job_store()
    key = f"{_PREFIX}/barrier/{_barriers}"
    store.add(key, 1)
    _wait_for_count(store, key, world_size, f"barrier {_barriers}")


def leave_job(world_size: int) -> None:
    """This rank is done with the job's store; rank 0, whose process serves it, returns only when
    every rank is (a rank still polling its last barrier would lose the store otherwise)."""
    if world_size <= 1 or not dist.is_initialized():  # a run that never joined: no store to leave
        return
    store = job_store()
    store.add(f"{_PREFIX}/left", 1)
    if dist.get_rank() == 0:
        _wait_for_count(store, f"{_PREFIX}/left", world_size, "leaving the job")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _group_store(ranks: Sequence[int], rank: int, key: str):
    """A TCP store for the members of one group, served by its first rank on a free port."""
    from paddle.base import core

    job = job_store()
    leader = ranks[0]
    if rank == leader:
        host = dist.ParallelEnv().trainer_endpoints[leader].rsplit(":", 1)[0]
        job.set(key, f"{host}:{_free_port()}".encode())
    host, port = bytes(job.get(key)).decode().rsplit(":", 1)
    store = core.TCPStore(host, int(port), rank == leader, len(ranks), GROUP_STORE_TIMEOUT)
    _group_stores.append(store)
    return store


def _new_group_on(store, ranks: Sequence[int]):
    """``dist.new_group(ranks)`` rendezvousing on ``store`` instead of the job's store (Paddle
    passes its module-level default store to the process group it creates)."""
    from paddle.distributed import collective

    job = collective._default_store
    collective._default_store = store
    try:
        return dist.new_group(list(ranks))
    finally:
        collective._default_store = job


def _create_once(group_ranks: Sequence[Sequence[int]], rank: int, attempt: int) -> List:
    """One attempt: every rank calls ``new_group`` for every group in the same order (the group
    ids stay aligned), members on their group's own store. Raises on this rank's failure."""
    groups, error = [], None
    for g, ranks in enumerate(group_ranks):
        if rank not in ranks or error is not None:
            groups.append(dist.new_group(list(ranks)))  # not a member: only the group id advances
            continue
        try:
            store = _group_store(ranks, rank, f"{_PREFIX}/groups/{attempt}/{g}")
            groups.append(_new_group_on(store, ranks))
        except Exception as exc:  # gloo: RuntimeError (TIMEOUT, Connection refused, ...)
            error = exc
            groups.append(None)
    if error is not None:
        raise error
    return groups


def create_groups(group_ranks: Sequence[Sequence[int]], attempts: int = 3) -> List:
    """The process groups of ``group_ranks`` (one list of global ranks each), created on every rank
    of the initialised job; this rank's entries for groups it is not in are non-member groups.

    Raises :class:`GroupCreationFailed` when some rank failed in every attempt.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    job = job_store()
    last = None
    for attempt in range(attempts):
        try:
            groups, failed = _create_once(group_ranks, rank, attempt), 0
        except Exception as exc:
            groups, failed = None, 1
            last = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            logger.warning("rank %d: creating the process groups failed (attempt %d of %d): %s",
                           rank, attempt + 1, attempts, last)
        key = f"{_PREFIX}/groups/{attempt}"
        job.add(f"{key}/failed", failed)  # before reporting, so every rank reads the final count
        job.add(f"{key}/reported", 1)
        _wait_for_count(job, f"{key}/reported", world, "creating the process groups")
        failures = job.add(f"{key}/failed", 0)
        if not failures:
            if attempt:
                logger.info("process groups created at attempt %d", attempt + 1)
            return groups
        if not failed:
            logger.warning("rank %d: %d rank(s) failed to create the process groups (attempt %d of %d)",
                           rank, failures, attempt + 1, attempts)
    raise GroupCreationFailed(f"{attempts} attempts" + (f"; this rank's last error: {last}" if last else
                                                        "; this rank succeeded, another did not"))
