"""``/metrics``, ``/healthz`` and ``/readyz`` on the worker's own event loop.

Three states, matching the Kubernetes probes of deploy/k8s:

- ``/healthz`` (startup and liveness probes): 200 while the worker's loop is
  alive - ``starting`` until the first broker round trip, then ``ok``; 503
  ``stuck`` only when the loop stopped ticking. A missing broker is not a
  reason to restart the process, so it never fails this.
- ``/readyz`` (readiness): 200 when assigned, restored, talking to the broker
  and committing; 503 with ``starting`` or ``not ready`` otherwise.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Probed(Protocol):
    @property
    def healthy(self) -> bool: ...
    @property
    def ready(self) -> bool: ...
    @property
    def starting(self) -> bool: ...


class HttpServer:
    """A small aiohttp app; ``port=0`` binds a free port (see ``.port`` after start)."""

    def __init__(self, target: Probed, registry: CollectorRegistry, host: str, port: int) -> None:
        self._target = target
        self._registry = registry
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, _: web.Request) -> web.Response:
        if not self._target.healthy:
            return web.Response(status=503, text="stuck\n")
        return web.Response(status=200, text="starting\n" if self._target.starting else "ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._target.ready:
            return web.Response(status=200, text="ready\n")
        return web.Response(
            status=503, text="starting\n" if self._target.starting else "not ready\n"
        )
