"""The narrow interface between the worker and Kafka, and its aiokafka implementation.

The worker needs little from its clients: a consumer it can fetch from, pause,
resume and commit through, a producer whose ``send`` returns an ack future, and
a way to read snapshot partitions to their end. :class:`Transport` names exactly
that, so the poll loop, persist and restore code run unchanged over
:class:`KafkaTransport` (aiokafka, production) or
:class:`worker.runtime.memory.MemoryTransport` (in memory: unit tests and the
fault-injecting state machine), the way httpx swaps its transport for a mock.

The group's rebalance callbacks reach the worker through :class:`Rebalance`:
a transport calls them whenever the group moves partitions, as aiokafka's
``ConsumerRebalanceListener`` does during a fetch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from worker.config import Config
from worker.kafka.options import client_kwargs, consumer_kwargs
from worker.kafka.restore import SnapshotRead, read_snapshot_partitions
from worker.kafka.topics import check_topics
from worker.runtime.marks import KafkaMarkSource, MarkSource

Headers = Sequence[tuple[str, bytes]]


class Consumer(Protocol):
    """The consumer calls the worker makes (a subset of ``AIOKafkaConsumer``)."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = ..., max_records: int | None = ...
    ) -> dict[TopicPartition, list[Any]]: ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    async def position(self, tp: TopicPartition) -> int: ...

    async def topics(self) -> set[str]: ...

    async def stop(self) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    def last_poll_timestamp(self, partition: TopicPartition) -> int | None: ...


class Producer(Protocol):
    """The producer calls the worker makes: ``send`` returns the future of the record's ack."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Any = None,
    ) -> Awaitable[Any]: ...

    async def stop(self) -> None: ...


class Rebalance(Protocol):
    """What the worker does when the group assigns or revokes input partitions."""

    def on_assigned(self, partitions: Iterable[TopicPartition]) -> None: ...

    async def on_revoked(self, partitions: Iterable[TopicPartition]) -> None: ...


class Connection(NamedTuple):
    consumer: Consumer
    producer: Producer
    input_partitions: int
    """Partition count of every input topic (checked equal when connecting)."""


class Transport(Protocol):
    """How a worker reaches its broker."""

    async def connect(self, topics: Collection[str], rebalance: Rebalance) -> Connection:
        """Started clients, subscribed to ``topics``; raises while the broker is absent."""
        ...

    async def read_snapshots(self, partitions: frozenset[int]) -> SnapshotRead:
        """The snapshot partitions ``partitions``, read to their end and folded."""
        ...

    def marks_source(self) -> MarkSource | None:
        """Every partition of the marks topic, outside the group (None: no marks)."""
        ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, rebalance: Rebalance) -> None:
        self._rebalance = rebalance

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._rebalance.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._rebalance.on_assigned(assigned)


class KafkaTransport:
    """aiokafka clients configured from ``config`` (options checked at construction)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.client_kwargs = client_kwargs(config.kafka)
        self._consumer_kwargs = consumer_kwargs(config.kafka, config.worker)  # checks timeouts

    async def connect(self, topics: Collection[str], rebalance: Rebalance) -> Connection:
        partitions = await check_topics(self._config.kafka, self._config.topics)
        producer = AIOKafkaProducer(
            **self.client_kwargs,
            acks="all",
            linger_ms=0,
            max_batch_size=1024 * 1024,
            enable_idempotence=False,  # unsupported by Tansu; replay safety does not need it
        )
        consumer = AIOKafkaConsumer(**self._consumer_kwargs)
        try:
            await producer.start()
            await consumer.start()
        except BaseException:
            await consumer.stop()
            await producer.stop()
            raise
        consumer.subscribe(list(topics), listener=_Listener(rebalance))
        return Connection(consumer, producer, partitions)

    async def read_snapshots(self, partitions: frozenset[int]) -> SnapshotRead:
        return await read_snapshot_partitions(
            self.client_kwargs, self._config.topics.snapshots, partitions
        )

    def marks_source(self) -> MarkSource | None:
        config = self._config
        return KafkaMarkSource(
            self.client_kwargs, config.topics.marks, config.kafka.fetch_max_wait_ms
        )
