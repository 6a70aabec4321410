"""The sidecars of many shards (:mod:`.shard_extraction`), written by worker processes that each
take whole shards, with a progress bar over samples and one summary.

Workers are spawned, not forked: each runs Paddle Inference (LAC, the detector), which is not
safe to inherit from a parent that imported Paddle. Each pulls the next shard from a queue, so
a worker that meets large shards takes fewer of them; the order the shards finish in does not
matter (every shard has its own sidecar, the same whichever worker wrote it). The workers send
their progress, the problems the reader met and each shard's result to the calling process,
which warns of each problem once and counts it (:class:`~ernie_vilg2.data.problems.DataReport`).
One process does the work in the calling process. A worker that stops without reporting (killed,
out of memory) is an error naming it; the shards not finished keep their partial files.
"""
from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import time
from dataclasses import dataclass, field
from typing import List

from ..data.problems import CORRUPT_SHARD, DataReport
from ..errors import ErnieViLG2Error
from .shard_extraction import ExtractionOptions, ShardAnnotator, ShardResult, is_done

POLL_SECONDS = 1.0  # how often the calling process checks that its workers are alive
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the tools' (ernie_vilg2.cli_utils)


class ShardExtractionError(ErnieViLG2Error, RuntimeError):
    """A worker failed or stopped; the message names it (and the shard)."""


@dataclass
class ExtractionSummary:
    shards: int  # named
    skipped: int  # their sidecar was complete already
    processes: int
    results: List[ShardResult] = field(default_factory=list)
    report: DataReport = field(default_factory=lambda: DataReport("knowledge extraction"))
    seconds: float = 0.0

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.results)

    @property
    def per_process_rate(self) -> float:
        """Samples per second of one worker: written samples over the workers' busy time."""
        busy = sum(r.seconds for r in self.results)
        return sum(r.written for r in self.results) / busy if busy > 0 else 0.0

    @property
    def line(self) -> str:
        """``4 shards: 3 sidecars written, 1 skipped (complete), 1 damaged; 1,200 samples (...); ...``"""
        finished = sum(r.finished for r in self.results)
        damaged = self.report.counts().get(CORRUPT_SHARD, 0)
        text = f"{self.shards:,} shards: {finished:,} sidecars written, {self.skipped:,} skipped (complete)"
        text += f", {damaged:,} damaged" if damaged else ""
        if self.results:
            written, already = sum(r.written for r in self.results), sum(r.already for r in self.results)
            text += (f"; {self.samples:,} samples ({written:,} annotated, {already:,} resumed from partial files), "
                     f"{self.report.num_problems - damaged:,} invalid skipped; {self.per_process_rate:,.0f} "
                     f"samples/s per process x {self.processes}")
        return text + f"; {self.seconds:.1f} s"


def extract_shards(shards: List[str], options: ExtractionOptions, workers: int = 1,
                   progress: bool = True) -> ExtractionSummary:
    """Write the sidecar of every shard of ``shards`` whose sidecar is not complete, with
    ``workers`` processes (never more than there are such shards)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    from tqdm import tqdm

    start = time.perf_counter()
    todo = [shard for shard in shards if not is_done(shard)]
    summary = ExtractionSummary(len(shards), len(shards) - len(todo), min(workers, len(todo)))
    bar = tqdm(unit=" samples", desc="knowledge", disable=not progress or not todo)
    try:
        if summary.processes == 1:
            annotator = ShardAnnotator(options)
            for shard in todo:
                summary.results.append(annotator.annotate(shard, lambda p: summary.report.add([p]), bar.update))
                bar.set_postfix_str(f"shards {len(summary.results)}/{len(todo)}")
        elif todo:
            _run_workers(todo, options, summary, bar)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _worker(index: int, options: ExtractionOptions, tasks, events) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the caller stops us
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)  # before Paddle's import sets up its own
    annotator = None
    while True:
        shard = tasks.get()
        if shard is None:
            return
        events.put(("start", index, shard))
        try:
            annotator = annotator or ShardAnnotator(options)
            result = annotator.annotate(shard, lambda p: events.put(("problem", p)),
                                        lambda n: events.put(("progress", n)))
        except Exception as exc:  # noqa: BLE001 - reported to the caller, which stops the run
            events.put(("error", index, shard, f"{type(exc).__name__}: {exc}"))
            return
        events.put(("done", result))


def _run_workers(todo: List[str], options: ExtractionOptions, summary: ExtractionSummary, bar) -> None:
    ctx = multiprocessing.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    for shard in todo:
        tasks.put(shard)
    for _ in range(summary.processes):
        tasks.put(None)
    procs = [ctx.Process(target=_worker, args=(i, options, tasks, events), name=f"knowledge-worker-{i}", daemon=True)
             for i in range(summary.processes)]
    for proc in procs:
        proc.start()
    current = {}  # worker -> the shard it is on
    try:
        while len(summary.results) < len(todo):
            try:
                message = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                message = ("idle",)
            kind = message[0]
            if kind == "progress":
                bar.update(message[1])
            elif kind == "problem":
                summary.report.add([message[1]])
            elif kind == "start":
                current[message[1]] = message[2]
            elif kind == "done":
                summary.results.append(message[1])
                bar.set_postfix_str(f"shards {len(summary.results)}/{len(todo)}")
            elif kind == "error":
                raise ShardExtractionError(f"knowledge worker {message[1]} failed on {message[2]}: {message[3]}")
            if len(summary.results) < len(todo):
                _check_alive(procs, current, events)  # also while the others keep reporting
        for proc in procs:  # each has its end-of-work marker
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():  # an error or Ctrl-C here: SIGKILL (Paddle would print a dump on SIGTERM)
                proc.kill()
            proc.join()
        for q in (tasks, events):
            q.cancel_join_thread()
            q.close()


def _check_alive(procs, current, events) -> None:
    """Raise when a worker stopped on its own (a worker that finished exits with 0)."""
    for i, proc in enumerate(procs):
        if proc.exitcode not in (None, 0):
            where = f" on {current[i]}" if i in current else ""
            raise ShardExtractionError(f"knowledge worker {i} stopped (exit code {proc.exitcode}){where} without "
                                       "reporting an error (killed? out of memory?); rerun to resume")
    if all(proc.exitcode == 0 for proc in procs) and events.empty():
        raise ShardExtractionError("the knowledge workers ended before every shard was done")
