"""Order-level checks (issue 11): size, price collar, rate, duplicates, daily notional."""

from __future__ import annotations

import pytest

from tests.support.builders import DAY0, MIDNIGHT, T0, intent
from worker.config import OrdersConfig
from worker.core.orders import (
    MAX_DUPLICATE_WINDOW_MS,
    MAX_RECENT_ORDERS,
    DailyNotional,
    Denial,
    OrderRate,
    RecentOrders,
    collar_check,
    order_digest,
    size_check,
)

DAY_MS = 86_400_000


def gate(denial: Denial | None) -> str | None:
    return None if denial is None else denial.gate


# -- size -----------------------------------------------------------------------------


def test_size_checks_are_off_by_default() -> None:
    assert size_check(OrdersConfig(), intent(qty=1e12, price=1e3)) is None


@pytest.mark.parametrize(
    ("cap", "qty", "expected"),
    [(5.0, 5.0, None), (5.0, 5.00001, "max_order_qty"), (0.3, 0.1 + 0.2, None)],
)
def test_max_qty_denies_only_above_the_cap(cap: float, qty: float, expected: str | None) -> None:
    """On the cap is within it, float residue included (0.1 + 0.2 is not above 0.3)."""
    assert gate(size_check(OrdersConfig(max_qty=cap), intent(qty=qty))) == expected


def test_max_notional_counts_contract_value() -> None:
    cfg = OrdersConfig(max_notional=1_000.0)
    assert size_check(cfg, intent(qty=2.0, price=50.0, contract_value=10.0)) is None
    denied = size_check(cfg, intent(qty=2.0, price=50.0, contract_value=10.5))
    assert denied == Denial("max_order_notional", "notional 1050 exceeds max_notional 1000")


def test_qty_is_judged_before_notional() -> None:
    cfg = OrdersConfig(max_qty=1.0, max_notional=1.0)
    assert gate(size_check(cfg, intent(qty=2.0, price=100.0))) == "max_order_qty"


# -- price collar -----------------------------------------------------------------------


def test_collar_denies_beyond_the_bps_either_side_of_the_mark() -> None:
    cfg = OrdersConfig(price_collar_bps=100.0)  # 1 %
    assert collar_check(cfg, 101.0, 100.0) is None  # exactly on the collar
    assert collar_check(cfg, 99.0, 100.0) is None
    assert collar_check(cfg, 101.01, 100.0) == Denial(
        "price_collar", "price 101.01 is 101.0 bps from mark 100 (collar 100 bps)"
    )
    assert gate(collar_check(cfg, 98.9, 100.0)) == "price_collar"


def test_collar_without_a_fresh_mark_fails_closed_as_stale_mark() -> None:
    cfg = OrdersConfig(price_collar_bps=50.0, mark_max_age_ms=5_000)
    assert collar_check(cfg, 100.0, None) == Denial("stale_mark", "no mark fresher than 5000 ms")


def test_collar_off_needs_no_mark() -> None:
    assert collar_check(OrdersConfig(), 1e9, None) is None


# -- order rate -----------------------------------------------------------------------


def test_order_rate_allows_the_limit_within_one_second_of_record_time() -> None:
    rate = OrderRate(3)
    for ts in (T0, T0 + 100, T0 + 200):
        assert rate.check(ts) is None
        rate.record(ts)
    assert rate.check(T0 + 999) == Denial("order_rate", "3 orders allowed within the last second")
    assert rate.check(T0 + 1_000) is None  # the first one left the second


def test_denied_intents_take_no_slot() -> None:
    rate = OrderRate(1)
    rate.record(T0)
    assert gate(rate.check(T0 + 10)) == "order_rate"
    assert gate(rate.check(T0 + 20)) == "order_rate"
    assert rate.check(T0 + 1_000) is None


def test_order_rate_with_out_of_order_record_times_keeps_the_latest_stamped() -> None:
    rate = OrderRate(2)
    for ts in (T0 + 500, T0 - 5_000, T0 + 600):
        rate.record(ts)
    assert rate.times == [T0 + 500, T0 + 600]
    assert gate(rate.check(T0 + 1_499)) == "order_rate"
    assert rate.check(T0 + 1_500) is None


def test_order_rate_off_remembers_nothing() -> None:
    rate = OrderRate(0)
    rate.record(T0)
    assert (rate.times, rate.check(T0)) == ([], None)


