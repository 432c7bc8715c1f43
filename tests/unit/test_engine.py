"""RiskEngine: gate order, exits, reservations, control, validation, replay, sweep."""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec
import pytest

from tests.support.builders import (
    DAY_MS,
    MIDNIGHT,
    T0,
    apply_all,
    config,
    control,
    engine,
    fill,
    intent,
    origin,
    outcome,
)
from worker import signing
from worker.config import load_config
from worker.core import Effects, Origin, Reservation, RiskEngine
from worker.core.snapshot import ManualHalt
from worker.errors import Rejected
from worker.messages import ControlCommand, Event, TradeOutcome

ALL_GATES = """
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 1
[bots.alpha.portfolio]
max_daily_loss = -100.0
max_concurrent_positions = 1
max_gross_exposure = 50.0
"""


def decide(eng: RiskEngine, now: int, **kwargs: object) -> tuple[bool, str | None, str]:
    d = eng.apply(intent(ts=now, **kwargs), now).decisions  # type: ignore[arg-type]
    assert len(d) == 1
    return d[0].allowed, d[0].gate, d[0].reason


# -- gate order -------------------------------------------------------------------------


def test_gate_order_first_block_answers() -> None:
    eng = engine(ALL_GATES)
    # Every gate blocks at once: a big BTC loss halts the session, trips the
    # breaker and latches the portfolio; an open ETH position takes the only slot
    # and exceeds the exposure cap; then operators halt BTC and the bot.
    apply_all(eng, [outcome(-200.0, symbol="BTCUSDT"), fill("buy", 1.0, 100.0, symbol="ETHUSDT")])
    apply_all(eng, [control("halt", symbol="BTCUSDT"), control("halt", symbol=None)])
    now = T0 + 1000
    btc = {"symbol": "BTCUSDT", "qty": 1.0, "price": 10.0}

    allowed, gate, reason = decide(eng, now, **btc)
    assert (allowed, gate, reason) == (False, "manual_halt", "halted by alice: ops")

    eng.apply(control("resume", symbol=None, ts=now), now)
    assert decide(eng, now, **btc)[:2] == (False, "manual_halt")  # the symbol's own halt

    eng.apply(control("resume", symbol="BTCUSDT", ts=now), now)
    assert decide(eng, now, **btc)[:2] == (False, "session_halt")

    eng.apply(control("reset_session", symbol="BTCUSDT", ts=now), now)
    assert decide(eng, now, **btc)[:2] == (False, "circuit_breaker")

    eng.apply(control("reset_breaker", symbol="BTCUSDT", ts=now), now)
    # Session reset: account PnL is back to 0, but the latch holds for the day.
    assert eng.bots["alpha"].account.account_net(now // DAY_MS) == 0.0
    assert decide(eng, now, **btc)[:2] == (False, "portfolio_daily_loss")

    tomorrow = MIDNIGHT + DAY_MS
    eng.sweep(tomorrow)
    allowed, gate, reason = decide(eng, tomorrow, symbol="BTCUSDT", qty=1.0, price=60.0)
    assert (allowed, gate) == (False, "max_concurrent_positions")
    assert reason == "1 positions already open or reserved"

    eng.apply(fill("sell", 1.0, 100.0, symbol="ETHUSDT", ts=tomorrow), tomorrow)
    allowed, gate, reason = decide(eng, tomorrow, symbol="BTCUSDT", qty=1.0, price=60.0)
    assert (allowed, gate, reason) == (False, "gross_exposure", "notional 60 would exceed 50")

    allowed, gate, _ = decide(eng, tomorrow, symbol="BTCUSDT", qty=1.0, price=10.0)
    assert (allowed, gate) == (True, None)


def test_each_denial_names_its_gate_in_the_decision() -> None:
    eng = engine(ALL_GATES)
    apply_all(eng, [outcome(-60.0, symbol="BTCUSDT")])
    d = eng.apply(intent(symbol="BTCUSDT"), T0).decisions[0]
    assert d.gate == "session_halt"
    assert not d.allowed
    assert d.reservation_expires_ts is None
    assert d.reason == "session net PnL -60.00 reached loss limit -50"


# -- exits ---------------------------------------------------------------------------------


def test_close_with_the_reducing_side_bypasses_every_gate() -> None:
    eng = engine(ALL_GATES)
    apply_all(eng, [fill("buy", 1.0, 100.0), outcome(-500.0)])
    apply_all(eng, [control("halt"), control("halt", symbol=None)])
    out = eng.apply(intent("close", "sell", qty=1.0, price=90.0, intent_id="x"), T0)
    d = out.decisions[0]
    assert d.allowed
    assert d.gate is None
    # The close reserves the quantity it reduces (decisions R1), no notional.
    assert d.reservation_expires_ts == T0 + 30_000
    assert eng.bots["alpha"].portfolio.reservations == {
        "x": Reservation("BTCUSDT", 0.0, T0 + 30_000, qty=1.0, close=True)
    }


def test_close_on_a_short_needs_a_buy() -> None:
    eng = engine(ALL_GATES)
    apply_all(eng, [fill("sell", 1.0, 100.0), control("halt")])
    assert eng.apply(intent("close", "buy"), T0).decisions[0].allowed
    d = eng.apply(intent("close", "sell"), T0).decisions[0]
    assert (d.allowed, d.gate) == (False, "no_position")


def test_close_with_the_adding_side_is_denied() -> None:
    eng = engine(ALL_GATES)
    apply_all(eng, [fill("buy", 1.0, 10.0)])
    d = eng.apply(intent("close", "buy"), T0).decisions[0]
    assert (d.allowed, d.gate) == (False, "no_position")


def test_close_on_flat_is_no_position() -> None:
    eng = engine()
    d = eng.apply(intent("close", "sell"), T0).decisions[0]
    assert (d.allowed, d.gate) == (False, "no_position")
    assert "BTCUSDT" in d.reason


# -- reservations ----------------------------------------------------------------------------


RESERVING = """
[worker]
reservation_ttl_ms = 30000
[bots.alpha.portfolio]
max_concurrent_positions = 2
max_gross_exposure = 1000.0
"""


def test_allowed_open_reserves_until_its_fill_arrives() -> None:
    eng = engine(RESERVING)
    out = eng.apply(intent(intent_id="i-1", qty=2.0, price=100.0), T0)
    d = out.decisions[0]
    assert d.allowed
    assert d.reservation_expires_ts == T0 + 30_000
    assert out.dirty_bots == {"alpha"}
    bot = eng.bots["alpha"]
    assert bot.portfolio.reserved_notional == pytest.approx(200.0)

    out = eng.apply(fill("buy", 2.0, 100.0, intent_id="i-1"), T0 + 5)
    assert bot.portfolio.reservations == {}
    assert "alpha" in out.dirty_bots
    assert bot.account.gross_exposure() == pytest.approx(200.0)


def test_fill_without_the_intent_id_keeps_the_reservation() -> None:
    eng = engine(RESERVING)
    eng.apply(intent(intent_id="i-1"), T0)
    eng.apply(fill("buy", 1.0, 100.0, intent_id="other"), T0)
    assert list(eng.bots["alpha"].portfolio.reservations) == ["i-1"]


def test_reservation_expires_on_the_sweep_after_the_ttl() -> None:
    eng = engine(RESERVING)
    eng.apply(intent(intent_id="i-1"), T0)
    bot = eng.bots["alpha"]
    quiet = eng.sweep(T0 + 29_999)
    assert "i-1" in bot.portfolio.reservations
    assert quiet.dirty_bots == set()
    out = eng.sweep(T0 + 30_000)
    assert bot.portfolio.reservations == {}
    assert out.dirty_bots == {"alpha"}


def test_same_intent_twice_reserves_once() -> None:
    eng = engine(RESERVING)
    first = eng.apply(intent(intent_id="i-1", qty=6.0), T0).decisions[0]
    again = eng.apply(intent(intent_id="i-1", qty=6.0), T0 + 10).decisions[0]
    assert first.allowed
    assert again.allowed
    assert again.reservation_expires_ts == first.reservation_expires_ts
    assert eng.bots["alpha"].portfolio.reserved_notional == pytest.approx(600.0)


def test_two_opens_for_the_last_slot_first_wins() -> None:
    eng = engine(RESERVING)
    apply_all(eng, [fill("buy", 1.0, 10.0, symbol="BTCUSDT")])
    out = Effects()
    eng.apply(intent(symbol="ETHUSDT", intent_id="a"), T0, out=out)
    eng.apply(intent(symbol="SOLUSDT", intent_id="b"), T0, out=out)
    assert [(d.intent_id, d.allowed, d.gate) for d in out.decisions] == [
        ("a", True, None),
        ("b", False, "max_concurrent_positions"),
    ]
    # Once the first reservation lapses the slot is free again.
    eng.sweep(T0 + 30_000)
    assert eng.apply(intent(symbol="SOLUSDT", ts=T0 + 30_000), T0 + 30_000).decisions[0].allowed


# -- control commands -----------------------------------------------------------------------

EVENT_ID = re.compile(r"^[^/]+/[^/]+/[a-z_]+/(\d+|cmd-[0-9a-f]{16})$")

BLOCKED_BY_ONE_LOSS = """
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -1.0
[defaults.breaker]
loss_limit = 1
"""


def blocked_everywhere(symbol: str | None) -> RiskEngine:
    """A loss halted BTCUSDT's session and tripped its breaker; the target is manually halted."""
    eng = engine(BLOCKED_BY_ONE_LOSS)
    apply_all(eng, [outcome(-1.0), control("halt", symbol=symbol, ts=T0 - 1)])
    return eng


@pytest.mark.parametrize(
    ("command", "gate", "kind"),
    [
        ("halt", "manual_halt", "halted"),
        ("resume", "manual_halt", "resumed"),
        ("reset_breaker", "circuit_breaker", "resumed"),
        ("reset_session", "session_halt", "resumed"),
    ],
)
@pytest.mark.parametrize("symbol", ["BTCUSDT", None])
def test_control_commands_produce_halt_events(
    command: str, gate: str, kind: str, symbol: str | None
) -> None:
    eng = blocked_everywhere(symbol)
    cmd = control(command, symbol=symbol, issued_by="bob", reason="why")
    out = eng.apply(cmd, T0)
    assert len(out.halts) == 1
    h = out.halts[0]
    assert (h.kind, h.gate, h.symbol, h.issued_by, h.bot) == (kind, gate, symbol, "bob", "alpha")
    assert h.event_id == f"alpha/{symbol or '*'}/{gate}/cmd-{signing.command_digest(cmd)}"
    assert EVENT_ID.match(h.event_id)
    assert "why" in h.reason
    if symbol is None:
        assert "alpha" in out.dirty_bots
    else:
        assert ("alpha", symbol) in out.dirty_symbols


def test_event_ids_name_the_command_or_count_data_transitions_per_gate() -> None:
    eng = engine(BLOCKED_BY_ONE_LOSS)
    commands = [
        control("halt", ts=T0),
        control("resume", ts=T0 + 1),
        control("halt", symbol="ETHUSDT", ts=T0 + 2),
        control("halt", symbol=None, ts=T0 + 3),
    ]
    out = apply_all(eng, [*commands, outcome(-1.0, ts=T0 + 4)])
    assert [h.event_id for h in out.halts] == [
        *(f"alpha/{c.symbol or '*'}/manual_halt/cmd-{signing.command_digest(c)}" for c in commands),
        "alpha/BTCUSDT/session_halt/1",
        "alpha/BTCUSDT/circuit_breaker/1",
    ]


def test_symbol_halt_blocks_only_that_symbol_until_resume() -> None:
    eng = engine()
    eng.apply(control("halt", symbol="BTCUSDT"), T0)
    assert eng.apply(intent(symbol="BTCUSDT"), T0).decisions[0].gate == "manual_halt"
    assert eng.apply(intent(symbol="ETHUSDT"), T0).decisions[0].allowed
    eng.sweep(T0 + 3 * DAY_MS)  # a manual halt never expires by itself
    t = T0 + 3 * DAY_MS
    assert eng.apply(intent(symbol="BTCUSDT", ts=t), t).decisions[0].gate == "manual_halt"
    eng.apply(control("resume", symbol="BTCUSDT", ts=t), t)
    assert eng.apply(intent(symbol="BTCUSDT", ts=t), t).decisions[0].allowed


def test_bot_level_reset_breaker_resets_every_symbol() -> None:
    eng = engine(
        """
        [defaults]
        accept_unknown_bots = true
        [defaults.breaker]
        loss_limit = 1
        """
    )
    apply_all(eng, [outcome(-1.0, symbol="BTCUSDT"), outcome(-1.0, symbol="ETHUSDT")])
    bot = eng.bots["alpha"]
    assert all(s.breaker.is_tripped for s in bot.symbols.values())
    out = eng.apply(control("reset_breaker", symbol=None), T0)
    assert not any(s.breaker.is_tripped for s in bot.symbols.values())
    assert out.dirty_symbols == {("alpha", "BTCUSDT"), ("alpha", "ETHUSDT")}


# -- signed control -------------------------------------------------------------------------

SIGNED = """
[defaults]
accept_unknown_bots = true
[control]
secret = "s3cret"
replay_window_ms = 60000
"""


def test_signed_control_is_applied() -> None:
    eng = engine(SIGNED)
    cmd = signing.signed(control("halt", symbol=None), b"s3cret")
    out = eng.apply(cmd, T0)
    assert [h.gate for h in out.halts] == ["manual_halt"]
    assert eng.bots["alpha"].manual_halt == ManualHalt("ops", "alice", T0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: control("halt", symbol=None), "unsigned"),
        (lambda: control("halt", symbol=None, sig="00" * 32), "does not match"),
        (
            lambda: signing.signed(control("halt", symbol=None), b"wrong-secret"),
            "does not match",
        ),
        (
            lambda: signing.signed(control("halt", symbol=None, ts=T0 - 60_001), b"s3cret"),
            "replay window",
        ),
    ],
    ids=["unsigned", "garbage-sig", "wrong-secret", "stale-ts"],
)
def test_bad_control_signature_is_rejected_and_changes_nothing(
    make: Callable[[], ControlCommand], message: str
) -> None:
    eng = engine(SIGNED)
    apply_all(eng, [outcome(-1.0)])
    before = eng.bots["alpha"].symbols["BTCUSDT"].snapshot()
    with pytest.raises(Rejected, match=message) as info:
        eng.apply(make(), T0)
    assert info.value.reason == "bad_signature"
    bot = eng.bots["alpha"]
    assert bot.manual_halt is None
    assert bot.halt_seq == 0
    assert bot.applied == {}
    assert bot.symbols["BTCUSDT"].snapshot() == before


