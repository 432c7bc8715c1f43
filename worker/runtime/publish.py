"""Sending records and confirming their acks, through any broker outage.

The loop hands a batch's outputs to the producer (:meth:`Publisher.send`) and
goes on to fetch and apply the next batch while their acks are in flight; it
confirms them (:meth:`Publisher.confirm`) before the state they reflect is
persisted, and at most a few batches behind. The producer keeps per-partition
order for sends issued in order (aiokafka appends each record to its
partition's batch queue, drains a partition's queue head first and mutes the
partition while a batch of it is in flight; a retried batch goes back to the
head), so batch N's outputs reach each partition before batch N+1's.

A broker outage is retried until it ends (the worker stays alive and keeps its
state): a set whose send or ack failed is sent again *with every set sent
after it*, in order, so each partition ends with the newest outputs last. An
error about the records themselves or our right to write them can never
succeed, and retrying it would wedge every bot of this worker forever, so it
stops the worker with :class:`PublishRefused`, naming the record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
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


class Sending:
    """One set of records handed to the producer in order; their acks may be in flight.

    Once all are acknowledged (by their acks, or by a re-send: :meth:`confirm`),
    ``timer`` observes the time since the first send and ``written`` (if any)
    counts the records.
    """

    __slots__ = (
        "_acks",
        "_confirmed",
        "_confirmed_event",
        "_started",
        "_timer",
        "_written",
        "error",
        "records",
    )

    def __init__(self, records: list[OutRecord], timer: Any, written: Any = None) -> None:
        self.records = records
        self._timer = timer
        self._written = written
        self._started = time.perf_counter()
        self._acks: asyncio.Future[list[Any]] | None = None
        self._confirmed = False
        self._confirmed_event = asyncio.Event()
        self.error: BaseException | None = None
        """A retriable failure of ``send()`` itself: the records after it were not sent."""

    def sent(self, acks: list[asyncio.Future[Any]]) -> None:
        """Every record is with the producer; ``acks`` are their futures."""
        self._acks = future = asyncio.gather(*acks)
        future.add_done_callback(self._observe)

    def _observe(self, future: asyncio.Future[list[Any]]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.confirm()

    def landed(self) -> bool:
        """Every ack arrived and none failed (known without waiting)."""
        if self._confirmed:
            return True
        acks = self._acks
        return (
            self.error is None
            and acks is not None
            and acks.done()
            and not acks.cancelled()
            and acks.exception() is None
        )

    def failed(self) -> bool:
        """The send or an ack failed (known without waiting): :meth:`wait` raises it."""
        acks = self._acks
        if self._confirmed:
            return False
        return self.error is not None or (
            acks is not None and acks.done() and (acks.cancelled() or acks.exception() is not None)
        )

    async def wait(self) -> None:
        """Until every ack arrived; raises the send's or the first failed ack's error."""
        if self._confirmed:
            return
        if self.error is not None:
            raise self.error
        assert self._acks is not None
        # Shielded: the loop being cancelled must not cancel the client's own futures.
        await asyncio.shield(self._acks)

    async def settled(self) -> None:
        """Until no ack of this set is in flight any more, whatever the outcome."""
        if self._acks is not None:
            await asyncio.wait([self._acks])

    async def confirmed(self) -> None:
        """Until :meth:`confirm` (by the acks, or by whoever re-sent it after a failure)."""
        await self._confirmed_event.wait()

    def confirm(self) -> None:
        """Acknowledged, by its own acks or by a later re-send of its records."""
        if not self._confirmed:
            self._confirmed = True
            self._confirmed_event.set()
            self._timer.observe(time.perf_counter() - self._started)
            if self._written is not None:
                self._written.inc(len(self.records))


async def _send(producer: Producer, sending: Sending) -> Sending:
    """Hand ``sending``'s records to the producer; a permanent refusal names the record."""
    acks: list[asyncio.Future[Any]] = []
    for r in sending.records:
        try:
            ack = await producer.send(
                r.topic, r.value, key=r.key, partition=r.partition, headers=r.headers
            )
        except _REFUSED as exc:  # the client's own checks (size) name this record
            raise _refused(r, exc) from exc
        except (TimeoutError, KafkaError) as exc:
            sending.error = exc  # an outage: confirm() sends the whole set again
            break
        acks.append(asyncio.ensure_future(ack))
    sending.sent(acks)
    return sending


