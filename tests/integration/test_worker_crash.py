"""Crash safety: SIGKILL the real worker process mid-stream, restart it, lose nothing.

Several thousand outcomes for a few bots and symbols, ~10% of them re-sent by
the "producer" under a new offset (same ``outcome_id``). The worker process is
killed with SIGKILL while it consumes, the rest of the stream is produced while
it is down, and a new process finishes it. The persisted state must equal the
reference model's (``tests/support/model.py``, from the same input): nothing
lost, nothing counted twice, every duplicate counted once. Halt events may
repeat (outputs are at-least-once) but only with the model's deterministic ids
and content.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.support.compare import total_trades
from tests.support.harness import (
    MIN_MS,
    Feed,
    WorkerProcess,
    as_raw,
    committed_offsets,
    config_text,
    create_topics,
    expected_halts,
    expected_portfolios,
    expected_snapshots,
    latest,
    now_ms,
    outcome,
    persisted_portfolios,
    persisted_snapshots,
    produced_ends,
    published_halts,
    read_topic,
    reference,
    rewind_commits,
    same_day_window,
    wait_processed,
    wait_until,
)
from worker.config import load_config
from worker.messages import TradeOutcome

pytestmark = pytest.mark.broker

BOTS = ("bot1", "bot2", "bot3", "bot5")  # input partitions 0, 1, 2 and 3 of 4
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
UNIQUE_EVENTS = 4_000

_SYMBOLS_TOML = ", ".join(f'"{s}"' for s in SYMBOLS)
BODY = """
[defaults.session]
loss_limit = -300.0
[defaults.breaker]
loss_limit = 40
window_secs = 14400
cooldown_secs = 7200
""" + "".join(f"[bots.{bot}]\nsymbols = [{_SYMBOLS_TOML}]\n" for bot in BOTS)


def stream_with_duplicates(seed: int) -> list[TradeOutcome]:
    """Outcomes over the last 40 minutes of today (UTC); ~10% re-sent 1-20 records later.

    All of today: the worker process runs on the real clock, and its sweep would
    roll yesterday's sessions over at once (the reference never sweeps).
    """
    rng = random.Random(seed)
    start, now = same_day_window(40 * MIN_MS)
    step = (now - start) / UNIQUE_EVENTS
    stream: list[TradeOutcome] = []
    resend: dict[int, list[TradeOutcome]] = {}
    for i in range(UNIQUE_EVENTS):
        bot, symbol = rng.choice(BOTS), rng.choice(SYMBOLS)
        event = outcome(
            bot,
            symbol,
            round(rng.uniform(-10.0, 8.0), 2),
            round(rng.uniform(0.0, 0.5), 2),
            ts=start + int(i * step),
            outcome_id=f"{bot}-{symbol}-{i}",
        )
        stream.append(event)
        if rng.random() < 0.1:
            resend.setdefault(i + rng.randint(1, 20), []).append(event)
        stream.extend(resend.pop(i, ()))
    for late in resend.values():
        stream.extend(late)
    return stream


async def test_sigkill_mid_stream_then_restart_loses_and_double_counts_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    config_path = tmp_path / "riskgate.toml"
    config_path.write_text(config_text(kafka_bootstrap, BODY))
    config = load_config(config_path, env={})
    await create_topics(config)
    stream = stream_with_duplicates(seed=7)
    duplicates = len(stream) - len({e.outcome_id for e in stream})
    assert (len(stream), duplicates) == (4_386, 386)  # seed 7: ~10% re-sent
    records = [as_raw(config, e) for e in stream]
    first, second, third = records[:1500], records[1500:3000], records[3000:]

    worker = WorkerProcess(config_path, tmp_path / "worker.log")
    try:
        async with Feed(config.kafka) as feed:
            produced = await feed.send(first)
            worker.start()

            async def started_committing() -> bool:
                committed = await committed_offsets(
                    config.kafka, config.kafka.group_id, produced_ends(produced)
                )
                return any(committed.values())

            await wait_until(
                started_committing,
                within=30,
                what="the worker to commit its first batch",
                alive=worker.check_alive,
            )
            # Keep feeding while it consumes; kill it in the middle of the second part.
            for chunk_start in range(0, len(second), 50):
                produced += await feed.send(second[chunk_start : chunk_start + 50])
                if chunk_start == 750:
                    worker.check_alive()
                    worker.kill()
            assert worker.proc is not None and worker.proc.returncode == -9
            killed_at = await committed_offsets(
                config.kafka, config.kafka.group_id, produced_ends(produced)
            )
            produced += await feed.send(third)

        total = sum(produced_ends(produced).values())
        assert 0 < sum(killed_at.values()) < total, "the kill must land mid-stream"
        # Also lose half of what was committed (as failed commits would): the records
        # in between were applied and persisted for sure, so they must be replayed
        # and skipped - whatever moment the SIGKILL happened to hit.
        rewound = {tp: offset // 2 for tp, offset in killed_at.items()}
        await rewind_commits(config, rewound)
        surely_applied = sum(killed_at[tp] - rewound[tp] for tp in killed_at)
        assert surely_applied > 100

        worker.start()
        await wait_processed(config, produced, alive=worker.check_alive, within=60)
        metrics = await worker.metrics()
        assert worker.terminate() == 0, worker.log_tail()  # SIGTERM: a clean shutdown
    finally:
        worker.kill()
    assert len(worker.runs) == 2
    outcomes = config.topics.outcomes
    skipped = metrics[
        ("riskgate_events_consumed_total", (("result", "skipped"), ("topic", outcomes)))
    ]
    assert skipped >= surely_applied

    expected = reference(config, stream, now_ms())
    stored = await latest(config.kafka, config.topics.snapshots)
    assert persisted_snapshots(stored) == expected_snapshots(expected)
    assert persisted_portfolios(stored) == expected_portfolios(expected) == {}
    assert total_trades(expected) == UNIQUE_EVENTS  # the model itself counts duplicates once

    # Halts: at-least-once, but exactly the model's events under their deterministic ids.
    halts = published_halts(await read_topic(config.kafka, config.topics.halts))
    predicted = {h.event_id: h for h in expected_halts(expected)}
    assert set(predicted) == {h.event_id for h in halts}
    assert all(h == predicted[h.event_id] for h in halts)
    assert {h.gate for h in halts} == {"circuit_breaker", "session_halt"}
