"""The sampling process: the one process, and in it the one thread, that owns the predictors.

Paddle Inference predictors are not thread-safe, and ``predictor.run()`` keeps Python's GIL for
the whole program run: a sampling *thread* beside the event loop would stall every request,
``/health`` too, for as long as a U-Net call takes. So the pipeline lives in a child process
(started with ``spawn``: a fork of a process with threads is unsafe) that the
:class:`~.worker.SamplingWorker` of the service process feeds one batch at a time over a pipe.

Messages, as pickled tuples: to the child ``("batch", dict)`` or ``None`` (exit); from it
``("ready", info)`` or ``("load_error", kind, message)`` once, then per batch
``("images", pngs, truncated)``, ``("abandoned", step)`` or ``("failed", message)``.
"""
from __future__ import annotations

import io
import logging
import signal
import traceback
import warnings
from dataclasses import dataclass
from typing import Optional

from .request_log import REQUEST_ID, configure_logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportLoader:
    """Opens an export folder in the sampling process (picklable: it crosses to the child)."""

    folder: str
    verify: str = "sha256"
    device: str = "cpu"
    threads: Optional[int] = None
    engine: str = "paddle"
    expert_offload: Optional[str] = None

    def __call__(self):
        from ..pipeline import InferencePipeline

        return InferencePipeline.from_export(self.folder, verify=self.verify, device=self.device,
                                             threads=self.threads, engine=self.engine,
                                             expert_offload=self.expert_offload)


class _Abandoned(Exception):
    """Raised from the step callback: every request of the running call has left."""


def sampler_main(conn, abandon, load_pipeline, log_level: str) -> None:
    """The child's entry point: load, report, then run batches until told to stop (or the
    service process is gone). ``abandon`` (a shared byte) is made 1 by the service when every
    request of the running batch has left."""
    from ...utils.cpu_tuning import tune_cpu_process

    tune_cpu_process()  # this process owns itself, as an entry point does
    # Ctrl-C reaches the whole process group; the service process decides when this one ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(log_level)
    warnings.filterwarnings("ignore", message="No ccache found")  # paddle's import-time notice
    try:
        pipe = load_pipeline()
    except Exception as exc:  # the service reports it in one line
        if not isinstance(exc, (FileNotFoundError, ValueError)):
            traceback.print_exc()
        conn.send(("load_error", type(exc).__name__ if isinstance(exc, FileNotFoundError) else "other", str(exc)))
        return
    conn.send(("ready", {"samplers": dict(pipe.samplers), "image_size": tuple(pipe.image_size),
                         "latent": dict(pipe.manifest["latent"]), "num_experts": pipe.router.num_experts}))
    from ..schedulers import check_samplers

    # One scheduler per offered sampler, swapped into the pipeline for each call (set_timesteps resets it).
    schedulers = check_samplers(pipe.samplers)
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the service process is gone
            return
        if message is None:
            return
        token = REQUEST_ID.set("+".join(message[1]["request_ids"]))
        try:
            conn.send(run_batch(pipe, schedulers, message[1], abandon))
        finally:
            REQUEST_ID.reset(token)


def run_batch(pipe, schedulers, batch: dict, abandon) -> tuple:
    """One pipeline call for ``batch``; the reply message."""

    def stop_if_abandoned(step, timestep, latents):
        if abandon.value:
            raise _Abandoned(step)

    try:
        pipe.scheduler = schedulers[batch["sampler"]]
        images = pipe(batch["prompts"], negative_prompt=batch["negative_prompt"] or None,
                      num_inference_steps=batch["steps"], guidance_scale=batch["guidance"], latents=batch["latents"],
                      callback=stop_if_abandoned).images
    except _Abandoned as stop:
        return ("abandoned", stop.args[0])
    except Exception as exc:  # the batch's requests report it; the process goes on
        logger.exception("batch %d failed", batch["number"])
        return ("failed", (str(exc).splitlines() or [type(exc).__name__])[0])
    room = pipe.max_length - 2  # [CLS] and [SEP]
    truncated = [len(pipe.tokenizer.tokenize(prompt)) > room for prompt in batch["prompts"]]
    return ("images", [_png(image) for image in images], truncated)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
