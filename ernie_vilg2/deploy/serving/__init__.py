"""An HTTP service over :class:`~ernie_vilg2.deploy.InferencePipeline` (deploy/python/serve.py).

:mod:`.validation` checks requests, :mod:`.batching` queues them and groups compatible ones
into batches, :mod:`.worker` feeds the batches to :mod:`.sampler_process`, the one process
that owns the predictors, :mod:`.service` ties these together for one request, :mod:`.app` is the HTTP face (aiohttp),
:mod:`.server` listens and shuts down gracefully, :mod:`.page` is the browser page and
:mod:`.request_log` puts request ids into log lines. Importing it loads neither paddle nor aiohttp.
"""
from ...utils.lazy import lazy_getattr

_LAZY = {
    "ExportLoader": ".sampler_process",
    "Service": ".service",
    "ServiceConfig": ".service",
    "create_app": ".app",
    "serve": ".server",
    "run": ".server",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
