"""Behaviours that plausible one-line bugs broke while the suite stayed green.

Issue 17 planted mutants in the core (``worker/core/``, then engine.py and risk/) and the
unit suite let them live; ``make mutate`` finds more. Each test here is named
after the behaviour it pins and asserts exact values, so the mutant that breaks
the behaviour fails it.
"""

from __future__ import annotations

import struct

import msgspec
import pytest

from tests.support.builders import (
    DAY_MS,
    HOUR_MS,
    MIDNIGHT,
    MIN_MS,
    T0,
    control,
    engine,
    fill,
    intent,
    origin,
    outcome,
)
from worker import signing
from worker.config import BreakerConfig, WorkerConfig
from worker.core import CircuitBreaker, Effects, Position, PositionSnapshot, RiskEngine, idlog
from worker.core.dedupe import IdWindow, IdWindowSnapshot, digest
from worker.core.intents import DEFAULT_KEEP, IntentWindow, content_digest, id_digest
from worker.core.snapshot import chunk_key, encode, portfolio_key, symbol_key
from worker.errors import Rejected
from worker.messages import GateDecision, OrderIntent

TTL = 1_000
RESERVING = f"""
[defaults]
accept_unknown_bots = true

[worker]
reservation_ttl_ms = {TTL}
"""


def _reservations(eng: RiskEngine, bot: str = "alpha") -> list[str]:
    return sorted(eng.bots[bot].portfolio_snapshot().reservations)


def _allowed(eng: RiskEngine, intent_id: str, now: int, symbol: str = "BTCUSDT") -> None:
    out = eng.apply(intent(intent_id=intent_id, ts=now, symbol=symbol), now)
    d = out.decisions[0]
    assert (d.allowed, d.reservation_expires_ts) == (True, now + TTL)


def _session(eng: RiskEngine, symbol: str = "BTCUSDT", bot: str = "alpha") -> tuple[float, int]:
    s = eng.bots[bot].symbols[symbol].snapshot().session_pnl
    return (s.realised - s.fees, s.trades)


def _losses(eng: RiskEngine, symbol: str = "BTCUSDT") -> list[int]:
    return eng.bots["alpha"].symbols[symbol].snapshot().circuit_breaker.recent_losses


# -- reservations ----------------------------------------------------------------------


def test_reservation_expires_after_an_unrelated_sweep() -> None:
    """A sweep that expires one reservation must still wake for the next one."""
    eng = engine(RESERVING)
    _allowed(eng, "a", T0)
    _allowed(eng, "b", T0 + 600, symbol="ETHUSDT")
    eng.sweep(T0 + TTL)  # due for "a" only
    assert _reservations(eng) == ["b"]
    eng.sweep(T0 + 600 + TTL - 1)
    assert _reservations(eng) == ["b"]
    eng.sweep(T0 + 600 + TTL)
    assert _reservations(eng) == []


def test_reservation_expires_after_a_restore() -> None:
    """A restored reservation expires on the wall clock like a live one."""
    live = engine(RESERVING)
    _allowed(live, "a", T0)
    record = encode(live.bots["alpha"].portfolio_snapshot())
    restored = engine(RESERVING)
    restored.restore({portfolio_key("alpha"): record}, T0 + 10)
    assert _reservations(restored) == ["a"]
    restored.sweep(T0 + 20)
    assert _reservations(restored) == ["a"]
    restored.sweep(T0 + TTL)
    assert _reservations(restored) == []


# -- replay guards -----------------------------------------------------------------------


def _dedupe_field() -> str:
    """The window's config key (``dedupe_ids_per_symbol`` became ``..._per_bot``, D1)."""
    return next(f for f in WorkerConfig.__struct_fields__ if f.startswith("dedupe_ids_per"))


@pytest.mark.parametrize("window", [1, 3, 8])
def test_dedupe_window_holds_exactly_its_size(window: int) -> None:
    """The oldest of ``window`` ids is still a duplicate; one more id evicts it."""
    eng = engine(
        f"[defaults]\naccept_unknown_bots = true\n[worker]\n{_dedupe_field()} = {window}\n"
    )
    for n in range(window):
        eng.apply(outcome(-1.0, outcome_id=f"o{n}"), T0, origin(n))
    resent = eng.apply(outcome(-1.0, outcome_id="o0"), T0, origin(window))
    assert (resent.skipped, _session(eng)) == (1, (-1.0 * window, window))
    eng.apply(outcome(-1.0, outcome_id="new"), T0, origin(window + 1))
    again = eng.apply(outcome(-1.0, outcome_id="o0"), T0, origin(window + 2))
    assert (again.skipped, _session(eng)[1]) == (0, window + 2)


# -- classification -------------------------------------------------------------------

BREAKER_2 = """
[defaults]
accept_unknown_bots = true
[defaults.breaker]
loss_limit = 2
window_secs = 3600
cooldown_secs = 600
"""


