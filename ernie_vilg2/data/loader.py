"""The loader: a plan's batches (:mod:`.batch_plans`), made ahead in worker processes.

``BatchLoader(plan, start_step, num_workers, prefetch)`` hands out the batches of steps
``start_step``, ``start_step + 1``, ... in that order. With ``W`` workers, worker ``p`` makes
steps ``start_step + p``, ``start_step + p + W``, ... into a queue of ``prefetch`` batches, and
step ``k`` is taken from worker ``(k - start_step) % W``'s queue; with 0 workers the plan runs
in the calling process. :attr:`BatchLoader.wait` is how long the last :meth:`~BatchLoader.get`
waited for its batch (the data wait a training step shows).

A pool of our own rather than ``paddle.io.DataLoader``: which process makes which step is the
contract exact resume rests on, not an implementation detail; batches stay NumPy arrays and
strings (no conversion to tensors and back); and the problems each worker finds travel with
its batches to the training process, which warns of each once and counts them
(:class:`~.problems.DataReport`). Workers are forked where the platform can (as Paddle's loader
does; they run no Paddle code), ignore Ctrl-C (the training process stops them) and stop when
the training process is gone. An error in a worker is raised by :meth:`~BatchLoader.get`.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import time
import traceback
from typing import List, Optional

from ..errors import ErnieViLG2Error
from .batch_plans import Batch
from .problems import DataReport

POLL_SECONDS = 1.0  # how often a waiting side checks that the other is still there


class DataWorkerError(ErnieViLG2Error, RuntimeError):
    """A data worker process stopped without an error of its own (killed, out of memory)."""


def _put(q, item, parent: int) -> bool:
    """Put ``item`` into ``q``; False once the training process is gone."""
    while True:
        try:
            q.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            if os.getppid() != parent:
                return False


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (to reach the training process), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception class whose arguments do not round-trip
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _work(plan, first_step: int, stride: int, q, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the training process decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the trainer's handler, inherited through fork
    try:
        for batch in plan.batches(first_step, stride):
            if not _put(q, ("batch", batch), parent):
                return
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the training process
        _put(q, ("error", _portable(exc), traceback.format_exc()), parent)


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class BatchLoader:
    def __init__(self, plan, start_step: int, num_workers: int = 0, prefetch: int = 2,
                 report: Optional[DataReport] = None):
        self.start = start_step
        self.next_step = start_step
        self.num_workers = num_workers
        self.report = report or DataReport("data")
        self.wait = 0.0
        self._procs: List = []
        self._queues: List = []
        if num_workers == 0:
            self._batches = plan.batches(start_step, 1)
            return
        ctx = _context()
        for p in range(num_workers):
            q = ctx.Queue(maxsize=prefetch)
            proc = ctx.Process(target=_work, args=(plan, start_step + p, num_workers, q, os.getpid()),
                               name=f"data-worker-{p}", daemon=True)
            proc.start()
            self._procs.append(proc)
            self._queues.append(q)

    def get(self) -> Batch:
        """The batch of step :attr:`next_step`."""
        t0 = time.perf_counter()
        batch = next(self._batches) if self.num_workers == 0 else self._receive((self.next_step - self.start) %
                                                                                self.num_workers)
        self.wait = time.perf_counter() - t0
        if batch.step != self.next_step:
            raise RuntimeError(f"data loader: got the batch of step {batch.step} for step {self.next_step}")
        self.next_step += 1
        self.report.samples += len(batch.metas)
        self.report.add(batch.problems)
        return batch

    def _receive(self, p: int) -> Batch:
        while True:
            try:
                message = self._queues[p].get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                if not self._procs[p].is_alive():
                    code = self._procs[p].exitcode
                    self.close()
                    raise DataWorkerError(f"data worker {p} stopped (exit code {code}) without reporting an error; "
                                          "see the system log (out of memory?)") from None
        if message[0] == "error":
            self.close()
            exc, trace = message[1], message[2]
            if isinstance(exc, ErnieViLG2Error):
                raise exc
            raise RuntimeError(f"data worker {p} failed:\n{trace}")
        return message[1]

    def close(self) -> None:
        """Stop the workers (they may be blocked on a full queue)."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for q in self._queues:
            q.cancel_join_thread()
            q.close()
        self._procs, self._queues = [], []

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()