def test_tampered_signed_command_is_rejected() -> None:
    eng = engine(SIGNED)
    good = signing.signed(control("resume", symbol=None), b"s3cret")
    tampered = msgspec.structs.replace(good, command="halt")
    with pytest.raises(Rejected):
        eng.apply(tampered, T0)
    assert "alpha" not in eng.bots or eng.bots["alpha"].manual_halt is None


def test_unsigned_control_is_accepted_without_a_secret() -> None:
    eng = engine()
    eng.apply(control("halt", symbol=None), T0)
    assert eng.bots["alpha"].manual_halt == ManualHalt("ops", "alice", T0)


# -- validation -------------------------------------------------------------------------------

STRICT = """
[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]
[bots.fills]
pnl_source = "fills"
"""


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (outcome(-1.0, bot="ghost"), "unknown_bot"),
        (outcome(-1.0, symbol="DOGEUSDT"), "unknown_symbol"),
        (fill("buy", 1.0, 1.0, symbol="DOGEUSDT"), "unknown_symbol"),
        (intent(symbol="DOGEUSDT"), "unknown_symbol"),
        (control("halt", symbol="DOGEUSDT"), "unknown_symbol"),
        (outcome(-1.0, bot="fills"), "pnl_source"),
        (outcome(-1.0, ts=T0 + 5 * 60_000 + 1), "future_event"),
    ],
    ids=[
        "bot",
        "symbol-outcome",
        "symbol-fill",
        "symbol-intent",
        "symbol-control",
        "pnl",
        "future",
    ],
)
def test_bad_input_is_rejected_with_a_reason_and_changes_nothing(event: Event, reason: str) -> None:
    eng = engine(STRICT)
    eng.apply(outcome(-1.0, symbol="BTCUSDT"), T0)
    before = {name: bot.symbols["BTCUSDT"].snapshot() for name, bot in eng.bots.items()}
    with pytest.raises(Rejected) as info:
        eng.apply(event, T0)
    assert info.value.reason == reason
    assert str(info.value)
    assert set(eng.bots) <= {"alpha", "fills"}
    assert {
        n: b.symbols["BTCUSDT"].snapshot() for n, b in eng.bots.items() if "BTCUSDT" in b.symbols
    } == before
    assert "DOGEUSDT" not in eng.bots["alpha"].symbols