def test_gross_win_eaten_by_fees_is_a_breaker_loss() -> None:
    eng = engine(BREAKER_2)
    eng.apply(outcome(1.0, fee=2.0, ts=T0), T0)
    assert _losses(eng) == [T0 // 1000]
    out = eng.apply(outcome(0.5, fee=0.6, ts=T0 + 1000), T0 + 1000)
    assert [(h.gate, h.kind) for h in out.halts] == [("circuit_breaker", "halted")]


def test_break_even_round_trip_does_not_trip_the_breaker() -> None:
    eng = engine(BREAKER_2)
    for n in range(3):
        out = eng.apply(outcome(2.0, fee=2.0, ts=T0 + n), T0 + n)
        assert out.halts == []
    assert (_losses(eng), _session(eng)) == ([], (0.0, 3))


def test_break_even_round_trip_from_fills_does_not_trip_the_breaker() -> None:
    eng = engine(BREAKER_2.replace("[defaults]\n", '[defaults]\npnl_source = "fills"\n'))
    for n in range(3):
        eng.apply(fill("buy", 1.0, 100.0, ts=T0 + 2 * n), T0 + 2 * n)
        out = eng.apply(fill("sell", 1.0, 100.0, ts=T0 + 2 * n + 1), T0 + 2 * n + 1)
        assert out.halts == []
    assert (_losses(eng), _session(eng)) == ([], (0.0, 3))


# -- operator resets ---------------------------------------------------------------------

LATCH = """
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -1000
[defaults.portfolio]
max_daily_loss = -80
"""


def test_bot_wide_reset_session_then_a_loss_does_not_falsely_latch() -> None:
    """After the reset the account is at 0: a -20 loss is -20, not -90."""
    eng = engine(LATCH)
    eng.apply(outcome(-70.0, ts=T0, symbol="BTCUSDT"), T0)
    eng.apply(control("reset_session", symbol=None, ts=T0 + 1), T0 + 1)
    out = eng.apply(outcome(-20.0, ts=T0 + 2, symbol="ETHUSDT"), T0 + 2)
    assert out.halts == []
    snap = eng.bots["alpha"].portfolio_snapshot()
    assert (snap.halted, _session(eng, "BTCUSDT"), _session(eng, "ETHUSDT")) == (
        False,
        (0.0, 0),
        (-20.0, 1),
    )
    late = eng.apply(outcome(-60.0, ts=T0 + 3, symbol="ETHUSDT"), T0 + 3)
    assert [(h.gate, h.kind) for h in late.halts] == [("portfolio_daily_loss", "halted")]


def test_replayed_bot_wide_reset_does_not_wipe_pnl_booked_after_it() -> None:
    eng = engine(LATCH)
    eng.apply(outcome(-30.0, ts=T0), T0, origin(0))
    reset = control("reset_session", symbol=None, ts=T0 + 1)
    eng.apply(reset, T0 + 1, origin(0, "risk.control/0"))
    eng.apply(outcome(-20.0, ts=T0 + 2), T0 + 2, origin(1))
    replay = eng.apply(reset, T0 + 3, origin(0, "risk.control/0"))
    assert (replay.skipped, replay.halts, _session(eng)) == (1, [], (-20.0, 1))


def test_operator_reset_with_yesterdays_ts_does_not_move_the_session_back_a_day() -> None:
    now = MIDNIGHT + 2 * MIN_MS  # 00:02 UTC: yesterday's 23:59 command is in the window
    eng = engine(LATCH)
    eng.apply(outcome(-10.0, ts=now), now)
    eng.apply(control("reset_session", ts=now - 3 * MIN_MS), now)
    day = eng.bots["alpha"].symbols["BTCUSDT"].snapshot().session_pnl.last_reset_day
    assert day == now // DAY_MS
    eng.apply(outcome(-5.0, ts=now - HOUR_MS), now)  # yesterday's: late, not today's
    eng.apply(outcome(-7.0, ts=now + 1), now + 1)
    assert _session(eng) == (-7.0, 1)


# -- positions ------------------------------------------------------------------------------


def test_leftover_position_of_0_0005_is_not_zeroed() -> None:
    p = Position()
    p.apply(1.0005, 100.0, 0.0, 1.0)
    trip = p.apply(-1.0, 110.0, 0.0, 1.0)
    assert (trip.closed_net, round(p.qty, 12), p.avg_price) == (None, 0.0005, 100.0)
    assert p.is_flat is False


def test_leftover_position_of_0_0005_counts_toward_exposure() -> None:
    eng = engine(RESERVING)
    eng.apply(fill("buy", 1.0005, 100.0), T0)
    eng.apply(fill("sell", 1.0, 110.0), T0)
    gate = eng.bots["alpha"].account_gate_state(T0)
    assert (gate.open_positions, round(gate.gross_exposure, 9)) == (1, 0.05)


def test_effects_collect_across_calls() -> None:
    """One Effects gathers a batch: the second event's halt joins the first's."""
    eng = engine(BREAKER_2)
    out = Effects()
    eng.apply(outcome(-1.0, ts=T0), T0, out=out)
    eng.apply(outcome(-1.0, ts=T0 + 1), T0 + 1, out=out)
    assert [(h.symbol, h.gate, h.kind) for h in out.halts] == [
        ("BTCUSDT", "circuit_breaker", "halted")
    ]


@pytest.mark.parametrize(
    ("into_day", "wait"),
    [
        (0, 60_000),
        (59_999, 1),
        (60_000, 0),
        (DAY_MS - 3 * MIN_MS - 1, 0),
        (DAY_MS - 3 * MIN_MS, 4 * MIN_MS),
        (DAY_MS - 1, MIN_MS + 1),
    ],
)
def test_broker_tests_start_clear_of_utc_midnight(into_day: int, wait: int) -> None:
    """The conftest guard: 3 min before to 1 min after 00:00 UTC, a broker test waits."""
    from tests.conftest import midnight_wait_ms

    assert midnight_wait_ms(MIDNIGHT + into_day) == wait


# -- partial fills ---------------------------------------------------------------------------

CAPPED = f"""
[defaults]
accept_unknown_bots = true
[defaults.portfolio]
max_gross_exposure = 1000.0
[worker]
reservation_ttl_ms = {TTL}
"""


def test_partial_fill_leaves_exactly_the_unfilled_room_reserved() -> None:
    """9@100 reserved, 1 filled: 100 held + 800 reserved, so exactly 100 more fits."""
    eng = engine(CAPPED)
    eng.apply(intent(qty=9.0, intent_id="a"), T0)
    eng.apply(fill("buy", 1.0, 100.0, intent_id="a"), T0)
    fits = eng.apply(intent(qty=1.0, intent_id="b", symbol="ETHUSDT"), T0).decisions[0]
    over = eng.apply(intent(qty=0.01, intent_id="c", symbol="SOLUSDT"), T0).decisions[0]
    assert (fits.allowed, over.allowed, over.gate) == (True, False, "gross_exposure")


def test_a_full_fill_removes_its_reservation() -> None:
    eng = engine(CAPPED)
    eng.apply(intent(qty=2.0, intent_id="a"), T0)
    eng.apply(fill("buy", 1.5, 100.0, intent_id="a"), T0)
    assert _reservations(eng) == ["a"]
    eng.apply(fill("buy", 0.5, 100.0, intent_id="a"), T0)
    assert _reservations(eng) == []
    room = eng.apply(intent(qty=8.0, intent_id="b", symbol="ETHUSDT"), T0).decisions[0]
    assert room.allowed is True  # 200 held + 800 = the cap: nothing left reserved for "a"


def test_fully_filling_one_reservation_keeps_the_others_notional() -> None:
    """Only an empty book resets the running reserved notional to zero."""
    eng = engine(CAPPED)
    eng.apply(intent(qty=5.0, intent_id="a"), T0)
    eng.apply(intent(qty=4.0, intent_id="b", symbol="ETHUSDT"), T0)
    eng.apply(fill("buy", 5.0, 100.0, intent_id="a"), T0)  # 500 held + 400 reserved
    over = eng.apply(intent(qty=1.5, intent_id="c", symbol="SOLUSDT"), T0).decisions[0]
    fits = eng.apply(intent(qty=1.0, intent_id="d", symbol="SOLUSDT"), T0).decisions[0]
    assert (over.gate, fits.allowed) == ("gross_exposure", True)


# -- the reservation byte budget (ids and symbols of outstanding reservations) ----------------

BUDGETED = f"""
[defaults]
accept_unknown_bots = true
[worker]
max_reservations_per_bot = 1000
reservation_ttl_ms = {TTL}
"""


def _budget_id(n: int, length: int = 251) -> str:
    """An id whose JSON costs ``length + 2`` bytes; with symbol "S" (3) a reservation
    costs ``length + 5``: 256 by default, so 384 of them are the 96 KiB budget."""
    return f"{n:04d}".ljust(length, "x")


def _open(eng: RiskEngine, intent_id: str) -> tuple[bool, str | None]:
    d = eng.apply(intent(intent_id=intent_id, symbol="S", qty=0.001), T0).decisions[0]
    return d.allowed, d.gate


def test_reservation_byte_budget_is_exact_and_survives_a_restore() -> None:
    """98,303 bytes held: one byte under the budget, so one more fits, live and restored."""
    eng = engine(BUDGETED)
    for n in range(383):
        assert _open(eng, _budget_id(n)) == (True, None)
    assert _open(eng, _budget_id(383, length=250)) == (True, None)  # 383 * 256 + 255
    restored = engine(BUDGETED)
    restored.restore({portfolio_key("alpha"): encode(eng.bots["alpha"].portfolio_snapshot())}, T0)
    for e in (eng, restored):
        assert _open(e, _budget_id(384)) == (True, None)  # now at or over the budget
        assert _open(e, _budget_id(385)) == (False, "max_concurrent_positions")


def test_a_filled_reservation_gives_back_its_bytes_of_the_budget() -> None:
    eng = engine(BUDGETED)
    for n in range(384):
        assert _open(eng, _budget_id(n)) == (True, None)
    assert _open(eng, _budget_id(384)) == (False, "max_concurrent_positions")
    eng.apply(fill("buy", 0.001, 100.0, symbol="S", intent_id=_budget_id(0)), T0)
    # Exactly its 256 bytes given back (98,048 held): 250 more leave 6 bytes of room.
    assert _open(eng, _budget_id(385, length=245)) == (True, None)
    assert _open(eng, _budget_id(386)) == (True, None)
    assert _open(eng, _budget_id(387)) == (False, "max_concurrent_positions")


# -- breaker cooldown end -------------------------------------------------------------------------


def _breaker(cooldown: int) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(loss_limit=2, window_secs=100, cooldown_secs=cooldown))


