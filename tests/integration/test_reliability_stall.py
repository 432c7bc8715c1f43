"""Broker stall: freeze the broker longer than the session timeout, mid-stream; lose nothing.

A private embedded broker is SIGSTOPped (connections stay open, nothing
answers) for longer than the worker's session timeout while a seeded mix of
fills, outcomes, intents, operator commands, duplicates and bad records is
flowing, then SIGCONTed. By then the group coordinator considers the worker
dead, so it must rejoin and restore, with batches in flight on both sides.

The worker must not crash, must report unready while it cannot commit and
ready again after, and must end with exactly the reference state (the same
input straight through ``RiskEngine``): nothing lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from tests.support.harness import (
    MIN_MS,
    Feed,
    Produced,
    as_raw,
    clock,
    config_text,
    create_topics,
    latest,
    read_topic,
    running_worker,
    wait_processed,
    wait_ready,
    wait_until,
)
from tests.support.reliability import generate_workload, judge, reference_run
from worker.config import load_config
from worker.kafka.broker import EmbeddedBroker
from worker.messages import OrderIntent

pytestmark = pytest.mark.broker

SESSION_TIMEOUT_MS = 3_000
"""Tansu holds a join about half the session timeout (twice: the first join and the
rejoin after the stall), so a short one keeps the test short; 3 s is what the soak
uses too. A spurious expiry under load costs a rebalance, never a wrong state."""
STALL_SECONDS = 6.0
"""Longer than the session timeout: the coordinator expires the worker's membership."""
READY_COMMIT_MAX_AGE_MS = 2_000
"""Well inside the stall: the worker must be seen unready for seconds of it."""
REQUEST_TIMEOUT_MS = 4_000
"""Over the session timeout (the worker refuses less: JoinGroup would never complete)."""

WORKER_TOML = f"""
[worker]
ready_commit_max_age_ms = {READY_COMMIT_MAX_AGE_MS}
stuck_after_ms = 120000
"""


async def test_a_broker_stall_longer_than_the_session_timeout_loses_nothing(
    embedded_broker: EmbeddedBroker,
) -> None:
    now = clock()
    workload = generate_workload(23, 3_000, bots=8, window=(now - 30 * MIN_MS, now))
    config = load_config(
        text=config_text(
            embedded_broker.bootstrap_servers,
            workload.body() + WORKER_TOML,
            partitions=4,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            # Shorter than the stall: whatever the worker has in flight when the
            # broker freezes (fetch, sends, commit) times out and is retried.
            kafka_extra=f"request_timeout_ms = {REQUEST_TIMEOUT_MS}",
        ),
        env={},
    )
    await create_topics(config)
    records = [as_raw(config, e) for e in workload.stream]
    # The test's producer waits out the stall instead of timing out and re-sending.
    patient = msgspec.structs.replace(config.kafka, request_timeout_ms=180_000)
    produced: list[Produced] = []
    unready_during_stall = False

    async with running_worker(config, ready_timeout=60) as running:
        async with Feed(patient) as feed:

            async def stream() -> None:
                for i in range(0, len(records), 25):
                    produced.extend(await feed.send(records[i : i + 25]))
                    await asyncio.sleep(0.05)

            producer = asyncio.create_task(stream(), name="stall-producer")
            try:

                async def a_third_produced() -> bool:
                    return len(produced) >= len(records) // 3

                await wait_until(
                    a_third_produced,
                    within=60,
                    what="a third of the stream",
                    alive=running.check_alive,
                )
                embedded_broker.pause()
                try:
                    stalled_at = time.monotonic()
                    while time.monotonic() - stalled_at < STALL_SECONDS:
                        running.check_alive()
                        unready_during_stall |= not running.worker.ready
                        await asyncio.sleep(0.1)
                finally:
                    embedded_broker.resume()
                await asyncio.wait_for(producer, 180)
            finally:
                if not producer.done():
                    producer.cancel()
        assert unready_during_stall, "the worker reported ready while the broker was frozen"
        await wait_processed(config, produced, alive=running.check_alive, within=180)
        await wait_ready(running, within=60)
        metrics = running.worker.metrics

    assert len(produced) == len(records)
    expected, effects = reference_run(config, workload.stream, clock())
    topics = config.topics
    verdict = judge(
        expected,
        effects,
        await latest(config.kafka, topics.snapshots),
        await read_topic(config.kafka, topics.halts, within=60),
        await read_topic(config.kafka, topics.decisions, within=60),
        await read_topic(config.kafka, topics.deadletter, within=60),
        intents=[e.intent_id for e in workload.valid if isinstance(e, OrderIntent)],
        rejected_at=[produced[i] for i in sorted(workload.invalid)],
    )
    retries = metrics.registry.get_sample_value("riskgate_send_retries_total") or 0.0
    failures = metrics.registry.get_sample_value("riskgate_commit_failures_total") or 0.0
    print(
        f"\nstall of {STALL_SECONDS:.0f}s (session timeout {SESSION_TIMEOUT_MS} ms):"
        f" {len(records)} records, send retries {retries:.0f}, commit failures {failures:.0f}\n"
        + "\n".join(verdict.lines())
    )
    assert verdict.mismatches == 0, "\n".join(verdict.lines())
    # What seed 23 exercises, counted by the model on the harness's fixed-day clock.
    assert (verdict.halts_expected, verdict.symbols_compared) == (32, 32)
    assert (verdict.intents, verdict.deadletters_expected) == (637, 17)