def test_event_within_the_future_skew_is_accepted() -> None:
    eng = engine(STRICT)
    eng.apply(outcome(-1.0, ts=T0 + 5 * 60_000), T0)
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 1


def test_unknown_bot_is_accepted_when_configured() -> None:
    eng = engine()
    eng.apply(outcome(-1.0, bot="anybody", symbol="ANY"), T0)
    assert "anybody" in eng.bots


# -- replay guards ------------------------------------------------------------------------------


def test_same_event_same_origin_twice_is_skipped() -> None:
    eng = engine()
    o = outcome(-10.0)
    first = eng.apply(o, T0, origin=origin(7))
    second = eng.apply(o, T0, origin=origin(7))
    assert first.skipped == 0
    assert second.skipped == 1
    assert second.dirty_symbols == set()
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 1


def test_an_offset_below_the_watermark_is_skipped_even_with_a_new_id() -> None:
    eng = engine()
    eng.apply(outcome(-10.0), T0, origin=origin(7))
    out = eng.apply(outcome(-10.0), T0, origin=origin(6))
    assert out.skipped == 1
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 1


def test_same_outcome_id_at_a_new_offset_is_skipped() -> None:
    eng = engine()
    eng.apply(outcome(-10.0, outcome_id="dup"), T0, origin=origin(7))
    out = eng.apply(outcome(-10.0, outcome_id="dup"), T0, origin=origin(8))
    assert out.skipped == 1
    eng.apply(outcome(-10.0, outcome_id="new"), T0, origin=origin(9))
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 2


