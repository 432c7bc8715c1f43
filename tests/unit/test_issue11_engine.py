"""Issue 11 through the engine: kill switch, order checks, marks, equity limits, drawdown,
after-loss cooldown, unreadable state, and the contract's gate order."""

from __future__ import annotations

import msgspec
import pytest

from tests.support.builders import (
    DAY_MS,
    MIDNIGHT,
    T0,
    account_record,
    control,
    engine,
    fill,
    intent,
    outcome,
    symbol_record,
)
from worker import signing
from worker.core import Effects, RiskEngine
from worker.errors import Rejected
from worker.messages import HaltEvent, Mark

BOT = """
[bots.alpha]
pnl_source = "fills"
[bots.alpha.session]
loss_limit = -1000000.0
"""


def eng(extra: str = "") -> RiskEngine:
    return engine(BOT + extra)


def mark(price: float, ts: int = T0, symbol: str = "BTCUSDT") -> Mark:
    return Mark(symbol=symbol, price=price, ts=ts)


def gates_of(out: Effects) -> list[str | None]:
    return [d.gate for d in out.decisions]


def ask(
    e: RiskEngine, *intents: object, now: int = T0, record_ts: int | None = None
) -> list[str | None]:
    out = Effects()
    for i in intents:
        e.apply(i, now, out=out, record_ts=record_ts)  # type: ignore[arg-type]
    return gates_of(out)


def events(out: Effects) -> list[tuple[str, str | None, str, str]]:
    return [(h.kind, h.symbol, h.gate, h.event_id) for h in out.halts]


def long_btc(e: RiskEngine, qty: float = 2.0, price: float = 100.0) -> None:
    e.apply(fill("buy", qty, price), T0)


# -- the kill switch ------------------------------------------------------------------


def test_a_retried_intent_allowed_before_a_kill_is_denied_by_the_kill_switch() -> None:
    e = eng()
    first = intent(ts=T0)
    (allowed,) = e.apply(first, T0).decisions
    assert (allowed.allowed, allowed.gate) == (True, None)
    e.apply(control("kill", symbol=None, ts=T0 + 1), T0 + 1)
    (retry,) = e.apply(first, T0 + 2).decisions
    assert (retry.allowed, retry.gate, retry.ts) == (False, "kill_switch", T0 + 2)
    e.apply(control("resume", symbol=None, ts=T0 + 3), T0 + 3)
    (after,) = e.apply(first, T0 + 4).decisions
    assert after == allowed  # the first answer again: the kill denial was not remembered


def test_a_bot_kill_denies_every_intent_closes_included_and_asks_to_cancel_orders() -> None:
    e = eng()
    long_btc(e)
    kill = control("kill", symbol=None, ts=T0 + 1)
    out = e.apply(kill, T0 + 1)
    digest = signing.command_digest(kill)
    assert out.halts == [
        HaltEvent(
            event_id=f"alpha/*/kill_switch/cmd-{digest}",
            bot="alpha",
            symbol=None,
            kind="killed",
            gate="kill_switch",
            reason="kill by alice: ops",
            ts=T0 + 1,
            issued_by="alice",
            cancel_open_orders=True,
        )
    ]
    assert ask(e, intent("open"), intent("close", "sell", 1.0)) == ["kill_switch", "kill_switch"]
    assert [b.gate for b in account_record(e).blocks] == ["kill_switch"]
    assert account_record(e).entries_allowed is False


def test_resume_lifts_the_kill_and_the_halt_with_one_event_each() -> None:
    e = eng()
    e.apply(control("halt", symbol=None, ts=T0), T0)
    e.apply(control("kill", symbol=None, ts=T0 + 1), T0 + 1)
    out = e.apply(control("resume", symbol=None, ts=T0 + 2), T0 + 2)
    assert [(k, g) for k, _, g, _ in events(out)] == [
        ("resumed", "kill_switch"),
        ("resumed", "manual_halt"),
    ]
    assert all(h.cancel_open_orders is False for h in out.halts)
    assert ask(e, intent("open"), now=T0 + 3) == [None]


