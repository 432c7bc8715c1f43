"""The reference model (tests/support/model.py) against hand-computed cases of docs/spec.md.

The model is the oracle of the integration and chaos suites, so it is checked
here on its own, scenario by scenario, with every expected number worked out
by hand from the spec (the seed's examples included).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec
import pytest

from tests.support.compare import (
    model_halts,
    model_portfolios,
    model_symbols,
    snapshot_portfolios,
    snapshot_symbols,
)
from tests.support.model import (
    DAY_MS,
    BotLimits,
    Limits,
    Model,
    Rejected,
    SymbolLimits,
    canonical_command,
    limits_from_config,
)
from worker.config import load_config
from worker.core import Effects, RiskEngine
from worker.errors import Rejected as EngineRejected
from worker.kafka.records import snapshot_records
from worker.messages import ControlCommand, Event, Fill, Mark, OrderIntent, TradeOutcome

MIN = 60_000
HOUR = 3_600_000
DAY0 = 20_254 * DAY_MS
NOON = DAY0 + 12 * HOUR


def limits(
    *,
    session: float = -50.0,
    breaker: int = 4,
    window: int = 14_400,
    cooldown: int = 3_600,
    source: str = "outcomes",
    symbols: frozenset[str] | None = None,
    overrides: dict[str, SymbolLimits] | None = None,
    daily: float | None = None,
    concurrent: int = 0,
    exposure: float | None = None,
    **worker: object,
) -> Limits:
    bot = BotLimits(
        symbols=symbols,
        pnl_source=source,
        default=SymbolLimits(session, breaker, window, cooldown),
        overrides=overrides or {},
        max_daily_loss=daily,
        max_concurrent_positions=concurrent,
        max_gross_exposure=exposure,
    )
    return Limits(bots={"a": bot}, **worker)  # type: ignore[arg-type]


_n = iter(range(1_000_000))


def out(
    gross: float, fee: float = 0.0, *, ts: int = NOON, sym: str = "BTC", oid: str = ""
) -> TradeOutcome:
    return TradeOutcome(oid or f"o{next(_n)}", "a", sym, gross, fee, ts)


def fill(
    side: str,
    qty: float,
    price: float,
    fee: float = 0.0,
    *,
    ts: int = NOON,
    sym: str = "BTC",
    intent: str | None = None,
    fid: str = "",
) -> Fill:
    return Fill(fid or f"f{next(_n)}", "a", sym, side, qty, price, fee, ts, 1.0, intent)  # type: ignore[arg-type]


def intent(
    action: str,
    side: str,
    qty: float,
    price: float = 100.0,
    *,
    iid: str = "",
    sym: str = "BTC",
    ts: int = NOON,
) -> OrderIntent:
    return OrderIntent(iid or f"i{next(_n)}", "a", sym, action, side, qty, price, ts)  # type: ignore[arg-type]


def cmd(
    command: str, symbol: str | None = "BTC", *, ts: int = NOON, reason: str = "r"
) -> ControlCommand:
    return ControlCommand(command, "a", symbol, reason, "ops", ts)  # type: ignore[arg-type]


def state(m: Model, sym: str = "BTC") -> dict[str, Any]:
    return m.symbol_states()[f"a/risk/{sym}"]


def halts(m: Model) -> list[tuple[object, ...]]:
    return [(h.symbol, h.gate, h.kind, h.ts, h.until_ts) for h in m.halts]


def gates(m: Model) -> list[tuple[bool, str | None]]:
    return [(d.allowed, d.gate) for d in m.decisions]


# -- session ---------------------------------------------------------------------------


def test_trades_are_classified_on_net_so_a_win_eaten_by_fees_is_a_breaker_loss() -> None:
    m = Model(limits(breaker=1))
    m.apply(out(0.5, 0.6), NOON)
    s = state(m)
    assert (s["trades"], s["wins"], s["losses"], s["breakevens"]) == (1, 0, 1, 0)
    assert s["tripped_at"] == NOON // 1000
    assert s["net_pnl"] == pytest.approx(-0.1)


def test_a_break_even_round_trip_is_neither_win_nor_loss_and_never_trips() -> None:
    m = Model(limits(breaker=1))
    m.apply(out(0.5, 0.5), NOON)
    s = state(m)
    assert (s["trades"], s["wins"], s["losses"], s["breakevens"]) == (1, 0, 0, 1)
    assert s["tripped_at"] is None and s["recent_losses"] == []
    assert m.halts == []


def test_session_halts_at_exactly_the_loss_limit_until_the_sweep_after_midnight() -> None:
    m = Model(limits(session=-50.0))
    m.apply(out(10.0, ts=NOON), NOON)
    m.apply(out(-59.0, 1.0, ts=NOON + MIN), NOON + MIN)  # net 10 - 60 = -50
    assert state(m)["halted"] is True
    assert halts(m) == [("BTC", "session_halt", "halted", NOON + MIN, DAY0 + DAY_MS)]
    m.apply(out(100.0, ts=NOON + 2 * MIN), NOON + 2 * MIN)  # recovering does not lift it
    assert state(m)["halted"] is True
    m.sweep(DAY0 + DAY_MS - 1)
    assert state(m)["halted"] is True
    m.sweep(DAY0 + DAY_MS)
    s = state(m)
    assert (s["halted"], s["trades"], s["realised"], s["day"]) == (False, 0, 0.0, 20_255)
    assert halts(m)[-1] == ("BTC", "session_halt", "resumed", DAY0 + DAY_MS, None)


def test_an_event_stamped_after_midnight_counts_toward_today_and_rolls_nothing() -> None:
    m = Model(limits(session=-50.0))
    m.apply(out(-60.0, ts=NOON), NOON)  # halted today
    late_night = DAY0 + DAY_MS - 4 * MIN
    m.apply(out(1.0, ts=DAY0 + DAY_MS + MIN), late_night, record_ts=late_night)
    s = state(m)
    assert (s["halted"], s["day"], s["trades"], s["realised"]) == (True, 20_254, 2, -59.0)
    assert [h[2] for h in halts(m)] == ["halted"]


def test_an_outcome_of_an_earlier_day_does_not_count_toward_today_but_enters_the_window() -> None:
    m = Model(limits(breaker=2))
    now = DAY0 + 10 * MIN
    m.apply(out(-1.0, ts=DAY0 + 5 * MIN), now)
    m.apply(out(-500.0, ts=DAY0 - MIN), now)  # yesterday's, 6 minutes earlier
    s = state(m)
    assert (s["trades"], s["realised"], s["halted"]) == (1, -1.0, False)
    assert s["recent_losses"] == [(DAY0 - MIN) // 1000, (DAY0 + 5 * MIN) // 1000]
    assert s["tripped_at"] == (DAY0 + 5 * MIN) // 1000


# -- breaker ---------------------------------------------------------------------------


def test_breaker_trips_at_the_limit_inside_the_window_not_on_losses_hours_apart() -> None:
    m = Model(limits(breaker=3, window=3_600))
    for k in range(3):  # 40 minutes apart: a 1 h window never holds 3
        m.apply(out(-1.0, ts=NOON + k * 40 * MIN, sym="SLOW"), NOON + 2 * HOUR)
    for k in range(3):
        m.apply(out(-1.0, ts=NOON + k * MIN, sym="FAST"), NOON + 2 * HOUR)
    assert state(m, "SLOW")["tripped_at"] is None
    assert len(state(m, "SLOW")["recent_losses"]) == 3  # only the wall clock evicts
    assert state(m, "FAST")["tripped_at"] == (NOON + 2 * MIN) // 1000
    assert halts(m) == [
        ("FAST", "circuit_breaker", "halted", NOON + 2 * MIN, NOON + 2 * MIN + 3_600_000)
    ]
    m.sweep(NOON + 2 * HOUR)
    assert state(m, "SLOW")["recent_losses"] == [(NOON + 80 * MIN) // 1000]


def test_a_win_does_not_untrip_and_a_loss_after_the_cooldown_waits_for_the_clock() -> None:
    m = Model(limits(breaker=1, cooldown=600))
    m.apply(out(-1.0, ts=NOON), NOON)
    m.apply(out(5.0, ts=NOON + MIN), NOON + MIN)
    m.apply(out(-1.0, ts=NOON + 5 * MIN), NOON + 5 * MIN)  # inside the cooldown: not recorded
    m.apply(out(-1.0, ts=NOON + 11 * MIN), NOON + 7 * MIN)  # stamped after the cooldown's end
    s = state(m)
    assert s["tripped_at"] == NOON // 1000  # the event did not end the cooldown
    assert s["recent_losses"] == [NOON // 1000, (NOON + 11 * MIN) // 1000]
    m.sweep(NOON + 10 * MIN)  # the clock ends it; the waiting loss trips it again at once
    s = state(m)
    assert (s["tripped_at"], s["recent_losses"]) == ((NOON + 11 * MIN) // 1000, [s["tripped_at"]])
    assert [h[2] for h in halts(m)] == ["halted"]  # blocked throughout: no resumed/halted pair


def test_an_older_loss_arriving_late_trips_the_window_it_completes() -> None:
    m = Model(limits(breaker=2, window=100))
    m.apply(out(-1.0, ts=NOON), NOON + 10 * MIN)
    m.apply(out(-1.0, ts=NOON + 500_000), NOON + 10 * MIN)
    m.apply(out(-1.0, ts=NOON + 50_000), NOON + 10 * MIN)  # 50 s after the first: 2 in 100 s
    assert state(m)["tripped_at"] == (NOON + 50_000) // 1000


def test_cooldown_ends_only_when_the_wall_clock_passes_it() -> None:
    m = Model(limits(breaker=1, cooldown=600))
    m.apply(out(-1.0, ts=NOON), NOON)
    m.sweep(NOON + 599_999)
    assert state(m)["tripped_at"] == NOON // 1000
    m.sweep(NOON + 600_000)
    assert (state(m)["tripped_at"], state(m)["recent_losses"]) == (None, [])
    assert halts(m)[-1] == ("BTC", "circuit_breaker", "resumed", NOON + 600_000, None)


def test_sweep_evicts_losses_that_left_the_window() -> None:
    m = Model(limits(breaker=5, window=3_600))
    m.apply(out(-1.0, ts=NOON), NOON)
    m.apply(out(-1.0, ts=NOON + 30 * MIN), NOON + 30 * MIN)
    m.sweep(NOON + HOUR)  # the first loss is exactly one window old: out
    assert state(m)["recent_losses"] == [(NOON + 30 * MIN) // 1000]


def test_per_symbol_overrides_apply_over_the_bot_defaults_as_in_the_seed() -> None:
    # The seed's build_risk_state_applies_per_symbol_overrides.
    m = Model(limits(breaker=5, overrides={"BTCUSDT": SymbolLimits(-50.0, 1, 14_400, 3_600)}))
    m.apply(out(-1.0, sym="BTCUSDT"), NOON)
    m.apply(out(-1.0, sym="ETHUSDT"), NOON)
    assert state(m, "BTCUSDT")["tripped_at"] == NOON // 1000
    assert state(m, "ETHUSDT")["tripped_at"] is None


def test_the_seeds_persist_then_restore_numbers() -> None:
    # The seed's persist_then_restore_preserves_trip_and_pnl: net -31, then a second loss trips.
    m = Model(limits(session=-1000.0, breaker=2))
    m.apply(out(-30.0, 1.0, ts=NOON), NOON)
    m.apply(out(-10.0, ts=NOON + MIN), NOON + MIN)
    s = state(m)
    assert (s["net_pnl"], s["losses"], s["tripped_at"]) == (-41.0, 2, (NOON + MIN) // 1000)


# -- positions ----------------------------------------------------------------------------


def test_fills_book_a_round_trip_once_with_entry_and_exit_fees() -> None:
    m = Model(limits(source="fills", breaker=1))
    m.apply(fill("buy", 2.0, 100.0, 0.2), NOON)
    m.apply(fill("sell", 1.0, 90.0, 0.1, ts=NOON + MIN), NOON + MIN)  # -10 gross, fees 0.1+0.1
    s = state(m)
    assert (s["realised"], s["fees"], s["trades"], s["position_qty"]) == (
        -10.0,
        pytest.approx(0.2),
        0,
        1.0,
    )
    m.apply(fill("sell", 1.0, 95.0, 0.1, ts=NOON + 2 * MIN), NOON + 2 * MIN)  # -5, fees 0.2
    s = state(m)
    assert (s["realised"], s["fees"], s["trades"], s["losses"]) == (-15.0, pytest.approx(0.4), 1, 1)
    assert (s["position_qty"], s["avg_price"], s["entry_fees"]) == (0.0, 0.0, 0.0)
    assert s["tripped_at"] == (NOON + 2 * MIN) // 1000  # one round trip = one loss


def test_a_flip_ends_the_round_trip_and_opens_the_rest_at_the_fill_price() -> None:
    m = Model(limits(source="fills"))
    m.apply(fill("buy", 1.0, 100.0), NOON)
    m.apply(fill("sell", 3.0, 110.0, 0.3), NOON)
    s = state(m)
    assert (s["realised"], s["fees"], s["trades"], s["wins"]) == (10.0, pytest.approx(0.1), 1, 1)
    assert (s["position_qty"], s["avg_price"], s["entry_fees"]) == (-2.0, 110.0, pytest.approx(0.2))


def test_a_leftover_position_of_0_0005_is_not_zeroed_but_float_residue_is() -> None:
    m = Model(limits(source="fills"))
    m.apply(fill("buy", 1.0, 100.0, sym="A"), NOON)
    m.apply(fill("sell", 0.9995, 100.0, sym="A"), NOON)
    assert state(m, "A")["position_qty"] == pytest.approx(0.0005)
    assert state(m, "A")["trades"] == 0
    m.apply(fill("buy", 0.3, 100.0, sym="B"), NOON)
    m.apply(fill("buy", 0.6, 100.0, sym="B"), NOON)
    m.apply(fill("sell", 0.9, 100.0, sym="B"), NOON)  # 0.3 + 0.6 - 0.9 = -1.1e-16
    assert (state(m, "B")["position_qty"], state(m, "B")["trades"]) == (0.0, 1)


def test_an_outcomes_bot_moves_positions_from_fills_but_books_no_pnl() -> None:
    m = Model(limits())
    m.apply(fill("buy", 1.0, 100.0), NOON)
    m.apply(fill("sell", 1.0, 50.0), NOON)
    s = state(m)
    assert (s["position_qty"], s["realised"], s["trades"]) == (0.0, 0.0, 0)


# -- portfolio ----------------------------------------------------------------------------


def test_daily_loss_latch_holds_after_recovery_until_the_wall_clock_rolls_the_day() -> None:
    m = Model(limits(session=-1000.0, daily=-100.0))
    m.apply(out(-60.0, sym="A"), NOON)
    m.apply(out(-40.0, sym="B", ts=NOON + MIN), NOON + MIN)
    assert halts(m) == [(None, "portfolio_daily_loss", "halted", NOON + MIN, DAY0 + DAY_MS)]
    m.apply(out(500.0, sym="A", ts=NOON + 2 * MIN), NOON + 2 * MIN)
    m.apply(intent("open", "buy", 1.0, sym="C", ts=NOON + 3 * MIN), NOON + 3 * MIN)
    assert gates(m) == [(False, "portfolio_daily_loss")]
    assert m.bot_states()["a"]["latched"] is True
    m.sweep(DAY0 + DAY_MS)
    assert m.bot_states()["a"]["latched"] is False
    assert halts(m)[-1] == (None, "portfolio_daily_loss", "resumed", DAY0 + DAY_MS, None)


def test_a_bot_wide_reset_session_then_a_loss_does_not_falsely_latch() -> None:
    m = Model(limits(session=-1000.0, daily=-100.0))
    m.apply(out(-90.0, sym="A"), NOON)
    m.apply(cmd("reset_session", None, ts=NOON + MIN), NOON + MIN)
    m.apply(out(-20.0, sym="B", ts=NOON + 2 * MIN), NOON + 2 * MIN)
    assert m.bot_states()["a"]["latched"] is False
    assert m.halts == []  # nothing was halted, so the reset published nothing either


def test_concurrency_counts_open_positions_and_reserved_symbols() -> None:
    m = Model(limits(concurrent=2, source="fills"))
    m.apply(fill("buy", 1.0, 10.0, sym="A"), NOON)
    m.apply(intent("open", "buy", 1.0, sym="B"), NOON)
    m.apply(intent("open", "buy", 1.0, sym="C"), NOON)
    m.apply(intent("open", "buy", 1.0, sym="A"), NOON)  # already open: no new slot
    assert gates(m) == [(True, None), (False, "max_concurrent_positions"), (True, None)]


def test_exposure_counts_reservations_and_a_partial_fill_releases_only_its_share() -> None:
    m = Model(limits(exposure=1000.0, source="fills"))
    m.apply(intent("open", "buy", 9.0, 100.0, iid="A"), NOON)
    m.apply(fill("buy", 1.0, 100.0, intent="A"), NOON)  # 100 held + 800 still reserved
    m.apply(intent("open", "buy", 2.0, 100.0, iid="B"), NOON)
    m.apply(intent("open", "buy", 1.0, 100.0, iid="C"), NOON)
    assert gates(m) == [(True, None), (False, "gross_exposure"), (True, None)]
    assert m.bot_states()["a"]["reservations"] == {
        "A": ("BTC", 8.0, pytest.approx(800.0)),
        "C": ("BTC", 1.0, 100.0),
    }


def test_reservations_expire_on_the_sweep_and_a_stale_intent_is_answered_expired() -> None:
    m = Model(limits(exposure=150.0, reservation_ttl_ms=30_000))
    m.apply(intent("open", "buy", 1.0, 100.0), NOON)
    m.apply(intent("open", "buy", 1.0, 100.0, ts=NOON + 1_000), NOON + 1_000)
    m.sweep(NOON + 29_999)
    assert len(m.bot_states()["a"]["reservations"]) == 1
    m.sweep(NOON + 30_000)
    assert m.bot_states()["a"]["reservations"] == {}
    m.apply(intent("open", "buy", 1.0, 100.0, ts=NOON), NOON + 30_001)
    assert gates(m) == [(True, None), (False, "gross_exposure"), (False, "expired")]
    assert m.decisions[0].reservation_expires_ts == NOON + 30_000


def test_gate_order_manual_then_session_then_breaker_then_portfolio() -> None:
    m = Model(limits(session=-10.0, breaker=1, daily=-5.0))
    m.apply(out(-20.0), NOON)  # session halt, breaker trip and the latch at once
    assert [h[1] for h in halts(m)] == ["session_halt", "circuit_breaker", "portfolio_daily_loss"]
    m.apply(cmd("halt", None, ts=NOON), NOON)
    answers = []
    for command, target, ts in (
        ("resume", None, NOON + 1),
        ("reset_session", "BTC", NOON + 2),
        ("reset_breaker", "BTC", NOON + 3),
    ):
        m.apply(intent("open", "buy", 1.0), NOON)
        answers.append(m.decisions[-1].gate)
        m.apply(cmd(command, target, ts=ts), NOON)
    m.apply(intent("open", "buy", 1.0), NOON)
    answers.append(m.decisions[-1].gate)
    assert answers == ["manual_halt", "session_halt", "circuit_breaker", "portfolio_daily_loss"]


# -- closes -----------------------------------------------------------------------------


def test_a_close_is_capped_at_the_position_net_of_outstanding_closes() -> None:
    m = Model(limits(source="fills"))
    m.apply(fill("buy", 1.0, 100.0), NOON)
    m.apply(cmd("halt", None), NOON)
    m.apply(intent("close", "sell", 500.0), NOON)
    for _ in range(3):
        m.apply(intent("close", "sell", 0.5), NOON)
    m.apply(intent("close", "buy", 1.0), NOON)
    m.apply(intent("close", "sell", 1.0, sym="ETH"), NOON)
    assert gates(m) == [
        (False, "reduce_only_exceeds_position"),
        (True, None),
        (True, None),
        (False, "reduce_only_exceeds_position"),
        (False, "no_position"),
        (False, "no_position"),
    ]
    assert "a/risk/ETH" not in m.symbol_states()  # a denied intent creates no state


# -- duplicates --------------------------------------------------------------------------


def test_a_reused_intent_id_gets_the_same_decision_or_duplicate_intent_id() -> None:
    m = Model(limits())
    m.apply(intent("open", "buy", 1.0, iid="X"), NOON)
    m.apply(cmd("halt", None), NOON)
    m.apply(intent("open", "buy", 1.0, iid="X"), NOON + 5)
    m.apply(intent("open", "buy", 1000.0, 3000.0, sym="ETH", iid="X"), NOON + 5)
    assert m.decisions[1] == m.decisions[0]
    assert gates(m)[2] == (False, "duplicate_intent_id")
    assert list(m.bot_states()["a"]["reservations"]) == ["X"]


def test_a_resent_run_as_long_as_the_window_counts_nothing_twice() -> None:
    m = Model(limits(session=-1e9, breaker=0, dedupe_ids_per_bot=3))
    run = [out(-1.0, oid=f"o{k}") for k in range(3)]
    for event in run + run + run:
        m.apply(event, NOON)
    assert state(m)["trades"] == 3


def test_a_resent_run_longer_than_the_window_counts_again_which_is_the_stated_bound() -> None:
    m = Model(limits(session=-1e9, breaker=0, dedupe_ids_per_bot=3))
    run = [out(-1.0, oid=f"o{k}") for k in range(4)]
    for event in run + run:
        m.apply(event, NOON)
    assert state(m)["trades"] == 8  # each re-sent id left the window before it came back


def test_a_duplicate_hit_neither_inserts_nor_evicts() -> None:
    m = Model(limits(session=-1e9, breaker=0, dedupe_ids_per_bot=2))
    for oid in ("o1", "o2", "o2", "o2", "o1"):
        m.apply(out(-1.0, oid=oid), NOON)
    assert state(m)["trades"] == 2


def test_dedupe_windows_are_per_topic() -> None:
    m = Model(limits(source="outcomes"))
    m.apply(out(-1.0, oid="same"), NOON)
    m.apply(fill("buy", 1.0, 10.0, fid="same"), NOON)
    assert (state(m)["trades"], state(m)["position_qty"]) == (1, 1.0)


# -- operator commands ---------------------------------------------------------------------


def test_commands_publish_halts_and_transitions_only_with_command_derived_ids() -> None:
    m = Model(limits())
    halt = cmd("halt", "BTC", ts=NOON)
    again = cmd("halt", "BTC", ts=NOON + 1, reason="still")
    resume = cmd("resume", "BTC", ts=NOON + 3)
    m.apply(cmd("resume", "BTC", ts=NOON - 5), NOON)  # not halted: nothing
    m.apply(halt, NOON)
    m.apply(again, NOON)  # already halted: answered all the same, the reason updated
    m.apply(cmd("reset_breaker", "BTC", ts=NOON + 2), NOON)  # not tripped: nothing
    m.apply(resume, NOON)

    def cmd_id(c: ControlCommand) -> str:
        digest = hashlib.sha256(canonical_command(c, with_sig=True)).hexdigest()[:16]
        return f"a/BTC/manual_halt/cmd-{digest}"

    assert [(h.event_id, h.kind) for h in m.halts] == [
        (cmd_id(halt), "halted"),
        (cmd_id(again), "halted"),
        (cmd_id(resume), "resumed"),
    ]
    assert state(m)["manual_halt"] is None


def test_stale_and_replayed_commands_are_rejected_and_change_nothing() -> None:
    m = Model(limits())
    resume = cmd("resume", None, ts=NOON)
    m.apply(cmd("halt", None, ts=NOON - MIN), NOON)
    m.apply(resume, NOON)
    halt = cmd("halt", None, ts=NOON + MIN, reason="desk")
    m.apply(halt, NOON)
    with pytest.raises(Rejected) as stale:
        m.apply(resume, NOON + 2 * MIN)  # the captured resume must not undo the later halt
    with pytest.raises(Rejected) as replayed:
        m.apply(halt, NOON + 2 * MIN)
    assert (replayed.value.reason, stale.value.reason) == ("replayed_command", "stale_command")
    assert m.bot_states()["a"]["manual_halt"] == ("desk", "ops", NOON + MIN)
    m.apply(cmd("resume", "BTC", ts=NOON), NOON)  # another target: its own history


def test_a_reset_session_keeps_the_day_whatever_its_timestamp() -> None:
    m = Model(limits())
    m.apply(out(-60.0), NOON)
    m.apply(cmd("reset_session", "BTC", ts=NOON - DAY_MS), NOON)
    s = state(m)
    assert (s["halted"], s["realised"], s["day"]) == (False, 0.0, 20_254)
    assert halts(m)[-1][1:3] == ("session_halt", "resumed")


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (TradeOutcome("x", "ghost", "BTC", 1.0, 0.0, NOON), "unknown_bot"),
        (TradeOutcome("x", "b", "ZZZ", 1.0, 0.0, NOON), "unknown_symbol"),
        (TradeOutcome("x", "a b", "BTC", 1.0, 0.0, NOON), "invalid_name"),
        (TradeOutcome("x", "a", "*", 1.0, 0.0, NOON), "invalid_name"),
        (TradeOutcome("x", "a", "B\u200bTC", 1.0, 0.0, NOON), "invalid_name"),
        (TradeOutcome("x", "a", "S" * 65, 1.0, 0.0, NOON), "invalid_name"),
        (TradeOutcome("x", "a", "BTC", 1.0, 0.0, NOON + 300_001), "future_event"),
    ],
)
def test_bad_input_is_rejected_with_its_reason_and_creates_nothing(
    event: TradeOutcome, reason: str
) -> None:
    m = Model(Limits(bots={"a": BotLimits(), "b": BotLimits(symbols=frozenset({"BTC"}))}))
    with pytest.raises(Rejected) as rejected:
        m.apply(event, NOON)
    assert rejected.value.reason == reason and m.bots == {}


def test_future_skew_and_signature_window_are_judged_by_record_time() -> None:
    secret = b"s3cret"
    m = Model(limits(control_secret=secret))
    ahead = out(1.0, ts=NOON + 10 * MIN)
    m.apply(ahead, NOON, record_ts=NOON + 6 * MIN)  # late processing does not matter
    unsigned = cmd("halt", None, ts=NOON)
    sig = hmac.new(secret, canonical_command(unsigned, with_sig=False), "sha256").hexdigest()
    signed = ControlCommand("halt", "a", None, "r", "ops", NOON, sig)
    m.apply(signed, NOON + HOUR, record_ts=NOON + MIN)
    with pytest.raises(Rejected) as bad:
        m.apply(unsigned, NOON)
    assert bad.value.reason == "bad_signature"
    assert m.bot_states()["a"]["manual_halt"] == ("r", "ops", NOON)


def test_outcomes_for_a_fills_booked_bot_are_rejected() -> None:
    m = Model(limits(source="fills"))
    with pytest.raises(Rejected) as rejected:
        m.apply(out(1.0), NOON)
    assert rejected.value.reason == "pnl_source"


def test_limits_from_config_merge_every_table_field_by_field() -> None:
    config = load_config(
        text="""