def test_same_fill_id_at_a_new_offset_is_skipped() -> None:
    eng = engine()
    src = "trading.fills/3"
    eng.apply(fill("buy", 1.0, 10.0, fill_id="f"), T0, origin=Origin(src, 1))
    out = eng.apply(fill("buy", 1.0, 10.0, fill_id="f"), T0, origin=Origin(src, 2))
    assert out.skipped == 1
    assert eng.bots["alpha"].symbols["BTCUSDT"].position.qty == 1.0


def test_watermarks_are_per_source_partition() -> None:
    eng = engine()
    eng.apply(outcome(-1.0), T0, origin=Origin("trading.outcomes/0", 100))
    out = eng.apply(outcome(-1.0), T0, origin=Origin("trading.outcomes/1", 5))
    assert out.skipped == 0
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 2


def test_replayed_intent_is_skipped() -> None:
    eng = engine()
    src = Origin("trading.intents/0", 3)
    eng.apply(intent(intent_id="i"), T0, origin=src)
    out = eng.apply(intent(intent_id="i"), T0, origin=src)
    assert out.skipped == 1
    assert out.decisions == []


@pytest.mark.parametrize("command", ["halt", "resume", "reset_breaker", "reset_session"])
@pytest.mark.parametrize("symbol", ["BTCUSDT", None])
def test_replayed_control_is_skipped_without_a_new_halt_event(
    command: str, symbol: str | None
) -> None:
    eng = blocked_everywhere(symbol)
    src = Origin("risk.control/0", 11)
    first = eng.apply(control(command, symbol=symbol), T0, origin=src)
    again = eng.apply(control(command, symbol=symbol), T0, origin=src)
    assert len(first.halts) == 1
    assert again.halts == []
    assert again.skipped == 1


