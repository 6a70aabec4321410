"""The HTTP face of the service (aiohttp): ``POST /generate``, ``GET /health``, ``GET /``.

aiohttp rather than FastAPI + uvicorn: one library gives the server and the client the load
test uses, a body size limit (``client_max_size``, 413), cancellation of a handler whose client
disconnected (``handler_cancellation``: the job is dropped at once, no polling), and a runner
whose shutdown stops listening, then waits for the handlers in flight. FastAPI's main gift,
pydantic validation, is not wanted here: requests are checked with the runners' own rules and
messages (:mod:`.validation`).

Errors are JSON ``{"error": MESSAGE, "field": FIELD, "request_id": ID}``; every response has
an ``X-Request-ID`` header.
"""
from __future__ import annotations

import base64
import json
import logging
import time
from typing import Optional

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .batching import QueueClosed, QueueFull
from .page import PAGE, PAGE_SECURITY_POLICY
from .request_log import REQUEST_ID, request_id_from
from .service import DeadlineExceeded, Service, ServiceNotReady
from .validation import GenerationRequest, RequestError, check_request, parse_body

logger = logging.getLogger(__name__)
SERVICE = web.AppKey("service", Service)


def create_app(service: Service) -> web.Application:
    app = web.Application(client_max_size=service.config.max_body, middlewares=[_request_ids])
    app[SERVICE] = service
    app.router.add_get("/", _page)
    app.router.add_get("/health", _health)
    app.router.add_post("/generate", _generate)
    return app


class AccessLogger(AbstractAccessLogger):
    """One line per request, with its id (the access log is written outside the request's context)."""

    def log(self, request, response, time: float) -> None:
        self.logger.info('%s "%s %s" %d %.3f s', request.remote, request.method, request.path_qs, response.status,
                         time, extra={"request_id": response.headers.get("X-Request-ID", "-")})


def error_response(status: int, field: Optional[str], message: str, headers: Optional[dict] = None) -> web.Response:
    logger.info("answered %d: %s", status, message)
    body = {"error": message, "field": field, "request_id": REQUEST_ID.get()}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


@web.middleware
async def _request_ids(request: web.Request, handler):
    request_id = request_id_from(request.headers.get("X-Request-ID"))
    token = REQUEST_ID.set(request_id)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404, 405: as JSON like every other error
            response = error_response(exc.status, None, f"{exc.reason}: {request.method} {request.path}",
                                      headers={k: v for k, v in exc.headers.items() if k == "Allow"})
        except Exception:
            logger.exception("unexpected error")
            response = error_response(500, None, f"internal error (request {request_id}; see the service's log)")
        response.headers["X-Request-ID"] = request_id
        return response
    finally:
        REQUEST_ID.reset(token)


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": PAGE_SECURITY_POLICY})


async def _health(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].health(), dumps=_dumps)


async def _generate(request: web.Request) -> web.StreamResponse:
    arrived = time.monotonic()
    service = request.app[SERVICE]
    reason = service.unavailable()
    if reason is not None:
        return error_response(503, None, reason, headers={"Retry-After": "5"})
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "body", f"body: larger than {service.config.max_body} bytes")
    try:
        generation = check_request(parse_body(raw), service.rules, service.new_seed)
        form = response_format(generation, request.headers.get("Accept"))
    except RequestError as exc:
        return error_response(exc.status, exc.field, str(exc))
    remaining = service.config.timeout - (time.monotonic() - arrived)
    try:
        job = await service.generate(generation, REQUEST_ID.get(), remaining)
    except QueueFull as exc:
        return error_response(429, None, f"{exc}; retry later", headers={"Retry-After": str(exc.retry_after)})
    except (QueueClosed, ServiceNotReady) as exc:
        return error_response(503, None, str(exc), headers={"Retry-After": "5"})
    except DeadlineExceeded as exc:
        return error_response(504, None, str(exc))
    if job.error is not None:
        message = str(job.error).splitlines()[0] if str(job.error) else type(job.error).__name__
        return error_response(500, None, f"generation failed: {message}")
    pngs = [job.images[i] for i in range(generation.num_images)]
    headers = {"X-Seed": str(generation.seed)}
    if form == "png":
        return web.Response(body=pngs[0], content_type="image/png", headers=headers)
    height, width = service.rules.image_size
    body = {
        "request_id": REQUEST_ID.get(),
        "images": [{"index": i, "prompt": generation.prompt_of_image(i), "png_base64": base64.b64encode(png).decode()}
                   for i, png in enumerate(pngs)],
        "settings": {**generation.settings(), "height": height, "width": width},
        "truncated_prompts": sorted(job.truncated),
        "batches": job.batches,
        "seconds": round(time.monotonic() - arrived, 3),
    }
    return web.json_response(body, headers=headers, dumps=_dumps)


def response_format(generation: GenerationRequest, accept: Optional[str]) -> str:
    """``"png"`` or ``"json"``: the ``format`` field, else PNG when ``Accept`` names image/png and
    not application/json. A PNG holds one image: a request for more is refused."""
    form = generation.format
    field = "format"
    if form is None:
        wants_png = accept is not None and "image/png" in accept and "application/json" not in accept
        form, field = ("png", "Accept") if wants_png else ("json", None)
    if form == "png" and generation.num_images != 1:
        raise RequestError(field, f"{field}: image/png holds one image and this request makes "
                                  f"{generation.num_images}; ask for JSON", 406 if field == "Accept" else 422)
    return form


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)