[defaults.session]
loss_limit = -70.0
[defaults.breaker]
loss_limit = 6
cooldown_secs = 60
[defaults.portfolio]
max_daily_loss = -500.0
[bots.alpha]
symbols = ["BTC", "ETH"]
[bots.alpha.breaker]
window_secs = 100
[bots.alpha.portfolio]
max_gross_exposure = 1000.0
[bots.alpha.overrides.BTC.breaker]
loss_limit = 1
""",
        env={},
    )
    alpha = limits_from_config(config).bots["alpha"]
    assert alpha.for_symbol("ETH") == SymbolLimits(-70.0, 6, 100, 60)
    assert alpha.for_symbol("BTC") == SymbolLimits(-70.0, 1, 100, 60)
    assert (alpha.max_daily_loss, alpha.max_gross_exposure) == (-500.0, 1000.0)
    assert alpha.symbols == frozenset({"BTC", "ETH"})


def test_a_fill_on_another_symbol_releases_nothing() -> None:
    m = Model(limits(exposure=1000.0, source="fills"))
    m.apply(intent("open", "buy", 9.0, 100.0, iid="A"), NOON)
    m.apply(fill("buy", 9.0, 100.0, sym="ETH", intent="A"), NOON)
    assert m.bot_states()["a"]["reservations"] == {"A": ("BTC", 9.0, 900.0)}


def test_a_retry_after_the_ttl_is_expired_even_when_first_allowed() -> None:
    m = Model(limits(reservation_ttl_ms=30_000))
    first = intent("open", "buy", 1.0, iid="R")
    m.apply(first, NOON)
    m.apply(first, NOON + 30_001)
    assert gates(m) == [(True, None), (False, "expired")]


def test_the_reservation_cap_denies_opens_and_closes_alike() -> None:
    m = Model(limits(source="fills", max_reservations_per_bot=2))
    m.apply(fill("buy", 5.0, 100.0), NOON)
    m.apply(intent("open", "buy", 1.0), NOON)
    m.apply(intent("close", "sell", 1.0), NOON)
    m.apply(intent("open", "buy", 1.0), NOON)
    m.apply(intent("close", "sell", 1.0), NOON)
    assert gates(m) == [
        (True, None),
        (True, None),
        (False, "max_concurrent_positions"),
        (False, "max_concurrent_positions"),
    ]


def test_resetting_a_winning_symbol_past_the_daily_loss_latches_for_the_day() -> None:
    m = Model(limits(session=-1000.0, daily=-50.0))
    m.apply(out(30.0, sym="A"), NOON)
    m.apply(out(-70.0, sym="B"), NOON)  # account -40: above the limit
    reset = cmd("reset_session", "A", ts=NOON + MIN)
    m.apply(reset, NOON + MIN)  # account -70: breached, by the command
    m.apply(out(25.0, sym="B", ts=NOON + 2 * MIN), NOON + 2 * MIN)  # -45: recovered
    m.apply(intent("open", "buy", 1.0, sym="C", ts=NOON + 3 * MIN), NOON + 3 * MIN)
    assert (m.bot_states()["a"]["latched"], gates(m)) == (True, [(False, "portfolio_daily_loss")])
    digest = hashlib.sha256(canonical_command(reset, with_sig=True)).hexdigest()[:16]
    assert [(h.event_id, h.kind, h.ts, h.until_ts) for h in m.halts] == [
        (f"a/*/portfolio_daily_loss/cmd-{digest}", "halted", NOON + MIN, DAY0 + DAY_MS)
    ]


# -- issue 11: order checks, the after-loss cooldown, the daily notional ---------------------


def orders_limits(**changes: Any) -> Limits:
    """One bot ``a`` (PnL from outcomes) with the given order/cooldown/notional settings."""
    symbol = {k: v for k, v in changes.items() if k in SymbolLimits.__dataclass_fields__}
    bot = {k: v for k, v in changes.items() if k in BotLimits.__dataclass_fields__}
    return Limits(bots={"a": BotLimits(default=SymbolLimits(**symbol), **bot)})


def test_order_checks_come_after_the_kill_switch_and_before_the_close_bypass() -> None:
    m = Model(orders_limits(max_qty=2.0, max_notional=250.0, pnl_source="fills"))
    m.apply(fill("buy", 5.0, 100.0), NOON)
    m.apply(cmd("halt", None), NOON)
    m.apply(intent("close", "sell", 3.0), NOON)  # a fat-fingered close is still erroneous
    m.apply(intent("close", "sell", 2.0, 125.0), NOON)  # 250: on the limit
    m.apply(intent("close", "sell", 2.0, 125.01), NOON)
    m.apply(cmd("kill", "BTC", ts=NOON + 1), NOON)
    m.apply(intent("close", "sell", 3.0), NOON)
    assert gates(m) == [
        (False, "max_order_qty"),
        (True, None),  # halted: a reducing close still goes
        (False, "max_order_notional"),
        (False, "kill_switch"),
    ]


def test_the_price_collar_needs_a_fresh_mark_and_allows_a_price_on_the_collar() -> None:
    m = Model(orders_limits(price_collar_bps=100.0, mark_max_age_ms=60_000))
    m.apply(intent("open", "buy", 1.0, 100.0), NOON)
    m.apply_mark(Mark("BTC", 100.0, NOON))
    m.apply_mark(Mark("BTC", 50.0, NOON - 1))  # stamped earlier: ignored
    m.apply(intent("open", "buy", 1.0, 101.0, ts=NOON + 60_000), NOON + 60_000)  # on the collar
    m.apply(intent("open", "buy", 1.0, 98.99, ts=NOON + 60_000), NOON + 60_000)
    m.apply(intent("open", "buy", 1.0, 100.0, ts=NOON + 60_001), NOON + 60_001)  # stale
    assert gates(m) == [
        (False, "stale_mark"),
        (True, None),
        (False, "price_collar"),
        (False, "stale_mark"),
    ]


def test_order_rate_and_duplicates_run_on_record_time_and_count_only_allowed_orders() -> None:
    m = Model(orders_limits(max_orders_per_sec=2, duplicate_window_ms=5_000, max_qty=3.0))
    m.apply(intent("open", "buy", 1.0), NOON, record_ts=NOON)
    m.apply(intent("open", "buy", 9.0), NOON, record_ts=NOON + 10)  # denied: counts nothing
    m.apply(intent("open", "buy", 2.0), NOON + 900, record_ts=NOON + 20)
    m.apply(intent("open", "buy", 3.0), NOON + 900, record_ts=NOON + 999)  # 2 in (-1, 999]
    m.apply(intent("open", "buy", 3.0), NOON + 900, record_ts=NOON + 1_000)
    m.apply(intent("open", "buy", 1.0, ts=NOON + 9_000), NOON + 9_000, record_ts=NOON + 4_999)
    m.apply(intent("open", "buy", 1.0, ts=NOON + 9_000), NOON + 9_000, record_ts=NOON + 5_000)
    assert gates(m) == [
        (True, None),
        (False, "max_order_qty"),
        (True, None),
        (False, "order_rate"),
        (True, None),
        (False, "duplicate_order"),  # 4 999 ms after the same order was allowed
        (True, None),
    ]


def test_a_losing_trade_cools_its_symbol_down_and_the_sweep_publishes_the_resume() -> None:
    m = Model(orders_limits(after_loss_secs=600, breaker_losses=0))
    m.apply(out(-1.0, ts=NOON), NOON)
    m.apply(out(-1.0, ts=NOON + MIN), NOON + MIN)  # extends the wait to its own end
    m.apply(out(-1.0, ts=NOON - 5 * MIN), NOON + MIN)  # an earlier end shortens nothing
    m.apply(intent("open", "buy", 1.0, ts=NOON + 10 * MIN), NOON + 10 * MIN)
    m.apply(intent("open", "buy", 1.0, sym="ETH", ts=NOON + 10 * MIN), NOON + 10 * MIN)
    m.sweep(NOON + 11 * MIN - 1)
    m.sweep(NOON + 11 * MIN)
    assert gates(m) == [(False, "loss_cooldown"), (True, None)]
    assert halts(m) == [
        ("BTC", "loss_cooldown", "halted", NOON, NOON + 10 * MIN),
        ("BTC", "loss_cooldown", "resumed", NOON + 11 * MIN, None),
    ]


def test_the_daily_notional_counts_allowed_opens_and_restarts_at_the_rollover() -> None:
    m = Model(orders_limits(max_daily_notional=300.0, pnl_source="fills"))
    m.apply(intent("open", "buy", 2.0, 100.0), NOON)
    m.apply(fill("buy", 2.0, 100.0), NOON)
    m.apply(intent("close", "sell", 2.0, 100.0), NOON)  # closes spend nothing
    m.apply(intent("open", "buy", 1.5, 100.0), NOON)  # 350 > 300
    m.apply(intent("open", "buy", 1.0, 100.0), NOON)  # 300: on the budget
    m.apply(intent("open", "buy", 0.01, 100.0), NOON)
    m.sweep(DAY0 + DAY_MS)
    tomorrow = DAY0 + DAY_MS + 1
    m.apply(intent("open", "buy", 3.0, 100.0, ts=tomorrow), tomorrow)
    assert gates(m) == [
        (True, None),
        (True, None),
        (False, "daily_notional"),
        (True, None),
        (False, "daily_notional"),
        (True, None),
    ]


# -- the engine against the model ----------------------------------------------------------

DIFF_CONFIG = """
[defaults.session]
loss_limit = -40.0
[defaults.breaker]
loss_limit = 3
window_secs = 1800
cooldown_secs = 600
[defaults.orders]
max_qty = 3.5
max_notional = 300.0
max_orders_per_sec = 1
duplicate_window_ms = 600000
[defaults.cooldown]
after_loss_secs = 1800
[bots.o]
symbols = ["A", "B", "C"]
[bots.o.portfolio]
max_daily_loss = -60.0
max_concurrent_positions = 2
max_gross_exposure = 3000.0
max_daily_notional = 700.0
[bots.o.overrides.C.cooldown]
after_loss_secs = 0
[bots.f]
symbols = ["A", "B", "C"]
pnl_source = "fills"
[bots.f.portfolio]
max_daily_loss = -80.0
max_concurrent_positions = 2
max_gross_exposure = 2500.0
max_daily_notional = 500.0
[bots.f.orders]
max_orders_per_sec = 2
[bots.f.overrides.B.orders]
max_qty = 2.0
duplicate_window_ms = 0
[bots.x]
symbols = ["X", "Y"]
pnl_source = "fills"
[bots.x.portfolio]
max_concurrent_positions = 1
[bots.x.orders]
price_collar_bps = 800.0
mark_max_age_ms = 300000
[worker]
reservation_ttl_ms = 60000
"""
"""Every order check, the cooldown and the daily notional are on (some overridden per bot
or symbol). Only bot ``x`` trades the marked symbols X and Y, and it has no limit that
values positions at the marks (the model holds marks for the price collar only)."""
SYMBOLS = {"o": "ABC", "f": "ABC", "x": "XY"}


def _random_event(
    rng: random.Random, n: int, now: int, asked: list[OrderIntent], allowed: list[OrderIntent]
) -> Event | Mark:
    """Any input, stamped now, minutes late, up to 200 s ahead or a day late; some re-sent;
    marks of X and Y up to 50 s old; orders repeating an allowed one under a new id."""
    bot = rng.choice("ofx")
    sym = rng.choice(SYMBOLS[bot])
    ts = now + rng.choice([0, 0, 0, -rng.randint(0, 600_000), rng.randint(0, 200_000), -DAY_MS])
    again = n - 3 if rng.random() < 0.1 else n  # a producer retry of an earlier id
    roll = rng.random()
    if roll < 0.15:
        price = float(rng.randint(95, 105))
        return Mark(rng.choice("XY"), price, now - rng.choice((0, rng.randint(0, 50_000))))
    roll = rng.random()
    if roll < 0.3 and bot == "o":
        gross, fee = round(rng.uniform(-25, 15), 1), round(rng.uniform(0, 1), 1)
        return TradeOutcome(f"o{again}", bot, sym, gross, fee, ts)
    if roll < 0.6:
        side = rng.choice(("buy", "sell"))
        # Whole lots, tiny ones, and one a float residue short of a lot (flat tolerance).
        qty = rng.choice((float(rng.randint(1, 4)), round(rng.uniform(1e-4, 1e-2), 4), 1 - 1e-12))
        price, fee = float(rng.randint(90, 110)), round(rng.uniform(0, 0.5), 2)
        fill_for = rng.choice(asked).intent_id if asked and rng.random() < 0.5 else None
        value = rng.choice((1.0, 1.0, 0.5, 10.0))
        return Fill(f"f{again}", bot, sym, side, qty, price, fee, ts, value, fill_for)  # type: ignore[arg-type]
    if roll < 0.9:
        if asked and rng.random() < 0.1:
            return rng.choice(asked)  # a client retry
        action, side = rng.choice(("open", "close")), rng.choice(("buy", "sell"))
        qty, price = float(rng.randint(1, 4)), float(rng.randint(90, 110))
        if allowed and rng.random() < 0.2:  # the same order again under a new id
            old = rng.choice(allowed)
            bot, sym, action, side, qty, price = (
                old.bot,
                old.symbol,
                old.action,
                old.side,
                old.qty,
                old.price,
            )
        stamp = min(ts, now) if rng.random() < 0.3 else now - rng.randint(0, 2_000)
        intent = OrderIntent(f"i{n}", bot, sym, action, side, qty, price, stamp)  # type: ignore[arg-type]
        asked.append(intent)
        return intent
    kinds = ("halt", "resume", "resume", "resume", "reset_breaker", "reset_session", "kill")
    command = rng.choice(kinds)
    target = sym if rng.random() < 0.6 else None
    return ControlCommand(command, bot, target, "r", "ops", ts - rng.randint(0, 5_000))  # type: ignore[arg-type]


def _engine_view(engine: RiskEngine) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the engine would persist for every key, as the model's views."""
    everything = Effects()
    everything.dirty_bots.update(engine.bots)
    everything.dirty_symbols.update((b, s) for b, bot in engine.bots.items() for s in bot.symbols)
    config = engine.config
    records = snapshot_records(engine, everything, config.topics, dict.fromkeys(engine.bots, 0))
    values = [(r.key.decode(), msgspec.json.decode(r.value)) for r in records if r.key and r.value]
    return snapshot_symbols(values), snapshot_portfolios(values)


