"""The mark feed: every partition of ``[topics] marks``, read outside the consumer group.

Marks are market-wide (issue 11), so every worker keeps the whole table, the
way Kafka Streams keeps a GlobalKTable: at start it reads the topic to the end
offsets it captured (:meth:`MarkFeed.restore`), and the worker reports ready
only after that; then a background task follows the topic. The loop applies
what arrived through :meth:`MarkFeed.drain` in each iteration, so marks reach
the engine on the loop's thread like every other event, and their halts,
gate records and snapshots go out with that iteration's batch.

Pending marks are coalesced per symbol (the latest ``ts`` wins, as in the
engine's table): a burst of ticks costs one re-valuation.

Bad marks meet the input rules of SPEC §8 (the same reasons: ``oversize``,
``malformed_json``, ``invalid_message``, ``invalid_name``, ``key_mismatch``,
``undecodable_record``) plus ``future_mark``; each is skipped, counted in
:attr:`MarkFeed.ignored` and ``riskgate_marks_ignored_total{reason}``, and
logged once per reason. It is not dead-lettered: every worker reads every mark,
so N workers would write N copies of one dead letter (SPEC §3, Mark).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.core.names import check_name
from worker.errors import Rejected
from worker.inbound import decode_value
from worker.kafka.fetch import Unreadable, fetch
from worker.kafka.options import reader
from worker.messages import Mark
from worker.metrics import Metrics

log = structlog.get_logger("riskgate.marks")

_DECODER = msgspec.json.Decoder(Mark)
_RETRY_S = 1.0
"""Wait before reading the marks again after a failed read."""
_FETCH_RECORDS = 10_000
"""Records per fetch of the mark consumer (aiokafka's ``getmany`` bound)."""


class MarkSource(Protocol):
    """Where the marks come from: the topic's history, then what is appended to it."""

    async def history(self) -> list[Any]:
        """Every record up to the end offsets as of now (``.key``, ``.value``,
        ``.timestamp``), and an :class:`Unreadable` for each the client could not decode."""
        ...

    async def follow(self) -> list[Any]:
        """The records appended since the last call (waits a bounded time for some)."""
        ...

    async def close(self) -> None: ...


class MarkFeed:
    """The marks read so far and not yet applied; ``restored`` once the history is in."""

    def __init__(
        self,
        source: MarkSource | None,
        max_future_skew_ms: int = 5 * 60_000,
        *,
        max_message_bytes: int = 64 * 1024,
        metrics: Metrics | None = None,
    ) -> None:
        """``source`` None: no marks topic (positions are valued at entry price).
        ``max_future_skew_ms`` and ``max_message_bytes``: the ``[worker]`` limits of
        every input (the skew judged against the record's timestamp)."""
        self._source = source
        self._max_skew_ms = max_future_skew_ms
        self._max_bytes = max_message_bytes
        self._metrics = metrics
        self._pending: dict[str, Mark] = {}
        self._task: asyncio.Task[None] | None = None
        self.restored = source is None
        self.ignored: Counter[str] = Counter()
        """Records skipped, by reason (as ``riskgate_marks_ignored_total``)."""

    async def restore(self) -> None:
        """Read the topic's history, then follow it in the background."""
        if self._source is None:
            return
        self.take(await self._source.history())
        self.restored = True
        self._task = asyncio.create_task(self._follow(self._source), name="MarkFeed")

    async def _follow(self, source: MarkSource) -> None:
        """Follow the topic for as long as the worker runs. A read that fails (a broker
        error) is logged and retried: a follower that ended would leave every mark frozen,
        with the equity limits judging yesterday's prices and nothing saying so."""
        failing: str | None = None
        while True:
            try:
                records = await source.follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any read failure: retry, never stop
                kind = type(exc).__name__
                if kind != failing:
                    log.warning("reading marks failed; retrying", error=f"{kind}: {exc}"[:200])
                failing = kind
                await asyncio.sleep(_RETRY_S)
                continue
            if failing is not None:
                log.info("reading marks again")
                failing = None
            self.take(records)

    def take(self, records: Iterable[Any]) -> None:
        """Hold each mark unless a later-stamped one of its symbol is pending."""
        pending = self._pending
        for record in records:
            mark = self._valid(record)
            if mark is None:
                continue
            held = pending.get(mark.symbol)
            if held is None or mark.ts >= held.ts:
                pending[mark.symbol] = mark

    def _valid(self, record: Any) -> Mark | None:
        """The mark of ``record``, or None (counted and logged) when it is bad input."""
        if isinstance(record, Unreadable):
            self._note("undecodable_record", f"offset {record.offset}: {record.error}")
            return None
        try:
            mark = decode_value(_DECODER, "mark", record.value, self._max_bytes)
            check_name("symbol", mark.symbol)
        except Rejected as exc:
            self._note(exc.reason, str(exc))
            return None
        if record.key is not None and record.key != mark.symbol.encode():
            self._note("key_mismatch", f"key {record.key[:64]!r} is not {mark.symbol!r}")
            return None
        if mark.ts > record.timestamp + self._max_skew_ms:
            # Held, it would outrank every correct mark after it (the latest ts
            # wins) and read fresh for ever: a frozen price under the equity limits.
            self._note("future_mark", f"ts {mark.ts} is ahead of the record's time")
            return None
        return mark

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

    def _note(self, reason: str, error: str) -> None:
        self.ignored[reason] += 1
        if self._metrics is not None:
            self._metrics.marks_ignored.labels(reason).inc()
        if self.ignored[reason] == 1:
            log.warning(
                "ignoring a mark record (logged once per reason)", reason=reason, error=error[:200]
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
            records.extend(await _read(consumer))
            behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
        return records

    async def follow(self) -> list[Any]:
        consumer = self._consumer
        if consumer is None or not consumer.assignment():
            await asyncio.sleep(1)
            return []
        return await _read(consumer)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


async def _read(consumer: AIOKafkaConsumer) -> list[Any]:
    """One bounded fetch of every assigned partition. A record the client cannot decode (a
    header key that is not UTF-8) comes back as an :class:`Unreadable` and the consumer
    moves past it: with a bare ``getmany`` it would fail on that record for ever, the
    history would never end (the worker never ready) or the feed would stop following
    (every mark frozen, read stale in a minute)."""
    fetched = await fetch(consumer, 200, _FETCH_RECORDS)
    records: list[Any] = [record for part in fetched.batch.values() for record in part]
    records.extend(fetched.unreadable)
    return records