def test_restored_watermark_skips_replays_after_a_restart() -> None:
    eng = engine()
    eng.apply(outcome(-10.0, outcome_id="a"), T0, origin=origin(41))
    snap = eng.bots["alpha"].symbols["BTCUSDT"].snapshot()
    fresh = engine()
    fresh.bot("alpha").restore_symbol("BTCUSDT", snap, T0, Effects())
    out = fresh.apply(outcome(-10.0, outcome_id="a"), T0, origin=origin(41))
    assert out.skipped == 1
    assert fresh.bots["alpha"].symbols["BTCUSDT"].session.trades == 1


# -- sweep ----------------------------------------------------------------------------------------

BREAKER_1 = """
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 1
cooldown_secs = 3600
"""


def test_sweep_emits_resumed_when_the_cooldown_ends() -> None:
    eng = engine(BREAKER_1)
    out = apply_all(eng, [outcome(-1.0)])
    assert [(h.kind, h.gate) for h in out.halts] == [("halted", "circuit_breaker")]
    assert out.halts[0].until_ts == T0 + 3_600_000
    assert eng.sweep(T0 + 3_599_999).halts == []
    swept = eng.sweep(T0 + 3_600_000)
    assert [(h.kind, h.gate, h.symbol) for h in swept.halts] == [
        ("resumed", "circuit_breaker", "BTCUSDT")
    ]
    assert swept.halts[0].event_id == "alpha/BTCUSDT/circuit_breaker/2"
    assert swept.dirty_symbols == {("alpha", "BTCUSDT")}
    assert eng.sweep(T0 + 3_700_000).halts == []