def test_a_symbol_kill_blocks_that_symbol_only_and_a_repeat_kill_is_acknowledged() -> None:
    e = eng()
    long_btc(e)
    assert [k for k, *_ in events(e.apply(control("kill", ts=T0 + 1), T0 + 1))] == ["killed"]
    assert [k for k, *_ in events(e.apply(control("kill", ts=T0 + 2), T0 + 2))] == ["killed"]
    assert ask(e, intent("close", "sell", 1.0), intent("open", symbol="ETHUSDT")) == [
        "kill_switch",
        None,
    ]
    assert [b.gate for b in symbol_record(e).blocks] == ["kill_switch"]


# -- order sanity -----------------------------------------------------------------------

ORDERS = """
[defaults.orders]
max_qty = 5.0
max_notional = 1000.0
max_orders_per_sec = 2
duplicate_window_ms = 1000
"""


def test_order_sanity_applies_to_closes_and_runs_before_the_close_bypass() -> None:
    e = eng(ORDERS)
    long_btc(e, 8.0, 100.0)
    e.apply(control("halt", symbol=None), T0)
    # A halted bot still lets reducing closes through, but never a fat-fingered one.
    assert ask(e, intent("close", "sell", 6.0)) == ["max_order_qty"]
    assert ask(e, intent("close", "sell", 5.0, 201.0)) == ["max_order_notional"]
    assert ask(e, intent("close", "sell", 1.0)) == [None]


def test_order_rate_counts_allowed_intents_on_record_time() -> None:
    e = eng(ORDERS)
    assert ask(e, intent(qty=1.0), record_ts=T0) == [None]
    assert ask(e, intent(qty=2.0), record_ts=T0 + 10) == [None]
    # The wall clock is far ahead: only the record time counts (replays decide alike).
    assert ask(e, intent(qty=3.0), now=T0 + 5_000, record_ts=T0 + 999) == ["order_rate"]
    assert ask(e, intent(qty=3.0), now=T0 + 5_000, record_ts=T0 + 1_000) == [None]


def test_duplicate_order_within_the_window_is_denied() -> None:
    e = eng(ORDERS)
    assert ask(e, intent(qty=1.0, price=100.0), record_ts=T0) == [None]
    assert ask(e, intent(qty=1.0, price=100.0), record_ts=T0 + 2_000) == [None]
    assert ask(e, intent(qty=1.0, price=100.0), record_ts=T0 + 2_999) == ["duplicate_order"]


def test_daily_notional_counts_allowed_opens_until_the_wall_clock_rollover() -> None:
    e = eng("[defaults.portfolio]\nmax_daily_notional = 250.0\n")
    assert ask(e, intent(qty=2.0, price=100.0), intent(qty=1.0, price=50.0)) == [None, None]
    assert ask(e, intent(qty=0.01, price=100.0)) == ["daily_notional"]
    e.sweep(MIDNIGHT + DAY_MS)
    tomorrow = MIDNIGHT + DAY_MS + 1
    assert ask(e, intent(qty=2.5, price=100.0, ts=tomorrow), now=tomorrow) == [None]


# -- marks ----------------------------------------------------------------------------------


def test_price_collar_needs_a_fresh_mark() -> None:
    e = eng("[defaults.orders]\nprice_collar_bps = 100.0\nmark_max_age_ms = 5000\n")
    assert ask(e, intent(price=100.0)) == ["stale_mark"]  # no mark yet
    e.apply_mark(mark(100.0, T0))
    assert ask(e, intent(price=101.0), intent(price=101.5)) == [None, "price_collar"]
    assert ask(e, intent(price=100.0), now=T0 + 5_001) == ["stale_mark"]


def test_a_mark_move_latches_the_daily_loss_of_a_bot_with_a_losing_open_position() -> None:
    e = eng("[bots.alpha.portfolio]\nmax_daily_loss = -100.0\n")
    long_btc(e, 2.0, 100.0)
    assert e.apply_mark(mark(60.0, T0 + 1)).halts == []  # -80
    out = e.apply_mark(mark(50.0, T0 + 2))  # -100: reached
    assert events(out) == [
        ("halted", None, "portfolio_daily_loss", "alpha/*/portfolio_daily_loss/1")
    ]
    assert out.halts[0].reason == "equity (with unrealised PnL) reached max daily loss -100"
    assert e.apply_mark(mark(200.0, T0 + 3)).halts == []  # latched for the day
    assert ask(e, intent(), now=T0 + 4) == ["portfolio_daily_loss"]
    acc = account_record(e, T0 + 4)
    assert (acc.unrealised_pnl, acc.equity, acc.account_net_pnl) == (200.0, 200.0, 0.0)


