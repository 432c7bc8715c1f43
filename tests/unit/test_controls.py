"""Issue 11's controls as a bot and a symbol hold them: check order, counts, persistence."""

from __future__ import annotations

import msgspec

from tests.support.builders import DAY0, MIDNIGHT, T0, config, intent
from worker.config import BotSettings, CooldownConfig, OrdersConfig, bot_settings
from worker.core.controls import (
    BotControls,
    BotControlsSnapshot,
    Kill,
    SymbolControls,
    SymbolControlsSnapshot,
    position_unrealised,
    total_unrealised,
)
from worker.core.marks import MarkTable
from worker.core.orders import Denial
from worker.core.position import Position
from worker.messages import Block, Mark

DAY_MS = 86_400_000
ALL_ON = """
[defaults.orders]
max_qty = 10.0
max_notional = 5000.0
price_collar_bps = 100.0
max_orders_per_sec = 2
duplicate_window_ms = 500
[defaults.portfolio]
max_drawdown = 50.0
max_daily_notional = 1000.0
[bots.alpha]
"""


def gate(denial: Denial | None) -> str | None:
    return None if denial is None else denial.gate


def settings(toml: str = ALL_ON) -> BotSettings:
    s = bot_settings(config(toml), "alpha")
    assert s is not None
    return s


def test_sanity_checks_answer_in_contract_order() -> None:
    bot = BotControls(settings(), DAY0)
    cfg = settings().orders
    big_far = intent(qty=11.0, price=200.0)
    assert gate(bot.sanity(big_far, cfg, 100.0, T0)) == "max_order_qty"
    notional = intent(qty=10.0, price=600.0)
    assert gate(bot.sanity(notional, cfg, 100.0, T0)) == "max_order_notional"
    far = intent(qty=1.0, price=102.0)
    assert gate(bot.sanity(far, cfg, 100.0, T0)) == "price_collar"
    assert gate(bot.sanity(far, cfg, None, T0)) == "stale_mark"
    ok = intent(qty=1.0, price=100.0)
    assert bot.sanity(ok, cfg, 100.0, T0) is None
    bot.allowed(ok, cfg, T0)
    assert gate(bot.sanity(intent(qty=1.0, price=100.0), cfg, 100.0, T0 + 499)) == "duplicate_order"
    bot.allowed(intent(qty=2.0, price=100.0), cfg, T0 + 1)
    assert gate(bot.sanity(intent(qty=3.0, price=100.0), cfg, 100.0, T0 + 999)) == "order_rate"


def test_allowed_opens_spend_the_daily_notional_and_closes_do_not() -> None:
    bot = BotControls(settings(), DAY0)
    cfg = settings().orders
    bot.allowed(intent("open", qty=5.0, price=100.0), cfg, T0)
    bot.allowed(intent("close", "sell", qty=5.0, price=100.0), cfg, T0 + 2_000)
    assert bot.notional.snapshot() == (DAY0, 500.0)
    assert bot.notional.check(500.0) is None
    assert gate(bot.notional.check(501.0)) == "daily_notional"


def test_bot_blocks_in_gate_order_and_rollover() -> None:
    bot = BotControls(settings(), DAY0)
    bot.kill = Kill("runaway", "ops", T0)
    bot.unreadable = True
    bot.drawdown.observe(-50.0, T0)
    assert [b.gate for b in bot.blocks()] == ["kill_switch", "unreadable_state", "drawdown"]
    assert bot.blocks()[0] == Block("kill_switch", "killed by ops: runaway", None)
    assert bot.blocks()[2] == Block(
        "drawdown", "equity fell 50 below the day's peak 0.00", MIDNIGHT + DAY_MS
    )
    assert bot.tick(MIDNIGHT + DAY_MS, -7.0) is True
    assert [b.gate for b in bot.blocks()] == ["kill_switch", "unreadable_state"]
    assert bot.drawdown.peak == -7.0


def test_bot_controls_snapshot_round_trip_through_json() -> None:
    s = settings()
    bot = BotControls(s, DAY0)
    bot.kill = Kill("r", "ops", T0)
    bot.drawdown.observe(20.0, T0)
    bot.allowed(intent(qty=1.0, price=100.0), s.orders, T0)
    wire = msgspec.json.encode(bot.snapshot())
    again = BotControls(s, 0)
    again.restore(msgspec.json.decode(wire, type=BotControlsSnapshot))
    assert again.snapshot() == bot.snapshot()
    assert again.snapshot().notional_total == 100.0


def test_an_old_snapshot_without_controls_restores_everything_off() -> None:
    bot = BotControls(settings(), DAY0)
    bot.restore(BotControlsSnapshot())
    assert (bot.kill, bot.unreadable, bot.blocks(), bot.notional.snapshot()) == (
        None,
        False,
        [],
        (DAY0, 0.0),
    )


def test_symbol_controls_persist_only_when_something_is_on() -> None:
    sym = SymbolControls(CooldownConfig(after_loss_secs=60))
    assert sym.snapshot() is None
    sym.cooldown.record_loss(T0)
    assert sym.cooldown_block() == Block(
        "loss_cooldown", "cooling down 60s after a losing trade", T0 + 60_000
    )
    snap = sym.snapshot()
    assert snap == SymbolControlsSnapshot(cooldown_until_ms=T0 + 60_000)
    again = SymbolControls(CooldownConfig(after_loss_secs=60))
    again.restore(snap)
    assert again.cooldown.until_ms == T0 + 60_000
    again.restore(None)
    assert again.cooldown_block() is None


def test_unrealised_from_the_latest_mark_and_zero_without_one() -> None:
    marks = MarkTable()
    marks.apply(Mark(symbol="BTCUSDT", price=90.0, ts=T0))
    long_btc, short_eth = Position(), Position()
    long_btc.apply(2.0, 100.0, 0.0, 1.0)
    short_eth.apply(-1.0, 50.0, 0.0, 1.0)
    assert position_unrealised("BTCUSDT", long_btc, marks) == -20.0
    assert position_unrealised("ETHUSDT", short_eth, marks) == 0.0
    marks.apply(Mark(symbol="ETHUSDT", price=40.0, ts=T0))
    assert total_unrealised([("BTCUSDT", long_btc), ("ETHUSDT", short_eth)], marks) == -10.0


def test_orders_config_default_sanity_passes_everything() -> None:
    bot = BotControls(settings("[bots.alpha]\n"), DAY0)
    assert bot.sanity(intent(qty=1e9, price=1e5), OrdersConfig(), None, T0) is None
