"""A running service: the worker plus its HTTP endpoints and signal handling."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import structlog

from worker.clock import wall_clock_ms
from worker.config import Config
from worker.http import HttpServer
from worker.logs import configure_logging
from worker.runtime import Clock, Worker
from worker.stop_signals import STOP_SIGNALS, take_early

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
    previous = _take_signals(worker) if install_signals else {}
    try:
        await worker.run()
    finally:
        await http.stop()
        _give_back_signals(previous)


def _take_signals(worker: Worker) -> dict[signal.Signals, Any]:
    """Stop signals to the event loop; one caught while starting stops the worker now.

    Returns the handlers they had (the CLI's, see :mod:`worker.stop_signals`) for
    :func:`_give_back_signals`: closing the loop would leave the default action,
    and a signal during the teardown would end the process with -15 (E1-3).
    """
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, _stopper(worker, sig))
    early = take_early()
    if early is not None:
        _stopper(worker, early)()
    return previous


def _give_back_signals(previous: dict[signal.Signals, Any]) -> None:
    loop = asyncio.get_running_loop()
    for sig, handler in previous.items():
        loop.remove_signal_handler(sig)
        if handler is not None:  # None: not installed from Python, left as the loop leaves it
            signal.signal(sig, handler)


def _stopper(worker: Worker, sig: signal.Signals) -> Callable[[], None]:
    def stop() -> None:
        log.info("stopping", signal=sig.name, bound_s=worker.shutdown_bound_s)
        worker.stop()

    return stop
