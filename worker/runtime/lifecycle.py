"""Bounded waits for shutdown: ``stop()`` must end every state of the worker in time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol, TypeVar

import structlog
from aiokafka.errors import KafkaError

T = TypeVar("T")

CLOSE_STEP_MAX_S = 10.0
"""Longest wait for each client to close at shutdown (leave the group, flush)."""

log = structlog.get_logger("riskgate.worker")


class Stoppable(Protocol):
    async def stop(self) -> None: ...


async def until_stopped(
    work: Coroutine[Any, Any, T], stopping: asyncio.Event, grace_s: float
) -> T | None:
    """``await work``, but once ``stopping`` is set give it ``grace_s``, then cancel it (None)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace_s)
        if not task.done():
            log.warning("shutdown: abandoning unfinished work", grace_s=grace_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()
    finally:
        stopped.cancel()
        task.cancel()  # no-op when done; the caller itself was cancelled otherwise


async def close_clients(clients: Iterable[tuple[str, Stoppable | None]], bound_s: float) -> None:
    """Stop each client within ``bound_s``: a frozen broker must not hold shutdown."""
    for name, client in clients:
        if client is None:
            continue
        try:
            async with asyncio.timeout(bound_s):
                await client.stop()
        except (TimeoutError, KafkaError) as exc:
            log.warning("client did not close cleanly", client=name, error=repr(exc))
