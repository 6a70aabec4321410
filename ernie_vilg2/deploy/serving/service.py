"""The service without HTTP: its settings, the queue, the sampling worker, and one request's
way through them (queue, wait within the deadline, cancel when the deadline passes or the
client leaves).

Nothing is shared between requests but the pipeline's predictors (in the sampling process):
each job has its own request, noise and images.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ...errors import ErnieViLG2Error
from .batching import BatchQueue, Job
from .validation import GenerationRequest, RequestRules
from .worker import SamplingWorker

logger = logging.getLogger(__name__)

# Seeds the service draws for requests without one: small enough to type back in.
DRAWN_SEED_BOUND = 2**32


@dataclass(frozen=True)
class ServiceConfig:
    """``timeout``: seconds from a request's arrival to its answer (504 after it);
    ``max_queue``: requests waiting or being generated (429 past it); ``max_batch``: images
    per pipeline call; ``max_images``: images one request may ask for; ``max_body``: bytes of a
    request body (413 past it)."""

    model: str
    max_batch: int = 8
    max_queue: int = 32
    timeout: float = 60.0
    max_images: int = 8
    max_body: int = 64 * 1024

    def check(self) -> None:
        for name in ("max_batch", "max_queue", "max_images", "max_body"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")


class DeadlineExceeded(ErnieViLG2Error, RuntimeError):
    """The request was not done within the service's timeout; its work was dropped."""


class ServiceNotReady(ErnieViLG2Error, RuntimeError):
    """The model is not loaded, the service is stopping or its sampling process died."""


class Service:
    """``start()`` loads the pipeline in the sampling process (its errors are raised here);
    ``generate()`` runs one request; ``close()`` lets the worker finish the queued jobs and stop."""

    def __init__(self, config: ServiceConfig, load_pipeline: Callable[[], object], log_level: str = "INFO"):
        config.check()
        self.config = config
        self.queue = BatchQueue(config.max_queue, config.max_batch)
        self.worker = SamplingWorker(load_pipeline, self.queue, log_level)
        self.rules: Optional[RequestRules] = None
        self.stopping = False

    def start(self) -> None:
        self.worker.start()
        self.worker.loaded.wait()
        if self.worker.load_error is not None:
            raise self.worker.load_error
        info = self.worker.info
        self.rules = RequestRules.from_export(info["samplers"], info["image_size"], self.config.max_images,
                                              info["num_experts"])

    def state(self) -> Tuple[str, Optional[str]]:
        """``/health``'s status, and why requests cannot be taken now (None: they can)."""
        if self.stopping:
            return "stopping", "the service is stopping"
        if self.rules is None:
            return "not loaded", "the model is not loaded"
        if not self.worker.is_alive():
            return "sampling process died", "the sampling process died; restart the service"
        return "ok", None

    def unavailable(self) -> Optional[str]:
        return self.state()[1]

    def health(self) -> dict:
        height, width = self.rules.image_size if self.rules else (None, None)
        status, reason = self.state()
        return {"status": status, "ready": reason is None, "model": self.config.model, **self.queue.stats(),
                "max_queue": self.config.max_queue, "max_batch": self.config.max_batch,
                "max_images": self.config.max_images, "timeout": self.config.timeout,
                "image": {"height": height, "width": width},
                "num_experts": self.rules.num_experts if self.rules else None}

    @staticmethod
    def new_seed() -> int:
        return secrets.randbelow(DRAWN_SEED_BOUND)

    async def generate(self, request: GenerationRequest, request_id: str, timeout: float) -> Job:
        """Queue ``request`` and wait for it at most ``timeout`` seconds. Raises
        :class:`~.batching.QueueFull`, :class:`ServiceNotReady` or :class:`DeadlineExceeded`; a
        cancelled wait (the client left) cancels the job. The job may hold an ``error``."""
        reason = self.unavailable()
        if reason is not None:
            raise ServiceNotReady(reason)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_finish(job: Job) -> None:  # in the worker thread, or here on cancel
            try:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        job = Job(request, request_id, on_finish)
        self.queue.submit(job)
        try:
            await asyncio.wait_for(done, max(timeout, 0.0))
        except asyncio.TimeoutError:
            if not self._drop(job):  # finished just now
                return job
            raise DeadlineExceeded(f"not done within the service's timeout ({self.config.timeout:g} s)") from None
        except asyncio.CancelledError:
            self._drop(job)
            logger.info("client left; request dropped")
            raise
        return job

    def _drop(self, job: Job) -> bool:
        """Cancel ``job`` (False if it had finished) and stop the running call if it was the last
        request in it."""
        if not self.queue.cancel(job):
            return False
        self.worker.abandon_if_all_left()
        return True

    def close(self, timeout: Optional[float] = None) -> None:
        """Take no more jobs, let the worker finish the queued ones, wait for it."""
        self.stopping = True
        self.queue.close()
        if self.worker.is_alive():
            self.worker.join(timeout)
