"""An in-memory Kafka for the worker shell: logs, commits, rebalances and crashes.

The :class:`~worker.app.Worker` talks to aiokafka through a handful of methods;
:class:`FakeProducer` and :class:`FakeConsumer` implement exactly those over an
:class:`InMemoryBroker`, so the real poll loop, persist and restore code run
without a broker, deterministically and fast enough for hypothesis.

Two properties make crash tests exact:

- **Record-boundary crashes.** ``broker.crash_after(n)`` lets the worker make
  ``n`` more writes (records appended, offset commits) and raises :class:`Crash`
  on the next one, which does not happen. So a crash lands between two records
  of a publish or a persist, or between a persist and its commit — every
  boundary can be hit by choosing ``n``.
- **Deterministic interleaving.** Every appended record gets a broker-wide
  sequence number, and one ``getmany`` returns a run of consecutive records of a
  *single* partition in that order. A replay after a crash therefore applies the
  events in the same order as the uninterrupted run did (real Kafka makes no such
  promise across partitions; see the report of helper B1).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple
from unittest import mock

import msgspec
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, MessageSizeTooLargeError
from aiokafka.partitioner import murmur2

import worker.app
from worker.app import Worker
from worker.config import Config
from worker.engine import RiskEngine
from worker.kafka.restore import SnapshotRead, fold_snapshot_records

MAX_REQUEST_SIZE = 1_048_576
"""aiokafka's default ``max_request_size``: the producer refuses bigger records."""

Headers = list[tuple[str, bytes]]


class Crash(BaseException):
    """The worker process dies here (a BaseException: nothing in the shell may catch it)."""


class Stored(NamedTuple):
    """A record as a consumer sees it (the attributes of aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    seq: int


class Sent(NamedTuple):
    topic: str
    partition: int
    offset: int


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's (and aiokafka's) default partitioner: murmur2 of the key."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class InMemoryBroker:
    """Topics, their logs, one group's committed offsets, and an armed crash."""

    def __init__(self, topics: dict[str, int], *, timestamp_ms: int = 1_767_225_600_000) -> None:
        self.partitions = dict(topics)
        self.logs: dict[TopicPartition, list[Stored]] = {
            TopicPartition(t, p): [] for t, n in topics.items() for p in range(n)
        }
        self.committed: dict[TopicPartition, int] = {}
        self.generation = 0
        """The group's generation: bumped by every assignment; older members cannot commit."""
        self.commits = 0
        """Offset commits made (each is a crash boundary, like a record)."""
        self.timestamp_ms = timestamp_ms
        """Record timestamp (CreateTime) given to every appended record."""
        self._seq = 0
        self._crash_in: int | None = None
        self.max_request_size = MAX_REQUEST_SIZE
        self.refuse_with: Exception | None = None
        """When set, every record is appended but its ack fails with this (a broker refusal)."""
        self._held: list[tuple[asyncio.Future[Sent], Sent]] | None = None

    # -- acknowledgements ------------------------------------------------------

    def hold_acks(self) -> None:
        """Records are appended at once but acknowledged only at :meth:`release_acks`."""
        self._held = []

    def release_acks(self) -> None:
        held, self._held = self._held or [], None
        for future, sent in held:
            if not future.done():
                future.set_result(sent)

    def _acknowledge(self, sent: Sent) -> asyncio.Future[Sent]:
        future: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
        if self.refuse_with is not None:
            future.set_exception(self.refuse_with)
        elif self._held is None:
            future.set_result(sent)
        else:
            self._held.append((future, sent))
        return future

    # -- faults ---------------------------------------------------------------

    def crash_after(self, records: int | None) -> None:
        """Let ``records`` more records be appended, then raise :class:`Crash` (None: never)."""
        self._crash_in = records

    @property
    def crash_armed(self) -> bool:
        return self._crash_in is not None

    def crash_point(self, what: str) -> None:
        """Every write (a record, a commit) is a boundary: die here if the count ran out."""
        if self._crash_in is None:
            return
        if self._crash_in <= 0:
            self._crash_in = None
            raise Crash(f"injected crash before {what}")
        self._crash_in -= 1

    # -- log ------------------------------------------------------------------

    def append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> Sent:
        if partition is None:
            assert key is not None, "keyless records need an explicit partition here"
            partition = partition_for(key, self.partitions[topic])
        log = self.logs[TopicPartition(topic, partition)]
        self._seq += 1
        ts = self.timestamp_ms if timestamp_ms is None else timestamp_ms
        offset = self.end(TopicPartition(topic, partition))  # compaction leaves gaps
        log.append(Stored(topic, partition, offset, ts, key, value, tuple(headers), self._seq))
        return Sent(topic, partition, offset)

    def records(self, topic: str) -> list[Stored]:
        """Every record of ``topic``, in append order."""
        return sorted(
            (r for tp, log in self.logs.items() if tp.topic == topic for r in log),
            key=lambda r: r.seq,
        )

    def compact(self, topic: str) -> None:
        """Log compaction: only the last record of each key stays, at its offset.

        For the snapshot topic only: consumers of input topics index logs by offset.
        """
        for tp, log in self.logs.items():
            if tp.topic == topic:
                last = {r.key: r.offset for r in log}
                log[:] = [r for r in log if r.key is None or last[r.key] == r.offset]

    def end(self, tp: TopicPartition) -> int:
        log = self.logs[tp]
        return log[-1].offset + 1 if log else 0

    def last_per_key(self, topic: str) -> dict[bytes, Stored]:
        return {r.key: r for r in self.records(topic) if r.key is not None}

    async def read_snapshots(
        self, client_kwargs: dict[str, Any], topic: str, partitions: Iterable[int] | None = None
    ) -> SnapshotRead:
        """Drop-in for :func:`worker.kafka.restore.read_snapshot_partitions`."""
        started = time.perf_counter()
        await asyncio.sleep(0)
        wanted = frozenset(range(self.partitions[topic]) if partitions is None else partitions)
        logs = {p: self.logs[TopicPartition(topic, p)] for p in sorted(wanted)}
        return fold_snapshot_records(wanted, logs, time.perf_counter() - started)


