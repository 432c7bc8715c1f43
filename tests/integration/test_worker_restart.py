"""Restart: a new worker restores its state from the compacted snapshot topic.

The seed's ``persist_then_restore_preserves_trip_and_pnl`` and
``restore_ignores_unknown_version``, but through Kafka and two Worker instances:
the breaker trip and the PnL survive, while a corrupt and an unknown-version
snapshot on the topic are ignored (never fatal, never misread).
"""

from __future__ import annotations

import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import (
    MIN_MS,
    Feed,
    Raw,
    clock,
    create_topics,
    decoded,
    default_partition,
    expected_portfolios,
    expected_snapshots,
    latest,
    make_config,
    outcome,
    persisted_portfolios,
    persisted_snapshots,
    produce,
    produce_events,
    reference,
    running_worker,
    wait_processed,
)
from worker.kafka.options import client_kwargs
from worker.kafka.restore import read_snapshot_partitions

pytestmark = pytest.mark.broker

BODY = """
[defaults.session]
loss_limit = -1000.0
[defaults.breaker]
loss_limit = 2
window_secs = 14400
cooldown_secs = 7200

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
"""

UNKNOWN_VERSION = {
    "version": 99,
    "session_pnl": {
        "realised": -100.0,
        "fees": 0.0,
        "trades": 1,
        "wins": 0,
        "losses": 1,
        "breakevens": 0,
        "halted": True,
        "last_reset_day": 0,
    },
    "circuit_breaker": {"recent_losses": [], "tripped_at_unix_secs": None},
}


def _restore_counts(worker_registry: object) -> dict[str, float]:
    text = generate_latest(worker_registry).decode()  # type: ignore[arg-type]
    return {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "riskgate_restore_records"
        for s in family.samples
        if s.name == "riskgate_restore_records_total"
    }


async def test_restart_restores_trip_and_pnl_and_ignores_bad_snapshots(
    kafka_bootstrap: str,
) -> None:
    config = make_config(kafka_bootstrap, BODY)
    await create_topics(config)
    t = clock() - 10 * MIN_MS
    first = [
        outcome("alpha", "BTCUSDT", -30.0, 1.0, ts=t),  # net -31, as in the seed
        outcome("alpha", "BTCUSDT", -10.0, 0.0, ts=t + MIN_MS),  # second loss trips (limit 2)
    ]
    async with running_worker(config) as running:
        produced = await produce_events(config, first)
        await wait_processed(config, produced, alive=running.check_alive)
        assert running.worker.engine.bots["alpha"].symbols["BTCUSDT"].breaker.is_tripped

    # While no worker runs, garbage lands on alpha's snapshot partition, written under
    # the owner's epoch (an older epoch would be fenced off as a zombie's write, and
    # this test is about values that do not decode).
    partition = produced[0].partition
    assert partition == default_partition(b"alpha", config.topics.partitions)
    snapshots = config.topics.snapshots
    owner = (await latest(config.kafka, snapshots))["alpha/risk/BTCUSDT"].headers
    epoch = [(name, value) for name, value in owner if name == "riskgate.epoch"]
    assert len(epoch) == 1
    await produce(
        config.kafka,
        [
            Raw(
                snapshots,
                b"alpha/risk/ETHUSDT",
                msgspec.json.encode(UNKNOWN_VERSION),
                epoch,
                partition,
            ),
            Raw(
                snapshots,
                b"alpha/risk/SOLUSDT",
                b'{"version":1,"session_pnl":{"realis',
                epoch,
                partition,
            ),
        ],
    )

    second = [
        outcome("alpha", "BTCUSDT", 3.0, 0.0, ts=t + 2 * MIN_MS),  # a win does not un-trip
        outcome("alpha", "ETHUSDT", 5.0, 0.0, ts=t + 2 * MIN_MS),
        outcome("alpha", "SOLUSDT", -1.0, 0.5, ts=t + 2 * MIN_MS),
    ]
    async with running_worker(config) as running:
        engine = running.worker.engine
        # Restored before consuming: trip and PnL preserved, garbage ignored.
        btc = engine.bots["alpha"].symbols["BTCUSDT"]
        assert btc.breaker.tripped_at == (t + MIN_MS) // 1000
        assert btc.session.net_pnl == -41.0
        assert (btc.session.trades, btc.session.losses) == (2, 2)
        assert set(engine.bots["alpha"].symbols) == {"BTCUSDT"}
        # Restored: alpha/risk/BTCUSDT and alpha/portfolio (written with every symbol record).
        assert _restore_counts(running.worker.metrics.registry) == {"restored": 2.0, "ignored": 2.0}

        produced = await produce_events(config, second)
        await wait_processed(config, produced, alive=running.check_alive)

    stored = await latest(config.kafka, snapshots)
    expected = reference(config, first + second, clock())
    assert persisted_snapshots(stored) == expected_snapshots(expected)
    assert persisted_portfolios(stored) == expected_portfolios(expected) == {}
    values = decoded(stored)
    assert (
        values["alpha/risk/BTCUSDT"]["circuit_breaker"]["tripped_at_unix_secs"]
        == (t + MIN_MS) // 1000
    )
    assert values["alpha/risk/BTCUSDT"]["session_pnl"]["trades"] == 3  # nothing replayed twice
    # The version-99 blob was not misread: ETHUSDT started fresh (not halted, one win).
    eth = values["alpha/risk/ETHUSDT"]["session_pnl"]
    assert (eth["halted"], eth["trades"], eth["wins"], eth["realised"]) == (False, 1, 1, 5.0)
    assert values["alpha/risk/ETHUSDT"]["version"] == 1
    gates = decoded(await latest(config.kafka, config.topics.gates))
    assert gates["alpha/gate/BTCUSDT"]["entries_allowed"] is False
    assert gates["alpha/gate/ETHUSDT"]["entries_allowed"] is True


async def test_restore_read_does_not_stop_inside_a_large_last_batch(kafka_bootstrap: str) -> None:
    """Every snapshot is read, even when the last batch straddles a read's record cap.

    Tansu lists a partition's end as the last batch's base offset + 1. A restore
    that pulled at most 50,000 records per poll reached that "end" at record
    50,000 of 50,005 and dropped the last five snapshots: their symbols would
    have restarted with fresh state (a tripped breaker forgotten).
    """
    config = make_config(kafka_bootstrap, "", partitions=1)
    await create_topics(config)
    topic = config.topics.snapshots
    async with Feed(config.kafka) as feed:
        await feed.send(Raw(topic, f"a/risk/S{i}".encode(), b"1", None, 0) for i in range(40_000))
        # One batch for offsets 40,000..50,004 (about 300 kB, under the 1 MB batch limit).
        last = await feed.send(
            Raw(topic, f"b/risk/S{i}".encode(), b"2", None, 0) for i in range(10_005)
        )
    assert (last[0].offset, last[-1].offset) == (40_000, 50_004)

    read = await read_snapshot_partitions(client_kwargs(config.kafka), topic, [0])

    assert read.read == 50_005
    assert len(read.records) == 50_005
    assert read.records["b/risk/S10004"] == b"2"
