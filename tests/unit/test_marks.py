"""The global mark table (issue 11, "Mark prices"): latest by ts, freshness, valuation."""

from __future__ import annotations

import pytest

from tests.support.builders import T0
from worker.core.marks import MarkEntry, MarkTable, exposure, unrealised_pnl
from worker.messages import Mark


def mark(price: float, ts: int = T0, symbol: str = "BTCUSDT") -> Mark:
    return Mark(symbol=symbol, price=price, ts=ts)


def test_the_table_keeps_the_latest_stamped_mark_per_symbol() -> None:
    table = MarkTable()
    assert table.apply(mark(100.0, T0)) is True
    assert table.apply(mark(101.0, T0 + 5)) is True
    assert table.apply(mark(99.0, T0 + 1)) is False  # stamped earlier: ignored
    assert table.apply(mark(7.0, T0, symbol="ETHUSDT")) is True
    assert table.latest("BTCUSDT") == MarkEntry(101.0, T0 + 5)
    assert table.latest("ETHUSDT") == MarkEntry(7.0, T0)
    assert table.latest("SOLUSDT") is None
    assert len(table) == 2


def test_at_an_equal_ts_the_later_record_wins_and_a_repeat_changes_nothing() -> None:
    table = MarkTable()
    table.apply(mark(100.0, T0))
    assert table.apply(mark(100.0, T0)) is False
    assert table.apply(mark(100.5, T0)) is True
    assert table.latest("BTCUSDT") == MarkEntry(100.5, T0)


def test_any_read_order_of_the_same_marks_ends_in_the_same_table() -> None:
    marks = [mark(100.0 + i, T0 + i * 10) for i in range(5)]
    forward, backward = MarkTable(), MarkTable()
    for m in marks:
        forward.apply(m)
    for m in reversed(marks):
        backward.apply(m)
    assert forward.latest("BTCUSDT") == backward.latest("BTCUSDT") == MarkEntry(104.0, T0 + 40)


def test_a_mark_is_fresh_up_to_max_age_inclusive_and_stale_after() -> None:
    table = MarkTable()
    table.apply(mark(100.0, T0))
    assert table.fresh("BTCUSDT", T0 + 60_000, 60_000) == 100.0
    assert table.stale("BTCUSDT", T0 + 60_000, 60_000) is False
    assert table.fresh("BTCUSDT", T0 + 60_001, 60_000) is None
    assert table.stale("BTCUSDT", T0 + 60_001, 60_000) is True


def test_a_mark_stamped_ahead_of_the_clock_is_fresh() -> None:
    table = MarkTable()
    table.apply(mark(100.0, T0 + 5_000))
    assert table.fresh("BTCUSDT", T0, 1_000) == 100.0


def test_no_mark_is_neither_fresh_nor_stale() -> None:
    """Without any mark a position is valued at entry (as before marks); only a held,
    too-old mark is stale."""
    table = MarkTable()
    assert table.fresh("BTCUSDT", T0, 60_000) is None
    assert table.stale("BTCUSDT", T0, 60_000) is False


@pytest.mark.parametrize(
    ("qty", "avg", "cv", "mark_price", "expected"),
    [
        (2.0, 100.0, 1.0, 90.0, -20.0),  # long loses as the mark falls
        (-2.0, 100.0, 1.0, 90.0, 20.0),  # short gains
        (0.5, 200.0, 10.0, 210.0, 50.0),  # contract value multiplies
        (0.0, 100.0, 1.0, 50.0, 0.0),  # flat
    ],
)
def test_unrealised_pnl(
    qty: float, avg: float, cv: float, mark_price: float, expected: float
) -> None:
    assert unrealised_pnl(qty, avg, cv, mark_price) == expected


def test_exposure_uses_the_mark_and_falls_back_to_the_entry_price() -> None:
    assert exposure(-2.0, 100.0, 1.0, 90.0) == 180.0
    assert exposure(-2.0, 100.0, 1.0, None) == 200.0
    assert exposure(3.0, 10.0, 5.0, 12.0) == 180.0