def test_realised_only_daily_loss_ignores_marks() -> None:
    e = eng("[bots.alpha.portfolio]\nmax_daily_loss = -100.0\ninclude_unrealised = false\n")
    long_btc(e, 2.0, 100.0)
    assert e.apply_mark(mark(1.0, T0 + 1)).halts == []
    assert ask(e, intent(), now=T0 + 2) == [None]


def test_gate_records_carry_the_mark_unrealised_pnl_and_mark_exposure() -> None:
    e = eng()
    e.apply(fill("sell", 2.0, 100.0), T0)  # short 2 @ 100
    e.apply_mark(mark(90.0, T0 + 1))
    sym = symbol_record(e)
    assert (sym.mark, sym.unrealised_pnl) == (90.0, 20.0)
    acc = account_record(e)
    assert (acc.gross_exposure, acc.unrealised_pnl, acc.equity) == (180.0, 20.0, 20.0)


def test_an_older_mark_changes_nothing_and_marks_create_no_state() -> None:
    e = eng()
    e.apply_mark(mark(90.0, T0 + 10))
    assert e.apply_mark(mark(10.0, T0)).dirty_symbols == set()
    assert e.marks.latest("BTCUSDT") == (90.0, T0 + 10)
    assert e.bot_ids() == set()


def test_a_stale_mark_of_an_open_position_fails_opens_closed_when_equity_counts() -> None:
    e = eng("[bots.alpha.portfolio]\nmax_daily_loss = -100.0\n")
    long_btc(e)
    e.apply_mark(mark(100.0, T0))
    at, late = T0 + 60_000, T0 + 60_001
    assert ask(e, intent(symbol="ETHUSDT", ts=at), now=at) == [None]
    assert ask(e, intent(symbol="ETHUSDT", ts=late), now=late) == ["stale_mark"]
    assert ask(e, intent("close", "sell", 1.0, ts=late), now=late) == [None]


def test_session_include_unrealised_halts_the_symbol_on_a_mark() -> None:
    e = eng(
        "[bots.alpha.overrides.BTCUSDT.session]\nloss_limit = -30.0\ninclude_unrealised = true\n"
    )
    long_btc(e, 1.0, 100.0)
    out = e.apply_mark(mark(70.0, T0 + 1))
    assert events(out) == [("halted", "BTCUSDT", "session_halt", "alpha/BTCUSDT/session_halt/1")]


# -- drawdown -----------------------------------------------------------------------------


def test_drawdown_latches_below_the_days_equity_peak_and_the_rollover_releases_it() -> None:
    e = eng("[bots.alpha.portfolio]\nmax_drawdown = 50.0\n")
    long_btc(e, 1.0, 100.0)
    e.apply_mark(mark(180.0, T0 + 1))  # equity 80: the peak
    assert e.apply_mark(mark(131.0, T0 + 2)).halts == []  # 49 below
    out = e.apply_mark(mark(130.0, T0 + 3))
    assert events(out) == [("halted", None, "drawdown", "alpha/*/drawdown/1")]
    assert out.halts[0].until_ts == MIDNIGHT + DAY_MS
    assert ask(e, intent(symbol="ETHUSDT"), now=T0 + 4) == ["drawdown"]
    assert ask(e, intent("close", "sell", 1.0), now=T0 + 4) == [None]
    swept = e.sweep(MIDNIGHT + DAY_MS)
    assert [(k, g) for k, _, g, _ in events(swept)] == [("resumed", "drawdown")]