def test_sweep_emits_resumed_at_utc_rollover() -> None:
    eng = engine(BREAKER_1)
    out = apply_all(eng, [outcome(-60.0, 1.0)])  # halts the session, trips the breaker
    assert ("halted", "session_halt") in [(h.kind, h.gate) for h in out.halts]
    session_block = next(h for h in out.halts if h.gate == "session_halt")
    assert session_block.until_ts == MIDNIGHT + DAY_MS
    before_midnight = eng.sweep(MIDNIGHT + DAY_MS - 1)
    assert "session_halt" not in [h.gate for h in before_midnight.halts]
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.halted
    swept = eng.sweep(MIDNIGHT + DAY_MS)
    assert ("resumed", "session_halt") in [(h.kind, h.gate) for h in swept.halts]
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 0


def test_a_halt_emits_once_per_transition() -> None:
    eng = engine(BREAKER_1)
    out = apply_all(eng, [outcome(-60.0), outcome(-10.0, ts=T0 + 1), outcome(-10.0, ts=T0 + 2)])
    assert sorted((h.kind, h.gate) for h in out.halts) == [
        ("halted", "circuit_breaker"),
        ("halted", "session_halt"),
    ]


# -- dirty marks ----------------------------------------------------------------------------------


def test_effects_mark_what_changed() -> None:
    eng = engine()
    out = Effects()
    eng.apply(outcome(-1.0, symbol="BTCUSDT"), T0, out=out)
    assert out.dirty_symbols == {("alpha", "BTCUSDT")}
    eng.apply(outcome(-1.0, symbol="ETHUSDT", bot="beta"), T0, out=out)
    assert out.dirty_symbols == {("alpha", "BTCUSDT"), ("beta", "ETHUSDT")}
    assert "gamma" not in out.dirty_bots

    denied = Effects()
    eng.apply(intent("close", "sell", symbol="SOLUSDT"), T0, out=denied)
    assert denied.dirty_symbols == set()
    assert denied.dirty_bots == {"alpha"}  # only its intent-id window (persisted) changed

    halted = eng.apply(control("halt", symbol=None, bot="gamma"), T0)
    assert halted.dirty_bots == {"gamma"}
    assert halted.dirty_symbols == set()


def test_one_effects_can_collect_a_batch() -> None:
    eng = engine()
    out = Effects()
    for i in range(5):
        eng.apply(outcome(-1.0, ts=T0 + i), T0 + 10, origin=origin(i), out=out)
    assert out.dirty_symbols == {("alpha", "BTCUSDT")}
    assert out.skipped == 0
    assert eng.bots["alpha"].symbols["BTCUSDT"].applied == {"trading.outcomes/0": 4}


