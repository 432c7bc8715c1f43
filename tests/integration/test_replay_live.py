"""Replay = live: the worker's halts on a recorded stream are exactly what `riskgate replay`
finds replaying the same records from the topics (issue 12).

The worker runs in-process on the embedded broker with a stepped clock that,
like the replay's, only ever reads record times and the ``until_ts`` of the
halts it published. Each step: move the clock, wait until the worker swept
at that time, produce the step's records stamped with it (the Kafka record
timestamp), wait until the worker applied them. Then the replay reads the
topics between the first and last record time (read only, no group) and must
publish the same halt events - ids, times, reasons, until_ts - and the same
decisions. The stream crosses 00:00 UTC and trips every data- and clock-driven
gate on the way.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from tests.support.harness import (
    DAY_MS,
    MIN_MS,
    Produced,
    config_text,
    create_topics,
    read_values,
    running_worker,
    wait_processed,
    wait_until,
)
from worker.config import Config, load_config
from worker.core import Effects, Origin, RiskEngine
from worker.kafka.options import client_kwargs
from worker.messages import (
    ControlCommand,
    Event,
    Fill,
    GateDecision,
    HaltEvent,
    OrderIntent,
    Side,
    TradeOutcome,
)
from worker.replay.inputs import read_topics
from worker.replay.run import replay

pytestmark = pytest.mark.broker

BODY = """
[defaults.session]
loss_limit = -40.0
[defaults.breaker]
loss_limit = 3
window_secs = 1800
cooldown_secs = 900
[worker]
sweep_interval_ms = 1
poll_timeout_ms = 10  # each of ~140 clock steps waits for a loop turn (default 100 ms)
[bots.alpha]
symbols = ["X", "Y"]
[bots.alpha.portfolio]
max_daily_loss = -70.0
max_gross_exposure = 250.0
[bots.beta]
pnl_source = "fills"
"""
START = 20_254 * DAY_MS + 21 * 3_600_000  # 21:00 UTC: the stream runs past midnight


def stream(seed: int = 12) -> list[Event]:
    """~70 events a few minutes apart: outcomes, fills, intents and a manual halt/resume."""
    rng = random.Random(seed)
    events: list[Event] = []
    t = START
    price = 100.0
    beta_long = False
    for i in range(70):
        t += rng.randint(1, 8) * MIN_MS + rng.randint(0, 59_999)
        roll = rng.random()
        if i == 20:
            events.append(
                ControlCommand(
                    command="halt", bot="alpha", symbol="Y", reason="desk", issued_by="op", ts=t
                )
            )
        elif i == 34:
            events.append(
                ControlCommand(
                    command="resume", bot="alpha", symbol="Y", reason="ok", issued_by="op", ts=t
                )
            )
        elif roll < 0.5:
            symbol = rng.choice(["X", "Y"])
            gross = round(rng.uniform(-25.0, 15.0), 2)
            events.append(
                TradeOutcome(
                    outcome_id=f"o{i}", bot="alpha", symbol=symbol, gross_pnl=gross, fee=0.5, ts=t
                )
            )
        elif roll < 0.8:
            price = round(price + rng.uniform(-12.0, 8.0), 2)
            side: Side = "sell" if beta_long else "buy"
            beta_long = not beta_long
            events.append(
                Fill(
                    fill_id=f"f{i}",
                    bot="beta",
                    symbol="Z",
                    side=side,
                    qty=1.0,
                    price=max(price, 1.0),
                    fee=0.1,
                    ts=t,
                )
            )
        else:
            events.append(
                OrderIntent(
                    intent_id=f"i{i}",
                    bot="alpha",
                    symbol=rng.choice(["X", "Y"]),
                    action="open",
                    side="buy",
                    qty=1.0,
                    price=100.0,
                    ts=t,
                )
            )
    return events


def topic_of(config: Config, event: Event) -> str:
    t = config.topics
    return {
        Fill: t.fills,
        TradeOutcome: t.outcomes,
        OrderIntent: t.intents,
        ControlCommand: t.control,
    }[type(event)]


class StepClock:
    """The worker's wall clock: it reads whatever the test last set."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Recorder:
    """Instruments the worker's engine (test-only): the times it swept, records applied,
    and the halts both produced, so each step can wait for exactly what it needs."""

    def __init__(self, engine: RiskEngine) -> None:
        self.swept: set[int] = set()
        self.applied = 0
        self.until: list[int] = []
        apply, sweep = engine.apply, engine.sweep

        def recording_apply(
            event: Event,
            now_ms: int,
            origin: Origin | None = None,
            out: Effects | None = None,
            *,
            record_ts: int | None = None,
        ) -> Effects:
            before = len(out.halts) if out is not None else 0
            try:
                result = apply(event, now_ms, origin, out, record_ts=record_ts)
            finally:
                self.applied += 1
            self._note(result.halts[before:])
            return result

        def recording_sweep(now_ms: int, out: Effects | None = None) -> Effects:
            before = len(out.halts) if out is not None else 0
            result = sweep(now_ms, out)
            self._note(result.halts[before:])
            self.swept.add(now_ms)
            return result

        engine.apply = recording_apply  # type: ignore[method-assign]
        engine.sweep = recording_sweep  # type: ignore[method-assign]

    def _note(self, halts: list[HaltEvent]) -> None:
        for h in halts:
            if h.kind == "halted" and h.until_ts is not None:
                heapq.heappush(self.until, h.until_ts)