def test_a_zero_cooldown_ends_with_the_tripping_losses_forgotten() -> None:
    b = _breaker(0)
    b.record_loss(1_000)
    assert b.record_loss(1_000) is True
    b.record_loss(1_000)  # in the tripping second: cooling down, dropped
    assert b.recent_losses == [1_000, 1_000]
    b.record_loss(1_001)  # stamped after the (empty) cooldown: kept for afterwards
    assert b.tick(1_001) is True
    assert (b.tripped_at, b.recent_losses) == (None, [1_001])


def test_losses_stamped_after_the_cooldown_trip_again_when_it_ends() -> None:
    b = _breaker(10)
    b.record_loss(1_000)
    b.record_loss(1_000)
    b.record_loss(1_010)  # after the cooldown's end (1,010): waits
    b.record_loss(1_011)
    assert b.tick(1_011) is True
    assert (b.tripped_at, b.recent_losses) == (1_011, [1_010, 1_011])


def test_a_sweep_evicts_every_loss_older_than_the_window() -> None:
    b = CircuitBreaker(BreakerConfig(loss_limit=5, window_secs=100, cooldown_secs=10))
    for t in (1_000, 1_001, 1_050, 1_150):
        b.record_loss(t)
    b.tick(1_151)
    assert b.recent_losses == [1_150]


EDGE = f"""
[defaults]
accept_unknown_bots = true
[defaults.portfolio]
max_gross_exposure = 1000.0
[worker]
reservation_ttl_ms = {TTL}
"""


def test_an_intent_a_hair_over_the_exposure_cap_is_denied() -> None:
    """Within the float edge of the cap the exact sum decides: 1000.0000001 > 1000, and
    999.9999999 + 1e-7 (as floats: 3.4e-14 over, though their float sum is 1000.0) is over
    too, while 999.9999999 + 9.9e-8 fits."""
    eng = engine(EDGE)
    eng.apply(intent(qty=9.999999999, price=100.0, intent_id="a"), T0)  # 999.9999999 reserved
    over = eng.apply(intent(qty=2e-9, price=100.0, intent_id="b", symbol="ETHUSDT"), T0)
    hair = eng.apply(intent(qty=1e-9, price=100.0, intent_id="d", symbol="ETHUSDT"), T0)
    assert hair.decisions[0].gate == "gross_exposure"
    fits = eng.apply(intent(qty=1e-9, price=99.0, intent_id="c", symbol="ETHUSDT"), T0)
    assert (over.decisions[0].gate, fits.decisions[0].allowed) == ("gross_exposure", True)