def test_gate_state_records() -> None:
    eng = engine(BREAKER_1)
    apply_all(eng, [outcome(-1.0), fill("buy", 2.0, 10.0)])
    bot = eng.bots["alpha"]
    sym = bot.symbols["BTCUSDT"]
    g = sym.gate_state(T0 + 5)
    assert not g.entries_allowed
    assert [b.gate for b in g.blocks] == ["circuit_breaker"]
    assert (g.net_pnl, g.trades, g.recent_losses, g.position_qty) == (-1.0, 1, 1, 2.0)
    assert g.seq == 2  # the outcome and the fill changed it
    assert sym.gate_state(T0 + 6).seq == 2  # reading it changed nothing
    acct = bot.account_gate_state(T0 + 5)
    assert acct.entries_allowed
    assert (acct.open_positions, acct.gross_exposure) == (1, 20.0)


def test_building_a_gate_record_never_mutates_state() -> None:
    """Issue 10: building a gate record bumped its persisted sequence number, so the
    snapshot written after publishing differed from the one before (a read wrote)."""
    eng = engine(BREAKER_1)
    apply_all(eng, [outcome(-1.0), fill("buy", 2.0, 10.0)])
    bot = eng.bots["alpha"]
    sym = bot.symbols["BTCUSDT"]
    encode = msgspec.json.encode
    before = (encode(sym.snapshot()), encode(bot.portfolio_snapshot()))
    dirty = Effects()
    dirty.dirty_symbols.add(("alpha", "BTCUSDT"))
    dirty.dirty_bots.add("alpha")
    first = eng.gate_states(dirty, T0 + 5)
    again = eng.gate_states(dirty, T0 + 6)
    assert [s.seq for s in first] == [s.seq for s in again] == [2, 2]
    assert (encode(sym.snapshot()), encode(bot.portfolio_snapshot())) == before
    eng.apply(outcome(-1.0, outcome_id="o-next", ts=T0 + 7), T0 + 7)
    assert [s.seq for s in eng.gate_states(dirty, T0 + 8)] == [3, 3]  # changes count


