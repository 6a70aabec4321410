"""The sampling worker: a thread of the service process that feeds the sampling process.

It starts the sampling process (:mod:`.sampler_process`), waits until the export is loaded,
then takes batches from the :class:`~.batching.BatchQueue` one at a time: gives every image
the noise deploy/python/infer.py draws for its request's seed, sends the batch, and waits for
the images. When every request of the running batch has left (deadline passed, client gone),
:meth:`SamplingWorker.abandon_if_all_left` tells the process to stop it at its next step.
Waiting on the pipe releases the GIL: the event loop runs on.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from multiprocessing.connection import wait
from typing import Callable, Optional, Sequence

import numpy as np

from ...errors import ErnieViLG2Error
from .batching import Batch, BatchQueue, Job
from .request_log import REQUEST_ID
from .sampler_process import sampler_main

logger = logging.getLogger(__name__)


class SamplingProcessError(ErnieViLG2Error, RuntimeError):
    """The sampling process could not load the export, or died."""


def initial_noise(seed: int, count: int, latent_shape: Sequence[int]) -> np.ndarray:
    """deploy/python/infer.py's noise for ``seed``: one generator, ``count`` rows, prompt-major."""
    return np.random.default_rng(seed).standard_normal([count, *latent_shape]).astype("float32")


class SamplingWorker(threading.Thread):
    """Runs the batches of ``queue`` in a sampling process that opens its pipeline with
    ``load_pipeline()`` (a picklable callable, e.g. :class:`~.sampler_process.ExportLoader`),
    until the queue is closed and empty.

    ``loaded`` is set once loading ended; then ``info`` (scheduler config, image size, latent
    shape) is set, or ``load_error``.
    """

    def __init__(self, load_pipeline: Callable[[], object], queue: BatchQueue, log_level: str = "INFO"):
        super().__init__(name="sampling-worker", daemon=True)
        self.queue = queue
        self.loaded = threading.Event()
        self.info: Optional[dict] = None
        self.load_error: Optional[BaseException] = None
        context = multiprocessing.get_context("spawn")
        # A byte without a lock: the process may be killed at any moment, and a lock it held
        # would block the service.
        self._abandon = context.RawValue("b", 0)
        self._running: Optional[Batch] = None
        self._running_lock = threading.Lock()  # the running batch and the abandon byte change together
        self._conn, child_conn = context.Pipe()
        self.process = context.Process(target=sampler_main, name="sampling-process", daemon=True,
                                       args=(child_conn, self._abandon, load_pipeline, log_level))

    def run(self) -> None:
        try:
            self.process.start()
            reply = self._receive()
            if reply[0] == "load_error":
                _, kind, message = reply
                self.load_error = FileNotFoundError(message) if kind == "FileNotFoundError" else \
                    SamplingProcessError(message)
                return
            self.info = reply[1]
        except SamplingProcessError as exc:
            self.load_error = exc
            return
        finally:
            self.loaded.set()
        try:
            while True:
                batch = self.queue.next_batch()
                if batch is None:
                    self._conn.send(None)
                    break
                self._run(batch)
        except SamplingProcessError as exc:  # nothing can be generated any more: answer everyone now
            logger.error("%s; the service cannot generate until it is restarted", exc)
            self.queue.close()
            self.queue.fail_all(exc)
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()

    def abandon_if_all_left(self) -> None:
        """Stop the running batch at its next step if all its requests have been cancelled
        (called by the service after each cancellation)."""
        with self._running_lock:
            if self._running is not None and self.queue.all_cancelled(self._running):
                self._abandon.value = 1

    def _run(self, batch: Batch) -> None:
        with self._running_lock:
            self._running = batch
            self._abandon.value = 0
            if self.queue.all_cancelled(batch):  # every request left before it started
                self._running = None
                return
        token = REQUEST_ID.set("+".join(job.request_id for job in batch.jobs))
        try:
            steps, scales, sampler, negative = batch.key
            started = time.perf_counter()
            self._conn.send(("batch", {
                "number": batch.number, "request_ids": [job.request_id for job in batch.jobs],
                "prompts": batch.prompts(), "negative_prompt": negative, "steps": steps, "guidance": list(scales),
                "sampler": sampler, "latents": np.stack([self._noise(job)[index] for job, index in batch.rows]),
            }))
            try:
                reply = self._receive()
            except SamplingProcessError as exc:
                self.queue.complete(batch, error=exc)
                raise
            seconds = time.perf_counter() - started
            if reply[0] == "abandoned":
                logger.info("batch %d: every request left; stopped after step %d of %d", batch.number, reply[1] + 1,
                            steps)
            elif reply[0] == "failed":
                self.queue.complete(batch, error=RuntimeError(reply[1]))
            else:
                logger.info("batch %d: %d images of %d requests, %d %s steps, %.2f s", batch.number, len(batch.rows),
                            len(batch.jobs), steps, sampler, seconds)
                self.queue.complete(batch, reply[1], truncated=reply[2], seconds=seconds)
        finally:
            with self._running_lock:
                self._running = None
            REQUEST_ID.reset(token)

    def _receive(self) -> tuple:
        """The process's next message; :class:`SamplingProcessError` if it died."""
        ready = wait([self._conn, self.process.sentinel])
        if self._conn in ready:
            try:
                return self._conn.recv()
            except EOFError:
                pass  # it died
        self.process.join(1)
        raise SamplingProcessError(f"the sampling process died (exit status {self.process.exitcode})")

    def _noise(self, job: Job) -> np.ndarray:
        if job.noise is None:
            lat = self.info["latent"]
            job.noise = initial_noise(job.request.seed, job.request.num_images,
                                      (lat["channels"], lat["height"], lat["width"]))
        return job.noise
