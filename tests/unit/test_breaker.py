"""CircuitBreaker: sliding window, trip at event time, cooldown auto-reset."""

from __future__ import annotations

from tests.support.builders import DAY_MS, HOUR_MS, T0, apply_all, engine, intent, outcome
from worker.config import BreakerConfig
from worker.core import CircuitBreaker, Effects

S0 = T0 // 1000


def breaker(loss_limit: int = 3, window_secs: int = 100, cooldown_secs: int = 50) -> CircuitBreaker:
    return CircuitBreaker(
        BreakerConfig(loss_limit=loss_limit, window_secs=window_secs, cooldown_secs=cooldown_secs)
    )


def test_trips_on_the_limit_th_loss_inside_the_window() -> None:
    b = breaker(loss_limit=3)
    assert b.record_loss(S0) is False
    assert b.record_loss(S0 + 10) is False
    assert not b.is_tripped
    assert b.record_loss(S0 + 20) is True
    assert b.is_tripped
    assert b.tripped_at == S0 + 20, "a trip starts at the tripping event's time"
    assert b.until_secs == S0 + 20 + 50


def test_losses_exactly_one_window_apart_do_not_count_together() -> None:
    b = breaker(loss_limit=2, window_secs=100)
    b.record_loss(S0)
    assert b.record_loss(S0 + 100) is False
    assert b.recent_losses == [S0, S0 + 100], "only the wall clock evicts"
    b.tick(S0 + 100)
    assert b.recent_losses == [S0 + 100]


def test_losses_just_inside_the_window_trip() -> None:
    b = breaker(loss_limit=2, window_secs=100)
    b.record_loss(S0)
    assert b.record_loss(S0 + 99) is True


def test_tick_evicts_losses_older_than_the_window() -> None:
    b = breaker(loss_limit=3, window_secs=100)
    b.record_loss(S0)
    b.record_loss(S0 + 60)
    assert b.tick(S0 + 99) is False
    assert b.recent_losses == [S0, S0 + 60]
    b.tick(S0 + 100)
    assert b.recent_losses == [S0 + 60]
    b.tick(S0 + 1000)
    assert b.recent_losses == []


def test_cooldown_auto_resets_and_forgets_losses() -> None:
    b = breaker(loss_limit=2, window_secs=100, cooldown_secs=50)
    b.record_loss(S0)
    b.record_loss(S0 + 1)
    assert b.is_tripped
    assert b.tick(S0 + 1 + 49) is False
    assert b.is_tripped
    assert b.tick(S0 + 1 + 50) is True
    assert not b.is_tripped
    assert b.recent_losses == []
    assert b.until_secs is None


def test_losses_while_tripped_are_not_recorded() -> None:
    b = breaker(loss_limit=2, cooldown_secs=50)
    b.record_loss(S0)
    b.record_loss(S0 + 1)
    assert b.record_loss(S0 + 2) is False
    assert b.recent_losses == [S0, S0 + 1]
    assert b.tripped_at == S0 + 1


def test_a_loss_stamped_after_the_cooldown_does_not_end_the_trip_but_counts_after_it() -> None:
    b = breaker(loss_limit=2, window_secs=100, cooldown_secs=50)
    b.record_loss(S0)
    b.record_loss(S0 + 1)
    assert b.record_loss(S0 + 51) is False
    assert b.tripped_at == S0 + 1, "only the wall clock ends a cooldown"
    assert b.tick(S0 + 51) is True
    assert not b.is_tripped
    assert b.recent_losses == [S0 + 51]


def test_loss_limit_zero_disables_the_breaker() -> None:
    b = breaker(loss_limit=0)
    for i in range(20):
        assert b.record_loss(S0 + i) is False
    assert not b.is_tripped
    assert b.recent_losses == []


def test_out_of_order_loss_inside_the_window_trips() -> None:
    b = breaker(loss_limit=3, window_secs=100)
    b.record_loss(S0 + 50)
    b.record_loss(S0 + 80)
    assert b.record_loss(S0 + 10) is True
    assert b.recent_losses == [S0 + 10, S0 + 50, S0 + 80]


def test_out_of_order_loss_older_than_the_window_does_not_trip() -> None:
    b = breaker(loss_limit=3, window_secs=100)
    b.record_loss(S0 + 150)
    b.record_loss(S0 + 160)
    assert b.record_loss(S0 + 10) is False
    assert b.recent_losses == [S0 + 10, S0 + 150, S0 + 160]


def test_restore_sorts_and_keeps_trip() -> None:
    b = breaker()
    b.restore(b.snapshot().__class__(recent_losses=[S0 + 5, S0, S0 + 2], tripped_at=S0))
    assert b.recent_losses == [S0, S0 + 2, S0 + 5]
    assert b.is_tripped
    again = breaker()
    again.restore(b.snapshot())
    assert again.snapshot() == b.snapshot()


# -- through the engine ------------------------------------------------------------------

BREAKER_2 = """
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -1e9
[defaults.breaker]
loss_limit = 2
window_secs = 14400
cooldown_secs = 3600
"""


