"""A decision skips its symbol tick before the bot's deadline (issue 10's decision cost).

Each test first sweeps, so the bot's deadline is the one a sweep computed (the
guard is live), then lets an event or a reservation lower it, and decides an
intent exactly at the moment something is due, with no sweep in between: the
tick must still run and publish exactly the events it published unguarded.
"""

from __future__ import annotations

from tests.support.builders import DAY_MS, MIDNIGHT, T0, engine, intent, outcome
from worker.core import Effects, RiskEngine
from worker.core.orders import Denial, RecentOrders

COOLDOWN = """
[defaults]
accept_unknown_bots = true
[worker]
reservation_ttl_ms = 30000
[defaults.cooldown]
after_loss_secs = 600
"""

BREAKER = """
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 1
cooldown_secs = 3600
"""


Event = tuple[str, str | None, str, str]


def decide(e: RiskEngine, now: int, symbol: str = "BTCUSDT") -> tuple[str | None, list[Event]]:
    """One intent stamped ``now`` decided at ``now``: its gate and the halt events."""
    out = e.apply(intent(ts=now, symbol=symbol), now, out=Effects())
    (answer,) = out.decisions
    return answer.gate, [(h.kind, h.symbol, h.gate, h.event_id) for h in out.halts]


def test_guard_does_not_skip_a_cooldown_end_due_at_a_decision() -> None:
    e = engine(COOLDOWN)
    e.sweep(T0)  # the deadline is the next midnight
    e.apply(outcome(-5.0, ts=T0), T0)  # a cooldown until T0 + 600 s lowers it
    assert decide(e, T0 + 599_999) == ("loss_cooldown", [])
    assert decide(e, T0 + 600_000) == (
        None,
        [("resumed", "BTCUSDT", "loss_cooldown", "alpha/BTCUSDT/loss_cooldown/2")],
    )


def test_guard_does_not_skip_a_cooldown_end_after_a_sweep_at_a_reservation_expiry() -> None:
    """A reservation's expiry is the earlier deadline; the sweep at it must keep the
    cooldown's end as the next one, or the decision at that end would skip its tick."""
    e = engine(COOLDOWN)
    e.sweep(T0)
    assert decide(e, T0) == (None, [])  # reserves until T0 + 30 s
    e.apply(outcome(-5.0, ts=T0 + 1, symbol="ETHUSDT"), T0 + 1)  # cooldown to T0 + 600.001 s
    assert e.sweep(T0 + 30_000).halts == []  # expires the reservation, nothing resumes
    assert decide(e, T0 + 600_000, "ETHUSDT") == ("loss_cooldown", [])
    assert decide(e, T0 + 600_001, "ETHUSDT") == (
        None,
        [("resumed", "ETHUSDT", "loss_cooldown", "alpha/ETHUSDT/loss_cooldown/2")],
    )


def test_guard_does_not_skip_a_breaker_trip_end_due_at_a_decision() -> None:
    e = engine(BREAKER)
    e.sweep(T0)
    e.apply(outcome(-1.0, ts=T0), T0)  # trips until T0 + 3600 s
    assert decide(e, T0 + 3_599_999) == ("circuit_breaker", [])
    assert decide(e, T0 + 3_600_000) == (
        None,
        [("resumed", "BTCUSDT", "circuit_breaker", "alpha/BTCUSDT/circuit_breaker/2")],
    )


def test_guard_does_not_skip_a_rollover_due_at_a_decision() -> None:
    e = engine(BREAKER)
    e.sweep(T0)
    e.apply(outcome(-60.0, ts=T0), T0)  # halts the session (and trips the breaker)
    e.sweep(T0 + 3_600_000)  # the trip ended: the next deadline is midnight
    assert decide(e, MIDNIGHT + DAY_MS - 1) == ("session_halt", [])
    assert decide(e, MIDNIGHT + DAY_MS) == (
        None,
        [("resumed", "BTCUSDT", "session_halt", "alpha/BTCUSDT/session_halt/2")],
    )


def test_recent_orders_digest_cache_records_the_intent_given_not_the_one_last_checked() -> None:
    """The duplicate window hashes a decision's intent once (check, then record); another
    intent recorded after a check must be recorded under its own digest."""
    recent = RecentOrders()
    checked, other = intent(qty=2.0), intent(qty=3.0)
    assert recent.check(checked, T0, 1_000) is None
    recent.record(other, T0, 1_000)
    assert recent.check(checked, T0 + 1, 1_000) is None
    assert recent.check(other, T0 + 1, 1_000) == Denial(
        "duplicate_order", "same BTCUSDT buy 3 @ 100 allowed 1 ms earlier (window 1000 ms)"
    )
