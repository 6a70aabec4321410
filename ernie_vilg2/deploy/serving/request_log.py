"""Request ids and the log lines that carry them.

Every request gets an id (the client's ``X-Request-ID`` when it is a short token, else a new
one); it is sent back in the ``X-Request-ID`` header and the JSON body, and every log line
written while serving it, on the event loop or in the sampling worker, starts with it (a
batch's lines with the ids of all its requests, joined by ``+``).
"""
from __future__ import annotations

import contextvars
import logging
import re
import uuid
from typing import Optional

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_from(header: Optional[str]) -> str:
    """The client's id if it is 1-64 characters of ``[A-Za-z0-9._:-]`` (it goes into headers
    and log lines), else a new random one."""
    if header and _CLIENT_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex[:16]


class RequestIdFilter(logging.Filter):
    """Gives every record a ``request_id`` (the current request's, unless the record has one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def configure_logging(level: str = "INFO") -> None:
    """For a program that owns its process (deploy/python/serve.py): one stderr handler whose
    lines carry the request id."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
