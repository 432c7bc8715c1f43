"""Issue 11 through the broker: marks restored before ready, a mark move that halts a bot
holding a losing position, and a kill that denies a close and asks to cancel orders."""

from __future__ import annotations

import msgspec
import pytest
from prometheus_client import generate_latest

from tests.integration.test_bypass_shell_broker import produce_undecodable_header
from tests.support.harness import (
    Raw,
    clock,
    create_topics,
    make_config,
    produce,
    produce_events,
    read_topic,
    running_worker,
    wait_processed,
    wait_until,
)
from worker.messages import (
    ControlCommand,
    Event,
    Fill,
    GateDecision,
    HaltEvent,
    Mark,
    OrderIntent,
)

pytestmark = pytest.mark.broker

BODY = """
[bots.alpha]
pnl_source = "fills"
symbols = ["BTCUSDT"]
[bots.alpha.portfolio]
max_daily_loss = -100.0
"""
encode = msgspec.json.encode


def mark_record(topic: str, price: float, ts: int) -> Raw:
    return Raw(topic, b"BTCUSDT", encode(Mark("BTCUSDT", price, ts)))


async def test_marks_are_restored_before_ready_and_a_mark_move_halts_a_losing_bot(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(kafka_bootstrap, BODY)
    await create_topics(config)
    marks = config.topics.marks
    t = clock() - 60_000
    await produce(config.kafka, [Raw(marks, b"BTCUSDT", b"{not json")])
    # A record the client cannot decode wedged the history read (never ready) before.
    good = encode(Mark("BTCUSDT", 100.0, t))
    await produce_undecodable_header(config, marks, b"BTCUSDT", good, monkeypatch)
    await produce(config.kafka, [mark_record(marks, 100.0, t)])
    buy = Fill("f-1", "alpha", "BTCUSDT", "buy", 2.0, 100.0, 0.0, t + 1)
    async with running_worker(config) as running:
        # Ready means the mark table holds the topic's history; bad marks are counted.
        assert running.worker.engine.marks.latest("BTCUSDT") == (100.0, t)
        scraped = generate_latest(running.worker.metrics.registry).decode()
        assert 'riskgate_marks_ignored_total{reason="malformed_json"} 1.0' in scraped
        assert 'riskgate_marks_ignored_total{reason="undecodable_record"} 1.0' in scraped
        produced = await produce_events(config, [buy])
        await wait_processed(config, produced, alive=running.check_alive)
        await produce(config.kafka, [mark_record(marks, 49.0, t + 2)])

        async def halted() -> bool:
            return any(
                msgspec.json.decode(r.value or b"", type=HaltEvent).gate == "portfolio_daily_loss"
                for r in await read_topic(config.kafka, config.topics.halts)
            )

        await wait_until(halted, within=20.0, what="daily-loss halt", alive=running.check_alive)
    events = [
        msgspec.json.decode(r.value or b"", type=HaltEvent)
        for r in await read_topic(config.kafka, config.topics.halts)
    ]
    assert [(e.kind, e.gate, e.event_id, e.ts) for e in events] == [
        ("halted", "portfolio_daily_loss", "alpha/*/portfolio_daily_loss/1", t + 2)
    ]


async def test_a_kill_denies_a_close_and_publishes_cancel_open_orders(
    kafka_bootstrap: str,
) -> None:
    config = make_config(kafka_bootstrap, BODY)
    await create_topics(config)
    t = clock()
    # One topic after the other: the worker orders records within a partition only.
    steps: list[Event] = [
        Fill("f-1", "alpha", "BTCUSDT", "buy", 2.0, 100.0, 0.0, t),
        ControlCommand("kill", "alpha", None, "runaway", "ops", t + 1),
        OrderIntent("i-1", "alpha", "BTCUSDT", "close", "sell", 1.0, 100.0, t + 2),
    ]
    async with running_worker(config) as running:
        for event in steps:
            produced = await produce_events(config, [event])
            await wait_processed(config, produced, alive=running.check_alive)
    decisions = [
        msgspec.json.decode(r.value or b"", type=GateDecision)
        for r in await read_topic(config.kafka, config.topics.decisions)
    ]
    assert [(d.intent_id, d.allowed, d.gate) for d in decisions] == [("i-1", False, "kill_switch")]
    halts = [
        msgspec.json.decode(r.value or b"", type=HaltEvent)
        for r in await read_topic(config.kafka, config.topics.halts)
    ]
    assert [(h.kind, h.gate, h.cancel_open_orders, h.issued_by) for h in halts] == [
        ("killed", "kill_switch", True, "ops")
    ]
