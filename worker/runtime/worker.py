"""The worker: one poll loop around the pure engine, pipelined against the broker.

Each iteration: apply finished restores, fetch a batch, apply it, sweep on
cadence, and *send* the batch's outputs (halts, decisions, gate states, dead
letters) without waiting for their acks; the next iteration fetches and
applies the next batch while they are in flight. The
:class:`~worker.runtime.checkpoint.Checkpoint` carries each batch from send to
commit: at most ``max_in_flight`` batches unconfirmed, and every
``commit_interval_ms`` a persist that builds the changed keys' snapshots at
once and, in the background, waits for the outputs in flight, sends the
snapshots and commits the input offsets once those are acknowledged (the next
fetch does not wait for any of it). A crash anywhere replays from the
last commit; per-key offset watermarks in the snapshots make the replay exact,
and outputs are always acknowledged before the state that produced them is
persisted, so none is lost.

Rebalances never wait on a lock: a revoke asks the loop to persist at the end
of its iteration and waits (bounded) for that, so a new owner restoring after
us sees every snapshot we wrote; an assignment pauses just the new partitions
while their snapshot partitions are read in the background
(:mod:`~worker.runtime.ownership`, :mod:`~worker.runtime.recovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

import structlog
from aiokafka import TopicPartition

from worker.clock import wall_clock_ms
from worker.config import Config
from worker.core import Effects, RiskEngine
from worker.health import Health
from worker.inbound import input_kinds
from worker.kafka.records import OutRecord
from worker.kafka.watch import InputWatch
from worker.metrics import Metrics
from worker.runtime.batch import BatchApplier, log_halts
from worker.runtime.checkpoint import Checkpoint, Offsets, Writes
from worker.runtime.gauges import register_state_gauges, update_lag
from worker.runtime.lifecycle import CLOSE_STEP_MAX_S, until_stopped
from worker.runtime.link import BrokerLink
from worker.runtime.marks import MarkFeed
from worker.runtime.ownership import Ownership
from worker.runtime.publish import Publisher
from worker.runtime.recovery import Recovery
from worker.runtime.transport import Consumer, KafkaTransport, Transport

Clock = Callable[[], int]
"""Wall clock in epoch milliseconds; injected so tests can move time."""

log = structlog.get_logger("riskgate.worker")


class Worker:
    """``riskgate run``: consume, apply, publish, persist, commit — until stopped."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = wall_clock_ms,
        metrics: Metrics | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = m = metrics or Metrics()
        self.engine = RiskEngine(config)
        self.transport = transport or KafkaTransport(config)
        kinds = input_kinds(config.topics)
        self._stopping = asyncio.Event()
        self.health = Health(clock, config.worker, m)
        self.ownership = Ownership(config.topics, self.transport.read_snapshots)
        self.checkpoint = Checkpoint(config.worker)
        self._publisher = p = Publisher(
            config, self.engine, self.ownership, m, tick=self.health.tick, stopping=self._stopping
        )
        self._writes = Writes(p.confirm, p.snapshots, p.send_snapshots, self._commit)
        """What a persist sends and commits (phase 2)."""
        self._link = BrokerLink(
            config,
            transport=self.transport,
            health=self.health,
            metrics=m,
            checkpoint=self.checkpoint,
            publisher=self._publisher,
        )
        self._recovery = Recovery(config, self.engine, self.ownership, m)
        self._applier = BatchApplier(config, self.engine, self.ownership, m, kinds)
        self._watch = InputWatch(kinds, config.worker.heartbeat_interval_ms, m, clock())
        """Per input partition: progress (heartbeats) and restarted offsets."""
        self._marks = MarkFeed(
            self.transport.marks_source(),
            config.worker.max_future_skew_ms,
            max_message_bytes=config.worker.max_message_bytes,
            metrics=m,
        )
        """Every mark, read outside the group; applied at the start of each iteration."""
        self._next_sweep = 0
        self.started = asyncio.Event()
        """Set once the clients are connected and the loop is running."""
        self._kinds = kinds
        register_state_gauges(
            m, self.engine, self.ownership, lambda: self.ready, lambda: self.starting
        )

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
        own = self.ownership
        return (
            bool(own.assigned)
            and self._marks.restored
            and not own.restoring
            # Read is not applied: restore_async suspends between parts.
            and not self._recovery.applying.locked()
            and not self._stopping.is_set()
            and self.health.talking
        )

    # -- lifecycle -----------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, persist, commit and leave the group.

        A fetch in flight is cancelled at once: while a group join never
        completes, aiokafka's fetch waits for an assignment without a bound.
        """
        self._stopping.set()
        self._link.cancel_fetch()

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
            connecting = self._link.connect(list(self._kinds), self, self._stopping)
            connection = await until_stopped(connecting, self._stopping, grace_s=0)
            if connection is None:
                return
            self.ownership.input_partitions = connection.input_partitions
            # The mark table before any input: a decision never meets a bot whose
            # positions the topic could already value (issue 11, "restored before ready").
            await until_stopped(self._marks.restore(), self._stopping, grace_s=0)
            self.started.set()
            grace_s = 2 * self.config.kafka.request_timeout_ms / 1000
            await until_stopped(self._loop(), self._stopping, grace_s=grace_s)
        finally:
            self.checkpoint.abandon()
            self.ownership.cancel_restores()
            await self._marks.close()
            await self._link.close()
            log.info("worker stopped")

    # -- the loop ----------------------------------------------------------------

    async def _loop(self) -> None:
        consumer = self._link.consumer
        assert consumer is not None
        worker_cfg = self.config.worker
        checkpoint, ownership = self.checkpoint, self.ownership
        while not self._stopping.is_set():
            effects = Effects()
            deadletters: list[OutRecord] = []
            now = self.clock()
            for mark in self._marks.drain():
                self.engine.apply_mark(mark, effects)
            await self._apply_restores(consumer, now, effects)
            log_halts(effects.halts, cause="restore")
            fetched = await self._link.fetch()
            batch = fetched.batch
            started = time.perf_counter()
            now = self.clock()
            offsets = self._applier.apply(batch, now, effects, deadletters)
            self._applier.skip_unreadable(fetched.unreadable, offsets, deadletters)
            self._watch.observe(
                consumer,
                ownership.assigned,
                self.engine,
                ownership.partition_of,
                offsets=offsets,
                now=now,
            )
            self.health.forgive(ownership.assigned)
            if now >= self._next_sweep:
                halts_before = len(effects.halts)
                self.engine.sweep(now, effects)
                log_halts(effects.halts[halts_before:], cause="sweep")
                self._next_sweep = now + worker_cfg.sweep_interval_ms
            heartbeat = await self._watch.heartbeat_bots(
                consumer, self.engine, ownership.partition_of, now
            )
            sending = await self._publisher.send_outputs(effects, deadletters, heartbeat, now)
            checkpoint.sent(sending, effects, offsets)
            self.health.owe(offsets, now)
            if not await self._checkpoint(now):
                return
            checkpoint.iteration_done()
            if batch:
                self._link.round_trip(commit=False)  # records came from the broker
                self.metrics.batch_size.observe(sum(len(r) for r in batch.values()))
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
            elif now - (self.health.last_round_trip_ms or 0) >= worker_cfg.sweep_interval_ms:
                await self._link.probe()
            update_lag(self.metrics, consumer, batch)
            self.health.tick()
        # Shutdown: everything applied is persisted and committed.
        if await checkpoint.persist(self.clock(), self._writes):
            await checkpoint.persisted(self._publisher.confirm)

    async def _checkpoint(self, now: int) -> bool:
        """At most ``max_in_flight`` batches unconfirmed; persist when due; all on a flush.

        False once a confirm or persist gave up (stopping): nothing more commits.
        """
        checkpoint, confirm = self.checkpoint, self._publisher.confirm
        if checkpoint.persist_failed():
            return False
        if not await checkpoint.settle(confirm, checkpoint.max_in_flight):
            return False
        if checkpoint.due(now) and not await checkpoint.persist(now, self._writes):
            return False
        # A revoke waits until the new owner can restore everything we applied.
        return not checkpoint.flushing or await checkpoint.persisted(confirm)

    async def _commit(self, offsets: Offsets) -> None:
        await self._link.commit(self.ownership.committable(offsets))

    # -- rebalance (the transport calls these) -------------------------------------

    def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """The group assigned partitions: pause the new ones until their restore is applied."""
        consumer = self._link.consumer
        assert consumer is not None
        new = self.ownership.assign(assigned)
        if new:
            consumer.pause(*new)

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """The group takes partitions away: persist first (bounded), then forget their bots.

        The forgetting waits for a restore the loop is applying (``Recovery.applying``):
        ``restore_async`` suspends between parts, and a part applied after the forget
        would re-create forgotten bots, and its end would mark the revoked partitions
        restored (their offsets committable, P3). Waiting is the simplest correct
        order: the restore ends whole, then its bots are forgotten like any others,
        with no half-built state to undo. It costs this callback at most one restore
        (~1 s of CPU for 100k symbols), which the synchronous restore made every revoke
        wait anyway; and after a flush that succeeded it costs nothing, as the flush
        already waits for the end of the loop's iteration, restore included.
        """
        revoked = set(revoked)
        if revoked and self.started.is_set():
            # Our last snapshots must be on the topic before a new owner reads it.
            timeout_s = self.config.kafka.max_poll_interval_ms / 2000
            if not await self.checkpoint.flush(timeout_s):
                log.warning("revoke: persist still pending; the new owner will replay")
        async with self._recovery.applying:
            # If the persist above timed out, the state behind these offsets is about to
            # be forgotten unpersisted: never commit them, even if the partition comes
            # back to us in the next assignment.
            self.checkpoint.forget(revoked)
            for tp in revoked:
                # Its new owner reports this lag now: a series left here would be stale,
                # counted twice in a sum, and could keep a lag alert firing forever.
                with contextlib.suppress(KeyError):
                    self.metrics.lag.remove(tp.topic, str(tp.partition))
            self.engine.forget(self.ownership.revoke(revoked))

    async def _apply_restores(self, consumer: Consumer, now: int, effects: Effects) -> None:
        """Apply every finished read, letting the event loop run between parts (health,
        marks, heartbeats and rebalance callbacks go on during a large restore); a revoke
        waits for ``Recovery.applying`` before it forgets anything (see :meth:`on_revoked`)."""
        async with self._recovery.applying:
            for read, owned in self.ownership.finished_restores():
                await self._recovery.restore_async(
                    read,
                    now,
                    effects,
                    republish=self._publisher.republish,
                    rewrite=self.checkpoint.unpersisted,
                )
                # Applied before a revoke and reassignment (the partition was paused
                # since): their state was forgotten, never commit them (P3).
                self.checkpoint.forget(owned)
                self.ownership.mark_restored(owned)
                consumer.resume(*owned)