@pytest.mark.parametrize("seed", range(20))
def test_the_engine_agrees_with_the_model_on_random_streams(seed: int) -> None:
    """Every input kind, clock moves across midnight, late and early stamps, retries.

    After each step: the same rejections, persisted state, halt events (ids too)
    and decisions. The one comparison of the engine with the model outside the
    integration suite; its inputs are ordered (one topic), so nothing may differ.
    """
    rng = random.Random(seed)
    config = load_config(text=DIFF_CONFIG, env={})
    engine, model = RiskEngine(config), Model(limits_from_config(config))
    now = DAY0 + rng.choice([12 * HOUR, DAY_MS - 20 * MIN])
    effects = engine.sweep(now)
    model.sweep(now)
    asked: list[OrderIntent] = []
    allowed: list[OrderIntent] = []
    for n in range(250):
        step = (rng.randint(0, 20_000), rng.randint(0, 900_000), rng.randint(0, 600))
        now += rng.choice((*step, step[2], 0))  # sub-second steps try the order rate
        if rng.random() < 0.1:
            engine.sweep(now, effects)
            model.sweep(now)
            event: object = f"sweep at {now}"
        else:
            event = _random_event(rng, n, now, asked, allowed)
            if isinstance(event, Mark):
                engine.apply_mark(event, effects)
                model.apply_mark(event)
            else:
                # Records may arrive with record times out of order (the rate's window).
                at = now - rng.choice((0, 0, rng.randint(0, 1_500)))
                apply = partial(engine.apply, event, now, None, effects, record_ts=at)
                by_engine = _reason(apply, EngineRejected)
                by_model = _reason(partial(model.apply, event, now, at), Rejected)
                assert by_engine == by_model, (n, event)
                if isinstance(event, OrderIntent) and model.decisions[-1].allowed:
                    allowed.append(event)  # decided just now: orders to repeat
        symbols, portfolios = _engine_view(engine)
        assert symbols == model_symbols(model), (n, event)
        assert portfolios == model_portfolios(model), (n, event)
        assert sorted(effects_halts(effects)) == sorted(model_halts(model)), (n, event)
        decided = [(d.intent_id, d.allowed, d.gate) for d in effects.decisions]
        assert decided == [(d.intent_id, d.allowed, d.gate) for d in model.decisions], (n, event)