def test_a_mark_of_yesterday_arriving_after_the_rollover_revalues_but_latches_no_drawdown() -> None:
    e = eng("[bots.alpha.portfolio]\nmax_drawdown = 50.0\n")
    long_btc(e, 1.0, 100.0)
    e.apply_mark(mark(180.0, MIDNIGHT + DAY_MS - 10_000))  # equity 80 yesterday
    e.sweep(MIDNIGHT + DAY_MS + 5)  # today opens at equity 80, the peak
    late = e.apply_mark(mark(100.0, MIDNIGHT + DAY_MS - 5_000))  # stamped yesterday
    assert late.halts == []
    record = account_record(e, MIDNIGHT + DAY_MS + 6)
    assert (record.equity, [b.gate for b in record.blocks]) == (0.0, [])
    out = e.apply_mark(mark(100.0, MIDNIGHT + DAY_MS + 7))  # the same price, stamped today
    assert events(out) == [("halted", None, "drawdown", "alpha/*/drawdown/1")]


# -- after-loss cooldown --------------------------------------------------------------------


def test_a_losing_trade_blocks_entries_on_its_symbol_until_the_sweep_ends_the_cooldown() -> None:
    e = engine(
        "[defaults]\naccept_unknown_bots = true\n[defaults.cooldown]\nafter_loss_secs = 600\n"
    )
    out = e.apply(outcome(-5.0, ts=T0), T0)
    assert events(out) == [("halted", "BTCUSDT", "loss_cooldown", "alpha/BTCUSDT/loss_cooldown/1")]
    assert out.halts[0].until_ts == T0 + 600_000
    assert ask(e, intent(), intent(symbol="ETHUSDT")) == ["loss_cooldown", None]
    assert e.sweep(T0 + 599_999).halts == []
    assert events(e.sweep(T0 + 600_000)) == [
        ("resumed", "BTCUSDT", "loss_cooldown", "alpha/BTCUSDT/loss_cooldown/2")
    ]
    assert ask(e, intent(ts=T0 + 600_001), now=T0 + 600_001) == [None]


# -- unreadable state -----------------------------------------------------------------------


def test_an_unreadable_snapshot_blocks_the_bot_until_reset_state_with_halt() -> None:
    e = eng("[worker]\non_unreadable_state = 'halt'\n")
    out = Effects()
    ignored = e.restore({"alpha/risk/BTCUSDT": b"{not json"}, T0, out)
    assert [k for k, _ in ignored] == ["alpha/risk/BTCUSDT"]
    assert events(out) == [("halted", None, "unreadable_state", "alpha/*/unreadable_state/1")]
    assert ask(e, intent()) == ["unreadable_state"]
    reset = control("reset_state", symbol=None, ts=T0 + 1)
    lifted = e.apply(reset, T0 + 1)
    assert [(k, g) for k, _, g, _ in events(lifted)] == [("resumed", "unreadable_state")]
    assert ask(e, intent(), now=T0 + 2) == [None]


def test_the_unreadable_flag_survives_a_restart_until_reset() -> None:
    e = eng("[worker]\non_unreadable_state = 'halt'\n")
    e.restore({"alpha/portfolio": b'{"version": 99}'}, T0, Effects())
    (snap,) = e.snapshots(_dirty_bot())
    again = eng("[worker]\non_unreadable_state = 'halt'\n")
    again.restore({"alpha/portfolio": msgspec.json.encode(snap.portfolio)}, T0 + 1, Effects())
    assert ask(again, intent(), now=T0 + 2) == ["unreadable_state"]


def test_fresh_keeps_the_seeds_behaviour_and_reset_state_needs_a_bot_target() -> None:
    e = eng()
    e.restore({"alpha/risk/BTCUSDT": b"{not json"}, T0, Effects())
    assert ask(e, intent()) == [None]
    with pytest.raises(Rejected) as refused:
        e.apply(control("reset_state", symbol="BTCUSDT"), T0)
    assert refused.value.reason == "invalid_message"


def _dirty_bot() -> Effects:
    dirty = Effects()
    dirty.dirty_bots.add("alpha")
    return dirty


# -- the contract's gate order ------------------------------------------------------------


def test_gate_order_kill_then_sanity_then_state_gates() -> None:
    e = eng(ORDERS + "[bots.alpha.portfolio]\nmax_daily_notional = 1.0\n")
    big = intent(qty=50.0)
    e.apply(control("halt", symbol=None), T0)
    assert ask(e, big) == ["max_order_qty"]  # sanity before the halt
    assert ask(e, intent(qty=1.0)) == ["manual_halt"]  # the halt before the notional
    e.apply(control("kill", ts=T0 + 1), T0 + 1)
    assert ask(e, intent(qty=50.0), now=T0 + 2) == ["kill_switch"]  # before everything


