"""The service's HTTP surface on a real run: ``/metrics``, ``/healthz``, ``/readyz``.

``serve(config, install_signals=False)`` runs on the test's loop with ``[http]
port = 0``. The snapshot read is held back (a gate around the restore) so
"assigned but not restored" is a state the test can observe, not a race.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import worker.runtime.transport as transport_module
from tests.support.harness import (
    MIN_MS,
    Raw,
    clock,
    config_text,
    create_topics,
    default_partition,
    outcome,
    produce,
    produce_events,
    read_topic,
    read_values,
    wait_processed,
    wait_until,
)
from tests.support.ops import Samples, http_get, http_status, scrape, served
from worker.config import load_config
from worker.kafka.restore import SnapshotRead
from worker.kafka.restore import read_snapshot_partitions as real_read
from worker.messages import OrderIntent

pytestmark = pytest.mark.broker

PARTITIONS = 4
BODY = """
[defaults.session]
loss_limit = -500.0
[defaults.breaker]
loss_limit = 3
window_secs = 14400
cooldown_secs = 7200

[worker]
reservation_ttl_ms = 600000

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
[bots.beta]
symbols = ["BTCUSDT", "ETHUSDT"]
"""

FAMILIES = {
    "riskgate_events_consumed_total",
    "riskgate_deadletters_total",
    "riskgate_halts_total",
    "riskgate_decisions_total",
    "riskgate_batch_records_count",
    "riskgate_batch_seconds_count",
    "riskgate_output_send_seconds_count",
    "riskgate_snapshot_send_seconds_count",
    "riskgate_snapshot_writes_total",
    "riskgate_commit_seconds_count",
    "riskgate_commit_failures_total",
    "riskgate_send_retries_total",
    "riskgate_consumer_lag",
    "riskgate_restore_seconds_count",
    "riskgate_restore_records_total",
    "riskgate_symbols",
    "riskgate_bots",
    "riskgate_reservations",
    "riskgate_assigned_partitions",
    "riskgate_ready",
    "riskgate_loop_last_progress_timestamp_seconds",
}


def intent(bot: str, symbol: str, *, ts: int) -> OrderIntent:
    return OrderIntent(
        intent_id=f"i-{uuid.uuid4().hex[:12]}",
        bot=bot,
        symbol=symbol,
        action="open",
        side="buy",
        qty=1.0,
        price=100.0,
        ts=ts,
    )


async def test_metrics_health_and_readiness_over_http(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session timeout that a busy machine cannot miss: counts below are exact.
    text = config_text(kafka_bootstrap, BODY, partitions=PARTITIONS, session_timeout_ms=3_000)
    config = load_config(text=text, env={})
    await create_topics(config)
    topics = config.topics

    restore_gate = asyncio.Event()

    async def gated_read(*args: object, **kwargs: object) -> SnapshotRead:
        await restore_gate.wait()
        return await real_read(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(transport_module, "read_snapshot_partitions", gated_read)

    t = clock() - 30 * MIN_MS
    good = [
        *(outcome("alpha", s, 4.0, 0.1, ts=t + i) for i, s in enumerate(("BTCUSDT", "ETHUSDT"))),
        outcome("alpha", "SOLUSDT", 2.0, 0.1, ts=t),
        *(outcome("beta", s, -1.0, 0.1, ts=t + 1) for s in ("BTCUSDT", "ETHUSDT")),
        # alpha/SOLUSDT: three losses inside the window trip the breaker (limit 3).
        *(outcome("alpha", "SOLUSDT", -3.0, 0.1, ts=t + (i + 1) * MIN_MS) for i in range(3)),
    ]
    bad = Raw(topics.outcomes, b"alpha", b'{"outcome_id": "broken",')

    started_ms = clock()
    async with served(config) as svc:
        port = svc.port
        # Before the group join: nothing assigned, nothing restored.
        assert await http_status(port, "/readyz") == 503
        assert await http_status(port, "/healthz") == 200

        async def assigned() -> bool:
            metrics = await scrape(port)
            return metrics.value("riskgate_assigned_partitions") == PARTITIONS

        await wait_until(assigned, within=45, what="partitions assigned", alive=svc.check_alive)
        # Assigned, restore held back: alive (the loop keeps probing the broker) but not ready.
        await asyncio.sleep(0.5)
        assert await http_get(port, "/readyz") == (503, "not ready\n")
        assert await http_get(port, "/healthz") == (200, "ok\n")
        assert (await scrape(port)).value("riskgate_ready") == 0

        restore_gate.set()

        async def ready() -> bool:
            return await http_status(port, "/readyz") == 200

        await wait_until(ready, within=30, what="/readyz 200 after restore", alive=svc.check_alive)

        produced = await produce_events(config, good)
        produced += await produce(config.kafka, [bad])
        await wait_processed(config, produced, alive=svc.check_alive, within=30)
        # Intents after the outcomes: the breaker is tripped when they are checked.
        intents = [intent("beta", "BTCUSDT", ts=clock()), intent("alpha", "SOLUSDT", ts=clock())]
        produced += await produce_events(config, intents)
        await wait_processed(config, produced, alive=svc.check_alive, within=30)

        async def settled() -> Samples | None:
            metrics = await scrape(port)
            return metrics if metrics.value("riskgate_reservations") == 1 else None

        settled_metrics = await wait_until(
            settled, within=10, what="gauges updated", alive=svc.check_alive
        )
        assert settled_metrics is not None
        m: Samples = settled_metrics
        assert await http_get(port, "/healthz") == (200, "ok\n")
        assert await http_get(port, "/readyz") == (200, "ready\n")
        got = await http_get(port, "/metrics")
        assert got is not None and got[0] == 200

    assert await http_get(port, "/healthz") is None, "the endpoints stop with the service"

    missing = FAMILIES - m.names()
    assert not missing, f"families missing from /metrics: {sorted(missing)}"
    assert all(name.startswith("riskgate_") for name in m.names() if "riskgate" in name)

    events = "riskgate_events_consumed_total"
    assert m.value(events, topic=topics.outcomes, result="applied") == len(good)
    assert m.value(events, topic=topics.outcomes, result="deadletter") == 1
    assert m.value(events, topic=topics.intents, result="applied") == len(intents)
    assert m.value("riskgate_deadletters_total", reason="malformed_json") == 1
    assert sum(m.matching("riskgate_deadletters_total").values()) == 1

    assert m.value("riskgate_halts_total", gate="circuit_breaker", kind="halted") == 1
    assert m.value("riskgate_decisions_total", gate="none") == 1
    assert m.value("riskgate_decisions_total", gate="circuit_breaker") == 1

    total = len(good) + 1 + len(intents)
    assert m.value("riskgate_batch_records_sum") == total
    batches = m.value("riskgate_batch_records_count")
    assert batches is not None and 1 <= batches <= total
    assert m.value("riskgate_batch_seconds_count") == batches
    # How many sends and commits carried them depends on batching (each histogram is
    # observed, that is all one can say); what they carried does not: read it back.
    for histogram in ("output_send", "snapshot_send", "commit"):
        count = m.value(f"riskgate_{histogram}_seconds_count")
        assert count is not None and count >= 1, histogram
    halts = await read_values(config.kafka, topics.halts, dict[str, Any])
    assert [(h["bot"], h["symbol"], h["kind"], h["gate"]) for h in halts] == [
        ("alpha", "SOLUSDT", "halted", "circuit_breaker")
    ]
    decisions = await read_values(config.kafka, topics.decisions, dict[str, Any])
    assert {d["intent_id"]: (d["allowed"], d["gate"]) for d in decisions} == {
        intents[0].intent_id: (True, None),
        intents[1].intent_id: (False, "circuit_breaker"),
    }
    snapshots = await read_topic(config.kafka, topics.snapshots)
    assert m.value("riskgate_snapshot_writes_total") == len(snapshots)  # each write, once
    assert {r.key for r in snapshots} == {
        b"/owner",
        *(f"{bot}/portfolio".encode() for bot in ("alpha", "beta")),
        *(f"alpha/risk/{s}".encode() for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")),
        *(f"beta/risk/{s}".encode() for s in ("BTCUSDT", "ETHUSDT")),
    }
    assert m.value("riskgate_commit_failures_total") == 0
    assert m.value("riskgate_send_retries_total") == 0

    # A lag gauge per partition records came from (alpha's and beta's), each caught up.
    lags = m.matching("riskgate_consumer_lag", topic=topics.outcomes)
    homes = {str(default_partition(bot, PARTITIONS)) for bot in (b"alpha", b"beta")}
    lag_of = {dict(labels)["partition"]: value for labels, value in lags.items()}
    assert lag_of == dict.fromkeys(homes, 0.0), lags

    # One assignment (the session timeout is long enough for a busy machine), one read
    # of an empty snapshot topic.
    assert m.value("riskgate_restore_seconds_count") == 1
    assert m.value("riskgate_restore_records_total", result="restored") == 0
    assert m.value("riskgate_restore_records_total", result="ignored") == 0

    assert m.value("riskgate_symbols") == 5
    assert m.value("riskgate_bots") == 2
    assert m.value("riskgate_reservations") == 1
    assert m.value("riskgate_assigned_partitions") == PARTITIONS
    assert m.value("riskgate_ready") == 1
    progress_ms = 1000 * (m.value("riskgate_loop_last_progress_timestamp_seconds") or 0)
    assert started_ms <= progress_ms <= clock()  # the service's clock: the harness's