def test_the_read_api_reports_exact_counts_watermarks_and_an_immutable_view() -> None:
    """Issue 10: the shell reads the engine only through these (it walked ``bots``)."""
    eng = engine(BREAKER_1)
    eng.apply(outcome(-1.0, ts=T0), T0, origin(4))
    eng.apply(fill("buy", 2.0, 10.0, symbol="ETHUSDT"), T0, origin(7, "trading.fills/0"))
    eng.apply(intent(symbol="SOLUSDT", intent_id="i-1"), T0, origin(2, "trading.intents/0"))
    eng.apply(outcome(-1.0, bot="beta", ts=T0), T0, origin(9))
    assert tuple(eng.stats()) == (2, 3, 1)  # bots, symbols, reservations
    assert sorted(eng.bot_ids()) == ["alpha", "beta"]
    assert eng.symbols_of("alpha") == ("BTCUSDT", "ETHUSDT")
    assert eng.symbols_of("ghost") == ()
    assert eng.watermarks(["alpha"]) == {
        "trading.outcomes/0": 4,
        "trading.fills/0": 7,
        "trading.intents/0": 2,
    }
    assert eng.watermarks(["alpha", "beta"])["trading.outcomes/0"] == 9
    view = eng.bot_view("alpha", T0 + 5)
    assert view is not None and eng.bot_view("ghost", T0) is None
    assert list(view.symbols) == ["BTCUSDT", "ETHUSDT"]
    btc = view.symbols["BTCUSDT"]
    assert (btc.gate.trades, btc.losses, btc.cooldown_until_secs) == (1, 1, T0 // 1000 + 3600)
    assert (view.account.open_positions, view.account.gross_exposure) == (1, 20.0)
    with pytest.raises(TypeError):
        view.symbols["BTCUSDT"] = btc  # type: ignore[index]
    eng.apply(outcome(-1.0, symbol="XRPUSDT", ts=T0), T0, origin(5))
    assert "XRPUSDT" not in view.symbols  # a picture, not the live state


def test_forget_drops_bots() -> None:
    eng = RiskEngine(config("[defaults]\naccept_unknown_bots = true\n"))
    apply_all(eng, [outcome(-1.0, bot="a"), outcome(-1.0, bot="b")])
    eng.forget({"a", "zzz"})
    assert set(eng.bots) == {"b"}


def test_sweep_evicts_aged_out_losses_and_marks_the_symbol() -> None:
    eng = engine(
        """
        [defaults]
        accept_unknown_bots = true
        [defaults.breaker]
        loss_limit = 3
        window_secs = 3600
        """
    )
    apply_all(eng, [outcome(-1.0)])
    sym = eng.bots["alpha"].symbols["BTCUSDT"]
    assert eng.sweep(T0 + 3_599_999).dirty_symbols == set()
    assert sym.breaker.recent_losses == [T0 // 1000]
    out = eng.sweep(T0 + 3_600_000)
    assert sym.breaker.recent_losses == []
    assert out.dirty_symbols == {("alpha", "BTCUSDT")}
    assert out.halts == []
    assert sym.gate_state(T0 + 3_600_000).recent_losses == 0


def test_restart_does_not_change_what_later_sweeps_do() -> None:
    toml = """
        [defaults]
        accept_unknown_bots = true
        [defaults.breaker]
        loss_limit = 3
        window_secs = 3600
        """
    live = engine(toml)
    apply_all(live, [outcome(-1.0)])
    live.sweep(T0 + 1)
    restarted = engine(toml)
    bot = live.bots["alpha"]
    restarted.bot("alpha").restore_symbol(
        "BTCUSDT", bot.symbols["BTCUSDT"].snapshot(), T0 + 1, Effects()
    )
    restarted.bot("alpha").restore_portfolio(bot.portfolio_snapshot(), T0 + 1, Effects())
    for eng in (live, restarted):
        eng.sweep(T0 + 2 * 3_600_000)
    assert (
        live.bots["alpha"].symbols["BTCUSDT"].snapshot()
        == restarted.bots["alpha"].symbols["BTCUSDT"].snapshot()
    )


@pytest.mark.parametrize(
    ("bot", "symbol"),
    [("a/b", "BTCUSDT"), ("alpha", "BTC/USDT"), ("alpha", "BTC USDT"), ("alpha\n", "BTCUSDT")],
)
def test_names_that_would_break_keys_are_rejected_before_creating_state(
    bot: str, symbol: str
) -> None:
    engine = RiskEngine(load_config(text="[defaults]\naccept_unknown_bots = true\n", env={}))
    outcome = TradeOutcome(
        outcome_id="o1", bot=bot, symbol=symbol, gross_pnl=-1.0, fee=0.0, ts=1_764_000_000_000
    )
    with pytest.raises(Rejected) as excinfo:
        engine.apply(outcome, 1_764_000_000_000)
    assert excinfo.value.reason == "invalid_name"
    assert all(not b.symbols for b in engine.bots.values())


def test_opens_are_denied_once_the_reservation_cap_is_reached() -> None:
    eng = engine(OPEN_RESERVATION_CAP)
    answers = [
        eng.apply(intent(intent_id=f"i{n}", symbol="BTCUSDT"), T0).decisions[0] for n in range(3)
    ]
    assert [d.allowed for d in answers] == [True, True, False]
    assert answers[2].gate == "max_concurrent_positions"
    assert answers[2].reason == "2 reservations outstanding; report fills with their intent_id"
    # A fill releases one: the next open fits again.
    eng.apply(fill("buy", 1.0, 100.0, intent_id="i0"), T0)
    assert eng.apply(intent(intent_id="i3"), T0).decisions[0].allowed


OPEN_RESERVATION_CAP = """
[defaults]
accept_unknown_bots = true
[worker]
max_reservations_per_bot = 2
"""


def test_dedupe_windows_are_per_topic_so_interleaving_cannot_change_the_verdict() -> None:
    """A re-sent outcome is judged against recent *outcome* ids only: how many fills
    happened to be interleaved before it (which differs between a first pass and a
    replay after a crash) must not evict the original from the window."""
    eng = engine(SMALL_DEDUPE_WINDOW)
    first = outcome(-5.0, outcome_id="o-1")
    eng.apply(first, T0)
    for n in range(5):
        eng.apply(fill("buy", 1.0, 100.0, fill_id=f"f-{n}"), T0)
    eng.apply(first, T0)  # the producer's retry, at a new offset
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 1


SMALL_DEDUPE_WINDOW = """
[defaults]
accept_unknown_bots = true
[worker]
dedupe_ids_per_bot = 2
"""