# -- per-symbol reservation books ----------------------------------------------------------------

ONE_SLOT = f"""
[defaults]
accept_unknown_bots = true
[defaults.portfolio]
max_concurrent_positions = 1
[worker]
reservation_ttl_ms = {TTL}
"""


def test_a_symbol_frees_its_slot_once_every_open_on_it_is_filled_and_closed() -> None:
    eng = engine(ONE_SLOT)
    eng.apply(intent(intent_id="a"), T0)
    eng.apply(intent(intent_id="b"), T0)  # the same symbol: no new slot
    eng.apply(fill("buy", 1.0, 100.0, intent_id="a"), T0)
    eng.apply(fill("buy", 1.0, 100.0, intent_id="b"), T0)
    eng.apply(fill("sell", 2.0, 100.0), T0)  # flat, nothing reserved
    d = eng.apply(intent(intent_id="c", symbol="ETHUSDT"), T0).decisions[0]
    assert (d.allowed, _reservations(eng)) == (True, ["c"])


def test_concurrent_closes_add_up_against_the_position() -> None:
    eng = engine(RESERVING)
    eng.apply(fill("buy", 3.0, 100.0), T0)
    first = eng.apply(intent("close", "sell", 1.0, intent_id="x"), T0).decisions[0]
    second = eng.apply(intent("close", "sell", 1.0, intent_id="y"), T0).decisions[0]
    third = eng.apply(intent("close", "sell", 1.5, intent_id="z"), T0).decisions[0]
    last = eng.apply(intent("close", "sell", 1.0, intent_id="w"), T0).decisions[0]
    assert [d.gate for d in (first, second, third, last)] == [
        None,
        None,
        "reduce_only_exceeds_position",
        None,
    ]


def test_a_fill_within_float_tolerance_of_the_rest_releases_the_whole_reservation() -> None:
    """2000 left, 1999.8999999 filled: the 1e-7 rest is within 1e-9 x 2000, not a reservation."""
    eng = engine(RESERVING)
    eng.apply(intent(qty=3000.0, price=1.0, intent_id="a"), T0)
    eng.apply(fill("buy", 1000.1, 1.0, intent_id="a"), T0)
    assert _reservations(eng) == ["a"]
    eng.apply(fill("buy", 1999.8999999, 1.0, intent_id="a"), T0)
    assert _reservations(eng) == []


def test_a_residue_within_float_tolerance_of_a_large_position_is_flat() -> None:
    """1e-7 left of a 1999.9 position is 5e-11 of it: float residue, a finished round trip."""
    p = Position()
    p.apply(1999.9, 1.0, 0.0, 1.0)
    trip = p.apply(-1999.8999999, 1.0, 0.0, 1.0)
    assert (p.qty, p.is_flat, trip.closed_net) == (0.0, True, 0.0)


def test_a_position_never_filled_snapshots_with_contract_value_one() -> None:
    """The seed's shape: an untouched position reads as flat, 1 unit per contract."""
    assert Position().snapshot() == PositionSnapshot(
        qty=0.0, avg_price=0.0, entry_fees=0.0, contract_value=1.0, round_trip_net=0.0
    )


def test_after_an_expiry_an_intent_up_to_the_exposure_cap_is_allowed() -> None:
    """Expiry re-sums the reserved notional from nothing: 0 + 1000 is the cap, not over it."""
    eng = engine(CAPPED)
    eng.apply(intent(qty=5.0, intent_id="a"), T0)
    eng.apply(intent(qty=1.0, intent_id="b", symbol="ETHUSDT"), T0 + 1)
    eng.sweep(T0 + TTL)  # "a" expires, "b" stays
    assert _reservations(eng) == ["b"]
    d = eng.apply(intent(qty=9.0, intent_id="c", symbol="SOLUSDT"), T0 + TTL).decisions[0]
    assert (d.allowed, d.gate) == (True, None)


# -- engine: decisions and commands -----------------------------------------------------------


def test_a_repeated_intent_gets_the_first_decisions_time_and_expiry() -> None:
    """Stamped 1 s before it was decided at T0; re-sent at T0 + 0.5 s: the same answer."""
    eng = engine("[defaults]\naccept_unknown_bots = true\n[worker]\nreservation_ttl_ms = 60000\n")
    i = intent(intent_id="a", ts=T0 - 1000)
    first = eng.apply(i, T0).decisions[0]
    again = eng.apply(i, T0 + 500).decisions[0]
    assert (again.ts, again.reservation_expires_ts) == (first.ts, first.reservation_expires_ts)
    assert (first.ts, first.reservation_expires_ts) == (T0, T0 + 60_000)


def test_a_concurrency_denial_names_the_cap() -> None:
    eng = engine(ONE_SLOT)
    eng.apply(intent(intent_id="a"), T0)
    d = eng.apply(intent(intent_id="b", symbol="ETHUSDT"), T0).decisions[0]
    assert (d.gate, d.reason) == (
        "max_concurrent_positions",
        "1 positions already open or reserved",
    )


def test_a_close_within_float_tolerance_of_a_large_position_is_allowed() -> None:
    """1e-7 over a 1999.9 position is 5e-11 of it: float residue, not an oversize close."""
    eng = engine(RESERVING)
    eng.apply(fill("buy", 1999.9, 1.0), T0)
    d = eng.apply(intent("close", "sell", 1999.9000001, 1.0, intent_id="x"), T0).decisions[0]
    assert (d.allowed, d.gate) == (True, None)