class FakeProducer:
    """``send`` appends at once (so a crash can land between any two records)."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Sent]:
        broker = self.broker
        size = len(key or b"") + len(value or b"")
        size += sum(len(k.encode()) + len(v) for k, v in headers or ())
        if size > broker.max_request_size:
            # What aiokafka raises from send() itself: not retriable.
            raise MessageSizeTooLargeError(f"the message is {size} bytes")
        broker.crash_point(f"a record to {topic}")
        sent = broker.append(
            topic, key, value, partition=partition, headers=headers or (), timestamp_ms=timestamp_ms
        )
        return broker._acknowledge(sent)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class FakeConsumer:
    """One group member: its assignment, positions, pauses and commits."""

    def __init__(self, broker: InMemoryBroker, *, max_records: int = 5) -> None:
        self.broker = broker
        self.max_records = max_records
        """Upper bound of one ``getmany`` (tests vary it to move batch boundaries)."""
        self.positions: dict[TopicPartition, int | None] = {}
        """None until first needed: like aiokafka, the committed offset is read lazily."""
        self.paused_set: set[TopicPartition] = set()
        self.generation = 0
        self.polls = 0
        self.empty_polls = 0
        """Consecutive polls that returned nothing (the harness's idle signal)."""

    # -- group ---------------------------------------------------------------

    def take(self, tps: Iterable[TopicPartition]) -> None:
        """The group assigned ``tps``: fetch resumes from the committed offsets (read lazily)."""
        self.broker.generation += 1
        self.generation = self.broker.generation
        for tp in tps:
            self.positions[tp] = None

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.positions.pop(tp, None)
            self.paused_set.discard(tp)

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    # -- the aiokafka surface the worker uses ----------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Stored]]:
        await asyncio.sleep(0)
        self.polls += 1
        fetchable = [
            tp
            for tp in (partitions or self.positions)
            if tp in self.positions and tp not in self.paused_set
        ]
        heads = [
            (self.broker.logs[tp][self._at(tp)], tp)
            for tp in fetchable
            if self._at(tp) < self.broker.end(tp)
        ]
        if not heads:
            self.empty_polls += 1
            return {}
        self.empty_polls = 0
        _, tp = min(heads, key=lambda head: head[0].seq)
        others = [head.seq for head, other in heads if other != tp]
        stop_at = min(others, default=1 << 62)
        limit = min(self.max_records, max_records or self.max_records)
        log = self.broker.logs[tp]
        start = self._at(tp)
        end = start
        while end < len(log) and end - start < limit and log[end].seq < stop_at:
            end += 1
        self.positions[tp] = end
        return {tp: log[start:end]}

    def _at(self, tp: TopicPartition) -> int:
        position = self.positions[tp]
        if position is None:
            position = self.positions[tp] = self.broker.committed.get(tp, 0)
        return position

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.sleep(0)
        self.broker.crash_point("a commit")
        if self.generation != self.broker.generation:
            raise CommitFailedError("the group has rebalanced since this member joined")
        self.broker.commits += 1
        self.broker.committed.update(offsets)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_set.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_set.difference_update(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_set)

    def highwater(self, tp: TopicPartition) -> int:
        return self.broker.end(tp)

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return self.broker.timestamp_ms

    async def position(self, tp: TopicPartition) -> int:
        return self._at(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.broker.partitions.get(topic)
        return None if n is None else set(range(n))

    async def topics(self) -> set[str]:
        await asyncio.sleep(0)
        return set(self.broker.partitions)

    async def stop(self) -> None:
        return None


_BROKERS: dict[str, InMemoryBroker] = {}
"""In-memory brokers by the ``bootstrap_servers`` their workers are given."""


def address_of(broker: InMemoryBroker) -> str:
    address = f"memory:{id(broker)}"
    _BROKERS[address] = broker
    return address


async def _read_snapshots(
    client_kwargs: dict[str, Any], topic: str, partitions: Iterable[int] | None = None
) -> SnapshotRead:
    broker = _BROKERS[client_kwargs["bootstrap_servers"]]
    return await broker.read_snapshots(client_kwargs, topic, partitions)


@contextmanager
def snapshot_reads_from(broker: InMemoryBroker) -> Iterator[None]:
    """Route restores to the in-memory broker of each worker (see :func:`address_of`).

    Patches may nest (several shells at once, each on its own broker or the same).
    """
    address_of(broker)
    with mock.patch.object(worker.app, "read_snapshot_partitions", _read_snapshots):
        yield


def broker_for(config: Config, *, timestamp_ms: int) -> InMemoryBroker:
    """Every topic of ``config`` with ``topics.partitions`` partitions (co-partitioned)."""
    t = config.topics
    names = (*t.inputs(), t.snapshots, t.gates, t.halts, t.decisions, t.deadletter)
    return InMemoryBroker(dict.fromkeys(names, t.partitions), timestamp_ms=timestamp_ms)


class Shell:
    """Worker processes over one :class:`InMemoryBroker`: start, run to idle, crash.

    One member owns the given partitions (of every input topic); the real
    ``Worker._loop`` runs as a task. A :class:`Crash` raised by the producer kills
    that task like a SIGKILL kills the process: nothing after it runs, and the
    next :meth:`start` begins from what the broker holds.
    """

    def __init__(self, config: Config, broker: InMemoryBroker, now_ms: int) -> None:
        self.config = config
        self.broker = broker
        self.now_ms = now_ms
        self.worker: Worker | None = None
        self.consumer: FakeConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._patch = snapshot_reads_from(broker)

    def __enter__(self) -> Shell:
        self._patch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._patch.__exit__(None, None, None)

    def input_tps(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.config.topics.inputs() for p in partitions]

    def start(self, partitions: Iterable[int], *, max_records: int = 5) -> Worker:
        """A new worker process owning ``partitions``; its loop runs until idle/crash/stop."""
        self.kill()
        worker = Worker(self.config, clock=lambda: self.now_ms)
        worker._client_kwargs = {"bootstrap_servers": address_of(self.broker)}
        consumer = FakeConsumer(self.broker, max_records=max_records)
        worker._producer = FakeProducer(self.broker)
        worker._consumer = consumer
        worker.started.set()
        worker._input_partitions = self.config.topics.partitions
        tps = self.input_tps(partitions)
        consumer.take(tps)
        worker._on_assigned(tps)
        self.worker, self.consumer = worker, consumer
        self._task = asyncio.create_task(worker._loop())
        return worker

    async def idle(self) -> bool:
        """Run until everything fetchable is consumed and restored; False if it crashed."""
        task, consumer, worker = self._task, self.consumer, self.worker
        assert task is not None and consumer is not None and worker is not None
        consumer.empty_polls = 0
        while not task.done():
            if consumer.empty_polls >= 3 and not worker._restoring:
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
        """The group takes ``partitions`` away (the listener waits for the flush)."""
        worker, consumer, task = self.worker, self.consumer, self._task
        assert worker is not None and consumer is not None and task is not None
        tps = self.input_tps(partitions)
        revoking = asyncio.create_task(worker._on_revoked(tps))
        await asyncio.wait({revoking, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            revoking.cancel()
            return self._reap(task)
        await revoking
        consumer.drop(tps)
        return True

    async def assign(self, partitions: Iterable[int]) -> None:
        worker, consumer = self.worker, self.consumer
        assert worker is not None and consumer is not None
        tps = self.input_tps(partitions)
        consumer.take(tps)
        worker._on_assigned(tps)

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
        """SIGKILL: the loop and restores stop where they are; nothing is flushed."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.worker is not None:
            for restoring in self.worker._restoring.values():
                restoring.cancel()


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
