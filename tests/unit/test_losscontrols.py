"""Drawdown latch and after-loss cooldown (issue 11, "Loss controls"), as pure state."""

from __future__ import annotations

from tests.support.builders import DAY0, MIDNIGHT, T0
from worker.core.losscontrols import Drawdown, DrawdownSnapshot, LossCooldown

DAY_MS = 86_400_000


def test_drawdown_latches_when_equity_falls_the_limit_below_the_days_peak() -> None:
    dd = Drawdown(100.0, DAY0)
    assert dd.observe(80.0, T0) is False  # peak 80
    assert dd.observe(-19.0, T0 + 1) is False  # 99 below the peak
    assert dd.peak == 80.0
    assert dd.observe(-20.0, T0 + 2) is True  # exactly the limit: latched
    assert (dd.halted, dd.until_ts) == (True, MIDNIGHT + DAY_MS)


def test_drawdown_latch_holds_when_equity_recovers_and_reports_once() -> None:
    dd = Drawdown(50.0, DAY0)
    assert dd.observe(-50.0, T0) is True
    assert dd.observe(500.0, T0 + 1) is False
    assert dd.observe(-500.0, T0 + 2) is False
    assert dd.halted is True
    assert dd.peak == 500.0


def test_drawdown_peak_starts_at_the_opening_equity_and_a_late_event_counts_nothing() -> None:
    dd = Drawdown(30.0, DAY0, opening_equity=-40.0)
    assert dd.observe(-100.0, MIDNIGHT - 1) is False  # yesterday's event: late
    assert dd.peak == -40.0
    assert dd.observe(-69.0, T0) is False
    assert dd.observe(-70.0, T0) is True


def test_drawdown_event_stamped_ahead_across_midnight_counts_toward_today() -> None:
    dd = Drawdown(10.0, DAY0)
    assert dd.observe(-10.0, MIDNIGHT + DAY_MS + 5) is True
    assert dd.day == DAY0  # the event never rolls the day (T1)


def test_drawdown_only_the_wall_clock_rollover_releases_it_with_the_new_opening() -> None:
    dd = Drawdown(10.0, DAY0)
    dd.observe(-10.0, T0)
    assert dd.tick(MIDNIGHT + DAY_MS - 1, -3.0) is False
    assert dd.halted is True
    assert dd.tick(MIDNIGHT + DAY_MS, -3.0) is True
    assert (dd.day, dd.peak, dd.halted) == (DAY0 + 1, -3.0, False)


def test_drawdown_off_follows_the_peak_but_never_latches() -> None:
    dd = Drawdown(0.0, DAY0)
    assert dd.observe(10.0, T0) is False
    assert dd.observe(-1e9, T0) is False
    assert (dd.peak, dd.halted) == (10.0, False)


def test_drawdown_snapshot_round_trip() -> None:
    dd = Drawdown(10.0, DAY0)
    dd.observe(5.0, T0)
    dd.observe(-5.0, T0)
    snap = dd.snapshot()
    assert snap == DrawdownSnapshot(day=DAY0, peak=5.0, halted=True)
    again = Drawdown(10.0, 0)
    again.restore(snap)
    assert (again.day, again.peak, again.halted) == (DAY0, 5.0, True)


def test_cooldown_runs_from_the_losing_trades_time_and_ends_only_by_the_clock() -> None:
    cd = LossCooldown(600)
    assert cd.record_loss(T0) is True
    assert cd.until_ms == T0 + 600_000
    assert (cd.tick(T0 + 599_999), cd.until_ms) == (False, T0 + 600_000)
    assert cd.tick(T0 + 600_000) is True
    assert cd.until_ms is None


def test_a_second_loss_extends_the_cooldown_without_a_new_start() -> None:
    cd = LossCooldown(60)
    assert cd.record_loss(T0) is True
    assert cd.record_loss(T0 + 30_000) is False
    assert cd.until_ms == T0 + 90_000
    assert cd.record_loss(T0 - 50_000) is False  # an earlier loss never shortens it
    assert cd.until_ms == T0 + 90_000


def test_an_old_loss_blocks_until_the_sweep_ends_it() -> None:
    """Applying an event never ends a wait (T1): even a loss whose cooldown is long
    past blocks until the next sweep publishes the resume."""
    cd = LossCooldown(60)
    assert cd.record_loss(T0 - 3_600_000) is True
    assert cd.blocking is True
    assert cd.tick(T0) is True


def test_cooldown_off_never_blocks() -> None:
    cd = LossCooldown(0)
    assert cd.record_loss(T0) is False
    assert cd.blocking is False
