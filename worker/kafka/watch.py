"""The consumer side of :mod:`worker.kafka.progress`: observe the client, choose heartbeats.

Once per loop iteration :meth:`InputWatch.observe` reads what the client knows
of each fetchable input partition (last fetch response, high watermark) and
what the loop consumed, and reports a log that restarted below the offsets
already applied (error log + ``riskgate_input_offset_resets_total``). Every
``heartbeat_interval_ms`` :meth:`InputWatch.heartbeat_bots` names the bots
whose every input partition progressed since the previous heartbeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from worker.core.engine import RiskEngine
from worker.kafka.progress import InputProgress, applied_watermarks
from worker.metrics import Metrics

log = structlog.get_logger("riskgate.worker")

if TYPE_CHECKING:  # the narrow client interface the worker uses
    from worker.runtime.transport import Consumer


class InputWatch:
    def __init__(
        self, input_topics: Iterable[str], heartbeat_interval_ms: int, metrics: Metrics, now: int
    ) -> None:
        self._topics = tuple(input_topics)
        self._interval_ms = heartbeat_interval_ms
        self._metrics = metrics
        self.progress = InputProgress(self._topics)
        self._next_heartbeat = 0
        self._last_heartbeat = now

    def observe(
        self,
        consumer: Consumer,
        assigned: set[TopicPartition],
        engine: RiskEngine,
        partition_of: Mapping[str, int],
        *,
        offsets: Mapping[TopicPartition, int],
        now: int,
    ) -> None:
        """Record fetch and consume progress per fetchable partition; detect restarted offsets."""
        progress = self.progress
        fetchable = (consumer.assignment() & assigned) - consumer.paused()
        progress.forget(fetchable)
        new = [tp for tp in fetchable if tp not in progress]
        if new:
            for tp, mark in applied_watermarks(engine, partition_of, new).items():
                progress.track(tp, mark)
        for tp, end in offsets.items():
            progress.consumed(tp, end - 1, now)
        for tp in fetchable:
            progress.polled(tp, consumer.last_poll_timestamp(tp), now)
            highwater = consumer.highwater(tp)
            reset_at = progress.offsets_reset(tp, highwater)
            if reset_at is not None:
                self._metrics.offset_resets.labels(tp.topic, str(tp.partition)).inc()
                log.error(
                    "input partition restarted below the offsets already applied: topic "
                    "recreated or truncated? Its new events at or below the applied offset "
                    "are skipped as replays until its log passes it",
                    topic=tp.topic,
                    partition=tp.partition,
                    log_end=highwater,
                    applied=reset_at,
                )

    async def heartbeat_bots(
        self,
        consumer: Consumer,
        engine: RiskEngine,
        partition_of: Mapping[str, int],
        now: int,
    ) -> list[str]:
        """Bots due a heartbeat: only those whose every input partition is progressing."""
        if now < self._next_heartbeat:
            return []
        since, self._last_heartbeat = self._last_heartbeat, now
        self._next_heartbeat = now + self._interval_ms
        numbers = self.progress.numbers()
        tps = [TopicPartition(t, n) for n in numbers for t in self._topics]
        positions: dict[TopicPartition, int | None] = {}
        for tp in tps:
            positions[tp] = await _position(consumer, tp)
        owned = consumer.assignment()  # highwater() asserts the partition is assigned
        highwaters = {tp: consumer.highwater(tp) for tp in tps if tp in owned}
        stalled = self.progress.stalled(since, positions, highwaters)
        self._metrics.stalled_partitions.set(len(stalled))
        fresh = numbers - {tp.partition for tp in stalled}
        held = engine.bot_ids()
        return [b for b, p in partition_of.items() if p in fresh and b in held]


async def _position(consumer: Consumer, tp: TopicPartition) -> int | None:
    """The consumer's position, or None when it has none right now (never waits long)."""
    try:
        async with asyncio.timeout(0.05):
            return int(await consumer.position(tp))
    except (TimeoutError, IllegalStateError, KafkaError):
        return None