def test_a_close_exactly_the_tolerance_over_what_is_not_being_closed_is_allowed() -> None:
    """The tolerance is inclusive: 1e-9 of a 1.0 position over an all-reserved rest of 0."""
    eng = engine(RESERVING)
    eng.apply(fill("buy", 1.0, 100.0), T0)
    first = eng.apply(intent("close", "sell", 1.0, intent_id="c1"), T0).decisions[0]
    hair = eng.apply(intent("close", "sell", 1e-9, intent_id="c2"), T0).decisions[0]
    over = eng.apply(intent("close", "sell", 2e-9, intent_id="c3"), T0).decisions[0]
    assert [(d.allowed, d.gate) for d in (first, hair, over)] == [
        (True, None),
        (True, None),
        (False, "reduce_only_exceeds_position"),
    ]


SIGNED = """
[defaults]
accept_unknown_bots = true
[control]
secret = "kill-secret"
"""


def test_stale_and_replayed_commands_say_why() -> None:
    eng = engine(SIGNED)
    halt = signing.signed(control("halt", ts=T0), b"kill-secret")
    older = signing.signed(control("resume", ts=T0 - 1000), b"kill-secret")
    eng.apply(halt, T0, origin(0, "risk.control/0"))
    with pytest.raises(Rejected) as replayed:
        eng.apply(halt, T0, origin(1, "risk.control/0"))
    with pytest.raises(Rejected) as stale:
        eng.apply(older, T0, origin(2, "risk.control/0"))
    assert (replayed.value.reason, stale.value.reason) == ("replayed_command", "stale_command")
    assert "applied already" in str(replayed.value)
    assert str(stale.value) == f"command ts {T0 - 1000} is older than the last applied ({T0})"


def test_an_open_is_denied_while_the_account_is_past_the_daily_loss_even_unlatched() -> None:
    """Resetting a winner takes the account from -35 to -60 (limit -45): checked live."""
    eng = engine(LATCH.replace("max_daily_loss = -80", "max_daily_loss = -45"))
    eng.apply(outcome(25.0, symbol="ETHUSDT", ts=T0), T0)
    eng.apply(outcome(-60.0, symbol="BTCUSDT", ts=T0), T0)
    eng.apply(control("reset_session", symbol="ETHUSDT", ts=T0), T0)
    d = eng.apply(intent(symbol="SOLUSDT", intent_id="x"), T0).decisions[0]
    assert (d.allowed, d.gate) == (False, "portfolio_daily_loss")


def test_gate_records_carry_every_field() -> None:
    eng = engine(BREAKER_2)
    eng.apply(fill("buy", 2.0, 100.0), T0)
    eng.apply(outcome(-1.0, ts=T0), T0)
    eng.apply(outcome(-2.0, ts=T0 + 1000), T0 + 1000)
    eng.apply(control("halt", symbol=None, ts=T0 + 2000, reason="ops", issued_by="alice"), T0)
    bot = eng.bots["alpha"]
    gate = bot.symbols["BTCUSDT"].gate_state(T0 + 5000)
    account = bot.account_gate_state(T0 + 5000)
    assert (gate.bot, gate.symbol, gate.entries_allowed, gate.updated_ts) == (
        "alpha",
        "BTCUSDT",
        False,
        T0 + 5000,
    )
    assert [b.gate for b in gate.blocks] == ["circuit_breaker"]
    assert (gate.net_pnl, gate.trades, gate.recent_losses, gate.position_qty) == (-3.0, 2, 2, 2.0)
    assert (account.bot, account.entries_allowed, account.account_net_pnl) == ("alpha", False, -3.0)
    assert (account.open_positions, account.gross_exposure, account.updated_ts) == (
        1,
        200.0,
        T0 + 5000,
    )
    assert [(b.gate, b.reason, b.until_ts) for b in account.blocks] == [
        ("manual_halt", "halted by alice: ops", None)
    ]
    again = bot.account_gate_state(T0 + 6000)
    # Counted where the state changes (3 symbol events; 4 that moved the account record),
    # never by building a record.
    assert (gate.seq, account.seq, again.seq) == (3, 4, 4)


