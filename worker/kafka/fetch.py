"""Fetching input that one unreadable record cannot wedge.

aiokafka decodes every record of a fetched batch inside ``getmany``; a record
it cannot decode (a header key that is not UTF-8, for instance) makes
``getmany`` raise, drops the batch and leaves the position where it was, so
every later ``getmany`` fails on the same record and the partition never moves
again (nor does any other partition whose records shared the failing call).

:func:`fetch` contains that: after such a failure it reads each fetchable
partition one record at a time. Good records come back in order as usual; the
first record that raises is reported as :class:`Unreadable` (partition and
offset, which is the consumer's position when the read fails) and the
consumer seeks past it. The client never hands over the raw bytes of such a
record, so its dead letter names where it is; it stays on the input topic.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

Batch = dict[TopicPartition, list[Any]]


class Fetchable(Protocol):
    """The consumer calls :func:`fetch` makes: the worker's ``Consumer`` (aiokafka or
    in memory) and the client library's followers both are one."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = ..., max_records: int | None = ...
    ) -> dict[TopicPartition, list[Any]]: ...

    async def position(self, tp: TopicPartition) -> int: ...

    def assignment(self) -> set[TopicPartition]: ...

    def paused(self) -> set[TopicPartition]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...


class Unreadable(NamedTuple):
    """A record the client could not decode: where it is and why."""

    tp: TopicPartition
    offset: int
    error: str


class Fetched(NamedTuple):
    batch: Batch
    unreadable: list[Unreadable]


_ISOLATE_WAIT_MS = 200
"""How long the one-record reads wait for a partition's refetch while isolating."""


async def fetch(consumer: Fetchable, timeout_ms: int, max_records: int) -> Fetched:
    """``getmany`` that never raises for a record's content (KafkaError still propagates)."""
    try:
        return Fetched(await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records), [])
    except (KafkaError, asyncio.CancelledError):
        raise
    except Exception:  # any decode failure inside the client
        return await _isolate(consumer, max_records)


async def _isolate(consumer: Fetchable, max_records: int) -> Fetched:
    batch: Batch = {}
    unreadable: list[Unreadable] = []
    try:
        await _read_one_by_one(consumer, max_records, batch, unreadable)
    except BaseException:
        # Cancelled (a fetch bound, stop()) or a broker error: nothing read here
        # reaches the caller. Put every position back where this read started, or
        # those records would be skipped (and an offset beyond them committed).
        starts: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            starts[tp] = records[0].offset
        for bad in unreadable:
            starts[bad.tp] = min(starts.get(bad.tp, bad.offset), bad.offset)
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        raise
    return Fetched(batch, unreadable)


async def _read_one_by_one(
    consumer: Fetchable, max_records: int, batch: Batch, unreadable: list[Unreadable]
) -> None:
    budget = max_records
    for tp in sorted(consumer.assignment() - consumer.paused()):
        # Only partitions with something left to read: the caught-up ones would
        # each cost a wait, and an unreadable record is never at the end.
        while budget > 0 and await _behind(consumer, tp):
            try:
                got = await consumer.getmany(tp, timeout_ms=_ISOLATE_WAIT_MS, max_records=1)
            except (KafkaError, asyncio.CancelledError):
                raise
            except Exception as exc:  # this partition's next record is unreadable
                offset = await consumer.position(tp)
                unreadable.append(Unreadable(tp, offset, f"{type(exc).__name__}: {exc}"))
                consumer.seek(tp, offset + 1)
                budget -= 1
                break
            records = got.get(tp)
            if not records:
                break
            batch.setdefault(tp, []).extend(records)
            budget -= len(records)


async def _behind(consumer: Fetchable, tp: TopicPartition) -> bool:
    """Records left to read on ``tp`` (an unknown log end counts as some)."""
    highwater = consumer.highwater(tp)
    return highwater is None or await consumer.position(tp) < highwater
