"""An in-memory Kafka behind the :class:`~worker.runtime.transport.Transport` interface.

:class:`MemoryConsumer` and :class:`MemoryProducer` implement the calls the
worker makes over an :class:`InMemoryBroker`, so the real poll loop, persist
and restore code run without a broker, deterministically and fast enough for
property-based tests. :class:`MemoryTransport` is one group member whose
rebalances the test plays (:meth:`MemoryTransport.assign` /
:meth:`MemoryTransport.revoke`) through the worker's callbacks.

Three properties make it usable for exact crash tests (the fault injection
itself lives with the tests, by overriding :meth:`InMemoryBroker.before_write`
and :meth:`InMemoryBroker.ack_error`):

- **Every write is a boundary.** ``send`` appends the record at once and every
  append and offset commit first calls ``before_write``, so a fault can land
  between any two records of a publish or a persist, or between a persist and
  its commit.
- **Acks are in flight.** A record's ack arrives ``ack_turns`` event-loop
  turns after its append (in append order), or only when the test releases it
  (:meth:`InMemoryBroker.hold_acks`), and may fail (``ack_error``): so a fault
  can land between a send and its ack, while the worker goes on with the next
  batch, as it does with a real producer.
- **Deterministic interleaving.** Every appended record gets a broker-wide
  sequence number, and one ``getmany`` returns a run of consecutive records of
  a *single* partition in that order, so a replay applies events in the order
  the uninterrupted run did (real Kafka makes no such promise across partitions).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable
from typing import NamedTuple

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, MessageSizeTooLargeError

from worker.kafka.restore import SnapshotRead, fold_snapshot_records
from worker.runtime.marks import MarkSource
from worker.runtime.ownership import home_partition
from worker.runtime.transport import Connection, Headers, Rebalance

MAX_REQUEST_SIZE = 1_048_576
"""aiokafka's default ``max_request_size``: the producer refuses bigger records."""


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


class InMemoryBroker:
    """Topics, their logs and one group's committed offsets."""

    def __init__(self, topics: dict[str, int], *, timestamp_ms: int = 1_767_225_600_000) -> None:
        self.partitions = dict(topics)
        self.logs: dict[TopicPartition, list[Stored]] = {
            TopicPartition(t, p): [] for t, n in topics.items() for p in range(n)
        }
        self.committed: dict[TopicPartition, int] = {}
        self.generation = 0
        """The group's generation: bumped by every assignment; older members cannot commit."""
        self.commits = 0
        """Offset commits made."""
        self.timestamp_ms = timestamp_ms
        """Record timestamp (CreateTime) given to every appended record."""
        self.max_request_size = MAX_REQUEST_SIZE
        self.ack_turns = 1
        """Event-loop turns from a record's append to its ack (0: at once)."""
        self._held: list[tuple[asyncio.Future[Sent], Sent]] | None = None
        self._seq = 0

    def before_write(self, what: str) -> None:
        """Called before every write a client makes (a record, a commit): the fault hook."""

    # -- acknowledgements ------------------------------------------------------

    def acknowledge(self, sent: Sent) -> asyncio.Future[Sent]:
        """The ack of an appended record, in flight: held, or due ``ack_turns`` turns later."""
        future: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
        if self._held is not None:
            self._held.append((future, sent))
        else:
            self._turn(future, sent, self.ack_turns)
        return future

    def ack_error(self, sent: Sent) -> BaseException | None:
        """Called as an ack arrives: an error fails it (the fault hook; None: acknowledged)."""
        return None

    def hold_acks(self) -> None:
        """Records are appended at once but acknowledged only at :meth:`release_acks`."""
        self._held = []

    def release_acks(self, error: Callable[[Sent], BaseException | None] | None = None) -> None:
        """Deliver every held ack now, in append order; ``error`` may fail some of them."""
        held, self._held = self._held or [], None
        for future, sent in held:
            failure = error(sent) if error is not None else None
            if failure is not None and not future.done():
                future.set_exception(failure)
            else:
                self._deliver(future, sent)

    def _turn(self, future: asyncio.Future[Sent], sent: Sent, turns: int) -> None:
        if turns > 0:
            asyncio.get_running_loop().call_soon(self._turn, future, sent, turns - 1)
        else:
            self._deliver(future, sent)

    def _deliver(self, future: asyncio.Future[Sent], sent: Sent) -> None:
        if future.done():
            return
        failure = self.ack_error(sent)
        if failure is None:
            future.set_result(sent)
        else:
            future.set_exception(failure)

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
            partition = home_partition(key, self.partitions[topic])
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

    async def read_snapshots(self, topic: str, partitions: Iterable[int]) -> SnapshotRead:
        """What :func:`worker.kafka.restore.read_snapshot_partitions` reads, from memory."""
        started = time.perf_counter()
        await asyncio.sleep(0)
        wanted = frozenset(partitions)
        logs = {p: self.logs[TopicPartition(topic, p)] for p in sorted(wanted)}
        return fold_snapshot_records(wanted, logs, time.perf_counter() - started)


