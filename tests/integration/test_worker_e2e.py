"""End to end through a real broker: outcomes in; halts, gates and snapshots out.

Also readiness (not ready until the assigned snapshot partitions are restored)
and the metrics registry.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import (
    MIN_MS,
    Raw,
    clock,
    create_topics,
    decoded,
    default_partition,
    expected_gates,
    expected_halts,
    expected_portfolios,
    expected_snapshots,
    latest,
    make_config,
    outcome,
    persisted_portfolios,
    persisted_snapshots,
    produce,
    produce_events,
    published_gates,
    published_halts,
    read_topic,
    reference,
    running_worker,
    wait_processed,
)
from worker.core import RiskEngine
from worker.core.snapshot import encode

pytestmark = pytest.mark.broker

BODY = """
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 3
window_secs = 14400
cooldown_secs = 7200

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]
[bots.delta]
symbols = ["BTCUSDT", "ETHUSDT"]
"""

FILLER_SYMBOLS = 30_000

SEED_SESSION_FIELDS = {
    "realised",
    "fees",
    "trades",
    "wins",
    "losses",
    "breakevens",
    "halted",
    "last_reset_day",
}
SEED_BREAKER_FIELDS = {"recent_losses", "tripped_at_unix_secs"}


async def test_outcomes_halt_flip_gates_and_persist_seed_shaped_snapshots(
    kafka_bootstrap: str,
) -> None:
    config = make_config(kafka_bootstrap, BODY)
    await create_topics(config)
    t = clock() - 10 * MIN_MS
    events = [
        # alpha/BTCUSDT: three losses inside the window trip the breaker (limit 3).
        outcome("alpha", "BTCUSDT", -5.0, 0.1, ts=t),
        outcome("alpha", "BTCUSDT", -6.0, 0.1, ts=t + MIN_MS),
        outcome("alpha", "BTCUSDT", -7.0, 0.1, ts=t + 2 * MIN_MS),
        # alpha/ETHUSDT: a win, then a loss taking net PnL to -60 halts the session.
        outcome("alpha", "ETHUSDT", 10.0, 0.0, ts=t),
        outcome("alpha", "ETHUSDT", -70.0, 0.0, ts=t + MIN_MS),
        # delta: trading normally on both symbols.
        outcome("delta", "BTCUSDT", 4.0, 0.2, ts=t),
        outcome("delta", "BTCUSDT", -1.0, 0.2, ts=t + MIN_MS),
        outcome("delta", "ETHUSDT", 2.5, 0.0, ts=t + MIN_MS),
    ]
    expected = reference(config, events, clock())
    assert {h.gate for h in expected.halts} == {"circuit_breaker", "session_halt"}

    async with running_worker(config) as running:
        produced = await produce_events(config, events)
        await wait_processed(config, produced, alive=running.check_alive)

    input_partition = {e.bot: p.partition for e, p in zip(events, produced, strict=True)}
    topics = config.topics

    # The halted events, exactly as the reference model predicts them (deterministic ids).
    halts = published_halts(await read_topic(config.kafka, topics.halts))
    assert sorted(halts) == sorted(expected_halts(expected))
    by_id = {h.event_id: h for h in halts}
    breaker = by_id["alpha/BTCUSDT/circuit_breaker/1"]
    assert breaker.kind == "halted" and breaker.ts == t + 2 * MIN_MS
    assert breaker.until_ts == ((t + 2 * MIN_MS) // 1000 + 7200) * 1000
    assert by_id["alpha/ETHUSDT/session_halt/1"].kind == "halted"

    # Gate states flipped for the halted symbols only, as the model says.
    gate_records = await latest(config.kafka, topics.gates)
    assert published_gates(gate_records) == expected_gates(expected)
    gates = decoded(gate_records)
    assert gates["alpha/gate/BTCUSDT"]["entries_allowed"] is False
    assert [b["gate"] for b in gates["alpha/gate/BTCUSDT"]["blocks"]] == ["circuit_breaker"]
    assert gates["alpha/gate/ETHUSDT"]["entries_allowed"] is False
    assert [b["gate"] for b in gates["alpha/gate/ETHUSDT"]["blocks"]] == ["session_halt"]
    assert gates["delta/gate/BTCUSDT"]["entries_allowed"] is True
    assert gates["delta/gate/ETHUSDT"]["entries_allowed"] is True

    # Snapshots: the seed's JSON shape, on the input's partition number, equal to the reference.
    snapshots = await latest(config.kafka, topics.snapshots)
    symbol_keys = {k for k in snapshots if "/risk/" in k}
    assert symbol_keys == {
        f"{b}/risk/{s}" for b in ("alpha", "delta") for s in ("BTCUSDT", "ETHUSDT")
    }
    for key in symbol_keys:
        record = snapshots[key]
        bot = key.split("/")[0]
        assert record.partition == input_partition[bot], key
        assert record.value is not None
        raw = msgspec.json.decode(record.value)
        assert list(raw)[:3] == ["version", "session_pnl", "circuit_breaker"]
        assert raw["version"] == 1
        assert set(raw["session_pnl"]) == SEED_SESSION_FIELDS
        assert set(raw["circuit_breaker"]) == SEED_BREAKER_FIELDS
    # The partition check means something: default partitioning would put some elsewhere.
    assert any(
        default_partition(k.encode(), config.topics.partitions) != snapshots[k].partition
        for k in symbol_keys
    )
    assert persisted_snapshots(snapshots) == expected_snapshots(expected)
    assert persisted_portfolios(snapshots) == expected_portfolios(expected) == {}
    btc = decoded(snapshots)["alpha/risk/BTCUSDT"]
    assert btc["circuit_breaker"]["tripped_at_unix_secs"] == (t + 2 * MIN_MS) // 1000
    assert btc["session_pnl"]["losses"] == 3 and btc["session_pnl"]["halted"] is False
    eth = decoded(snapshots)["alpha/risk/ETHUSDT"]
    assert eth["session_pnl"]["halted"] is True and eth["session_pnl"]["realised"] == -60.0


READY_BODY = """
[defaults.breaker]
loss_limit = 3
cooldown_secs = 7200

