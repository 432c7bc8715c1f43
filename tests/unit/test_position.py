"""Position accounting, and fills-booked PnL through the engine."""

from __future__ import annotations

import pytest

from tests.support.builders import T0, apply_all, engine, fill
from worker.core import Effects, Position, RiskEngine


def test_adds_average_the_entry_price() -> None:
    p = Position()
    p.apply(1.0, 100.0, 0.1, 1.0)
    trip = p.apply(3.0, 200.0, 0.3, 1.0)
    assert trip.gross == 0.0
    assert trip.fees == 0.0
    assert trip.closed_net is None
    assert p.qty == pytest.approx(4.0)
    assert p.avg_price == pytest.approx(175.0)
    assert p.entry_fees == pytest.approx(0.4)


def test_partial_close_books_proportional_entry_fees() -> None:
    p = Position()
    p.apply(4.0, 100.0, 4.0, 1.0)
    trip = p.apply(-1.0, 110.0, 1.0, 1.0)
    assert trip.gross == pytest.approx(10.0)
    assert trip.fees == pytest.approx(1.0 + 1.0)  # own fee + 1/4 of the entry fees
    assert trip.closed_net is None
    assert p.qty == pytest.approx(3.0)
    assert p.avg_price == pytest.approx(100.0)
    assert p.entry_fees == pytest.approx(3.0)

    last = p.apply(-3.0, 90.0, 3.0, 1.0)
    assert last.gross == pytest.approx(-30.0)
    assert last.fees == pytest.approx(3.0 + 3.0)
    assert last.closed_net == pytest.approx((10.0 - 2.0) + (-30.0 - 6.0))
    assert p.is_flat
    assert (p.qty, p.avg_price, p.entry_fees, p.round_trip_net) == (0.0, 0.0, 0.0, 0.0)


def test_short_position_pnl_sign() -> None:
    p = Position()
    p.apply(-2.0, 100.0, 0.0, 1.0)
    assert p.qty == -2.0
    assert p.notional == pytest.approx(200.0)
    trip = p.apply(2.0, 90.0, 0.0, 1.0)
    assert trip.gross == pytest.approx(20.0)
    assert trip.closed_net == pytest.approx(20.0)


def test_flip_closes_one_round_trip_and_opens_the_remainder() -> None:
    p = Position()
    p.apply(2.0, 100.0, 2.0, 1.0)
    trip = p.apply(-5.0, 110.0, 5.0, 1.0)
    # Closes 2 of the 5: own-fee share 5 * 2/5 plus all entry fees.
    assert trip.gross == pytest.approx(20.0)
    assert trip.fees == pytest.approx(2.0 + 2.0)
    assert trip.closed_net == pytest.approx(16.0)
    # Opens -3 at the fill price carrying 3/5 of the fill's fee.
    assert p.qty == pytest.approx(-3.0)
    assert p.avg_price == pytest.approx(110.0)
    assert p.entry_fees == pytest.approx(3.0)
    assert p.round_trip_net == 0.0

    back = p.apply(3.0, 100.0, 0.0, 1.0)
    assert back.gross == pytest.approx(30.0)
    assert back.closed_net == pytest.approx(30.0 - 3.0)
    assert p.is_flat


def test_contract_value_scales_pnl_and_notional() -> None:
    p = Position()
    p.apply(2.0, 100.0, 0.0, 0.01)
    assert p.notional == pytest.approx(2.0)
    trip = p.apply(-2.0, 150.0, 0.0, 0.01)
    assert trip.gross == pytest.approx(1.0)


def test_float_residue_counts_as_flat() -> None:
    p = Position()
    p.apply(0.1, 100.0, 0.0, 1.0)
    p.apply(0.2, 100.0, 0.0, 1.0)
    trip = p.apply(-0.3, 101.0, 0.0, 1.0)
    assert p.is_flat
    assert trip.closed_net == pytest.approx(0.3)


def test_snapshot_restore_round_trip() -> None:
    p = Position()
    p.apply(3.0, 100.0, 0.3, 2.0)
    p.apply(-1.0, 120.0, 0.1, 2.0)
    q = Position()
    q.restore(p.snapshot())
    assert q.snapshot() == p.snapshot()


# -- through the engine: pnl_source = "fills" ------------------------------------------

FILLS_BOT = """
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 2
[bots.alpha]
pnl_source = "fills"
[bots.beta]
"""


