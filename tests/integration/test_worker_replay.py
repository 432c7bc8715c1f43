"""Replay in event time: a backlog consumed at once is judged by its own timestamps.

Losses hours apart (no 4-hour window ever holds 4 of them) must not trip the
breaker even though the worker reads them within milliseconds; the same number
of losses minutes apart must. Losses older than the window leave it when the
worker's wall clock passes them (its sweep), not when a newer loss arrives; the
end state equals the reference model's.
"""

from __future__ import annotations

import pytest

from tests.support.harness import (
    HOUR_MS,
    MIN_MS,
    clock,
    create_topics,
    decoded,
    expected_snapshots,
    latest,
    make_config,
    outcome,
    persisted_snapshots,
    produce_events,
    read_values,
    reference,
    running_worker,
    wait_processed,
    wait_until,
)
from worker.messages import HaltEvent

pytestmark = pytest.mark.broker

BODY = """
[defaults.session]
loss_limit = -1000.0
[defaults.breaker]
loss_limit = 4
window_secs = 14400
cooldown_secs = 3600

[bots.alpha]
symbols = ["HOURS", "MINUTES"]
"""


async def test_backlog_of_losses_hours_apart_does_not_trip_but_minutes_apart_does(
    kafka_bootstrap: str,
) -> None:
    config = make_config(kafka_bootstrap, BODY)
    await create_topics(config)
    now = clock()
    # Five losses each: 2 h apart (a 4 h window holds at most 2), and 2 min apart.
    hours = [now - (10 - 2 * i) * HOUR_MS for i in range(5)]
    minutes = [now - (10 - 2 * i) * MIN_MS for i in range(5)]
    backlog = [outcome("alpha", "HOURS", -1.0, ts=ts) for ts in hours] + [
        outcome("alpha", "MINUTES", -1.0, ts=ts) for ts in minutes
    ]
    produced = await produce_events(config, backlog)  # all of it waiting before the worker starts

    async with running_worker(config) as running:
        await wait_processed(config, produced, alive=running.check_alive)

        async def swept() -> bool:
            gates = decoded(await latest(config.kafka, config.topics.gates))
            recent_losses: object = gates.get("alpha/gate/HOURS", {}).get("recent_losses")
            return recent_losses == 1

        # The sweep (wall clock) evicts the losses at or before now - 4 h.
        await wait_until(swept, within=20, what="the sweep to evict", alive=running.check_alive)

    halts = await read_values(config.kafka, config.topics.halts, HaltEvent)
    assert [(h.symbol, h.kind, h.gate, h.ts) for h in halts] == [
        ("MINUTES", "halted", "circuit_breaker", minutes[3])  # tripped at the 4th loss's time
    ]
    assert halts[0].until_ts == (minutes[3] // 1000 + 3600) * 1000

    snapshots = decoded(await latest(config.kafka, config.topics.snapshots))
    hours_breaker = snapshots["alpha/risk/HOURS"]["circuit_breaker"]
    assert hours_breaker["tripped_at_unix_secs"] is None
    assert hours_breaker["recent_losses"] == [hours[4] // 1000]
    minutes_breaker = snapshots["alpha/risk/MINUTES"]["circuit_breaker"]
    assert minutes_breaker["tripped_at_unix_secs"] == minutes[3] // 1000
    assert minutes_breaker["recent_losses"] == [ts // 1000 for ts in minutes[:4]]

    stored = await latest(config.kafka, config.topics.snapshots)
    assert persisted_snapshots(stored) == expected_snapshots(reference(config, backlog, clock()))

    gates = decoded(await latest(config.kafka, config.topics.gates))
    assert gates["alpha/gate/HOURS"]["entries_allowed"] is True
    assert gates["alpha/gate/MINUTES"]["entries_allowed"] is False
