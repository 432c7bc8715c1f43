"""Waiting, with a timeout, for the worker to publish a record that matches.

A wait reads its topic from the beginning: with the plugin's per-worker topics
that is exactly this worker's output. It fails with an AssertionError that
says what it waited for and the last few records it saw instead, so a test
that times out explains itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from aiokafka import TopicPartition

from worker.config import KafkaConfig
from worker.kafka.options import client_kwargs, reader

T = TypeVar("T")

SEEN_IN_ERROR = 5
"""How many of the last records read a timeout message quotes."""

Pick = Callable[[list[T]], T | None]
"""Given the values of one fetch in topic order, the one waited for (or None)."""


def first(predicate: Callable[[T], bool]) -> Pick[T]:
    """For topics of events: the first record that satisfies ``predicate``."""
    return lambda values: next((v for v in values if predicate(v)), None)


def latest(predicate: Callable[[T], bool]) -> Pick[T]:
    """For compacted state: the newest record (of the followed key) if it satisfies
    ``predicate``. A state the worker left within one fetch does not count."""

    def pick(values: list[T]) -> T | None:
        return values[-1] if values and predicate(values[-1]) else None

    return pick


async def wait_for_record(
    kafka: KafkaConfig,
    topic: str,
    decode: Callable[[bytes], T],
    pick: Pick[T],
    *,
    within: float,
    what: str,
    alive: Callable[[], None],
    key: bytes | None = None,
) -> T:
    """Read ``topic`` from its start until ``pick`` chooses a record; return it.

    Only records under ``key`` are decoded when it is given. ``alive`` raises
    when the worker died, so a crash fails at once instead of timing out.
    Tombstones and records that do not decode are skipped.
    """
    consumer = reader(client_kwargs(kafka), fetch_max_wait_ms=kafka.fetch_max_wait_ms)
    await consumer.start()
    seen: list[T] = []
    try:
        async with asyncio.timeout(within):
            await consumer.topics()  # a metadata round trip: the partitions are known after it
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
            if not partitions:
                raise AssertionError(f"topic {topic} does not exist")
            consumer.assign([TopicPartition(topic, p) for p in partitions])
            while True:
                alive()
                batch = await consumer.getmany(timeout_ms=100)
                values = [
                    value
                    for records in batch.values()
                    for record in records
                    if (value := _decode(record, decode, key)) is not None
                ]
                seen.extend(values)
                found = pick(values)
                if found is not None:
                    return found
    except TimeoutError:
        raise AssertionError(
            f"timed out after {within:g} s waiting for {what} on {topic}; "
            f"last records read: {seen[-SEEN_IN_ERROR:]!r}"
        ) from None
    finally:
        await consumer.stop()


def _decode(record: Any, decode: Callable[[bytes], T], key: bytes | None) -> T | None:
    if record.value is None or (key is not None and record.key != key):
        return None
    try:
        return decode(record.value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
