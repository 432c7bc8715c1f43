"""Sending a set of records and waiting for every ack, through any broker outage.

A broker outage is retried until it ends (the worker stays alive and keeps its
state); an error about the records themselves or our right to write them can
never succeed, and retrying it would wedge every bot of this worker forever, so
it stops the worker with :class:`PublishRefused`, naming the record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential

from worker.config import Config
from worker.core import Effects, RiskEngine
from worker.kafka.records import OutRecord, heartbeat_records, output_records, snapshot_records
from worker.metrics import Metrics
from worker.runtime.ownership import Ownership
from worker.runtime.transport import Producer

log = structlog.get_logger("riskgate.worker")


class PublishRefused(RuntimeError):
    """The broker or client refused records in a way no retry can fix: the worker stops."""


_REFUSED = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidMessageError,
    CorruptRecordException,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
    InvalidTopicError,
    PolicyViolationError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)
"""Errors about the records or our right to write them: permanent, never retried.

Everything else (connections, leaders, timeouts, even ones aiokafka marks not
retriable such as a batch expiring while the broker is away) is a broker
outage, retried until it ends."""


def printable(key: bytes | None, limit: int = 64) -> str | None:
    """An untrusted key, shortened and decoded for a log line."""
    return None if key is None else key[:limit].decode("utf-8", "replace")


def _retriable_send_error(exc: BaseException) -> bool:
    return isinstance(exc, KafkaError | asyncio.TimeoutError) and not isinstance(exc, _REFUSED)


async def _send_all(producer: Producer, records: list[OutRecord]) -> None:
    """Send ``records`` and wait for every ack; a permanent refusal names the record."""
    futures = []
    for r in records:
        try:
            futures.append(
                await producer.send(
                    r.topic, r.value, key=r.key, partition=r.partition, headers=r.headers
                )
            )
        except _REFUSED as exc:  # the client's own checks (size) name this record
            raise _refused(r, exc) from exc
    try:
        await asyncio.gather(*futures)
    except _REFUSED as exc:  # the broker's answer: name the biggest record sent
        raise _refused(max(records, key=_size), exc) from exc


def _size(r: OutRecord) -> int:
    return len(r.key or b"") + len(r.value or b"") + sum(len(v) for _, v in r.headers or ())


def _refused(r: OutRecord, exc: BaseException) -> PublishRefused:
    size, key = _size(r), printable(r.key)
    log.error("record refused; stopping", topic=r.topic, key=key, bytes=size, error=repr(exc))
    return PublishRefused(f"{r.topic} refused a record (key {key!r}, {size} bytes): {exc!r}")


class Publisher:
    """The loop's two writes, each acknowledged: a batch's outputs, then a persist's snapshots.

    Sends are retried while the broker is away (unless stopping).
    """

    def __init__(
        self,
        config: Config,
        engine: RiskEngine,
        ownership: Ownership,
        metrics: Metrics,
        *,
        tick: Callable[[], None],
        stopping: asyncio.Event,
    ) -> None:
        self._topics = config.topics
        self._engine = engine
        self._ownership = ownership
        self._metrics = metrics
        self._tick = tick
        self._stopping = stopping
        self.producer: Producer | None = None
        self.republish = Effects()
        """Gate records owed after a restore (published with the next outputs, not persisted)."""

    async def publish(
        self, effects: Effects, deadletters: list[OutRecord], heartbeat: list[str], now: int
    ) -> bool:
        """Phase 1, every batch: halts, decisions, gate states, dead letters — acknowledged.

        False if the worker is stopping before the broker took them.
        """
        engine, topics, m = self._engine, self._topics, self._metrics
        outputs = output_records(engine, effects, topics, now)
        republish, self.republish = self.republish, Effects()
        republish.dirty_symbols -= effects.dirty_symbols
        republish.dirty_bots -= effects.dirty_bots
        outputs.extend(output_records(engine, republish, topics, now))
        outputs.extend(deadletters)
        outputs.extend(heartbeat_records(engine, heartbeat, topics, now))
        for halt in effects.halts:
            m.halts.labels(halt.gate, halt.kind).inc()
        for decision in effects.decisions:
            m.decisions.labels(decision.gate or "none").inc()
        return await self.send_acked(outputs, m.output_seconds)

    async def write_snapshots(self, dirty: Effects) -> bool:
        """Phase 2: the snapshots of ``dirty`` keys (built before any await), acknowledged.

        Every output reflecting this state went out in an earlier, acknowledged
        phase 1, so a crash after this point never loses one.
        """
        own = self._ownership
        snapshots = snapshot_records(
            self._engine, dirty, self._topics, own.partition_of, own.epochs
        )
        # Our claim on a partition goes just ahead of our first snapshot there.
        records = own.with_claims(snapshots)
        if not await self.send_acked(records, self._metrics.snapshot_seconds):
            return False
        self._metrics.snapshot_writes.inc(len(records))
        return True

    async def send_acked(self, records: list[OutRecord], timer: Any) -> bool:
        """Send and wait for every ack, retrying the whole set on broker errors.

        False if the worker is stopping and a first attempt failed. Raises
        :class:`PublishRefused` for records no retry can get in.
        """
        if not records:
            return True
        producer = self.producer
        assert producer is not None
        started = time.perf_counter()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retriable_send_error),
            wait=wait_exponential(multiplier=0.2, max=5),
            before_sleep=self._log_retry,
        ):
            with attempt:
                if self._stopping.is_set() and attempt.retry_state.attempt_number > 1:
                    return False
                await _send_all(producer, records)
        timer.observe(time.perf_counter() - started)
        return True

    def _log_retry(self, state: Any) -> None:
        self._tick()  # a bounded retry is alive (liveness), however long the broker is away
        self._metrics.send_retries.inc()
        error = state.outcome.exception() if state.outcome else None
        log.warning("publishing failed; retrying", attempt=state.attempt_number, error=repr(error))
