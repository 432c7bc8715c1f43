"""The worker: wiring and lifecycle around the pure engine.

One poll loop owns the engine. Each iteration: apply finished restores, fetch
a batch, apply it, sweep on cadence, and publish the batch's outputs (halts,
decisions, gate states, dead letters), waiting for their acks. Every
``commit_interval_ms`` the keys changed since the last time are snapshotted,
acknowledged, and only then are the input offsets committed. A crash anywhere
replays from the last commit; per-key offset watermarks in the snapshots make
the replay exact, and outputs are always acknowledged before the state that
produced them is persisted, so none is lost.

Rebalances never wait on a lock: a revoke asks the loop to persist at the end
of its iteration and waits (bounded) for that, so a new owner restoring after
us sees every snapshot we wrote; an assignment pauses just the new partitions
while their snapshot partitions are read in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
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
from aiokafka.partitioner import murmur2
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_exception_type,
    wait_exponential,
)

from worker.config import Config
from worker.engine import Effects, Origin, Rejected, RiskEngine
from worker.health import Health
from worker.inbound import InputKind, decode_input
from worker.kafka.fetch import Fetched, Unreadable, fetch
from worker.kafka.options import RETRY_BACKOFF_MAX_MS, client_kwargs, consumer_kwargs
from worker.kafka.records import (
    OutRecord,
    claim_record,
    deadletter_record,
    heartbeat_records,
    output_records,
    snapshot_records,
)
from worker.kafka.restore import SnapshotRead, read_snapshot_partitions
from worker.kafka.topics import check_topics
from worker.kafka.watch import InputWatch
from worker.messages import Event, HaltEvent
from worker.metrics import Metrics
from worker.snapshot import SnapshotError, parse_chunk_key, parse_key

Clock = Callable[[], int]
"""Wall clock in epoch milliseconds; injected so tests can move time."""

T = TypeVar("T")

CLOSE_STEP_MAX_S = 10.0
"""Longest wait for each client to close at shutdown (leave the group, flush)."""

log = structlog.get_logger("riskgate.worker")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _printable(key: bytes | None, limit: int = 64) -> str | None:
    return None if key is None else key[:limit].decode("utf-8", "replace")


@functools.lru_cache(maxsize=65_536)
def home_partition(key: bytes, partitions: int) -> int:
    """Where the Java/aiokafka default partitioner (murmur2) puts ``key``: the producer contract.

    A bot's home is computed, not learnt from the first record seen, so every
    worker and every replay agrees on it whatever order records arrive in.
    """
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def _log_halts(halts: Iterable[HaltEvent], **context: object) -> None:
    """Gate changes are rare and operator-relevant: one INFO line each, with context."""
    for halt in halts:
        log.info(
            f"gate {halt.kind}",
            bot=halt.bot,
            symbol=halt.symbol,
            gate=halt.gate,
            reason=halt.reason,
            event_id=halt.event_id,
            **context,
        )


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


def _retriable_send_error(exc: BaseException) -> bool:
    return isinstance(exc, KafkaError | asyncio.TimeoutError) and not isinstance(exc, _REFUSED)


async def _send_all(producer: AIOKafkaProducer, records: list[OutRecord]) -> None:
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
    size, key = _size(r), _printable(r.key)
    log.error("record refused; stopping", topic=r.topic, key=key, bytes=size, error=repr(exc))
    return PublishRefused(f"{r.topic} refused a record (key {key!r}, {size} bytes): {exc!r}")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._worker._on_assigned(assigned)


class Worker:
    """``riskgate run``: consume, apply, publish, persist, commit — until stopped."""

    def __init__(
        self, config: Config, *, clock: Clock = wall_clock_ms, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.engine = RiskEngine(config)
        topics = config.topics
        self._kinds: dict[str, InputKind] = {
            topics.fills: "fill",
            topics.outcomes: "outcome",
            topics.intents: "intent",
            topics.control: "control",
        }
        self._client_kwargs = client_kwargs(config.kafka)
        self._consumer_kwargs = consumer_kwargs(config.kafka, config.worker)  # checks timeouts
        self._input_partitions = 0
        """Partition count of every input topic (checked equal at start); 0 until connected."""
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._unpersisted = Effects()
        """Keys changed since the last persist (their outputs are already acknowledged)."""
        self._uncommitted: dict[TopicPartition, int] = {}
        self._next_persist = 0
        self._flush_requested = asyncio.Event()
        self._flushed = asyncio.Event()
        self._partition_of: dict[str, int] = {}
        """Bot → input partition number, which is also its snapshot partition."""
        self._assigned: set[TopicPartition] = set()
        self._restoring: dict[frozenset[int], asyncio.Task[SnapshotRead]] = {}
        self._restored: set[TopicPartition] = set()
        """Assigned partitions whose restore is applied: the only ones whose offsets commit."""
        self._epochs: dict[int, int] = {}
        """Per owned partition, the owner epoch written with its snapshots (zombie fence)."""
        self._claims: dict[int, OutRecord] = {}
        """Ownership claims owed, sent ahead of the next persist's snapshots."""
        self._republish = Effects()
        """Gate records owed after a restore (published with the next outputs, not persisted)."""
        self._next_sweep = 0
        self._watch = InputWatch(
            self._kinds, config.worker.heartbeat_interval_ms, self.metrics, clock()
        )
        """Per input partition: progress (heartbeats) and restarted offsets."""
        self._fetching: asyncio.Future[Fetched] | None = None
        """The loop's fetch in flight; ``stop()`` cancels it (a join may never finish)."""
        self.health = Health(clock, config.worker, self.metrics)
        self.started = asyncio.Event()
        """Set once the clients are connected and the loop is running."""
        self._register_state_gauges()

    # -- health ------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Liveness (see :mod:`worker.health`): a missing broker never fails it."""
        return self.health.alive

    @property
    def starting(self) -> bool:
        """No broker round trip completed yet (the startup state)."""
        return self.health.starting

    @property
    def ready(self) -> bool:
        """Assigned, restored, not stopping, a recent broker round trip, no commit overdue."""
        return (
            bool(self._assigned)
            and not self._restoring
            and not self._stopping.is_set()
            and self.health.talking
        )

    def stop(self) -> None:
        """Ask the loop to finish its batch, persist, commit and leave the group.

        A fetch in flight is cancelled at once: while a group join never
        completes, aiokafka's fetch waits for an assignment without a bound.
        """
        self._stopping.set()
        if self._fetching is not None:
            self._fetching.cancel()

    # -- lifecycle -----------------------------------------------------------------

    @property
    def shutdown_bound_s(self) -> float:
        """How long ``run()`` may take to return after ``stop()``, in every state."""
        request_s = self.config.kafka.request_timeout_ms / 1000
        return 2 * request_s + 2 * min(request_s, CLOSE_STEP_MAX_S)

    async def run(self) -> None:
        """Connect (retrying while the broker is absent), then loop until ``stop()``.

        ``stop()`` ends every state within :attr:`shutdown_bound_s`: connecting is
        cancelled at once; the loop gets two request timeouts to publish and
        persist what it applied, then is cancelled (a replay covers the rest);
        each client gets a bounded time to close.
        """
        try:
            if not await self._until_stopped(self._connect(), grace_s=0):
                return
            self.started.set()
            grace_s = 2 * self.config.kafka.request_timeout_ms / 1000
            await self._until_stopped(self._loop(), grace_s=grace_s)
        finally:
            await self._close()

    async def _until_stopped(self, work: Coroutine[Any, Any, T], grace_s: float) -> T | None:
        """``await work``, but once ``stop()`` is called give it ``grace_s``, then cancel it."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=grace_s)
            if not task.done():
                log.warning("shutdown: abandoning unfinished work", grace_s=grace_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return None
            return task.result()
        finally:
            stopping.cancel()
            task.cancel()  # no-op when done; run() itself was cancelled otherwise

    async def _connect(self) -> bool:
        kafka = self.config.kafka
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((KafkaError, OSError, asyncio.TimeoutError)),
            wait=wait_exponential(multiplier=0.5, max=RETRY_BACKOFF_MAX_MS / 1000),
            before_sleep=self._log_connect_retry,
        ):
            with attempt:
                self._tick()
                if self._stopping.is_set():
                    return False
                self._input_partitions = await check_topics(kafka, self.config.topics)
                await self._start_clients()
        self._mark_progress(commit=False)  # the topic check was a broker round trip
        log.info(
            "worker started",
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=kafka.group_id,
            security_protocol=kafka.security_protocol,
            sasl_mechanism=kafka.sasl_mechanism,  # never the credentials
        )
        return True

    def _log_connect_retry(self, state: Any) -> None:
        self._tick()  # retrying with a bounded backoff is alive, not stuck
        log.warning(
            "broker not reachable; retrying",
            bootstrap_servers=self.config.kafka.bootstrap_servers,
            attempt=state.attempt_number,
            error=repr(state.outcome.exception()) if state.outcome else None,
        )

    async def _start_clients(self) -> None:
        producer = AIOKafkaProducer(
            **self._client_kwargs,
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
        consumer.subscribe(list(self._kinds), listener=_Rebalance(self))
        self._producer, self._consumer = producer, consumer

    async def _close(self) -> None:
        """Stop the clients, each within a bound: a frozen broker must not hold shutdown."""
        for task in self._restoring.values():
            task.cancel()
        bound_s = min(self.config.kafka.request_timeout_ms / 1000, CLOSE_STEP_MAX_S)
        # The consumer leaves the group (unless static membership); the producer flushes.
        for name, client in (("consumer", self._consumer), ("producer", self._producer)):
            if client is None:
                continue
            try:
                async with asyncio.timeout(bound_s):
                    await client.stop()
            except (TimeoutError, KafkaError) as exc:
                log.warning("client did not close cleanly", client=name, error=repr(exc))
        log.info("worker stopped")

    # -- the loop ----------------------------------------------------------------

    async def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        worker_cfg = self.config.worker
        while not self._stopping.is_set():
            effects = Effects()
            deadletters: list[OutRecord] = []
            now = self.clock()
            self._apply_restores(now, effects)
            _log_halts(effects.halts, cause="restore")
            fetched = await self._fetch(consumer)
            batch = fetched.batch
            started = time.perf_counter()
            now = self.clock()
            offsets = self._apply_batch(batch, now, effects, deadletters)
            self._skip_unreadable(fetched.unreadable, offsets, deadletters)
            self._watch.observe(
                consumer, self._assigned, self.engine, self._partition_of, offsets=offsets, now=now
            )
            self.health.forgive(self._assigned)
            if now >= self._next_sweep:
                halts_before = len(effects.halts)
                self.engine.sweep(now, effects)
                _log_halts(effects.halts[halts_before:], cause="sweep")
                self._next_sweep = now + worker_cfg.sweep_interval_ms
            heartbeat = await self._watch.heartbeat_bots(
                consumer, self.engine, self._partition_of, now
            )
            if not await self._publish_outputs(effects, deadletters, heartbeat, now):
                return
            self._unpersisted.dirty_symbols |= effects.dirty_symbols
            self._unpersisted.dirty_bots |= effects.dirty_bots
            self._uncommitted.update(offsets)
            self.health.owe(offsets, now)
            if self._persist_due(now) and not await self._persist(now):
                return
            if self._flush_requested.is_set():
                self._flushed.set()
            if batch:
                self._mark_progress(commit=False)  # records came from the broker
                self.metrics.batch_size.observe(sum(len(r) for r in batch.values()))
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
            elif now - (self.health.last_round_trip_ms or 0) >= worker_cfg.sweep_interval_ms:
                await self._probe_broker()
            self._update_gauges(batch)
            self._tick()
        await self._persist(self.clock())  # shutdown: everything applied is persisted

    async def _fetch(self, consumer: AIOKafkaConsumer) -> Fetched:
        """One bounded fetch; empty when it times out or ``stop()`` cancels it.

        aiokafka's ``getmany`` waits without a bound while the group is
        (re)joining; the bound keeps the loop ticking (alive, not ready).
        """
        cfg = self.config
        self._fetching = asyncio.ensure_future(
            fetch(consumer, cfg.worker.poll_timeout_ms, cfg.worker.max_batch_records)
        )
        bound_s = (cfg.worker.poll_timeout_ms + cfg.kafka.request_timeout_ms) / 1000
        try:
            async with asyncio.timeout(bound_s):
                return await self._fetching
        except (TimeoutError, asyncio.CancelledError):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the loop itself is cancelled, not just this fetch
            return Fetched({}, [])
        except KafkaError as exc:
            # Per-partition fetch errors are retried inside aiokafka; what reaches
            # us here (authorization, a reset refused) is logged and re-fetched.
            log.warning("fetch failed", error=repr(exc))
            return Fetched({}, [])
        finally:
            self._fetching = None

    def _persist_due(self, now: int) -> bool:
        pending = self._unpersisted
        if not (pending.dirty_symbols or pending.dirty_bots or self._uncommitted):
            return False
        return (
            now >= self._next_persist
            or self._flush_requested.is_set()
            or len(pending.dirty_symbols) >= self.config.worker.max_unpersisted_keys
        )

    def _apply_batch(
        self,
        batch: dict[TopicPartition, list[Any]],
        now: int,
        effects: Effects,
        deadletters: list[OutRecord],
    ) -> dict[TopicPartition, int]:
        """Apply every record; whatever goes wrong with one record is that record's dead letter.

        Rejected input carries its reason; any other exception (input nobody
        foresaw, or a bug) is contained the same way under ``unprocessable`` and
        logged with its traceback, so one record can never stop the loop and be
        met again by every next owner.
        """
        engine = self.engine
        max_bytes = self.config.worker.max_message_bytes
        partition_of = self._partition_of
        counter = self.metrics.events
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            kind = self._kinds[tp.topic]
            source = f"{tp.topic}/{tp.partition}"
            applied = 0
            skipped_before = effects.skipped
            for record in records:
                event: Event | None = None
                try:
                    event = decode_input(kind, record.key, record.value, max_bytes)
                    self._check_home(event, tp)
                    halts_before = len(effects.halts)
                    engine.apply(
                        event,
                        now,
                        Origin(source, record.offset),
                        effects,
                        record_ts=record.timestamp,
                    )
                except Rejected as exc:
                    deadletters.append(self._deadletter(tp, record, exc.reason, str(exc), event))
                    continue
                except Exception as exc:  # contained to this record, see above
                    log.exception(
                        "input record could not be processed",
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=record.offset,
                    )
                    message = f"{type(exc).__name__}: {exc}"
                    deadletters.append(
                        self._deadletter(tp, record, "unprocessable", message, event)
                    )
                    continue
                if len(effects.halts) > halts_before:
                    _log_halts(
                        effects.halts[halts_before:],
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=record.offset,
                    )
                partition_of[event.bot] = tp.partition
                applied += 1
            skipped = effects.skipped - skipped_before
            counter.labels(tp.topic, "applied").inc(applied - skipped)
            if skipped:
                counter.labels(tp.topic, "skipped").inc(skipped)
            if len(records) > applied:
                counter.labels(tp.topic, "deadletter").inc(len(records) - applied)
            offsets[tp] = records[-1].offset + 1
        return offsets

    def _check_home(self, event: Event, tp: TopicPartition) -> None:
        """A bot's events are accepted only on its home partition number (see ``home_partition``).

        Anywhere else its state would be held twice - by two owners, or twice
        in the snapshots - and a restore would keep whichever copy it read last.
        """
        if not self._input_partitions:
            return
        home = home_partition(event.bot.encode(), self._input_partitions)
        if tp.partition != home:
            raise Rejected(
                "bot_partition_mismatch",
                f"bot {event.bot!r} belongs on partition {home} (murmur2 of its key over "
                f"{self._input_partitions} partitions), not {tp.partition}: producers must use "
                f"the murmur2 partitioner (librdkafka: partitioner=murmur2_random)",
            )

    def _skip_unreadable(
        self,
        unreadable: list[Unreadable],
        offsets: dict[TopicPartition, int],
        deadletters: list[OutRecord],
    ) -> None:
        """Records the client could not decode were skipped; dead-letter where they are."""
        for bad in unreadable:
            deadletters.append(
                self._deadletter(
                    bad.tp, None, "undecodable_record", bad.error, None, offset=bad.offset
                )
            )
            self.metrics.events.labels(bad.tp.topic, "deadletter").inc()
            offsets[bad.tp] = max(offsets.get(bad.tp, 0), bad.offset + 1)

    def _deadletter(
        self,
        tp: TopicPartition,
        record: Any | None,
        reason: str,
        message: str,
        event: Event | None,
        *,
        offset: int | None = None,
    ) -> OutRecord:
        """The dead letter of ``record`` (None: undecodable, only its ``offset`` is known).

        Never raises: a record is dead-lettered because it is unusual, so its
        dead letter must not depend on it being usual.
        """
        self.metrics.deadletters.labels(reason).inc()
        key: bytes | None = record.key if record is not None else None
        where = record.offset if record is not None else offset
        log.warning(
            "dead-lettered input",
            # What is known of the event: decoded fields, else the key (the bot id
            # by contract), shortened - it is untrusted input.
            bot=event.bot if event is not None else _printable(key),
            symbol=event.symbol if event is not None else None,
            topic=tp.topic,
            partition=tp.partition,
            offset=where,
            reason=reason,
            error=message[:1024],
        )
        fields: dict[str, Any] = {
            "source_topic": tp.topic,
            "partition": tp.partition,
            "offset": where if where is not None else -1,
            "error_class": reason,
            "message": message,
        }
        try:
            letter = deadletter_record(
                self.config.topics,
                key=key,
                value=record.value if record is not None else None,
                headers=list(record.headers or ()) if record is not None else [],
                **fields,
            )
        except Exception as exc:  # keep the error headers, drop the original
            fields["message"] = f"{message}; original record dropped: {exc!r}"
            letter = deadletter_record(
                self.config.topics, key=None, value=None, headers=[], **fields
            )
        if letter.key is None and letter.value is None:
            # Producers refuse a record with neither (aiokafka asserts): the retry
            # would stop the loop. An empty value, and a header saying it was null.
            headers = [*(letter.headers or ()), ("riskgate.errors.value.null", b"true")]
            letter = letter._replace(value=b"", headers=headers)
        return letter

    # -- publishing ----------------------------------------------------------------

    async def _publish_outputs(
        self, effects: Effects, deadletters: list[OutRecord], heartbeat: list[str], now: int
    ) -> bool:
        """Phase 1, every batch: halts, decisions, gate states, dead letters — acknowledged.

        False if the worker is stopping before the broker took them.
        """
        topics = self.config.topics
        outputs = output_records(self.engine, effects, topics, now)
        republish, self._republish = self._republish, Effects()
        republish.dirty_symbols -= effects.dirty_symbols
        republish.dirty_bots -= effects.dirty_bots
        outputs.extend(output_records(self.engine, republish, topics, now))
        outputs.extend(deadletters)
        outputs.extend(heartbeat_records(self.engine, heartbeat, topics, now))
        for halt in effects.halts:
            self.metrics.halts.labels(halt.gate, halt.kind).inc()
        for decision in effects.decisions:
            self.metrics.decisions.labels(decision.gate or "none").inc()
        return await self._send_acked(outputs, self.metrics.output_seconds)

    async def _persist(self, now: int) -> bool:
        """Phase 2, every ``commit_interval_ms``: snapshots of changed keys, then commit.

        Every output reflecting the persisted state went out in an earlier,
        acknowledged phase 1, so a crash after this point never loses one.
        """
        snapshots = snapshot_records(
            self.engine, self._unpersisted, self.config.topics, self._partition_of, self._epochs
        )
        # Our claim on a partition goes just ahead of our first snapshot there.
        written = {r.partition for r in snapshots if r.partition in self._claims}
        snapshots[:0] = [self._claims.pop(p) for p in sorted(written)]
        offsets = self._uncommitted
        self._unpersisted = Effects()
        self._uncommitted = {}
        self._next_persist = now + self.config.worker.commit_interval_ms
        if not await self._send_acked(snapshots, self.metrics.snapshot_seconds):
            return False
        self.metrics.snapshot_writes.inc(len(snapshots))
        if offsets:
            await self._commit(offsets)
        return True

    async def _send_acked(self, records: list[OutRecord], timer: Any) -> bool:
        """Send and wait for every ack, retrying the whole set on broker errors.

        An error about the records themselves (too large, refused by policy or
        ACL) can never succeed: retrying it would wedge every bot of this worker
        forever, so it stops the worker with :class:`PublishRefused` instead.
        """
        if not records:
            return True
        producer = self._producer
        assert producer is not None
        started = time.perf_counter()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retriable_send_error),
            wait=wait_exponential(multiplier=0.2, max=5),
            before_sleep=self._log_send_retry,
        ):
            with attempt:
                if self._stopping.is_set() and attempt.retry_state.attempt_number > 1:
                    return False
                await _send_all(producer, records)
        timer.observe(time.perf_counter() - started)
        return True

    def _log_send_retry(self, state: Any) -> None:
        self._tick()  # a bounded retry is alive (liveness), however long the broker is away
        self.metrics.send_retries.inc()
        error = state.outcome.exception() if state.outcome else None
        log.warning("publishing failed; retrying", attempt=state.attempt_number, error=repr(error))

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        # Owned *and restored* now (P3): offsets taken before a revoke whose persist
        # timed out must not commit even if the partition has come back since.
        owned = {tp: o for tp, o in offsets.items() if tp in self._restored}
        if not owned:
            return
        started = time.perf_counter()
        self._tick()
        try:
            # Bounded: aiokafka waits forever for an unknown group coordinator.
            async with asyncio.timeout(self.config.kafka.request_timeout_ms / 1000):
                await consumer.commit(owned)
        except (KafkaError, TimeoutError) as exc:
            # Nothing is lost: the next commit covers these offsets, or a new
            # owner replays them and the watermarks drop what was applied.
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed", error=repr(exc))
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self._mark_progress(commit=True)

    async def _probe_broker(self) -> None:
        """An idle loop still proves the broker answers (readiness); never counts as a commit."""
        consumer = self._consumer
        assert consumer is not None
        try:
            async with asyncio.timeout(self.config.kafka.request_timeout_ms / 1000):
                await consumer.topics()
        except (KafkaError, TimeoutError) as exc:
            log.warning("broker probe failed", error=repr(exc))
            return
        self._mark_progress(commit=False)

    def _mark_progress(self, *, commit: bool) -> None:
        """A broker round trip succeeded; ``commit``: a successful offset commit.

        A commit pays what was owed when it was taken; offsets applied since
        (none, while the loop awaits its own persist) stay owed.
        """
        self.health.round_trip(commit=commit, still_owed=self._uncommitted)

    def _tick(self) -> None:
        """The loop (or a bounded wait on its path) is alive: what liveness checks."""
        self.health.tick()

    def _update_gauges(self, batch: dict[TopicPartition, list[Any]]) -> None:
        consumer = self._consumer
        assert consumer is not None
        for tp, records in batch.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag = highwater - records[-1].offset - 1
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)

    def _register_state_gauges(self) -> None:
        """State gauges are computed when scraped, so they are never a loop iteration stale."""
        m = self.metrics
        bots = self.engine.bots
        m.bots.set_function(lambda: len(bots))
        m.symbols.set_function(lambda: sum(len(b.symbols) for b in bots.values()))
        m.reservations.set_function(
            lambda: sum(len(b.portfolio.reservations) for b in bots.values())
        )
        m.assigned_partitions.set_function(lambda: len({tp.partition for tp in self._assigned}))
        m.ready.set_function(lambda: 1 if self.ready else 0)
        m.started.set_function(lambda: 0 if self.starting else 1)

    # -- rebalance ---------------------------------------------------------------

    def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        new = set(assigned) - self._assigned
        self._assigned |= new
        partitions = frozenset(tp.partition for tp in new)
        if not partitions:
            return
        consumer.pause(*new)
        log.info("partitions assigned; restoring", partitions=sorted(partitions))
        self._restoring[partitions] = asyncio.create_task(
            read_snapshot_partitions(self._client_kwargs, self.config.topics.snapshots, partitions)
        )

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        if revoked and self.started.is_set():
            # Our last snapshots must be on the topic before a new owner reads it:
            # ask the loop to persist at the end of its iteration. Bounded, and the
            # loop never waits on us, so this cannot deadlock.
            self._flushed.clear()
            self._flush_requested.set()
            try:
                async with asyncio.timeout(self.config.kafka.max_poll_interval_ms / 2000):
                    await self._flushed.wait()
            except TimeoutError:
                log.warning("revoke: persist still pending; the new owner will replay")
            finally:
                self._flush_requested.clear()
        self._assigned -= revoked
        self._restored -= revoked
        for tp in revoked:
            # If the persist above timed out, the state behind these offsets is about
            # to be forgotten unpersisted: never commit them, even if the partition
            # comes back to us in the next assignment.
            self._uncommitted.pop(tp, None)
            # Its new owner reports this lag now: a series left here would be stale,
            # counted twice in a sum, and could keep a lag alert firing forever.
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        partitions = {tp.partition for tp in revoked}
        for key, task in list(self._restoring.items()):
            if key & partitions:
                task.cancel()
                del self._restoring[key]
        for partition in partitions:
            self._epochs.pop(partition, None)
        gone = {bot for bot, p in self._partition_of.items() if p in partitions}
        self.engine.forget(gone)
        for bot in gone:
            del self._partition_of[bot]
        log.info("partitions revoked", partitions=sorted(partitions), bots=len(gone))

    def _apply_restores(self, now: int, effects: Effects) -> None:
        consumer = self._consumer
        assert consumer is not None
        for key, task in list(self._restoring.items()):
            if not task.done():
                continue
            del self._restoring[key]
            owned = {tp for tp in self._assigned if tp.partition in key}
            if task.cancelled() or not owned:
                continue
            error = task.exception()
            if error is not None:
                log.warning("restore failed; retrying", partitions=sorted(key), error=repr(error))
                self._restoring[key] = asyncio.create_task(
                    read_snapshot_partitions(self._client_kwargs, self.config.topics.snapshots, key)
                )
                continue
            self._restore_into_engine(task.result(), now, effects)
            for tp in owned:
                # Applied before a revoke and reassignment (the partition was paused
                # since): their state was forgotten, never commit them (P3).
                self._uncommitted.pop(tp, None)
            self._restored |= owned
            consumer.resume(*owned)

    def _restore_into_engine(self, read: SnapshotRead, now: int, effects: Effects) -> None:
        """Restore, take the next owner epoch, and owe the gate record of every bot held.

        Gate records are republished because the gates topic may have lost them
        (recreated, truncated) and a reader must never take a missing record for
        "allowed"; every configured bot homed on these partitions gets its
        account record even before it sends anything, so a silent bot is not
        denied forever as unknown.
        """
        for bot, partition in read.bot_partitions.items():
            self._partition_of.setdefault(bot, partition)
        topics = self.config.topics
        for partition in read.partitions:
            epoch = self._epochs[partition] = read.epochs.get(partition, 0) + 1
            self._claims[partition] = claim_record(topics, partition, epoch)
        ignored = self.engine.restore(read.records, now, effects)
        if read.fenced:
            log.warning(
                "ignored snapshots of a previous owner written after a newer one (zombie writer)",
                partitions=sorted(read.partitions),
                keys=len(read.fenced),
            )
            self._rewrite(read.fenced)
        for key, why in ignored:
            log.warning("ignoring snapshot", key=key, reason=why)
        self._adopt_configured_bots(read.partitions, now)
        republish = self._republish
        for bot_id, partition in self._partition_of.items():
            held = self.engine.bots.get(bot_id)
            if partition in read.partitions and held is not None:
                republish.dirty_bots.add(bot_id)
                republish.dirty_symbols.update((bot_id, symbol) for symbol in held.symbols)
        m = self.metrics
        m.restore_seconds.observe(read.seconds)
        # Keys, not records read: a key written many times (or a claim) restores once;
        # a tombstone restores nothing. "fenced": the zombie records the epoch fence
        # left out, never among the restored (findings E1-2).
        values = sum(value is not None for value in read.records.values())
        m.restore_records.labels("restored").inc(values - len(ignored))
        m.restore_records.labels("ignored").inc(len(ignored))
        if read.fenced_records:
            m.restore_records.labels("fenced").inc(read.fenced_records)
        log.info(
            "restored",
            partitions=sorted(read.partitions),
            records=read.read,
            keys=len(read.records),
            ignored=len(ignored),
            seconds=round(read.seconds, 3),
        )

    def _rewrite(self, keys: Iterable[str]) -> None:
        """Persist these keys again under our epoch, so compaction drops the zombie's records."""
        bots = self.engine.bots
        for key in keys:
            chunk = parse_chunk_key(key)
            if chunk is not None:
                # Chunks are immutable: the bot's windows are written afresh, under new numbers.
                held = bots.get(chunk[0])
                if held is not None:
                    held.renumber_id_logs()
                    self._unpersisted.dirty_bots.add(chunk[0])
                continue
            with contextlib.suppress(SnapshotError):
                bot_id, symbol = parse_key(key)
                held = bots.get(bot_id)
                if held is None:
                    continue
                if symbol is None:
                    self._unpersisted.dirty_bots.add(bot_id)
                elif symbol in held.symbols:
                    self._unpersisted.dirty_symbols.add((bot_id, symbol))

    def _adopt_configured_bots(self, partitions: frozenset[int], now: int) -> None:
        """Hold every configured bot whose home (murmur2 of its id) is one of ``partitions``."""
        count = self._input_partitions
        if not count:
            return
        for bot_id in self.config.bots:
            if bot_id in self._partition_of:
                continue
            home = home_partition(bot_id.encode(), count)
            if home in partitions:
                try:
                    self.engine.bot(bot_id, now)
                except Rejected as exc:
                    log.warning("configured bot not held", bot=bot_id, error=str(exc))
                    continue
                self._partition_of[bot_id] = home