def test_a_win_does_not_untrip_the_breaker() -> None:
    eng = engine(BREAKER_2)
    apply_all(eng, [outcome(-1.0), outcome(-1.0, ts=T0 + 1000)])
    breaker_state = eng.bots["alpha"].symbols["BTCUSDT"].breaker
    assert breaker_state.is_tripped
    apply_all(eng, [outcome(1000.0, ts=T0 + 2000)])
    assert breaker_state.is_tripped


def test_break_even_outcome_is_not_a_loss() -> None:
    eng = engine(BREAKER_2)
    apply_all(eng, [outcome(1.0, 1.0), outcome(2.0, 2.0, ts=T0 + 1)])
    assert eng.bots["alpha"].symbols["BTCUSDT"].breaker.recent_losses == []


def test_losses_hours_apart_replayed_at_once_do_not_trip() -> None:
    eng = engine(
        """
        [defaults]
        accept_unknown_bots = true
        [defaults.session]
        loss_limit = -1e9
        """
    )  # default breaker: 4 losses within 14 400 s
    now = T0 + 20 * HOUR_MS  # the backlog is applied long after it happened
    out = Effects()
    for hours in (0, 5, 10, 15):
        eng.apply(outcome(-10.0, ts=T0 + hours * HOUR_MS), now, out=out)
    sym = eng.bots["alpha"].symbols["BTCUSDT"]
    assert not sym.breaker.is_tripped
    assert not [h for h in out.halts if h.gate == "circuit_breaker"]


def test_four_losses_inside_the_window_trip_at_the_default_limit() -> None:
    eng = engine(
        """
        [defaults]
        accept_unknown_bots = true
        [defaults.session]
        loss_limit = -1e9
        """
    )
    out = Effects()
    for minutes in (0, 30, 60, 90):
        eng.apply(outcome(-10.0, ts=T0 + minutes * 60_000), T0 + 2 * HOUR_MS, out=out)
    sym = eng.bots["alpha"].symbols["BTCUSDT"]
    assert sym.breaker.tripped_at == (T0 + 90 * 60_000) // 1000
    halts = [h for h in out.halts if h.gate == "circuit_breaker"]
    assert [h.kind for h in halts] == ["halted"]
    assert halts[0].ts == T0 + 90 * 60_000
    assert halts[0].until_ts == T0 + 90 * 60_000 + 3_600_000


def test_restore_then_tick_resets_a_trip_older_than_the_cooldown() -> None:
    eng = engine(BREAKER_2)
    apply_all(eng, [outcome(-1.0), outcome(-1.0, ts=T0 + 1000)])
    snap = eng.bots["alpha"].symbols["BTCUSDT"].snapshot()
    assert snap.circuit_breaker.tripped_at == (T0 + 1000) // 1000

    fresh = engine(BREAKER_2)
    out = Effects()
    later = T0 + 1000 + 3600 * 1000 + 1  # downtime longer than the cooldown
    fresh.bot("alpha").restore_symbol("BTCUSDT", snap, later, out)
    sym = fresh.bots["alpha"].symbols["BTCUSDT"]
    assert not sym.breaker.is_tripped
    assert sym.breaker.recent_losses == []
    assert [(h.kind, h.gate) for h in out.halts] == [("resumed", "circuit_breaker")]


def test_restore_within_the_cooldown_stays_tripped() -> None:
    eng = engine(BREAKER_2)
    apply_all(eng, [outcome(-1.0), outcome(-1.0, ts=T0 + 1000)])
    snap = eng.bots["alpha"].symbols["BTCUSDT"].snapshot()
    fresh = engine(BREAKER_2)
    out = Effects()
    fresh.bot("alpha").restore_symbol("BTCUSDT", snap, T0 + 60_000, out)
    assert fresh.bots["alpha"].symbols["BTCUSDT"].breaker.is_tripped
    assert out.halts == []


def test_restore_then_tick_rolls_an_old_day_session_over() -> None:
    eng = engine(
        """
        [defaults]
        accept_unknown_bots = true
        [defaults.session]
        loss_limit = -50.0
        """
    )
    apply_all(eng, [outcome(-80.0)])
    snap = eng.bots["alpha"].symbols["BTCUSDT"].snapshot()
    assert snap.session_pnl.halted

    fresh = engine(
        """
        [defaults]
        accept_unknown_bots = true
        """
    )
    out = Effects()
    fresh.bot("alpha").restore_symbol("BTCUSDT", snap, T0 + DAY_MS, out)
    session = fresh.bots["alpha"].symbols["BTCUSDT"].session
    assert not session.halted
    assert session.trades == 0
    assert session.net_pnl == 0.0
    assert ("resumed", "session_halt") in [(h.kind, h.gate) for h in out.halts]


def test_loss_limit_zero_disables_the_breaker_in_the_engine() -> None:
    eng = engine(
        """
        [defaults]
        accept_unknown_bots = true
        [defaults.session]
        loss_limit = -1e9
        [defaults.breaker]
        loss_limit = 0
        """
    )
    out = apply_all(eng, [outcome(-5.0, ts=T0 + i) for i in range(50)])
    sym = eng.bots["alpha"].symbols["BTCUSDT"]
    assert not sym.breaker.is_tripped
    assert out.halts == []
    assert eng.apply(intent(), T0 + 100).decisions[0].allowed