def fills_engine() -> RiskEngine:
    return engine(FILLS_BOT)


def test_one_round_trip_is_one_trade() -> None:
    eng = fills_engine()
    apply_all(
        eng,
        [
            fill("buy", 1.0, 100.0),
            fill("buy", 1.0, 102.0),
            fill("sell", 0.5, 103.0),
            fill("sell", 1.5, 104.0),
        ],
    )
    session = eng.bots["alpha"].symbols["BTCUSDT"].session
    assert session.trades == 1
    assert session.wins == 1
    assert session.realised == pytest.approx(0.5 * 2.0 + 1.5 * 3.0)


def test_a_losing_round_trip_records_one_breaker_loss() -> None:
    eng = fills_engine()
    apply_all(
        eng,
        [fill("buy", 2.0, 100.0), fill("sell", 1.0, 99.0), fill("sell", 1.0, 98.0)],
    )
    sym = eng.bots["alpha"].symbols["BTCUSDT"]
    assert sym.session.trades == 1
    assert sym.session.losses == 1
    assert sym.breaker.recent_losses == [T0 // 1000]


def test_a_flip_counts_the_closed_round_trip() -> None:
    eng = fills_engine()
    apply_all(eng, [fill("buy", 1.0, 100.0, 1.0), fill("sell", 3.0, 99.0, 3.0)])
    sym = eng.bots["alpha"].symbols["BTCUSDT"]
    assert sym.session.trades == 1
    assert sym.session.losses == 1
    assert sym.position.qty == pytest.approx(-2.0)
    assert sym.position.entry_fees == pytest.approx(2.0)
    # Realised: gross -1, fees 1 (closing share) + 1 (entry) = net -3.
    assert sym.session.net_pnl == pytest.approx(-3.0)


def test_a_realised_loss_halts_immediately_before_the_round_trip_ends() -> None:
    eng = fills_engine()
    out = apply_all(eng, [fill("buy", 10.0, 100.0), fill("sell", 6.0, 90.0)])
    sym = eng.bots["alpha"].symbols["BTCUSDT"]
    assert sym.session.trades == 0, "the round trip is still open"
    assert sym.session.net_pnl == pytest.approx(-60.0)
    assert sym.session.halted
    assert [(h.kind, h.gate) for h in out.halts] == [("halted", "session_halt")]


def test_zero_fee_exit_at_entry_still_closes_a_losing_round_trip() -> None:
    # The last leg realises nothing by itself, but it completes a round trip
    # whose earlier partial close lost money: that is one trade and one loss.
    eng = fills_engine()
    apply_all(
        eng,
        [fill("buy", 2.0, 100.0), fill("sell", 1.0, 90.0), fill("sell", 1.0, 100.0)],
    )
    sym = eng.bots["alpha"].symbols["BTCUSDT"]
    assert sym.position.is_flat
    assert sym.session.trades == 1
    assert sym.session.losses == 1
    assert len(sym.breaker.recent_losses) == 1


def test_zero_fee_round_trip_at_entry_is_a_breakeven_trade() -> None:
    eng = fills_engine()
    apply_all(eng, [fill("buy", 1.0, 100.0), fill("sell", 1.0, 100.0)])
    session = eng.bots["alpha"].symbols["BTCUSDT"].session
    assert session.trades == 1
    assert session.breakevens == 1


def test_outcomes_bot_fills_move_the_position_but_book_nothing() -> None:
    eng = fills_engine()
    apply_all(eng, [fill("buy", 1.0, 100.0, bot="beta"), fill("sell", 1.0, 10.0, 5.0, bot="beta")])
    sym = eng.bots["beta"].symbols["BTCUSDT"]
    assert sym.position.is_flat
    assert sym.session.trades == 0
    assert sym.session.net_pnl == 0.0
    assert sym.breaker.recent_losses == []


def test_fill_updates_position_and_marks_symbol_and_bot_dirty() -> None:
    eng = fills_engine()
    out = eng.apply(fill("buy", 2.0, 100.0, contract_value=0.5), T0, out=Effects())
    assert out.dirty_symbols == {("alpha", "BTCUSDT")}
    assert out.dirty_bots == {"alpha"}
    bot = eng.bots["alpha"]
    assert bot.account.open_symbols() == {"BTCUSDT"}
    assert bot.account.gross_exposure() == pytest.approx(100.0)
