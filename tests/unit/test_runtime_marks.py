"""The mark feed (issue 11): every partition outside the group, restored before ready,
coalesced per symbol, bad records skipped; a mark reaches the engine in the next loop."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import msgspec
from aiokafka import TopicPartition

from tests.support.transport import Shell, broker_for
from worker.config import load_config
from worker.messages import ControlCommand, Fill, HaltEvent, Mark, OrderIntent
from worker.runtime.marks import MarkFeed

NOW = 1_767_225_600_000
encode = msgspec.json.encode


class Rec(NamedTuple):
    key: bytes | None
    value: bytes | None
    timestamp: int = NOW
    """The record's time (CreateTime), which a mark's future skew is judged against."""


def rec(symbol: str, price: float, ts: int = NOW, key: str | None = None) -> Rec:
    mark = Mark(symbol=symbol, price=price, ts=ts)
    return Rec((key or symbol).encode(), encode(mark))


class ListSource:
    def __init__(self, history: list[Any]) -> None:
        self._history = history

    async def history(self) -> list[Any]:
        return self._history

    async def follow(self) -> list[Any]:
        await asyncio.sleep(3600)
        return []

    async def close(self) -> None:
        pass


def test_pending_marks_coalesce_to_the_latest_per_symbol_and_bad_ones_are_counted() -> None:
    feed = MarkFeed(None)
    feed.take(
        [
            rec("BTC", 100.0, NOW + 5),
            rec("BTC", 90.0, NOW + 1),  # stamped earlier: the later one stays
            rec("ETH", 10.0),
            Rec(b"ETH", b"{not json"),
            rec("SOL", 1.0, key="BTC"),  # key is not its symbol
            Rec(b"SOL", b'{"symbol":"SOL","price":-1,"ts":1767225600000}'),
        ]
    )
    assert feed.drain() == [Mark("BTC", 100.0, NOW + 5), Mark("ETH", 10.0, NOW)]
    assert feed.drain() == []
    assert dict(feed.ignored) == {"malformed_json": 1, "key_mismatch": 1, "invalid_message": 1}


def test_a_mark_stamped_ahead_of_its_record_is_refused_so_it_cannot_freeze_the_price() -> None:
    feed = MarkFeed(None, max_future_skew_ms=60_000)
    feed.take([rec("BTC", 100.0, NOW + 60_000), rec("ETH", 10.0, NOW + 60_001)])
    assert feed.drain() == [Mark("BTC", 100.0, NOW + 60_000)]
    feed.take([rec("ETH", 10.0, NOW + 86_400_000 * 365)])  # a producer's clock a year ahead
    feed.take([rec("ETH", 9.0, NOW)])  # the correct mark after it is held
    assert feed.drain() == [Mark("ETH", 9.0, NOW)]
    assert dict(feed.ignored) == {"future_mark": 2}


async def test_restore_reads_the_history_before_it_reports_restored() -> None:
    feed = MarkFeed(ListSource([rec("BTC", 100.0)]))
    assert feed.restored is False
    await feed.restore()
    assert feed.restored is True
    assert feed.drain() == [Mark("BTC", 100.0, NOW)]
    await feed.close()


def test_without_a_marks_topic_the_feed_is_restored_and_empty() -> None:
    feed = MarkFeed(None)
    assert (feed.restored, feed.drain()) == (True, [])


CONFIG = """
[topics]
partitions = 1
[bots.alpha]
pnl_source = "fills"
[bots.alpha.portfolio]
max_daily_loss = -100.0
"""


async def test_a_mark_move_halts_a_bot_with_a_losing_open_position_in_one_iteration() -> None:
    cfg = load_config(text=CONFIG, env={})
    broker = broker_for(cfg, timestamp_ms=NOW)
    marks = TopicPartition(cfg.topics.marks, 0)
    broker.partitions[marks.topic] = 1
    broker.logs[marks] = []
    broker.append(marks.topic, b"BTCUSDT", encode(Mark("BTCUSDT", 100.0, NOW - 10)))
    buy = Fill("f-1", "alpha", "BTCUSDT", "buy", 2.0, 100.0, 0.0, NOW - 5)
    broker.append(cfg.topics.fills, b"alpha", encode(buy))
    with Shell(cfg, broker, NOW) as shell:
        worker = shell.start([0])
        assert await shell.idle()
        assert worker.engine.marks.latest("BTCUSDT") == (100.0, NOW - 10)  # restored
        assert worker.ready is True
        broker.append(marks.topic, b"BTCUSDT", encode(Mark("BTCUSDT", 49.0, NOW)))
        async with asyncio.timeout(5):  # the feed's task follows the topic on its own
            while worker.engine.marks.latest("BTCUSDT") != (49.0, NOW):  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        assert await shell.idle()
        halts = [
            msgspec.json.decode(r.value or b"", type=HaltEvent)
            for r in broker.logs[TopicPartition(cfg.topics.halts, 0)]
        ]
        assert [(h.kind, h.gate, h.event_id) for h in halts] == [
            ("halted", "portfolio_daily_loss", "alpha/*/portfolio_daily_loss/1")
        ]
        assert await shell.stop()


async def test_decisions_and_halts_are_counted_per_new_gate() -> None:
    """Metrics per gate (issue 11): a kill's event and the decisions it denies."""
    cfg = load_config(text=CONFIG, env={})
    broker = broker_for(cfg, timestamp_ms=NOW)
    kill = ControlCommand("kill", "alpha", None, "runaway", "ops", NOW - 3)
    broker.append(cfg.topics.control, b"alpha", encode(kill))
    with Shell(cfg, broker, NOW) as shell:
        worker = shell.start([0])
        assert await shell.idle()
        for n in range(2):
            i = OrderIntent(f"i-{n}", "alpha", "BTCUSDT", "open", "buy", 1.0, 100.0, NOW - 1)
            broker.append(cfg.topics.intents, b"alpha", encode(i))
        assert await shell.idle()
        registry = worker.metrics.registry
        assert registry.get_sample_value("riskgate_decisions_total", {"gate": "kill_switch"}) == 2
        halts = {"gate": "kill_switch", "kind": "killed"}
        assert registry.get_sample_value("riskgate_halts_total", halts) == 1
        assert await shell.stop()
