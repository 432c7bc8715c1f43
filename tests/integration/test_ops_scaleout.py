"""Scale-out: three ``riskgate run`` processes in one group split the bots by partition.

A stream over 24 bots x 3 symbols (loss streaks that trip breakers and halt
sessions) is consumed by three workers; one is SIGKILLed mid-stream. The two
others take over its partitions, restore their snapshots and finish. The
persisted state must equal the reference computed from the input (nothing
lost, nothing counted twice) and every halt the reference predicts must have
been published (at least once, under its deterministic id). The reference is
the contract's independent model (``tests/support/model.py``), not the engine.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tests.support.compare import total_trades
from tests.support.harness import (
    MIN_MS,
    Feed,
    WorkerProcess,
    as_raw,
    clock,
    config_text,
    create_topics,
    default_partition,
    expected_halts,
    expected_portfolios,
    expected_snapshots,
    latest,
    make_config,
    now_ms,
    outcome,
    persisted_portfolios,
    persisted_snapshots,
    produce_events,
    published_halts,
    read_topic,
    reference,
    running_worker,
    same_day_window,
    wait_processed,
    wait_until,
)
from tests.support.ops import Samples, http_status, logged, parse_metrics, scrape
from worker.config import load_config
from worker.messages import TradeOutcome
from worker.runtime import Worker

pytestmark = pytest.mark.broker

PARTITIONS = 6
WORKERS = 3
BOTS = tuple(f"bot{i:02d}" for i in range(24))
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
EVENTS = 3_000
KILL_AFTER = 1_500

_SYMBOLS_TOML = ", ".join(f'"{s}"' for s in SYMBOLS)
BODY = """
[defaults.session]
loss_limit = -150.0
[defaults.breaker]
loss_limit = 4
window_secs = 14400
cooldown_secs = 7200
""" + "".join(f"[bots.{bot}]\nsymbols = [{_SYMBOLS_TOML}]\n" for bot in BOTS)


def stream(seed: int) -> list[TradeOutcome]:
    """Outcomes over the last 40 minutes of today (UTC), losses slightly dominant."""
    rng = random.Random(seed)
    start, now = same_day_window(40 * MIN_MS)
    step = (now - start) / EVENTS
    return [
        outcome(
            bot := rng.choice(BOTS),
            symbol := rng.choice(SYMBOLS),
            round(rng.uniform(-10.0, 7.0), 2),
            round(rng.uniform(0.0, 0.3), 2),
            ts=start + int(i * step),
            outcome_id=f"{bot}-{symbol}-{i}",
        )
        for i in range(EVENTS)
    ]


async def metrics_of(worker: WorkerProcess) -> Samples | None:
    if not logged(worker.log_path, "http listening"):
        return None
    try:
        return await scrape(worker.http_port())
    except AssertionError:
        return None


async def test_scale_out_with_a_worker_killed_mid_stream(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    config_path = tmp_path / "riskgate.toml"
    config_path.write_text(config_text(kafka_bootstrap, BODY, partitions=PARTITIONS))
    config = load_config(config_path, env={})
    assert {default_partition(b.encode(), PARTITIONS) for b in BOTS} == set(range(PARTITIONS))
    await create_topics(config)
    events = stream(seed=11)
    records = [as_raw(config, e) for e in events]

    workers = [WorkerProcess(config_path, tmp_path / f"worker{i}.log") for i in range(WORKERS)]

    def survivors() -> list[WorkerProcess]:
        return [w for w in workers if w.proc is not None and w.proc.returncode is None]

    def all_alive() -> None:
        for w in survivors():
            w.check_alive()

    async def balanced(expected: list[WorkerProcess], each: int) -> bool:
        for w in expected:
            m = await metrics_of(w)
            if m is None or m.value("riskgate_assigned_partitions") != each:
                return False
            if await http_status(w.http_port(), "/readyz") != 200:
                return False
        return True

    try:
        for w in workers:
            w.start()
        await wait_until(
            lambda: balanced(workers, PARTITIONS // WORKERS),
            within=90,
            what="three ready workers with two partitions each",
            interval=0.25,
            alive=all_alive,
        )
        victim = workers[1]
        produced = []
        async with Feed(config.kafka) as feed:
            for chunk in range(0, KILL_AFTER, 100):
                produced += await feed.send(records[chunk : chunk + 100])
                await asyncio.sleep(0.05)  # let the workers consume while we feed

            async def victim_applied() -> bool:
                m = await metrics_of(victim)
                return (
                    m is not None and sum(m.matching("riskgate_events_consumed_total").values()) > 0
                )

            await wait_until(victim_applied, within=30, what="the victim applying events")
            victim.kill()  # SIGKILL by PID: no flush, no commit, no leaving the group
            assert victim.proc is not None and victim.proc.returncode == -9
            owned = set(logged(victim.log_path, "partitions assigned; restoring")[-1]["partitions"])
            assert len(owned) == PARTITIONS // WORKERS
            for chunk in range(KILL_AFTER, EVENTS, 100):
                produced += await feed.send(records[chunk : chunk + 100])

        # The victim's partitions go on receiving events after its death.
        assert owned <= {p.partition for p in produced[KILL_AFTER:]}
        rest = survivors()
        assert len(rest) == WORKERS - 1
        await wait_processed(config, produced, alive=all_alive, within=120)
        await wait_until(
            lambda: balanced(rest, PARTITIONS // (WORKERS - 1)),
            within=60,
            what="the survivors owning three partitions each",
            interval=0.25,
            alive=all_alive,
        )
        final = [await metrics_of(w) for w in rest]
        # Together: one by one, the last would take over every partition as it stops.
        codes = await asyncio.gather(*(asyncio.to_thread(w.terminate) for w in rest))
        assert codes == [0] * len(rest), [w.log_tail() for w in rest]
    finally:
        for w in workers:
            await asyncio.to_thread(w.kill)

    # The survivors restored the partitions they took over from the snapshots.
    for m in final:
        assert m is not None
        assert (m.value("riskgate_restore_seconds_count") or 0) >= 2
    assert sum((m.value("riskgate_bots") or 0) for m in final if m) == len(BOTS)
    restored = sum(
        (m.value("riskgate_restore_records_total", result="restored") or 0) for m in final if m
    )
    assert restored > 0, "the takeover restored state from the snapshot topic"

    expected = reference(config, events, now_ms())
    stored = await latest(config.kafka, config.topics.snapshots)
    assert persisted_snapshots(stored) == expected_snapshots(expected)
    assert persisted_portfolios(stored) == expected_portfolios(expected) == {}
    assert total_trades(expected) == EVENTS

    halts = published_halts(await read_topic(config.kafka, config.topics.halts))
    predicted = {h.event_id: h for h in expected_halts(expected)}
    # Seed 11's stream, as the model counts it (every event of it is on today's session).
    assert len(predicted) == 73 and {h.gate for h in predicted.values()} == {
        "circuit_breaker",
        "session_halt",
    }
    published = {h.event_id for h in halts}
    assert set(predicted) <= published, sorted(set(predicted) - published)
    assert all(h == predicted[h.event_id] for h in halts), "only the reference's halts, as computed"


GROW_BODY = """
[defaults.breaker]
loss_limit = 3
window_secs = 14400
cooldown_secs = 7200
""" + "".join(f"[bots.{bot}]\nsymbols = [{_SYMBOLS_TOML}]\n" for bot in BOTS[:12])


def lag_partitions(worker: Worker, topic: str) -> set[int]:
    samples = parse_metrics(generate_latest(worker.metrics.registry).decode())
    return {
        int(dict(labels)["partition"])
        for labels in samples.matching("riskgate_consumer_lag", topic=topic)
    }


async def test_a_second_worker_takes_half_the_partitions_and_their_metrics(
    kafka_bootstrap: str,
) -> None:
    """Scale out 1 → 2 in-process: partitions move, state follows, metrics do not lie."""
    partitions = 4
    config = make_config(kafka_bootstrap, GROW_BODY, partitions=partitions)
    await create_topics(config)
    bots = BOTS[:12]
    assert {default_partition(b.encode(), partitions) for b in bots} == set(range(partitions))
    t = clock() - 30 * MIN_MS
    first = [
        outcome(b, s, -1.0, 0.1, ts=t + i, outcome_id=f"first-{b}-{s}")
        for i, (b, s) in enumerate((b, s) for b in bots for s in SYMBOLS)
    ]
    second = [
        outcome(b, s, -2.0, 0.1, ts=t + MIN_MS + i, outcome_id=f"second-{b}-{s}")
        for i, (b, s) in enumerate((b, s) for b in bots for s in SYMBOLS)
    ]
    outcomes = config.topics.outcomes
    async with running_worker(config) as one:
        produced = await produce_events(config, first)
        await wait_processed(config, produced, alive=one.check_alive)
        assert lag_partitions(one.worker, outcomes) == set(range(partitions))

        async with running_worker(config, wait=False) as two:

            def alive() -> None:
                one.check_alive()
                two.check_alive()

            async def split() -> bool:
                held = [w.worker.ownership.assigned for w in (one, two)]
                owned = [len({tp.partition for tp in tps}) for tps in held]
                return owned == [partitions // 2] * 2 and one.worker.ready and two.worker.ready

            await wait_until(split, within=60, what="two workers, two partitions each", alive=alive)
            produced += await produce_events(config, second)
            await wait_processed(config, produced, alive=alive)
            mine = [{tp.partition for tp in w.worker.ownership.assigned} for w in (one, two)]
            assert mine[0].isdisjoint(mine[1])
            # Each reports the lag of what it owns; a moved partition's series left with it.
            for w, owned in zip((one, two), mine, strict=True):
                assert lag_partitions(w.worker, outcomes) <= owned
            # Each holds exactly the bots of its partitions (restored or consumed).
            for w, owned in zip((one, two), mine, strict=True):
                held = set(w.worker.engine.bots)
                assert held == {
                    b for b in bots if default_partition(b.encode(), partitions) in owned
                }

    stored = await latest(config.kafka, config.topics.snapshots)
    expected = reference(config, first + second, clock())
    assert persisted_snapshots(stored) == expected_snapshots(expected)
    assert persisted_portfolios(stored) == expected_portfolios(expected) == {}
