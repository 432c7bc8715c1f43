"""The mark feed: every partition of ``[topics] marks``, read outside the consumer group.

Marks are market-wide (issue 11), so every worker keeps the whole table, the
way Kafka Streams keeps a GlobalKTable: at start it reads the topic to the end
offsets it captured (:meth:`MarkFeed.restore`), and the worker reports ready
only after that; then a background task follows the topic. The loop applies
what arrived through :meth:`MarkFeed.drain` in each iteration, so marks reach
the engine on the loop's thread like every other event, and their halts,
gate records and snapshots go out with that iteration's batch.

Pending marks are coalesced per symbol (the latest ``ts`` wins, as in the
engine's table): a burst of ticks costs one re-valuation. A record that does
not decode (or whose key is not its symbol) is skipped, counted in
:attr:`MarkFeed.ignored` and logged once per kind; it is not dead-lettered
because every worker reads every mark (N copies of one dead letter).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.kafka.options import reader
from worker.messages import Mark

log = structlog.get_logger("riskgate.marks")

_decode = msgspec.json.Decoder(Mark).decode


class MarkSource(Protocol):
    """Where the marks come from: the topic's history, then what is appended to it."""

    async def history(self) -> list[Any]:
        """Every record up to the end offsets as of now (``.key``, ``.value``)."""
        ...

    async def follow(self) -> list[Any]:
        """The records appended since the last call (waits a bounded time for some)."""
        ...

    async def close(self) -> None: ...


class MarkFeed:
    """The marks read so far and not yet applied; ``restored`` once the history is in."""

    def __init__(self, source: MarkSource | None, max_future_skew_ms: int = 5 * 60_000) -> None:
        """``source`` None: no marks topic (positions are valued at entry price).
        ``max_future_skew_ms``: ``[worker] max_future_skew_ms``, judged against the
        record's timestamp as for every input."""
        self._source = source
        self._max_skew_ms = max_future_skew_ms
        self._pending: dict[str, Mark] = {}
        self._task: asyncio.Task[None] | None = None
        self.restored = source is None
        self.ignored: Counter[str] = Counter()
        """Records skipped, by kind."""

    async def restore(self) -> None:
        """Read the topic's history, then follow it in the background."""
        if self._source is None:
            return
        self.take(await self._source.history())
        self.restored = True
        self._task = asyncio.create_task(self._follow(self._source), name="MarkFeed")

    async def _follow(self, source: MarkSource) -> None:
        while True:
            self.take(await source.follow())

    def take(self, records: Iterable[Any]) -> None:
        """Hold each mark unless a later-stamped one of its symbol is pending."""
        pending = self._pending
        for record in records:
            try:
                mark = _decode(record.value)
            except (msgspec.DecodeError, TypeError, RecursionError) as exc:
                self._note(type(exc).__name__, str(exc))
                continue
            if record.key is not None and record.key != mark.symbol.encode():
                self._note("key_mismatch", f"key {record.key!r} is not {mark.symbol!r}")
                continue
            if mark.ts > record.timestamp + self._max_skew_ms:
                # Held, it would outrank every correct mark after it (the latest ts
                # wins) and read fresh for ever: a frozen price under the equity limits.
                self._note("future_mark", f"ts {mark.ts} is ahead of the record's time")
                continue
            held = pending.get(mark.symbol)
            if held is None or mark.ts >= held.ts:
                pending[mark.symbol] = mark

    def drain(self) -> list[Mark]:
        """The marks to apply now (one per symbol), in symbol order."""
        if not self._pending:
            return []
        marks = [self._pending[s] for s in sorted(self._pending)]
        self._pending.clear()
        return marks

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._source is not None:
            await self._source.close()

    def _note(self, kind: str, error: str) -> None:
        self.ignored[kind] += 1
        if self.ignored[kind] == 1:
            log.warning(
                "ignoring a mark record (logged once per kind)", kind=kind, error=error[:200]
            )


class KafkaMarkSource:
    """Every partition of the marks topic with a group-less aiokafka consumer."""

    def __init__(self, client_kwargs: dict[str, Any], topic: str, fetch_max_wait_ms: int) -> None:
        self._kwargs = client_kwargs
        self._topic = topic
        self._wait_ms = fetch_max_wait_ms
        self._consumer: AIOKafkaConsumer | None = None

    async def history(self) -> list[Any]:
        consumer = reader(self._kwargs, fetch_max_wait_ms=self._wait_ms)
        await consumer.start()
        self._consumer = consumer
        await consumer.topics()
        partitions = consumer.partitions_for_topic(self._topic) or set()
        if not partitions:
            log.warning("no marks topic: positions are valued at entry price", topic=self._topic)
            return []
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        behind = {tp for tp, end in ends.items() if end > 0}
        while behind:
            batch = await consumer.getmany(*tps, timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
        return records

    async def follow(self) -> list[Any]:
        consumer = self._consumer
        if consumer is None or not consumer.assignment():
            await asyncio.sleep(1)
            return []
        batch = await consumer.getmany(timeout_ms=200)
        return [record for part in batch.values() for record in part]

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