async def _send_all(producer: Producer, records: list[OutRecord]) -> None:
    """Send ``records`` and wait for every ack; a permanent refusal names the record."""
    sending = await _send(producer, Sending(records, _NO_TIMER))
    try:
        await sending.wait()
    except _REFUSED as exc:  # the broker's answer: name the biggest record sent
        raise _refused(max(records, key=_size), exc) from exc


class _NoTimer:
    def observe(self, seconds: float) -> None:
        pass


_NO_TIMER = _NoTimer()


def _size(r: OutRecord) -> int:
    return len(r.key or b"") + len(r.value or b"") + sum(len(v) for _, v in r.headers or ())


def _refused(r: OutRecord, exc: BaseException) -> PublishRefused:
    size, key = _size(r), printable(r.key)
    log.error("record refused; stopping", topic=r.topic, key=key, bytes=size, error=repr(exc))
    return PublishRefused(f"{r.topic} refused a record (key {key!r}, {size} bytes): {exc!r}")


class Publisher:
    """The loop's two writes: a batch's outputs, then a persist's snapshots.

    Both are sent at once and confirmed later (:meth:`confirm`), in the order
    they were sent; sends are retried while the broker is away (unless stopping).
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

    async def send_outputs(
        self, effects: Effects, deadletters: list[OutRecord], heartbeat: list[str], now: int
    ) -> Sending:
        """Phase 1, every batch: halts, decisions, gate states, dead letters — sent, acks
        in flight (the records are built before the first await: the state right now)."""
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
        return await self._send(Sending(outputs, m.output_seconds))

    def snapshots(self, dirty: Effects) -> list[OutRecord]:
        """Phase 2's records: the snapshots of ``dirty`` keys as they are now.

        Sent (:meth:`send_snapshots`) only once every output reflecting this
        state is acknowledged, so a crash after they land never loses one.
        """
        own = self._ownership
        snapshots = snapshot_records(
            self._engine, dirty, self._topics, own.partition_of, own.epochs
        )
        # Our claim on a partition goes just ahead of our first snapshot there.
        return own.with_claims(snapshots)

    async def send_snapshots(self, records: list[OutRecord]) -> Sending:
        """Phase 2: the records of :meth:`snapshots`, sent; acks in flight."""
        m = self._metrics
        return await self._send(Sending(records, m.snapshot_seconds, m.snapshot_writes))

    async def _send(self, sending: Sending) -> Sending:
        producer = self.producer
        assert producer is not None
        return await _send(producer, sending)

    async def confirm(self, sendings: Sequence[Sending], count: int) -> bool:
        """Wait for the acks of the first ``count`` of ``sendings`` (sent in this order).

        A set that failed for a broker outage is sent again with every later one
        of ``sendings``, in order, and all of them are confirmed once that
        re-send is acknowledged. False if the worker is stopping and the re-send
        failed. Raises :class:`PublishRefused` for records no retry can get in.
        """
        for i, sending in enumerate(sendings[:count]):
            try:
                await sending.wait()
            except _REFUSED as exc:  # the broker's answer: name the biggest record sent
                raise _refused(max(sending.records, key=_size), exc) from exc
            except BaseException as exc:
                if not _retriable_send_error(exc):
                    raise
                self._metrics.send_retries.inc()
                log.warning("publishing failed; sending again", error=repr(exc))
                later = sendings[i:]
                for other in later:  # nothing of ours still in flight, then all again
                    await other.settled()
                records = [r for other in later for r in other.records]
                if not await self.send_acked(records, _NO_TIMER):
                    return False
                for other in later:
                    other.confirm()
                return True
            sending.confirm()
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
