"""The console as a running service: Kafka clients, board, actions, HTTP, signals.

``open_console`` is what ``riskgate console`` and ``riskgate demo`` run; tests
use it too. It fails before listening when the topics it needs are missing
(``riskgate topics`` creates them, the audit topic included) or when the
worker verifies signatures and no control secret can be had: a console that
could not audit or sign would offer actions that never happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import structlog
from aiokafka import AIOKafkaProducer

from worker.client import GateView
from worker.config import Config
from worker.console.actions import Actions
from worker.console.auth import Authenticator
from worker.console.live import Board
from worker.console.server import ConsoleServer, tls_context
from worker.kafka.options import client_kwargs
from worker.logs import configure_logging
from worker.operator import kafka_session, operator_secret

log = structlog.get_logger("riskgate.console")


@contextlib.asynccontextmanager
async def open_console(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    authenticator: Authenticator | None = None,
) -> AsyncIterator[ConsoleServer]:
    """A listening console (``.url``); everything it started is stopped on exit."""
    settings = config.console
    auth = authenticator or Authenticator(settings)
    tls = tls_context(settings)
    secret = operator_secret(config, os.environ)
    topics = config.topics
    async with kafka_session(config, (topics.gates, topics.halts, topics.control, topics.audit)):
        pass  # one clear error line now, rather than a console that cannot act
    if auth.users == 0:
        log.warning("no [console.users] configured: nobody can log in")
    async with contextlib.AsyncExitStack() as stack:
        producer = AIOKafkaProducer(**client_kwargs(config.kafka), acks="all", linger_ms=0)
        await producer.start()
        stack.push_async_callback(producer.stop)
        view = GateView(config.kafka, topics, staleness_ms=settings.staleness_ms)
        board = Board(view, timeline_size=settings.timeline_size)  # subscribes before start
        await view.start()
        stack.push_async_callback(view.stop)
        ticker = asyncio.create_task(board.run(), name="riskgate-console-board")
        stack.callback(ticker.cancel)
        server = ConsoleServer(
            auth,
            board,
            Actions(config, producer, secret),
            host=settings.host if host is None else host,
            port=settings.port if port is None else port,
            tls=tls,
        )
        await server.start()
        stack.push_async_callback(server.stop)
        log.info("console listening", url=server.url, signed=secret is not None)
        yield server


async def serve(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    """``riskgate console``: serve until SIGTERM/SIGINT."""
    configure_logging(config.log.format, config.log.level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with open_console(config, host=host, port=port) as server:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"riskgate console: {server.url}", flush=True)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
