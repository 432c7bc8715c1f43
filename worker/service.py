"""A running service: the worker plus its HTTP endpoints and signal handling."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog

from worker.app import Clock, Worker, wall_clock_ms
from worker.config import Config
from worker.http import HttpServer
from worker.logs import configure_logging

log = structlog.get_logger("riskgate.service")


async def serve(
    config: Config,
    *,
    clock: Clock = wall_clock_ms,
    install_signals: bool = True,
    on_start: Callable[[Worker, HttpServer], object] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT: finish the batch, persist, commit, leave the group.

    A signal stops the worker in every state (connecting, joining, working)
    within ``Worker.shutdown_bound_s``.

    ``on_start`` is called once the HTTP endpoints listen, before the worker
    connects: embedders and tests learn the bound port (``[http] port = 0``)
    and get the worker to ``stop()`` it when they do not install signals.
    """
    configure_logging(config.log.format, config.log.level)
    worker = Worker(config, clock=clock)
    http = HttpServer(worker, worker.metrics.registry, config.http.host, config.http.port)
    await http.start()
    log.info("http listening", port=http.port, paths=["/metrics", "/healthz", "/readyz"])
    if on_start is not None:
        on_start(worker, http)
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stopper(worker, sig))
    try:
        await worker.run()
    finally:
        await http.stop()


def _stopper(worker: Worker, sig: signal.Signals) -> Callable[[], None]:
    def stop() -> None:
        log.info("stopping", signal=sig.name, bound_s=worker.shutdown_bound_s)
        worker.stop()

    return stop