class MemoryProducer:
    """``send`` appends at once (so a fault can land between any two records)."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker
        self.connected = True
        """False once the process is gone (:meth:`MemoryTransport.disconnect`)."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Sent]:
        broker = self.broker
        if not self.connected:
            raise KafkaConnectionError("disconnected")
        size = len(key or b"") + len(value or b"")
        size += sum(len(k.encode()) + len(v) for k, v in headers or ())
        if size > broker.max_request_size:
            # What aiokafka raises from send() itself: not retriable.
            raise MessageSizeTooLargeError(f"the message is {size} bytes")
        broker.before_write(f"a record to {topic}")
        sent = broker.append(
            topic, key, value, partition=partition, headers=headers or (), timestamp_ms=timestamp_ms
        )
        return broker.acknowledge(sent)

    async def stop(self) -> None:
        return None


class MemoryConsumer:
    """One group member: its assignment, positions, pauses and commits."""

    def __init__(self, broker: InMemoryBroker, *, max_records: int = 5) -> None:
        self.broker = broker
        self.max_records = max_records
        """Upper bound of one ``getmany`` (tests vary it to move batch boundaries)."""
        self.positions: dict[TopicPartition, int | None] = {}
        """None until first needed: like aiokafka, the committed offset is read lazily."""
        self.paused_set: set[TopicPartition] = set()
        self.generation = 0
        self.connected = True
        """False once the process is gone (:meth:`MemoryTransport.disconnect`)."""
        self.polls = 0
        self.empty_polls = 0
        """Consecutive polls that returned nothing (an idle signal for harnesses)."""

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

    # -- the consumer calls the worker makes ------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Stored]]:
        await asyncio.sleep(0)
        if not self.connected:
            raise KafkaConnectionError("disconnected")
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
        if not self.connected:
            raise KafkaConnectionError("disconnected")
        self.broker.before_write("a commit")
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


class MemoryMarkSource:
    """Every partition of a marks topic of an :class:`InMemoryBroker` (no group)."""

    def __init__(self, broker: InMemoryBroker, topic: str) -> None:
        self._logs = [
            broker.logs[TopicPartition(topic, p)] for p in range(broker.partitions[topic])
        ]
        self._read = [0] * len(self._logs)

    async def history(self) -> list[Stored]:
        return self._take()

    async def follow(self) -> list[Stored]:
        await asyncio.sleep(0.005)
        return self._take()

    def _take(self) -> list[Stored]:
        records: list[Stored] = []
        for n, log in enumerate(self._logs):
            records.extend(log[self._read[n] :])
            self._read[n] = len(log)
        return records

    async def close(self) -> None:
        pass


class MemoryTransport:
    """One group member's connection to an :class:`InMemoryBroker`.

    The member owns nothing until :meth:`assign` (the group's decision, made by
    the test); ``consumer`` is exposed so tests can vary it or inspect it.
    """

    def __init__(
        self,
        broker: InMemoryBroker,
        snapshots_topic: str,
        *,
        consumer: MemoryConsumer | None = None,
        marks_topic: str = "trading.marks",
    ) -> None:
        self.broker = broker
        self.snapshots_topic = snapshots_topic
        self.marks_topic = marks_topic
        """The marks topic (``[topics] marks``); absent from the broker: no marks."""
        self.consumer = consumer or MemoryConsumer(broker)
        self.producer = MemoryProducer(broker)
        self._topics: tuple[str, ...] = ()
        self._rebalance: Rebalance | None = None

    async def connect(self, topics: Collection[str], rebalance: Rebalance) -> Connection:
        await asyncio.sleep(0)
        self._topics = tuple(topics)
        counts = {self.broker.partitions[t] for t in self._topics}
        assert len(counts) == 1, "input topics must be co-partitioned"
        self._rebalance = rebalance
        return Connection(self.consumer, self.producer, counts.pop())

    async def read_snapshots(self, partitions: frozenset[int]) -> SnapshotRead:
        return await self.broker.read_snapshots(self.snapshots_topic, partitions)

    def marks_source(self) -> MarkSource | None:
        """The marks topic's logs when the broker has that topic."""
        if self.marks_topic not in self.broker.partitions:
            return None
        return MemoryMarkSource(self.broker, self.marks_topic)

    def input_tps(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self._topics for p in partitions]

    def assign(self, partitions: Iterable[int]) -> None:
        """The group assigns ``partitions`` (of every input topic) to this member now."""
        rebalance = self._rebalance
        assert rebalance is not None, "not connected"
        tps = self.input_tps(partitions)
        self.consumer.take(tps)
        rebalance.on_assigned(tps)

    async def revoke(self, partitions: Iterable[int]) -> None:
        """The group takes ``partitions`` away; returns once the worker's callback did."""
        rebalance = self._rebalance
        assert rebalance is not None, "not connected"
        tps = self.input_tps(partitions)
        await rebalance.on_revoked(tps)
        self.consumer.drop(tps)

    def disconnect(self) -> None:
        """The process is gone (SIGKILL): its clients write and read nothing more."""
        self.consumer.connected = False
        self.producer.connected = False
