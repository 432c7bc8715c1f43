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
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from worker.config import Config
from worker.engine import Effects, Origin, Rejected, RiskEngine
from worker.inbound import InputKind, decode_input
from worker.kafka.options import client_kwargs
from worker.kafka.records import (
    OutRecord,
    deadletter_record,
    heartbeat_records,
    output_records,
    snapshot_records,
)
from worker.kafka.restore import SnapshotRead, read_snapshot_partitions
from worker.kafka.topics import check_topics
from worker.messages import Event, HaltEvent
from worker.metrics import Metrics

Clock = Callable[[], int]
"""Wall clock in epoch milliseconds; injected so tests can move time."""

log = structlog.get_logger("riskgate.worker")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _printable(key: bytes | None, limit: int = 64) -> str | None:
    return None if key is None else key[:limit].decode("utf-8", "replace")


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
        self._next_sweep = 0
        self._next_heartbeat = 0
        self._last_commit_ms = 0
        self._last_progress_ms = clock()
        self.started = asyncio.Event()
        """Set once the clients are connected and the loop is running."""
        self._register_state_gauges()

    # -- health ------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """The loop completed a broker round trip recently (aiokafka can wedge silently)."""
        return self.clock() - self._last_progress_ms < self.config.worker.stuck_after_ms

    @property
    def ready(self) -> bool:
        return (
            bool(self._assigned)
            and not self._restoring
            and not self._stopping.is_set()
            and self.clock() - self._last_commit_ms < self.config.worker.ready_commit_max_age_ms
        )

    def stop(self) -> None:
        """Ask the loop to finish its batch, persist, commit and leave the group."""
        self._stopping.set()

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        """Connect (retrying while the broker is absent), then loop until ``stop()``."""
        if not await self._connect():
            return
        self.started.set()
        try:
            await self._loop()
        finally:
            await self._close()

    async def _connect(self) -> bool:
        kafka = self.config.kafka
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((KafkaError, OSError, asyncio.TimeoutError)),
            wait=wait_exponential(multiplier=0.5, max=10),
            before_sleep=lambda state: log.warning(
                "broker not reachable; retrying",
                bootstrap_servers=kafka.bootstrap_servers,
                attempt=state.attempt_number,
                error=repr(state.outcome.exception()) if state.outcome else None,
            ),
        ):
            with attempt:
                if self._stopping.is_set():
                    return False
                await check_topics(kafka, self.config.topics)
                await self._start_clients()
        log.info(
            "worker started",
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=kafka.group_id,
            security_protocol=kafka.security_protocol,
            sasl_mechanism=kafka.sasl_mechanism,  # never the credentials
        )
        return True

    async def _start_clients(self) -> None:
        kafka = self.config.kafka
        producer = AIOKafkaProducer(
            **self._client_kwargs,
            acks="all",
            linger_ms=0,
            max_batch_size=1024 * 1024,
            enable_idempotence=False,  # unsupported by Tansu; replay safety does not need it
        )
        consumer = AIOKafkaConsumer(
            **self._client_kwargs,
            group_id=kafka.group_id,
            group_instance_id=kafka.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_interval_ms=kafka.max_poll_interval_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            # Range assignment gives one member the same partition number of every
            # input topic: all of a bot's events, whatever the topic, meet in one worker.
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
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
        for task in self._restoring.values():
            task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group (unless static membership)
        if self._producer is not None:
            await self._producer.stop()  # flushes
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
            batch = await consumer.getmany(
                timeout_ms=worker_cfg.poll_timeout_ms, max_records=worker_cfg.max_batch_records
            )
            started = time.perf_counter()
            now = self.clock()
            offsets = self._apply_batch(batch, now, effects, deadletters)
            heartbeat: list[str] = []
            if now >= self._next_sweep:
                halts_before = len(effects.halts)
                self.engine.sweep(now, effects)
                _log_halts(effects.halts[halts_before:], cause="sweep")
                self._next_sweep = now + worker_cfg.sweep_interval_ms
            if now >= self._next_heartbeat:
                heartbeat = list(self.engine.bots)
                self._next_heartbeat = now + worker_cfg.heartbeat_interval_ms
            if not await self._publish_outputs(effects, deadletters, heartbeat, now):
                return
            self._unpersisted.dirty_symbols |= effects.dirty_symbols
            self._unpersisted.dirty_bots |= effects.dirty_bots
            self._uncommitted.update(offsets)
            if self._persist_due(now) and not await self._persist(now):
                return
            if self._flush_requested.is_set():
                self._flushed.set()
            if batch:
                self.metrics.batch_size.observe(sum(len(r) for r in batch.values()))
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
            elif now - self._last_commit_ms >= worker_cfg.sweep_interval_ms:
                await self._probe_broker()
            self._update_gauges(batch)
        await self._persist(self.clock())  # shutdown: everything applied is persisted

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
                    halts_before = len(effects.halts)
                    engine.apply(event, now, Origin(source, record.offset), effects)
                except Rejected as exc:
                    deadletters.append(self._deadletter(tp, record, exc, event))
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

    def _deadletter(
        self, tp: TopicPartition, record: Any, exc: Rejected, event: Event | None
    ) -> OutRecord:
        self.metrics.deadletters.labels(exc.reason).inc()
        key: bytes | None = record.key
        log.warning(
            "dead-lettered input",
            # What is known of the event: decoded fields, else the key (the bot id
            # by contract), shortened - it is untrusted input.
            bot=event.bot if event is not None else _printable(key),
            symbol=event.symbol if event is not None else None,
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
            reason=exc.reason,
            error=str(exc),
        )
        return deadletter_record(
            self.config.topics,
            source_topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=list(record.headers or ()),
            error_class=exc.reason,
            message=str(exc),
        )

    # -- publishing ----------------------------------------------------------------

    async def _publish_outputs(
        self, effects: Effects, deadletters: list[OutRecord], heartbeat: list[str], now: int
    ) -> bool:
        """Phase 1, every batch: halts, decisions, gate states, dead letters — acknowledged.

        False if the worker is stopping before the broker took them.
        """
        topics = self.config.topics
        outputs = output_records(self.engine, effects, topics, now)
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
            self.engine, self._unpersisted, self.config.topics, self._partition_of
        )
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
        """Send and wait for every ack, retrying the whole set on broker errors."""
        if not records:
            return True
        producer = self._producer
        assert producer is not None
        started = time.perf_counter()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((KafkaError, asyncio.TimeoutError)),
            wait=wait_exponential(multiplier=0.2, max=5),
            before_sleep=self._log_send_retry,
        ):
            with attempt:
                if self._stopping.is_set() and attempt.retry_state.attempt_number > 1:
                    return False
                futures = [
                    await producer.send(
                        r.topic, r.value, key=r.key, partition=r.partition, headers=r.headers
                    )
                    for r in records
                ]
                await asyncio.gather(*futures)
        timer.observe(time.perf_counter() - started)
        return True

    def _log_send_retry(self, state: Any) -> None:
        self.metrics.send_retries.inc()
        error = state.outcome.exception() if state.outcome else None
        log.warning("publishing failed; retrying", attempt=state.attempt_number, error=repr(error))

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        owned = {tp: o for tp, o in offsets.items() if tp in self._assigned}
        if not owned:
            return
        started = time.perf_counter()
        try:
            await consumer.commit(owned)
        except KafkaError as exc:
            # Nothing is lost: the next commit covers these offsets, or a new
            # owner replays them and the watermarks drop what was applied.
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed", error=repr(exc))
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self._mark_progress(commit=True)

    async def _probe_broker(self) -> None:
        """An idle loop still proves the broker answers (for /healthz and /readyz)."""
        consumer = self._consumer
        assert consumer is not None
        try:
            async with asyncio.timeout(self.config.kafka.request_timeout_ms / 1000):
                await consumer.topics()
        except (KafkaError, TimeoutError) as exc:
            log.warning("broker probe failed", error=repr(exc))
            return
        self._mark_progress(commit=True)

    def _mark_progress(self, *, commit: bool) -> None:
        now = self.clock()
        self._last_progress_ms = now
        if commit:
            self._last_commit_ms = now
        self.metrics.last_progress.set(now / 1000)

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
            consumer.resume(*owned)

    def _restore_into_engine(self, read: SnapshotRead, now: int, effects: Effects) -> None:
        for bot, partition in read.bot_partitions.items():
            self._partition_of.setdefault(bot, partition)
        ignored = self.engine.restore(read.records, now, effects)
        for key, why in ignored:
            log.warning("ignoring snapshot", key=key, reason=why)
        m = self.metrics
        m.restore_seconds.observe(read.seconds)
        m.restore_records.labels("restored").inc(read.read - len(ignored))
        m.restore_records.labels("ignored").inc(len(ignored))
        log.info(
            "restored",
            partitions=sorted(read.partitions),
            records=read.read,
            keys=len(read.records),
            ignored=len(ignored),
            seconds=round(read.seconds, 3),
        )
