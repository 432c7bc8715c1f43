"""Gauges of the worker's state, read when scraped so they are never an iteration stale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from worker.core import RiskEngine
from worker.metrics import Metrics
from worker.runtime.ownership import Ownership
from worker.runtime.transport import Consumer


def register_state_gauges(
    metrics: Metrics,
    engine: RiskEngine,
    ownership: Ownership,
    ready: Callable[[], bool],
    starting: Callable[[], bool],
) -> None:
    """Held bots, symbols, reservations and partitions; ready and started, as callbacks."""
    m = metrics
    m.bots.set_function(lambda: engine.stats().bots)
    m.symbols.set_function(lambda: engine.stats().symbols)
    m.reservations.set_function(lambda: engine.stats().reservations)
    m.assigned_partitions.set_function(lambda: len({tp.partition for tp in ownership.assigned}))
    m.ready.set_function(lambda: 1 if ready() else 0)
    m.started.set_function(lambda: 0 if starting() else 1)


def update_lag(
    metrics: Metrics, consumer: Consumer, batch: dict[TopicPartition, list[Any]]
) -> None:
    """Consumer lag of each partition a batch came from, from the client's high watermark."""
    for tp, records in batch.items():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            lag = highwater - records[-1].offset - 1
            metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
