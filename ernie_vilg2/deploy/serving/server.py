"""Running the service: listen, serve until asked to stop, then shut down gracefully.

Shutdown: stop listening (new connections are refused), answer the requests in flight (the
queued ones are still generated, each within its deadline), then stop the worker. aiohttp's
runner does the HTTP part (``shutdown_timeout``: the request timeout plus a margin, after
which the handlers left are cancelled and their jobs dropped).
"""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable, Optional, Tuple

from aiohttp import web

from .app import AccessLogger, create_app
from .service import Service

logger = logging.getLogger(__name__)
SHUTDOWN_MARGIN = 5.0  # seconds past the request timeout before the handlers left are cancelled


async def serve(service: Service, host: str, port: int, stop: asyncio.Event,
                on_listening: Optional[Callable[[Tuple[str, int]], None]] = None) -> None:
    """Serve ``service`` (started) on ``host:port`` (port 0: a free one, passed to
    ``on_listening``) until ``stop`` is set, then shut down gracefully and close the service."""
    runner = web.AppRunner(create_app(service), handler_cancellation=True, access_log_class=AccessLogger,
                           shutdown_timeout=service.config.timeout + SHUTDOWN_MARGIN)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        address = runner.addresses[0][:2]
        logger.info("serving %s on http://%s:%d (max batch %d images, queue %d requests, timeout %g s)",
                    service.config.model, _url_host(address[0]), address[1], service.config.max_batch,
                    service.config.max_queue, service.config.timeout)
        if on_listening is not None:
            on_listening(address)
        await stop.wait()
        logger.info("stopping: no new connections; %d requests in flight", service.queue.depth)
    finally:
        await runner.cleanup()  # stops listening, then waits for the handlers in flight
        await asyncio.to_thread(service.close)
    logger.info("stopped")


def run(service: Service, host: str, port: int,
        on_listening: Optional[Callable[[Tuple[str, int]], None]] = None) -> None:
    """Start ``service`` (loading errors are raised before anything listens) and serve it until
    SIGINT or SIGTERM."""
    service.start()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(service, host, port, stop, on_listening)

    try:
        asyncio.run(main())
    finally:
        service.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
