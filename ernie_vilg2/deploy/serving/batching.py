"""The bounded queue of generation jobs and the batches the sampling worker takes from it.

Requests with the same :attr:`~.validation.GenerationRequest.batch_key` (steps, each expert's
guidance scale, sampler, negative prompt) share pipeline calls: a batch is up to ``max_batch``
images, taken in arrival order from the oldest waiting job's key, and a request larger than
that is spread over several calls. Each job carries its own initial noise (infer.py's for its
seed), so an image does not depend on what it was batched with. Thread-safe: the event loop
submits and cancels, the worker takes batches and completes them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ...errors import ErnieViLG2Error
from .validation import GenerationRequest


class QueueFull(ErnieViLG2Error, RuntimeError):
    """The queue holds its limit of requests; ``retry_after`` (seconds) is an estimate of when
    one will have left."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class QueueClosed(ErnieViLG2Error, RuntimeError):
    """The service is stopping and takes no new requests."""


@dataclass(eq=False)
class Job:
    """One request's work. ``on_finish(job)`` is called once, from the worker thread or from
    :meth:`BatchQueue.cancel`, when the job is done, failed or cancelled."""

    request: GenerationRequest
    request_id: str
    on_finish: Callable[["Job"], None] = lambda job: None
    images: Dict[int, bytes] = field(default_factory=dict)  # image index -> PNG
    error: Optional[BaseException] = None
    cancelled: bool = False
    batches: List[dict] = field(default_factory=list)  # the calls its images were made in
    truncated: Set[int] = field(default_factory=set)  # its prompts cut to the text encoder's length
    next_image: int = 0  # the first image not handed to the worker yet
    noise: object = None  # its initial noise, made by the worker when first needed

    @property
    def finished(self) -> bool:
        return self.cancelled or self.error is not None or len(self.images) == self.request.num_images


@dataclass
class Batch:
    """One pipeline call: ``rows`` are (job, image index) pairs of jobs with the same key."""

    number: int
    key: tuple
    rows: List[Tuple[Job, int]]

    @property
    def jobs(self) -> List[Job]:
        return list(dict.fromkeys(job for job, _ in self.rows))

    def prompts(self) -> List[str]:
        return [job.request.prompt_of_image(i) for job, i in self.rows]


class BatchQueue:
    """At most ``max_queue`` unfinished jobs; batches of at most ``max_batch`` images."""

    def __init__(self, max_queue: int, max_batch: int):
        if max_queue < 1 or max_batch < 1:
            raise ValueError(f"max_queue and max_batch must be >= 1, got {max_queue} and {max_batch}")
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._jobs: List[Job] = []  # unfinished, in arrival order
        self._cond = threading.Condition()
        self._closed = False
        self._batches = 0
        self._seconds_per_batch: Optional[float] = None  # moving average, for Retry-After

    # -- the event loop's side ----------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise QueueClosed("the service is stopping")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests)", self._retry_after())
            self._jobs.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> bool:
        """Drop ``job`` (False if it had finished): images not made yet are not made, and a
        running call whose jobs are all cancelled can be stopped (see :meth:`all_cancelled`)."""
        with self._cond:
            if job.finished:
                return False
            job.cancelled = True
            self._remove(job)
        job.on_finish(job)
        return True

    @property
    def depth(self) -> int:
        """Requests waiting or being generated."""
        with self._cond:
            return len(self._jobs)

    def stats(self) -> dict:
        with self._cond:
            return {"queue_depth": len(self._jobs), "queued_images": self._images_left(),
                    "batches_run": self._batches}

    def close(self) -> None:
        """Take no new jobs; :meth:`next_batch` returns None once the queued ones are done."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the worker's side ----------------------------------------------------------------------
    def next_batch(self) -> Optional[Batch]:
        """The next batch (waits for one); None when closed and empty."""
        with self._cond:
            while not self._waiting() and not self._closed:
                self._cond.wait()
            waiting = self._waiting()
            if not waiting:
                return None
            key = waiting[0].request.batch_key
            rows: List[Tuple[Job, int]] = []
            for job in waiting:
                if job.request.batch_key != key:
                    continue
                take = min(job.request.num_images - job.next_image, self.max_batch - len(rows))
                rows += [(job, i) for i in range(job.next_image, job.next_image + take)]
                job.next_image += take
                if len(rows) == self.max_batch:
                    break
            self._batches += 1
            return Batch(self._batches, key, rows)

    def all_cancelled(self, batch: Batch) -> bool:
        with self._cond:
            return all(job.cancelled for job, _ in batch.rows)

    def complete(self, batch: Batch, images: Optional[Sequence] = None, error: Optional[BaseException] = None,
                 truncated: Sequence[bool] = (), seconds: Optional[float] = None) -> None:
        """Record a call's ``images`` (one per row; ``truncated``: whether each row's prompt was
        cut) or its ``error``; finish the jobs it completed."""
        finished = []
        with self._cond:
            if seconds is not None:
                old = self._seconds_per_batch
                self._seconds_per_batch = seconds if old is None else 0.8 * old + 0.2 * seconds
            info = {"number": batch.number, "images": len(batch.rows), "requests": len(batch.jobs)}
            for job in batch.jobs:
                if job.finished:  # cancelled meanwhile
                    continue
                job.batches.append(info)
                if error is not None:
                    job.error = error
                else:
                    job.images.update((i, image) for (owner, i), image in zip(batch.rows, images) if owner is job)
                    job.truncated.update(i // job.request.num_images_per_prompt
                                         for (owner, i), cut in zip(batch.rows, truncated) if owner is job and cut)
                if job.finished:
                    self._remove(job)
                    finished.append(job)
        for job in finished:
            job.on_finish(job)

    def fail_all(self, error: BaseException) -> None:
        """Finish every unfinished job with ``error`` (nothing can run them any more)."""
        with self._cond:
            failed, self._jobs = self._jobs, []
            for job in failed:
                job.error = error
            self._cond.notify_all()
        for job in failed:
            job.on_finish(job)

    # -- helpers (called with the lock held) -----------------------------------------------------
    def _remove(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
            self._cond.notify_all()

    def _waiting(self) -> List[Job]:
        return [job for job in self._jobs if job.next_image < job.request.num_images]

    def _images_left(self) -> int:
        return sum(job.request.num_images - job.next_image for job in self._jobs)

    def _retry_after(self) -> int:
        """Seconds until the queued images are made, at the recent speed (at least 1)."""
        per_batch = self._seconds_per_batch or 1.0
        batches = -(-self._images_left() // self.max_batch) + 1
        return max(1, min(600, int(per_batch * batches + 0.999)))