[bots.alpha]
"""


async def test_ready_only_after_restore_and_events_counted_in_metrics(
    kafka_bootstrap: str,
) -> None:
    config = make_config(kafka_bootstrap, READY_BODY)
    await create_topics(config)
    t = clock() - 10 * MIN_MS
    # A tripped breaker for alpha/BTCUSDT already on the snapshot topic, co-partitioned,
    # behind enough other symbols that the restore spans several poll-loop iterations.
    seeded = RiskEngine(config)
    for i in range(3):
        seeded.apply(outcome("alpha", "BTCUSDT", -5.0, ts=t + i * MIN_MS), clock())
    tripped = encode(seeded.bots["alpha"].symbols["BTCUSDT"].snapshot())
    seeded.apply(outcome("alpha", "XRPUSDT", 1.0, ts=t), clock())
    filler = encode(seeded.bots["alpha"].symbols["XRPUSDT"].snapshot())
    partition = default_partition(b"alpha", config.topics.partitions)
    snapshots = config.topics.snapshots
    await produce(
        config.kafka,
        [
            *(
                Raw(snapshots, f"alpha/risk/F{i:05d}".encode(), filler, None, partition)
                for i in range(FILLER_SYMBOLS)
            ),
            Raw(snapshots, b"alpha/risk/BTCUSDT", tripped, None, partition),
        ],
    )

    samples: list[tuple[bool, bool]] = []
    """(ready, restored state present) at every sample."""

    async with running_worker(config, wait=False) as running:
        worker = running.worker

        def restored() -> bool:
            bot = worker.engine.bots.get("alpha")
            sym = bot.symbols.get("BTCUSDT") if bot is not None else None
            return sym is not None and sym.breaker.is_tripped

        async with asyncio.timeout(30):
            while not worker.ready:
                running.check_alive()
                samples.append((worker.ready, restored()))
                await asyncio.sleep(0.001)
        samples.append((worker.ready, restored()))

        assert samples[0] == (False, False)
        assert any(not present for _, present in samples)
        assert all(present for ready, present in samples if ready), "ready before restore"
        assert samples[-1] == (True, True)

        produced = await produce_events(config, [outcome("alpha", "ETHUSDT", 1.0, ts=t)])
        await wait_processed(config, produced, alive=running.check_alive)
        families = {
            f.name: f
            for f in text_string_to_metric_families(
                generate_latest(worker.metrics.registry).decode()
            )
        }

    consumed = {
        (s.labels["topic"], s.labels["result"]): s.value
        for s in families["riskgate_events_consumed"].samples
        if s.name == "riskgate_events_consumed_total"
    }
    assert consumed == {(config.topics.outcomes, "applied"): 1.0}
    restored_records = {
        s.labels["result"]: s.value
        for s in families["riskgate_restore_records"].samples
        if s.name == "riskgate_restore_records_total"
    }
    assert restored_records == {"restored": FILLER_SYMBOLS + 1.0, "ignored": 0.0}