def test_order_rate_restore_keeps_only_what_the_limit_needs() -> None:
    """A restart with a lower limit keeps the latest-stamped record times."""
    rate = OrderRate(2)
    rate.restore([T0 + 3, T0 + 1, T0 + 2])
    assert rate.snapshot() == [T0 + 2, T0 + 3]


# -- duplicates -----------------------------------------------------------------------


def test_a_duplicate_is_the_same_symbol_side_qty_and_price_within_the_window() -> None:
    recent = RecentOrders()
    first = intent(qty=2.0, price=100.0)
    recent.record(first, T0, 1_000)
    same = intent(qty=2.0, price=100.0)  # another intent id, same order
    assert recent.check(same, T0 + 999, 1_000) == Denial(
        "duplicate_order", "same BTCUSDT buy 2 @ 100 allowed 999 ms earlier (window 1000 ms)"
    )
    assert recent.check(same, T0 + 1_000, 1_000) is None
    for other in (
        intent(qty=2.0, price=100.5),
        intent(qty=2.5, price=100.0),
        intent("open", "sell", 2.0, 100.0),
        intent(qty=2.0, price=100.0, symbol="ETHUSDT"),
    ):
        assert recent.check(other, T0 + 1, 1_000) is None


def test_the_action_does_not_make_an_order_different() -> None:
    """A close repeating an open's side, qty and price is still the same order sent twice."""
    assert order_digest(intent("open", "sell", 1.0, 5.0)) == order_digest(
        intent("close", "sell", 1.0, 5.0)
    )


def test_duplicate_window_off_remembers_nothing() -> None:
    recent = RecentOrders()
    recent.record(intent(), T0, 0)
    assert len(recent) == 0
    assert recent.check(intent(), T0, 0) is None


def test_recent_orders_are_capped_oldest_allowed_first() -> None:
    recent = RecentOrders()
    for n in range(MAX_RECENT_ORDERS + 1):
        recent.record(intent(qty=float(n + 1)), T0 + n, 60_000)
    assert len(recent) == MAX_RECENT_ORDERS
    assert recent.check(intent(qty=1.0), T0 + 2_000, 60_000) is None  # the oldest fell out
    assert gate(recent.check(intent(qty=2.0), T0 + 2_000, 60_000)) == "duplicate_order"


def test_entries_older_than_any_window_are_dropped() -> None:
    recent = RecentOrders()
    recent.record(intent(qty=1.0), T0, 1_000)
    recent.record(intent(qty=2.0), T0 + MAX_DUPLICATE_WINDOW_MS, 1_000)
    assert len(recent) == 1


def test_recent_orders_snapshot_round_trip_keeps_order_and_times() -> None:
    recent = RecentOrders()
    recent.record(intent(qty=1.0), T0, 5_000)
    recent.record(intent(qty=2.0), T0 + 1, 5_000)
    data = recent.snapshot()
    assert len(data) == 32
    again = RecentOrders()
    again.restore(data)
    assert again.snapshot() == data
    assert gate(again.check(intent(qty=1.0), T0 + 4_999, 5_000)) == "duplicate_order"


# -- daily notional -------------------------------------------------------------------


def test_daily_notional_denies_the_open_that_would_exceed_the_days_budget() -> None:
    budget = DailyNotional(1_000.0, DAY0)
    assert budget.check(600.0) is None
    budget.record(600.0)
    assert budget.check(400.0) is None  # exactly the budget
    assert budget.check(400.5) == Denial(
        "daily_notional", "600 allowed today + 400.5 would exceed 1000"
    )


def test_daily_notional_restarts_only_at_the_wall_clock_rollover() -> None:
    budget = DailyNotional(100.0, DAY0)
    budget.record(100.0)
    assert budget.tick(MIDNIGHT + DAY_MS - 1) is False
    assert gate(budget.check(1.0)) == "daily_notional"
    assert budget.tick(MIDNIGHT + DAY_MS) is True
    assert budget.snapshot() == (DAY0 + 1, 0.0)
    assert budget.check(100.0) is None


def test_daily_notional_off() -> None:
    budget = DailyNotional(0.0, DAY0)
    budget.record(1e12)
    assert budget.check(1e12) is None