def test_persisted_controls_restore_exactly() -> None:
    text = ORDERS + "[defaults.cooldown]\nafter_loss_secs = 60\n"
    text += "[bots.alpha.portfolio]\nmax_drawdown = 100.0\n"
    e = eng(text)
    e.apply(fill("buy", 2.0, 100.0), T0)
    e.apply(fill("sell", 2.0, 90.0, ts=T0 + 1), T0 + 1)  # a losing round trip: cooldown
    e.apply(control("kill", symbol="ETHUSDT", ts=T0 + 2), T0 + 2)
    assert ask(e, intent(qty=1.0, symbol="SOLUSDT"), now=T0 + 3, record_ts=T0 + 3) == [None]
    dirty = _dirty_bot()
    dirty.dirty_symbols.update({("alpha", "BTCUSDT"), ("alpha", "ETHUSDT")})
    (snap,) = e.snapshots(dirty)
    records = {"alpha/portfolio": msgspec.json.encode(snap.portfolio)}
    records.update({f"alpha/risk/{s}": msgspec.json.encode(v) for s, v in snap.symbols})
    again = eng(text)
    assert again.restore(records, T0 + 4, Effects()) == []
    (back,) = again.snapshots(dirty)
    assert msgspec.json.encode(back.portfolio) == records["alpha/portfolio"]
    assert [(s, msgspec.json.encode(v)) for s, v in back.symbols] == [
        (s, records[f"alpha/risk/{s}"]) for s, _ in snap.symbols
    ]
    assert ask(again, intent(qty=1.0, symbol="SOLUSDT"), now=T0 + 5, record_ts=T0 + 5) == [
        "duplicate_order"
    ]
    assert ask(again, intent(qty=2.0), intent(qty=3.0, symbol="ETHUSDT"), now=T0 + 5) == [
        "loss_cooldown",
        "kill_switch",
    ]


# -- record sizes (N1): issue 11's state at every bound -------------------------------


def test_worst_case_controls_keep_every_snapshot_record_well_under_the_request_size() -> None:
    """The worst-case bot of issue 9 item 9 plus every control at its bound: a kill with
    the longest reason on the bot and each symbol, 1,000 order times, 1,000 remembered
    orders, a drawdown and a cooldown. Measured: see the printout."""
    from tests.unit.test_bypass_persist import (
        ISSUER,
        NAME,
        REASON,
        WELL_UNDER,
        worst_case_engine,
    )
    from worker.core.controls import Kill
    from worker.core.orders import MAX_RECENT_ORDERS, OrderRate
    from worker.kafka.records import snapshot_records

    engine, out, _ = worst_case_engine()
    bot = engine.bots[NAME]
    kill = Kill(REASON, ISSUER, T0)
    bot.controls.kill = kill
    bot.controls.unreadable = True
    bot.controls.rate = OrderRate(1_000)
    for n in range(MAX_RECENT_ORDERS):
        ts = 4_102_444_800_000 - n  # 13-digit times, the longest JSON
        bot.controls.rate.record(ts)
        bot.controls.recent.record(intent(qty=float(n + 1), symbol=NAME), ts, 86_400_000)
    bot.controls.drawdown.observe(-1e15, T0)
    bot.controls.notional.record(1e15 - 1)
    for sym in bot.symbols.values():
        sym.controls.kill = kill
        sym.controls.cooldown.until_ms = 4_102_444_800_000
    assert len(bot.controls.recent) == MAX_RECENT_ORDERS
    records = snapshot_records(engine, out, engine.config.topics, {NAME: 0}, {0: 1 << 40})
    sizes = {
        (r.key or b"").decode(): len(r.key or b"") + len(r.value or b"")
        for r in records
        if r.key is not None and b"/ids/" not in r.key
    }
    print("worst-case snapshot bytes with controls:", sizes)
    assert len(sizes) == 3  # the portfolio and both symbols
    assert max(sizes.values()) <= WELL_UNDER