def _reason(call: Callable[[], object], rejected: type[EngineRejected | Rejected]) -> str | None:
    """The rejection reason of ``call``, None when it was applied."""
    try:
        call()
    except rejected as exc:
        return exc.reason
    return None


def effects_halts(effects: Effects) -> list[tuple[Any, ...]]:
    return [(h.event_id, h.bot, h.symbol, h.kind, h.gate, h.ts, h.until_ts) for h in effects.halts]


def test_the_engine_latches_when_a_reset_session_of_a_winner_breaches_the_daily_loss() -> None:
    """The model's scenario above, through the engine: the same latch and the same answer."""
    config = load_config(
        text="[defaults.session]\nloss_limit = -1000.0\n"
        "[bots.a]\n[bots.a.portfolio]\nmax_daily_loss = -50.0\n",
        env={},
    )
    engine, model = RiskEngine(config), Model(limits_from_config(config))
    effects = engine.sweep(NOON)
    model.sweep(NOON)
    for event, now in (
        (out(30.0, sym="A"), NOON),
        (out(-70.0, sym="B"), NOON),
        (cmd("reset_session", "A", ts=NOON + MIN), NOON + MIN),
        (out(25.0, sym="B", ts=NOON + 2 * MIN), NOON + 2 * MIN),
        (intent("open", "buy", 1.0, sym="C", ts=NOON + 3 * MIN), NOON + 3 * MIN),
    ):
        engine.apply(event, now, None, effects)
        model.apply(event, now)
    assert [(d.allowed, d.gate) for d in effects.decisions] == gates(model)
    assert sorted(effects_halts(effects)) == sorted(model_halts(model))