def test_a_corrupt_snapshot_record_does_not_stop_the_restore_of_the_next_ones() -> None:
    live = engine(BREAKER_2)
    live.apply(outcome(-1.0, ts=T0), T0)
    bot = live.bots["alpha"]
    records = {
        symbol_key("alpha", "ETHUSDT"): b"{not json",
        symbol_key("alpha", "BTCUSDT"): encode(bot.symbols["BTCUSDT"].snapshot()),
        portfolio_key("alpha"): encode(bot.portfolio_snapshot()),
    }
    restored = engine(BREAKER_2)
    ignored = restored.restore(records, T0)
    assert [key for key, _ in ignored] == [symbol_key("alpha", "ETHUSDT")]
    assert _losses(restored) == [T0 // 1000]


# -- restore: names and id windows (make mutate over engine.py, dedupe, idlog) -------------------


def test_a_symbol_snapshot_named_star_is_ignored_on_restore() -> None:
    """``*`` names the whole bot in event ids: a restored symbol may not use it either."""
    live = engine(RESERVING)
    live.apply(outcome(-1.0, ts=T0), T0)
    record = encode(live.bots["alpha"].symbols["BTCUSDT"].snapshot())
    restored = engine(RESERVING)
    ignored = restored.restore({symbol_key("alpha", "*"): record}, T0)
    assert ignored == [(symbol_key("alpha", "*"), "symbol '*' '*' names the whole bot")]
    assert list(restored.bots["alpha"].symbols) == []
    assert restored.bots["alpha"].day == T0 // DAY_MS  # created in the wall clock's day


def test_a_corrupt_id_chunk_record_is_ignored_with_its_key_and_why() -> None:
    key = chunk_key("alpha", "outcomes", 0)
    ignored = engine(RESERVING).restore({key: b"{not json"}, T0)
    assert ignored == [
        (key, "corrupt id chunk: JSON is malformed: object keys must be strings (byte 1)")
    ]


def test_legacy_outcome_ids_without_fill_ids_are_still_adopted() -> None:
    """An older symbol snapshot carried its own id windows: either one alone still counts."""
    live = engine(RESERVING)
    live.apply(outcome(-1.0, ts=T0), T0)
    snap = live.bots["alpha"].symbols["BTCUSDT"].snapshot()
    legacy = msgspec.structs.replace(snap, recent_outcome_ids=["o9"], recent_fill_ids=[])
    restored = engine(RESERVING)
    assert restored.restore({symbol_key("alpha", "BTCUSDT"): encode(legacy)}, T0) == []
    resent = restored.apply(outcome(-1.0, outcome_id="o9"), T0, origin(50))
    assert (resent.skipped, _session(restored)) == (1, (-1.0, 1))


def _window(keep: int, *ids: str) -> IdWindow:
    window = IdWindow(keep)
    for n, event_id in enumerate(ids):
        assert window.first(event_id, ("trading.outcomes/0", 5 + n))
    return window


def _dumped(ids: list[str], offsets: list[int]) -> IdWindowSnapshot:
    return IdWindowSnapshot(
        ids=b"".join(digest(x) for x in ids), offsets=struct.pack(f"<{len(offsets)}I", *offsets)
    )


@pytest.mark.parametrize(
    ("keep", "adopted"), [(4, ["y", "z"]), (3, ["z"]), (2, [])], ids=["room2", "room1", "full"]
)
def test_legacy_ids_are_adopted_as_the_oldest_only_into_the_room_left(
    keep: int, adopted: list[str]
) -> None:
    """Adopted ids come without offsets (0) and never displace a newer id."""
    window = _window(keep, "a", "b")
    window.adopt(["w", "x", "y", "z"])
    assert window.dump() == _dumped([*adopted, "a", "b"], [0] * len(adopted) + [5, 6])


@pytest.mark.parametrize(
    ("keep", "ids", "offsets", "kept"),
    [
        (9, digest("a") + digest("b") + digest("c") + b"tor", b"\1\0\0\0\2\0\0\0\3\0\0\0\4", 3),
        (9, digest("a") + digest("b"), struct.pack("<3I", 1, 2, 3), 2),
        (9, digest("a") + digest("b") + digest("c"), struct.pack("<2I", 2, 3), 2),
        (2, digest("a") + digest("b") + digest("c"), struct.pack("<3I", 1, 2, 3), 2),
    ],
    ids=["torn-tails", "more-offsets", "more-ids", "over-keep"],
)
def test_a_whole_window_snapshot_keeps_the_newest_entries_its_arrays_both_describe(
    keep: int, ids: bytes, offsets: bytes, kept: int
) -> None:
    """The older whole-window format still restores, torn or mismatched, never misaligned."""
    window = IdWindow(keep)
    window.load(IdWindowSnapshot(ids=ids, offsets=offsets))
    newest = ["a", "b", "c"][3 - kept :] if len(ids) >= 24 else ["a", "b"]
    assert window.dump() == _dumped(newest, [1, 2, 3][3 - kept :])
    assert window.total == kept


def test_an_id_chunk_with_a_torn_trailing_entry_loads_its_whole_entries() -> None:
    window = _window(9, "a", "b", "c")
    restored = IdWindow(9)
    restored.load_segment(window.segment(0, 3) + b"\1", 3)
    assert (restored.dump(), restored.total) == (window.dump(), 3)


def test_a_short_id_chunk_below_the_newest_is_missing_and_older_ones_are_not_read() -> None:
    """Only the oldest chunk of a window may hold fewer than CHUNK_ENTRIES entries."""
    size = idlog.CHUNK_ENTRIES
    names = [f"o{n}" for n in range(3 * size + 10)]
    window = _window(10_000, *names)
    chunks, ref, _ = idlog.ChunkedLog(window).persist()
    assert [n for n, _ in chunks] == [0, 1, 2]
    stored = dict(chunks)
    stored[1] = stored[1][: size // 2 * window.entry_bytes]  # aligned, but short
    restored = IdWindow(10_000)
    assert idlog.ChunkedLog(restored).restore(ref, stored) == [1]
    assert (restored.entries, restored.total) == (size + 10, 3 * size + 10)
    assert restored.segment(2 * size, 3 * size + 10) == window.segment(2 * size, 3 * size + 10)


def test_a_fill_that_consumes_a_reservation_marks_the_portfolio_dirty() -> None:
    """The released reservation lives in the portfolio record: it must be persisted."""
    eng = engine(RESERVING)
    _allowed(eng, "a", T0)
    out = Effects()
    eng.apply(fill("buy", 1.0, 100.0, intent_id="a"), T0, origin(1, "trading.fills/0"), out)
    assert (out.dirty_bots, _reservations(eng)) == ({"alpha"}, [])


def _restored_at_minus_60(limit: str) -> RiskEngine:
    """Restored unlatched at -60 under a lowered ``max_daily_loss``."""
    live = engine(LATCH)
    live.apply(outcome(-60.0, ts=T0), T0)
    bot = live.bots["alpha"]
    records = {
        symbol_key("alpha", "BTCUSDT"): encode(bot.symbols["BTCUSDT"].snapshot()),
        portfolio_key("alpha"): encode(bot.portfolio_snapshot()),
    }
    restored = engine(LATCH.replace("max_daily_loss = -80", f"max_daily_loss = {limit}"))
    assert restored.restore(records, T0 + 10) == []
    return restored


@pytest.mark.parametrize("limit", ["-45", "-60"], ids=["past", "exactly-at"])
def test_an_open_is_denied_when_a_restored_account_is_past_a_lowered_daily_loss(
    limit: str,
) -> None:
    """The live check at decision denies (at the limit exactly too: the exact sum decides)."""
    restored = _restored_at_minus_60(limit)
    assert restored.bots["alpha"].portfolio.halted is False
    d = restored.apply(intent(symbol="SOLUSDT", intent_id="x"), T0 + 10).decisions[0]
    assert (d.allowed, d.gate) == (False, "portfolio_daily_loss")
    account = restored.bots["alpha"].account_gate_state(T0 + 10)
    assert [(b.gate, b.until_ts) for b in account.blocks] == [
        ("portfolio_daily_loss", (T0 // DAY_MS + 1) * DAY_MS)
    ]


@pytest.mark.parametrize(
    ("offset", "first"), [(5, True), (6, False), (5 + 2**31 - 1, False), (5 + 2**31, True)]
)
def test_a_judged_replay_is_a_resend_only_when_its_id_was_inserted_by_an_earlier_offset(
    offset: int, first: bool
) -> None:
    """Offsets compare modulo 2**32: up to 2**31 - 1 back is earlier, 2**31 is not."""
    window = _window(9, "a")  # inserted by offset 5
    assert window.first("a", ("trading.outcomes/0", offset), fresh=False) is first


def _intents(keep: int, count: int) -> IntentWindow:
    window = IntentWindow(keep)
    for n in range(count):
        window.remember(id_digest(f"i{n}"), n, n, None)
    return window


def test_an_intent_window_dump_loads_only_its_newest_keep_entries() -> None:
    restored = IntentWindow(2)
    restored.load(_intents(9, 3).dump())
    assert (restored.dump(), restored.total) == (_intents(2, 3).dump(), 2)
    assert restored.get(id_digest("i0")) is None


def test_an_intent_window_dump_with_a_torn_trailing_entry_loads_its_whole_entries() -> None:
    window = _intents(9, 3)
    restored = IntentWindow(9)
    restored.load(window.dump() + b"\1")
    assert (restored.dump(), restored.get(id_digest("i2"))) == (window.dump(), (2, 2, None))


def test_a_sweep_marks_dirty_only_the_symbols_whose_breaker_changed() -> None:
    """Evicting BTCUSDT's loss rewrites its record; ETHUSDT, unchanged, is not persisted."""
    eng = engine(BREAKER_2)
    eng.apply(outcome(-1.0, ts=T0), T0)
    eng.apply(outcome(1.0, ts=T0, symbol="ETHUSDT"), T0)
    out = eng.sweep(T0 + HOUR_MS)
    assert (out.dirty_symbols, _losses(eng)) == ({("alpha", "BTCUSDT")}, [])


def test_midnight_releases_the_latch_saying_why_and_marks_the_portfolio_dirty() -> None:
    """The rolled day (and released latch) live in the portfolio record: persist it."""
    eng = engine(LATCH)
    eng.apply(outcome(-90.0, ts=T0), T0)
    assert eng.bots["alpha"].portfolio.halted is True
    next_day = (T0 // DAY_MS + 1) * DAY_MS
    out = eng.sweep(next_day)
    assert (out.dirty_bots, eng.bots["alpha"].portfolio.halted) == ({"alpha"}, False)
    assert [(h.kind, h.gate, h.reason, h.ts, h.issued_by) for h in out.halts] == [
        ("resumed", "portfolio_daily_loss", "portfolio latch cleared at 00:00 UTC", next_day, None)
    ]


def test_a_breaker_trip_and_its_end_publish_their_reasons() -> None:
    eng = engine(BREAKER_2)
    eng.apply(outcome(-1.0, ts=T0), T0)
    out = eng.apply(outcome(-1.0, ts=T0 + 1000), T0 + 1000)
    assert [(h.event_id, h.kind, h.reason, h.ts, h.until_ts) for h in out.halts] == [
        (
            "alpha/BTCUSDT/circuit_breaker/1",
            "halted",
            "2 losses within 3600s; cooling down for 600s",
            T0 + 1000,
            T0 + 601_000,
        )
    ]
    ended = eng.sweep(T0 + 601_000)
    assert [(h.event_id, h.kind, h.reason, h.ts) for h in ended.halts] == [
        ("alpha/BTCUSDT/circuit_breaker/2", "resumed", "breaker cooldown elapsed", T0 + 601_000)
    ]


def test_a_wrapped_intent_window_reads_the_same_segments_as_an_unwrapped_one() -> None:
    """Chunks are cut by entry number whatever slot of the ring holds the oldest entry."""
    wrapped, plain = _intents(5, 7), _intents(9, 7)  # the ring holds i2..i6, head at slot 2
    assert [wrapped.segment(a, b) for a, b in ((2, 7), (3, 6), (6, 7))] == [
        plain.segment(a, b) for a, b in ((2, 7), (3, 6), (6, 7))
    ]


def test_a_window_of_whole_chunks_persists_an_empty_tail() -> None:
    window = _intents(10_000, idlog.CHUNK_ENTRIES)
    chunks, ref, drops = idlog.ChunkedLog(window).persist()
    assert ([n for n, _ in chunks], ref.total, ref.count, ref.tail, drops) == (
        [0],
        idlog.CHUNK_ENTRIES,
        idlog.CHUNK_ENTRIES,
        b"",
        [],
    )


def test_each_id_chunk_that_leaves_the_window_is_tombstoned_once() -> None:
    window = _window(300, *(f"o{n}" for n in range(600)))  # chunks 1 and 2 in the window
    log = idlog.ChunkedLog(window)
    chunks, _, drops = log.persist()
    assert ([n for n, _ in chunks], drops) == ([1], [0])  # 0 left before it was written
    for n in range(600, 900):
        window.first(f"o{n}", ("trading.outcomes/0", n))
    chunks, _, drops = log.persist()
    assert ([n for n, _ in chunks], drops) == ([2], [1])


def test_intent_digests_are_pinned_because_the_window_is_persisted() -> None:
    """A changed digest (byte order, encoding) would forget every persisted intent id."""
    same = OrderIntent("i1", "alpha", "BTCUSDT", "open", "buy", 1.0, 100.0, 1_700_000_000_000)
    assert (id_digest("i1"), content_digest(same)) == (778860755400141486, 7339633094567023992)


def test_an_intent_window_numbers_every_remembered_entry() -> None:
    """``total`` places each entry in its chunk: it counts evicted entries too."""
    assert [_intents(5, n).total for n in (1, 5, 7)] == [1, 5, 7]


def test_an_id_window_persists_offsets_past_2_to_the_31() -> None:
    window = IdWindow(9)
    assert window.first("a", ("trading.outcomes/0", 2**31 + 5))
    assert window.dump() == _dumped(["a"], [2**31 + 5])


def test_a_replay_of_a_command_is_refused_after_another_at_the_same_ts() -> None:
    eng = engine(RESERVING)
    halt = control("halt", symbol=None, ts=T0)
    eng.apply(halt, T0)
    eng.apply(control("resume", symbol=None, ts=T0), T0)
    with pytest.raises(Rejected) as refused:
        eng.apply(halt, T0)
    assert refused.value.reason == "replayed_command"


def test_a_target_remembers_at_most_64_command_digests_of_one_ts() -> None:
    """The digests are in the portfolio record: bounded, whatever an operator sends."""
    eng = engine(RESERVING)
    for n in range(66):
        eng.apply(control("halt", symbol=None, ts=T0, reason=f"r{n}"), T0)
    digests = eng.bots["alpha"].portfolio_snapshot().command_digests
    expected = [
        signing.command_digest(control("halt", symbol=None, ts=T0, reason=f"r{n}"))
        for n in range(64)
    ]
    assert digests == expected


def test_replayed_bot_wide_reset_does_not_wipe_pnl_of_a_symbol_a_fill_created_after_it() -> None:
    eng = engine(LATCH.replace("[defaults]\n", '[defaults]\npnl_source = "fills"\n'))
    reset = control("reset_session", symbol=None, ts=T0)
    eng.apply(reset, T0, origin(0, "risk.control/0"))
    eng.apply(fill("buy", 1.0, 100.0, ts=T0 + 1), T0 + 1, origin(0, "trading.fills/0"))
    eng.apply(fill("sell", 1.0, 90.0, ts=T0 + 2), T0 + 2, origin(1, "trading.fills/0"))
    replay = eng.apply(reset, T0 + 3, origin(0, "risk.control/0"))
    assert (replay.skipped, replay.halts, _session(eng)) == (1, [], (-10.0, 1))


def test_a_fill_that_books_nothing_still_latches_an_account_past_the_daily_loss() -> None:
    restored = _restored_at_minus_60("-45")
    out = restored.apply(fill("buy", 1.0, 100.0, ts=T0 + 20), T0 + 20, origin(5, "trading.fills/0"))
    assert restored.bots["alpha"].portfolio.halted is True
    # The restore found the account past the lowered limit: the gate blocked live from
    # then on, taken as already shown (H10-1: derived from the restored state), so
    # latching it changes nothing published.
    assert out.halts == []


def test_a_losing_round_trip_while_the_breaker_is_tripped_publishes_nothing() -> None:
    eng = engine(BREAKER_2.replace("[defaults]\n", '[defaults]\npnl_source = "fills"\n'))
    halts: list[list[tuple[str, str]]] = []
    for n in range(3):
        eng.apply(fill("buy", 1.0, 100.0, ts=T0 + 10 * n), T0 + 10 * n)
        out = eng.apply(fill("sell", 1.0, 90.0, ts=T0 + 10 * n + 1), T0 + 10 * n + 1)
        halts.append([(h.kind, h.gate) for h in out.halts])
    assert halts == [[], [("halted", "circuit_breaker")], []]


def test_a_persisted_portfolio_keeps_its_intent_ids_only_in_the_chunks_and_tail() -> None:
    """With id logs, the whole-window field stays empty: the ids are not written twice."""
    eng = engine(RESERVING)
    _allowed(eng, "a", T0)
    chunks, snap, drops = eng.bots["alpha"].persist()
    assert (chunks, snap.intent_ids, drops) == ([], b"", [])
    assert snap.id_logs is not None
    assert (snap.id_logs["intents"].total, snap.id_logs["intents"].count) == (1, 1)


def _answered(d: GateDecision) -> tuple[bool, str | None, str, int]:
    return (d.allowed, d.gate, d.reason, d.ts)


def test_an_expired_intent_is_answered_at_the_wall_clock_saying_how_old_it_is() -> None:
    eng = engine(RESERVING)
    late = T0 + TTL + 1
    d = eng.apply(intent(ts=T0, intent_id="x"), late).decisions[0]
    reason = f"intent is {TTL + 1} ms old; reservations last {TTL} ms"
    assert _answered(d) == (False, "expired", reason, late)


def test_an_intent_id_reused_for_a_different_order_is_denied_at_the_wall_clock() -> None:
    eng = engine(RESERVING)
    _allowed(eng, "a", T0)
    d = eng.apply(intent(qty=2.0, ts=T0, intent_id="a"), T0 + 5).decisions[0]
    reused = "intent_id already used for a different intent"
    assert _answered(d) == (False, "duplicate_intent_id", reused, T0 + 5)


def test_a_reused_id_still_reserved_but_no_longer_remembered_says_why() -> None:
    eng = engine(RESERVING)
    _allowed(eng, "a", T0)
    for n in range(DEFAULT_KEEP):  # pushes "a" out of the intent window
        eng.apply(intent(ts=T0, intent_id=f"n{n}", symbol="ETHUSDT"), T0)
    assert _reservations(eng)[0] == "a"
    d = eng.apply(intent(qty=2.0, ts=T0, intent_id="a"), T0 + 5).decisions[0]
    reused = "intent_id already used for a different intent"
    assert _answered(d) == (False, "duplicate_intent_id", reused, T0 + 5)
