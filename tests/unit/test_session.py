"""SessionPnl: net classification, the daily loss halt and UTC rollover."""

from __future__ import annotations

import math

import pytest

from tests.support.builders import DAY0, DAY_MS, MIDNIGHT, T0
from worker.config import SessionConfig
from worker.core import SessionPnl, utc_day
from worker.core.session import next_midnight_ms


def session(loss_limit: float = -50.0, ts: int = T0) -> SessionPnl:
    s = SessionPnl(SessionConfig(loss_limit=loss_limit))
    s.tick(ts)  # enter the UTC day of ``ts``
    return s


def test_utc_day_and_next_midnight() -> None:
    assert utc_day(MIDNIGHT) == DAY0
    assert utc_day(MIDNIGHT - 1) == DAY0 - 1
    assert next_midnight_ms(T0) == MIDNIGHT + DAY_MS
    assert next_midnight_ms(MIDNIGHT) == MIDNIGHT + DAY_MS


def test_gross_win_eaten_by_fees_is_a_loss() -> None:
    s = session()
    assert s.record_close(0.5, 1.0, T0) == "loss"
    assert (s.trades, s.wins, s.losses, s.breakevens) == (1, 0, 1, 0)
    assert s.realised == pytest.approx(0.5)
    assert s.fees == pytest.approx(1.0)
    assert s.net_pnl == pytest.approx(-0.5)


def test_classification_is_on_net_for_wins_and_breakevens() -> None:
    s = session()
    assert s.record_close(3.0, 1.0, T0) == "win"
    assert s.record_close(1.0, 1.0, T0) == "breakeven"
    assert s.record_close(-2.0, 0.0, T0) == "loss"
    assert (s.trades, s.wins, s.losses, s.breakevens) == (3, 1, 1, 1)
    assert s.net_pnl == pytest.approx(0.0)


def test_win_rate_excludes_breakevens() -> None:
    s = session()
    assert s.win_rate is None
    s.record_close(1.0, 1.0, T0)  # breakeven only: still no decided trade
    assert s.win_rate is None
    s.record_close(5.0, 0.0, T0)
    s.record_close(-5.0, 0.0, T0)
    s.record_close(2.0, 2.0, T0)
    s.record_close(0.0, 0.0, T0)
    assert s.breakevens == 3
    assert s.win_rate == pytest.approx(0.5)


def test_halts_when_net_reaches_limit_exactly() -> None:
    s = session(loss_limit=-50.0)
    s.record_close(-49.0, 0.0, T0)
    assert not s.halted
    s.record_close(0.0, 1.0, T0)  # net -50 == limit: halts (net <= loss_limit)
    assert s.net_pnl == pytest.approx(-50.0)
    assert s.halted


def test_does_not_halt_just_above_limit() -> None:
    s = session(loss_limit=-50.0)
    s.record_close(-49.99, 0.0, T0)
    assert not s.halted


def test_halt_is_sticky_within_the_day_even_if_pnl_recovers() -> None:
    s = session(loss_limit=-50.0)
    s.record_close(-60.0, 0.0, T0)
    s.record_close(100.0, 0.0, T0 + 1)
    assert (s.net_pnl, s.halted) == (40.0, True)


def test_minus_infinity_disables_the_halt() -> None:
    s = session(loss_limit=-math.inf)
    s.record_close(-1e12, 0.0, T0)
    assert not s.halted


def test_tick_rolls_over_at_utc_midnight() -> None:
    s = session()
    s.record_close(-80.0, 2.0, T0)
    assert s.halted
    assert s.tick(MIDNIGHT + DAY_MS - 1) is False
    assert s.halted
    assert s.tick(MIDNIGHT + DAY_MS) is True
    assert not s.halted
    assert (s.realised, s.fees, s.trades, s.wins, s.losses, s.breakevens) == (0, 0, 0, 0, 0, 0)
    assert s.last_reset_day == DAY0 + 1


def test_tick_within_the_day_is_a_noop() -> None:
    s = session()
    s.record_close(-10.0, 1.0, T0)
    before = s.snapshot()
    assert s.tick(T0 + 3_600_000) is False
    assert s.tick(MIDNIGHT) is False
    assert s.snapshot() == before


def test_tick_to_an_earlier_day_is_a_noop() -> None:
    s = session()
    s.record_close(-10.0, 1.0, T0)
    before = s.snapshot()
    assert s.tick(T0 - 3 * DAY_MS) is False
    assert s.snapshot() == before


def test_outcome_from_an_earlier_day_does_not_count() -> None:
    s = session(loss_limit=-50.0)
    s.record_close(5.0, 0.0, T0)
    assert s.record_close(-500.0, 0.0, T0 - DAY_MS) is None
    assert s.book(-500.0, 0.0, MIDNIGHT - 1) is False
    assert s.count_trade(-500.0, MIDNIGHT - 1) is None
    assert not s.halted
    assert s.trades == 1
    assert s.net_pnl == pytest.approx(5.0)


def test_outcome_stamped_on_a_later_day_counts_toward_today_without_rolling() -> None:
    s = session(loss_limit=-50.0)
    s.record_close(-60.0, 0.0, T0)
    assert s.halted
    assert s.record_close(1.0, 0.0, T0 + DAY_MS) == "win"
    assert s.halted, "only the wall clock (tick) rolls the day"
    assert s.trades == 2
    assert s.net_pnl == pytest.approx(-59.0)
    assert s.last_reset_day == DAY0


def test_book_adds_pnl_without_counting_a_trade() -> None:
    s = session(loss_limit=-50.0)
    assert s.book(-55.0, 1.0, T0) is True
    assert s.trades == 0
    assert s.halted


def test_operator_reset_clears_totals_and_halt() -> None:
    s = session()
    s.record_close(-80.0, 0.0, T0)
    s.reset()
    assert not s.halted
    assert s.trades == 0
    assert s.last_reset_day == DAY0


def test_snapshot_restore_round_trip() -> None:
    s = session()
    s.record_close(3.0, 1.0, T0)
    s.record_close(-80.0, 0.5, T0)
    other = SessionPnl(SessionConfig())
    other.restore(s.snapshot())
    assert other.snapshot() == s.snapshot()
    assert other.halted
    assert other.net_pnl == pytest.approx(s.net_pnl)
