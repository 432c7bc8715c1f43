"""Fault injection and a process harness over the in-memory Kafka of :mod:`worker.runtime.memory`.

The worker runs unchanged over :class:`~worker.runtime.memory.MemoryTransport`;
this module adds what only tests need:

- **Record-boundary crashes.** ``broker.crash_after(n)`` lets the workers make
  ``n`` more writes (records appended, offset commits) and raises :class:`Crash`
  on the next one, which does not happen. So a crash lands between two records
  of a publish or a persist, or between a persist and its commit — every
  boundary can be hit by choosing ``n``.
- **Held and refused acks** (``hold_acks``/``release_acks`` of the memory broker,
  whose acks are in flight for ``ack_turns`` loop turns; ``refuse_with``).
- :class:`Shell`: worker processes started, run to idle, stopped, rebalanced
  and killed over one broker. The memory broker's deterministic interleaving
  (one partition's consecutive records per fetch, in append order) makes a
  replay after a crash apply events in the order the uninterrupted run did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import msgspec
from aiokafka import TopicPartition

from worker.config import Config
from worker.core import RiskEngine
from worker.runtime import Worker
from worker.runtime.memory import (
    MAX_REQUEST_SIZE,
    InMemoryBroker,
    MemoryConsumer,
    MemoryTransport,
    Sent,
    Stored,
)

__all__ = [
    "MAX_REQUEST_SIZE",
    "Crash",
    "FaultyBroker",
    "Shell",
    "Stored",
    "broker_for",
    "engine_state",
]


class Crash(BaseException):
    """The worker process dies here (a BaseException: nothing in the shell may catch it)."""


class FaultyBroker(InMemoryBroker):
    """An :class:`InMemoryBroker` with an armed crash, held acks and refused acks."""

    def __init__(self, topics: dict[str, int], *, timestamp_ms: int = 1_767_225_600_000) -> None:
        super().__init__(topics, timestamp_ms=timestamp_ms)
        self._crash_in: int | None = None
        self.refuse_with: Exception | None = None
        """When set, every record is appended but its ack fails with this (a broker refusal)."""

    # -- acknowledgements ------------------------------------------------------

    def ack_error(self, sent: Sent) -> BaseException | None:
        return self.refuse_with

    # -- crashes ----------------------------------------------------------------

    def crash_after(self, records: int | None) -> None:
        """Let ``records`` more writes happen, then raise :class:`Crash` (None: never)."""
        self._crash_in = records

    @property
    def crash_armed(self) -> bool:
        return self._crash_in is not None

    def before_write(self, what: str) -> None:
        """Every write (a record, a commit) is a boundary: die here if the count ran out."""
        if self._crash_in is None:
            return
        if self._crash_in <= 0:
            self._crash_in = None
            raise Crash(f"injected crash before {what}")
        self._crash_in -= 1


def broker_for(config: Config, *, timestamp_ms: int) -> FaultyBroker:
    """Every topic of ``config`` with ``topics.partitions`` partitions (co-partitioned)."""
    t = config.topics
    names = (*t.inputs(), t.snapshots, t.gates, t.halts, t.decisions, t.deadletter)
    return FaultyBroker(dict.fromkeys(names, t.partitions), timestamp_ms=timestamp_ms)


class Shell:
    """Worker processes over one :class:`InMemoryBroker`: start, run to idle, crash.

    Each :meth:`start` is a new process: a :class:`Worker` over its own
    :class:`MemoryTransport`, running ``Worker.run()`` as a task, to which the
    group assigns the given partitions (of every input topic) once it is
    connected. A :class:`Crash` raised by a write kills that task like a
    SIGKILL kills the process: nothing after it runs, and the next
    :meth:`start` begins from what the broker holds.
    """

    def __init__(
        self,
        config: Config,
        broker: InMemoryBroker,
        now_ms: int,
        *,
        consumer_class: type[MemoryConsumer] = MemoryConsumer,
    ) -> None:
        self.config = config
        self.broker = broker
        self.now_ms = now_ms
        self.consumer_class = consumer_class
        self.worker: Worker | None = None
        self.transport: MemoryTransport | None = None
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    @property
    def consumer(self) -> MemoryConsumer | None:
        return None if self.transport is None else self.transport.consumer

    def input_tps(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.config.topics.inputs() for p in partitions]

    def start(self, partitions: Iterable[int], *, max_records: int = 5) -> Worker:
        """A new worker process owning ``partitions``; it runs until idle/crash/stop."""
        self.kill()
        consumer = self.consumer_class(self.broker, max_records=max_records)
        transport = MemoryTransport(self.broker, self.config.topics.snapshots, consumer=consumer)
        worker = Worker(self.config, clock=lambda: self.now_ms, transport=transport)
        self.worker, self.transport = worker, transport
        self._task = asyncio.create_task(self._process(worker, transport, list(partitions)))
        return worker

    @staticmethod
    async def _process(worker: Worker, transport: MemoryTransport, partitions: list[int]) -> None:
        async def join() -> None:
            await worker.started.wait()
            transport.assign(partitions)

        joining = asyncio.ensure_future(join())
        try:
            await worker.run()
        finally:
            joining.cancel()

    async def idle(self) -> bool:
        """Run until everything fetchable is consumed, restored, acknowledged and committed
        as far as due; False if it crashed."""
        task, consumer, worker = self._task, self.consumer, self.worker
        assert task is not None and consumer is not None and worker is not None
        consumer.empty_polls = 0
        while not task.done():
            assigned = bool(worker.ownership.assigned)
            caught_up = consumer.empty_polls >= 3 and not worker.ownership.restoring
            if assigned and caught_up and worker.checkpoint.quiet:  # no ack or commit in flight
                return True
            await asyncio.sleep(0)
        return self._reap(task)

    async def stop(self) -> bool:
        """Graceful stop (persist + commit); False if it crashed on the way."""
        task, worker = self._task, self.worker
        assert task is not None and worker is not None
        worker.stop()
        with contextlib.suppress(Crash):
            await task
        return self._reap(task)

    async def revoke(self, partitions: Iterable[int]) -> bool:
        """The group takes ``partitions`` away (the worker's callback waits for the flush)."""
        transport, task = self.transport, self._task
        assert transport is not None and task is not None
        revoking = asyncio.create_task(transport.revoke(partitions))
        await asyncio.wait({revoking, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            revoking.cancel()
            return self._reap(task)
        await revoking
        return True

    async def assign(self, partitions: Iterable[int]) -> None:
        assert self.transport is not None
        self.transport.assign(partitions)

    def _reap(self, task: asyncio.Task[None]) -> bool:
        if task.cancelled():
            return False
        error = task.exception()
        if error is None:
            return True
        if isinstance(error, Crash):
            self.kill()
            return False
        raise error

    def kill(self) -> None:
        """SIGKILL: the process's connections are gone and its tasks stop where they are."""
        if self.transport is not None:
            self.transport.disconnect()
        if self._task is not None and not self._task.done():
            self._task.cancel()


_COUNTERS = ("gate_seq", "born")
"""Left out of comparisons. ``gate_seq`` counts gate records sent, which replays and
restores legitimately repeat; ``born`` is known live only (a symbol re-created by a
replay cannot know the bot's watermarks at its first creation) and only narrows
which replayed bot-wide resets reach it."""


def engine_state(engine: RiskEngine) -> dict[str, Any]:
    """Everything a worker holds for its bots, as plain data, for exact comparison.

    Symbols that never applied an event (created by a rejected or transient
    lookup) are left out: they are not persisted, so no restore can hold them.
    """
    state: dict[str, Any] = {}
    for bot_id, bot in sorted(engine.bots.items()):
        portfolio = msgspec.to_builtins(bot.portfolio_snapshot())
        symbols = {}
        for name, sym in sorted(bot.symbols.items()):
            snap = msgspec.to_builtins(sym.snapshot())
            if snap.get("applied_offsets"):
                symbols[name] = {k: v for k, v in snap.items() if k not in _COUNTERS}
        state[bot_id] = {
            "portfolio": {k: v for k, v in portfolio.items() if k not in _COUNTERS},
            "symbols": symbols,
        }
    return state