async def test_replaying_a_recorded_live_stream_reproduces_its_halts_exactly(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    config_path = tmp_path / "riskgate.toml"
    config_path.write_text(config_text(kafka_bootstrap, BODY, partitions=1))
    config = load_config(config_path, env={})
    await create_topics(config)
    events = stream()
    clock = StepClock(events[0].ts - MIN_MS)
    encode = msgspec.json.encode
    producer = AIOKafkaProducer(**client_kwargs(config.kafka), acks="all", linger_ms=0)
    await producer.start()
    produced = []
    try:
        async with running_worker(config, clock=clock) as running:
            rec = Recorder(running.worker.engine)
            alive = running.check_alive

            async def step_to(t: int) -> None:
                clock.now = t
                await wait_until(
                    _true(lambda: t in rec.swept),
                    within=20,
                    what=f"a sweep at {t}",
                    alive=alive,
                    interval=0.005,
                )

            for event in events:
                while rec.until and rec.until[0] <= event.ts:  # wake at due times, as the replay
                    due = heapq.heappop(rec.until)
                    if due > clock.now:
                        await step_to(due)
                await step_to(event.ts)
                target = rec.applied + 1
                meta = await (
                    await producer.send(
                        topic_of(config, event),
                        encode(event),
                        key=event.bot.encode(),
                        timestamp_ms=event.ts,
                    )
                )
                produced.append(meta)

                def applied(target: int = target) -> bool:
                    return rec.applied >= target

                await wait_until(
                    _true(applied),
                    within=20,
                    what="the record applied",
                    alive=alive,
                    interval=0.005,
                )
            # The clock goes on a second after the last record (due times first), so the
            # worker persists and commits; the replay sweeps to the same end.
            end = events[-1].ts + 1000
            while rec.until and rec.until[0] <= end:
                due = heapq.heappop(rec.until)
                if due > clock.now:
                    await step_to(due)
            await step_to(end)
            await wait_processed(
                config, [Produced(m.topic, m.partition, m.offset) for m in produced], alive=alive
            )
    finally:
        await producer.stop()

    live = await read_values(config.kafka, config.topics.halts, HaltEvent)
    decisions = await read_values(config.kafka, config.topics.decisions, GateDecision)

    records = await read_topics(config, events[0].ts, end)
    assert [r.time for r in records] == [e.ts for e in events]  # the record timestamps
    result = replay(config, records, with_origin=True, end_ms=end)

    assert result.halts == live
    assert result.rejected == Counter()
    live_decisions = Counter((d.bot, "allowed" if d.allowed else d.gate) for d in decisions)
    replayed = Counter({(bot, k): n for bot, c in result.decisions.items() for k, n in c.items()})
    assert replayed == live_decisions
    # The stream exercises every gate, data- and clock-driven, and the UTC rollover.
    seen = {(h.kind, h.gate, h.issued_by is not None) for h in live}
    assert seen >= {
        ("halted", "session_halt", False),
        ("halted", "circuit_breaker", False),
        ("resumed", "circuit_breaker", False),
        ("halted", "portfolio_daily_loss", False),
        ("resumed", "portfolio_daily_loss", False),
        ("halted", "manual_halt", True),
        ("resumed", "manual_halt", True),
    }, seen
    assert any(
        h.kind == "resumed" and h.gate == "session_halt" and h.ts % DAY_MS == 0 for h in live
    )

    # The command itself, on the same topics: report.json lists the same halt events.
    out = tmp_path / "report"
    args = ["--config", str(config_path), "--from-topics", "--start", str(events[0].ts)]
    args += ["--end", str(end), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker.cli", "replay", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reported = json.loads((out / "report.json").read_text())["halts"]
    assert reported == [msgspec.to_builtins(h) for h in live]


def _true(check: Callable[[], bool]) -> Callable[[], Any]:
    async def probe() -> bool:
        return check()

    return probe
