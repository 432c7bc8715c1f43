"""Adversarial state machine over the pure engine, checked against a model of its own.

Hypothesis drives one bot through fills, outcomes, intents (opens, closes,
reused ids, partial fills), signed operator commands (valid, replayed, stale,
forged, outside the window), wall-clock moves across 00:00 UTC and event
timestamps skewed ahead of and behind the clock. After EVERY step the engine is
compared with ``Model`` below, written from docs/spec.md and
/work/notes/decisions.md (T1-T3, C1-C3, R1-R4, D1) -- never from ``worker/`` --
and checked against invariants that hold whatever the model says:

- an allowed open never lets exposure, concurrency or reservations exceed a cap;
- while a gate blocks, no allowed intent increases |position| (an allowed close
  never reduces past flat, net of other outstanding closes);
- halts, latches and cooldowns lift only in a sweep whose wall clock passed them
  (or by the operator command that lifts them);
- an ``event_id`` never names two different transitions;
- nothing is counted twice (re-sent event ids change nothing).

The wall clock is the machine's ``now``; every clock move is followed by a
sweep, as the worker's loop does. ``RISKGATE_FUZZ_EXAMPLES`` scales the run
(``make fuzz`` runs it for minutes).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from worker import signing
from worker.config import load_config
from worker.core import Effects, Origin, RiskEngine
from worker.errors import Rejected
from worker.messages import (
    Action,
    ControlCommand,
    Fill,
    HaltEvent,
    OrderIntent,
    Side,
    TradeOutcome,
)

BOT = "alpha"
SYMBOLS = ("BTC", "ETH", "SOL")
SECRET = "fuzz-secret"
DAY_MS = 86_400_000
SKEW_MS = 300_000
TTL_MS = 120_000
WINDOW_MS = 300_000
SESSION_LIMIT = -50.0
BREAKER_LIMIT = 3
BREAKER_WINDOW_S = 1_200
COOLDOWN_S = 900
DAILY_LOSS = -45.0
MAX_OPEN = 2
MAX_EXPOSURE = 1_000.0
MAX_RESERVATIONS = 4
EPS = 1e-6
FLAT_TOLERANCE = 1e-9
DAY0 = 20_254  # 2025-06-15

CONFIG = f"""
[defaults.session]
loss_limit = {SESSION_LIMIT}

[defaults.breaker]
loss_limit = {BREAKER_LIMIT}
window_secs = {BREAKER_WINDOW_S}
cooldown_secs = {COOLDOWN_S}

[defaults.portfolio]
max_daily_loss = {DAILY_LOSS}
max_concurrent_positions = {MAX_OPEN}
max_gross_exposure = {MAX_EXPOSURE}

[bots.{BOT}]
symbols = {list(SYMBOLS)!r}
pnl_source = "{{pnl_source}}"

[worker]
reservation_ttl_ms = {TTL_MS}
max_reservations_per_bot = {MAX_RESERVATIONS}
max_future_skew_ms = {SKEW_MS}

[control]
secret = "{SECRET}"
replay_window_ms = {WINDOW_MS}
"""

_CMD_EVENT_ID = re.compile(r"/cmd-[0-9a-f]{16}$")


def utc_day(ts_ms: int) -> int:
    return ts_ms // DAY_MS


# -- the independent model ------------------------------------------------------------


@dataclass
class MSymbol:
    """Session, breaker, position and manual halt of one symbol, per the spec."""

    net: float = 0.0
    trades: int = 0
    halted: bool = False
    losses: list[int] = field(default_factory=list)
    tripped_at: int | None = None
    qty: float = 0.0
    avg: float = 0.0
    entry_fees: float = 0.0
    trip_net: float = 0.0
    manual: bool = False

    def notional(self) -> float:
        return abs(self.qty) * self.avg

    def fill(self, signed: float, price: float, fee: float) -> tuple[float, float, float | None]:
        """Average-cost position (spec §4 "Fills"): realised gross and fees of this
        fill, and the net of the round trip it ended (flat or flip), if any."""
        held, size = self.qty, abs(signed)
        if held == 0.0 or (held > 0.0) == (signed > 0.0):
            self.avg = (abs(held) * self.avg + size * price) / (abs(held) + size)
            self.qty, self.entry_fees = held + signed, self.entry_fees + fee
            return 0.0, 0.0, None
        closed = min(size, abs(held))
        gross = (price - self.avg) * closed * (1.0 if held > 0 else -1.0)
        entry_share = self.entry_fees * closed / abs(held)
        fees = fee * closed / size + entry_share
        self.trip_net += gross - fees
        remaining = held + signed
        if abs(remaining) <= FLAT_TOLERANCE * max(abs(held), size):
            ended, self.trip_net = self.trip_net, 0.0
            self.qty, self.avg, self.entry_fees = 0.0, 0.0, 0.0
            return gross, fees, ended
        if (remaining > 0.0) != (held > 0.0):
            ended, self.trip_net = self.trip_net, 0.0
            self.qty, self.avg = remaining, price
            self.entry_fees = fee * abs(remaining) / size
            return gross, fees, ended
        self.qty, self.entry_fees = remaining, self.entry_fees - entry_share
        return gross, fees, None

    def loss(self, ts_s: int) -> set[int]:
        """Record a loss at its own time; the acceptable trip starts if it trips.

        The breaker trips when some window ``(t - window, t]`` holds the limit of
        losses. While tripped, a loss before the cooldown's end is dropped; one
        stamped after it waits and counts once the wall clock lifts the trip.
        """
        if self.tripped_at is not None:
            if ts_s >= self.tripped_at + COOLDOWN_S:
                self.losses = sorted([*self.losses, ts_s])
            return set()
        self.losses = sorted([*self.losses, ts_s])
        starts = {t for t in self.window_ends() if t - BREAKER_WINDOW_S < ts_s <= t}
        if starts:
            self.tripped_at = min(starts)
        return starts

    def window_ends(self) -> set[int]:
        """Every loss time ending a window that holds the limit of losses."""
        return {
            t
            for t in self.losses
            if sum(t - BREAKER_WINDOW_S < u <= t for u in self.losses) >= BREAKER_LIMIT
        }

    def expire(self) -> set[int]:
        """The wall clock passed the cooldown: lift it; later losses may trip it again."""
        until = (self.tripped_at or 0) + COOLDOWN_S
        self.tripped_at = None
        self.losses = [t for t in self.losses if t >= until]
        starts = self.window_ends()
        if starts:
            self.tripped_at = min(starts)
        return starts

    def live_losses(self, now: int) -> list[int]:
        return [t for t in self.losses if t > now // 1000 - BREAKER_WINDOW_S]

    def reset_breaker(self) -> None:
        self.losses, self.tripped_at = [], None

    def reset_session(self) -> None:
        self.net, self.trades, self.halted = 0.0, 0, False


@dataclass
class MReservation:
    symbol: str
    action: str
    qty: float
    unit_notional: float
    """price * contract_value of an open; 0 for a close (no exposure)."""
    expires: int


@dataclass
class Model:
    now: int
    symbols: dict[str, MSymbol] = field(default_factory=lambda: {s: MSymbol() for s in SYMBOLS})
    bot_manual: bool = False
    latch: bool = False
    reservations: dict[str, MReservation] = field(default_factory=dict)
    decided: dict[str, tuple[tuple[Any, ...], tuple[bool, str | None, int | None]]] = field(
        default_factory=dict
    )
    seen: dict[str, set[str]] = field(default_factory=lambda: {"fills": set(), "outcomes": set()})
    last_cmd_ts: dict[str | None, int] = field(default_factory=dict)
    applied_sigs: dict[str | None, set[str]] = field(default_factory=dict)

    @property
    def today(self) -> int:
        return utc_day(self.now)

    def account_net(self) -> float:
        return sum(s.net for s in self.symbols.values())

    def exposure(self) -> float:
        held = sum(s.notional() for s in self.symbols.values())
        return held + sum(r.qty * r.unit_notional for r in self.reservations.values())

    def taken(self) -> tuple[set[str], bool]:
        """Symbols holding a concurrency slot, and whether a close-only reservation
        on a flat symbol makes that count ambiguous (decisions.md is silent)."""
        open_ = {n for n, s in self.symbols.items() if s.qty != 0.0}
        opens = {r.symbol for r in self.reservations.values() if r.action == "open"}
        closes = {r.symbol for r in self.reservations.values() if r.action == "close"}
        return open_ | opens, bool(closes - open_ - opens)

    def observe_latch(self) -> None:
        if not self.latch and self.account_net() <= DAILY_LOSS:
            self.latch = True

    def sweep(self, now: int) -> None:
        rolled = utc_day(now) > utc_day(self.now)
        self.now = now
        now_s = now // 1000
        for s in self.symbols.values():
            if rolled:
                s.reset_session()
            if s.tripped_at is not None and now_s >= s.tripped_at + COOLDOWN_S:
                s.expire()
            s.losses = [t for t in s.losses if t > now_s - BREAKER_WINDOW_S]
        if rolled:
            self.latch = False
        for rid in [i for i, r in self.reservations.items() if r.expires <= now]:
            del self.reservations[rid]

    def blocked(self, symbol: str) -> bool:
        s = self.symbols[symbol]
        return (
            self.bot_manual
            or s.manual
            or s.halted
            or s.tripped_at is not None
            or self.latch
            or self.account_net() <= DAILY_LOSS
        )

    def lift_times(self) -> dict[tuple[str | None, str], int]:
        """When each time-driven block may lift, from the model's own clock rules."""
        midnight = (self.today + 1) * DAY_MS
        times: dict[tuple[str | None, str], int] = {(None, "portfolio_daily_loss"): midnight}
        for name, s in self.symbols.items():
            times[name, "session_halt"] = midnight
            if s.tripped_at is not None:
                times[name, "circuit_breaker"] = (s.tripped_at + COOLDOWN_S) * 1000
        return times

    def gate_flags(self) -> dict[tuple[str | None, str], bool]:
        flags: dict[tuple[str | None, str], bool] = {
            (None, "manual_halt"): self.bot_manual,
            (None, "portfolio_daily_loss"): self.latch,
        }
        for name, s in self.symbols.items():
            flags[name, "manual_halt"] = s.manual
            flags[name, "session_halt"] = s.halted
            flags[name, "circuit_breaker"] = s.tripped_at is not None
        return flags

    def expected_gates(self, i: OrderIntent) -> set[str | None]:
        """The gates an intent may be answered with (more than one where the order is open)."""
        natural = self._natural_gates(i)
        if self.now - i.ts > TTL_MS:
            return {"expired"} | (natural - {None})
        return natural

    def _natural_gates(self, i: OrderIntent) -> set[str | None]:
        """The gate order of spec §4, then the cap on outstanding reservations."""
        gates = self._gates_in_order(i)
        if None in gates and len(self.reservations) >= MAX_RESERVATIONS:
            return (gates - {None}) | {"max_concurrent_positions"}
        return gates

    def _gates_in_order(self, i: OrderIntent) -> set[str | None]:
        s = self.symbols[i.symbol]
        if i.action == "close":
            if s.qty == 0.0 or (s.qty > 0) == (i.side == "buy"):
                return {"no_position"}
            closing = sum(
                r.qty
                for r in self.reservations.values()
                if r.symbol == i.symbol and r.action == "close"
            )
            reducible = abs(s.qty) - closing
            if i.qty > reducible + FLAT_TOLERANCE * max(abs(s.qty), i.qty):
                return {"reduce_only_exceeds_position"}
            return {None}
        if self.bot_manual or s.manual:
            return {"manual_halt"}
        if s.halted:
            return {"session_halt"}
        if s.tripped_at is not None:
            return {"circuit_breaker"}
        if self.latch or self.account_net() <= DAILY_LOSS:
            return {"portfolio_daily_loss"}
        taken, ambiguous = self.taken()
        if i.symbol not in taken and len(taken) >= MAX_OPEN:
            return {"max_concurrent_positions"}
        exposure = self._exposure_gates(i)
        return exposure | {"max_concurrent_positions"} if ambiguous else exposure

    def _exposure_gates(self, i: OrderIntent) -> set[str | None]:
        total = self.exposure() + i.qty * i.price * i.contract_value
        if abs(total - MAX_EXPOSURE) <= EPS * MAX_EXPOSURE:
            return {"gross_exposure", None}  # on the cap: float summation order decides
        return {"gross_exposure"} if total > MAX_EXPOSURE else {None}


def _content(i: OrderIntent) -> tuple[Any, ...]:
    return (i.symbol, i.action, i.side, i.qty, i.price, i.contract_value, i.ts)


# -- strategies ---------------------------------------------------------------------

# Offsets from the wall clock: behind (also across midnight), on it, ahead
# (within the skew, across midnight) and beyond the accepted skew. The furthest
# behind (11 min) is within the breaker's window and cooldown, so a trip never
# starts already over (which the engine may lift at once or at the next tick).
skews = st.sampled_from(
    [0, -1_000, -45_000, -TTL_MS - 1_000, -11 * 60_000, 30_000, 4 * 60_000, SKEW_MS + 60_000]
)
qtys = st.sampled_from([1.0, 2.0, 0.5, 3.0, 1.0005, 0.0005, 4.0])
prices = st.sampled_from([100.0, 99.5, 150.0, 60.0])
symbols = st.sampled_from(SYMBOLS)
sides = st.sampled_from(["buy", "sell"])
pnls = st.sampled_from([-30.0, -10.0, -0.5, 0.0, 0.4, 5.0, 25.0, -60.0])
fees = st.sampled_from([0.0, 0.5, 1.0])
clock_steps = st.sampled_from([1_000, 20_000, 61_000, 150_000, 301_000, 700_000, 3_600_000])
# Wall-clock starts: before midnight, just after it (late events), mid-day.
starts = st.sampled_from(
    [23 * 3_600_000 + 50 * 60_000, 23 * 3_600_000 + 58 * 60_000, 3 * 60_000, 12 * 3_600_000]
)


class EngineHarness(RuleBasedStateMachine):
    """One engine, one model, one wall clock, and the checks run at and after every step."""

    PNL_SOURCE = "outcomes"
    """Where session PnL comes from; ``FillsEngineMachine`` books it from fills."""

    def __init__(self) -> None:
        super().__init__()
        config = CONFIG.replace("{pnl_source}", self.PNL_SOURCE)
        self.engine = RiskEngine(load_config(text=config, env={}))
        self.model = Model(now=DAY0 * DAY_MS)
        self.offsets: dict[str, int] = {}
        self.event_ids: dict[str, tuple[str | None, str, str]] = {}
        self.serial = 0
        self.sent_outcomes: list[TradeOutcome] = []
        self.intent_sides: dict[str, Side] = {}

    @initialize(start=starts)
    def start_clock(self, start: int) -> None:
        self.model.now = DAY0 * DAY_MS + start
        self.engine.sweep(self.model.now)

    # -- plumbing -------------------------------------------------------------------

    def _uid(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def _origin(self, topic: str) -> Origin:
        offset = self.offsets.get(topic, -1) + 1
        self.offsets[topic] = offset
        return Origin(f"{topic}/0", offset)

    def _apply(self, event: Any, topic: str) -> Effects | Rejected:
        before = self._flags()
        try:
            out = self.engine.apply(event, self.model.now, self._origin(topic))
        except Rejected as exc:
            return exc
        self._check_halts(out.halts)
        self._check_nothing_lifted(before, event)
        return out

    def _flags(self) -> dict[tuple[str | None, str], bool]:
        """Which gates block in the engine, from its snapshots (its persisted truth)."""
        bot = self.engine.bots.get(BOT)
        flags: dict[tuple[str | None, str], bool] = {}
        if bot is None:
            return flags
        p = bot.portfolio_snapshot()
        flags[None, "manual_halt"] = p.manual_halt is not None
        flags[None, "portfolio_daily_loss"] = p.halted
        for name, sym in bot.symbols.items():
            snap = sym.snapshot()
            flags[name, "manual_halt"] = snap.manual_halt is not None
            flags[name, "session_halt"] = snap.session_pnl.halted
            flags[name, "circuit_breaker"] = snap.circuit_breaker.tripped_at is not None
        return flags

    def _check_nothing_lifted(self, before: dict[tuple[str | None, str], bool], event: Any) -> None:
        """T1: applying an event lifts nothing, whatever its ts (operator commands excepted)."""
        if isinstance(event, ControlCommand):
            return
        after = self._flags()
        lifted = [k for k, was in before.items() if was and not after.get(k, False)]
        assert lifted == [], f"{type(event).__name__} ts={event.ts} lifted {lifted}"

    def _check_halts(self, halts: list[HaltEvent]) -> None:
        for h in halts:
            meaning = (h.symbol, h.gate, h.kind)
            seen = self.event_ids.setdefault(h.event_id, meaning)
            assert seen == meaning, f"event_id {h.event_id} named {seen} and now {meaning}"
            assert h.event_id.startswith(f"{BOT}/{h.symbol or '*'}/{h.gate}/")

    def _reject(self, result: Effects | Rejected, reasons: set[str]) -> None:
        assert isinstance(result, Rejected), f"accepted, expected rejection {reasons}"
        assert result.reason in reasons, f"{result.reason} not in {reasons}"

    def _accepted(self, result: Effects | Rejected) -> Effects:
        assert not isinstance(result, Rejected), f"rejected: {result.reason}: {result}"
        return result

    # -- checks ---------------------------------------------------------------------

    def _adopt_trip_start(self, symbol: str, acceptable: set[int]) -> None:
        snap = self.engine.bots[BOT].symbols[symbol].snapshot()
        tripped_at = snap.circuit_breaker.tripped_at
        assert tripped_at in acceptable, f"{symbol} trip starts at {tripped_at}, not {acceptable}"
        self.model.symbols[symbol].tripped_at = tripped_at

    def _check_transitions(
        self, before: dict[tuple[str | None, str], bool], halts: list[HaltEvent]
    ) -> None:
        """Every gate the model flipped has exactly one halt event, and nothing else has."""
        after = self.model.gate_flags()
        expected = sorted(
            (str(k[0]), k[1], "halted" if after[k] else "resumed")
            for k in after
            if after[k] != before[k]
        )
        got = sorted((str(h.symbol), h.gate, h.kind) for h in halts)
        assert got == expected, f"halt events {got}, expected {expected}"

    def _check_open_within_caps(
        self, i: OrderIntent, exposure: float, reserved: dict[str, MReservation]
    ) -> None:
        """The safety invariants of an allowed open, whatever the model predicts."""
        model = self.model
        assert not model.blocked(i.symbol), "an open was allowed while a gate blocks"
        notional = i.qty * i.price * i.contract_value
        assert exposure + notional <= MAX_EXPOSURE * (1 + EPS), (exposure, notional)
        held = {n for n, s in model.symbols.items() if s.qty != 0.0}
        taken = held | {r.symbol for r in reserved.values()} | {i.symbol}
        assert len(taken) <= MAX_OPEN or i.symbol in held | {r.symbol for r in reserved.values()}

    def _reservation_ids(self) -> set[str]:
        return set(self.engine.bots[BOT].portfolio_snapshot().reservations)

    # -- after every step -----------------------------------------------------------------

    @invariant()
    def engine_matches_model(self) -> None:
        bot = self.engine.bots.get(BOT)
        if bot is None:
            return
        model = self.model
        p = bot.portfolio_snapshot()
        assert (p.manual_halt is not None) == model.bot_manual, "bot manual halt"
        assert p.halted == model.latch, f"latch {p.halted}, model {model.latch}"
        assert set(p.reservations) == set(model.reservations), "reservations"
        assert len(p.reservations) <= MAX_RESERVATIONS
        for name, sym in bot.symbols.items():
            m = model.symbols[name]
            snap = sym.snapshot()
            s, b = snap.session_pnl, snap.circuit_breaker
            where = f"{name} at {model.now}"
            assert s.last_reset_day == model.today, f"{where}: session day {s.last_reset_day}"
            assert math.isclose(s.realised - s.fees, m.net, abs_tol=1e-9), (where, s, m.net)
            assert s.trades == m.trades, (where, s.trades, m.trades)
            assert s.halted == m.halted, (where, "session halted", s.halted)
            assert b.tripped_at == m.tripped_at, (where, b, m.tripped_at)
            # A loss already outside the window may leave at once or at the next sweep.
            live = [t for t in sorted(b.recent_losses) if t > model.now // 1000 - BREAKER_WINDOW_S]
            assert live == m.live_losses(model.now), (where, b.recent_losses, m.losses)
            assert (snap.manual_halt is not None) == m.manual, (where, "manual")
            qty = snap.position.qty if snap.position is not None else 0.0
            assert math.isclose(qty, m.qty, abs_tol=1e-12), (where, qty, m.qty)


class EngineMachine(EngineHarness):
    """The rules: what a hostile producer, operator and clock can do."""

    outcomes = Bundle("outcomes")
    fills = Bundle("fills")
    intents = Bundle("intents")
    commands = Bundle("commands")

    # -- clock ----------------------------------------------------------------------

    @rule(step=clock_steps)
    def wall_clock_moves(self, step: int) -> None:
        self._sweep_to(self.model.now + step)

    @rule(before=st.sampled_from([1_000, 30_000, 90_000]))
    def wall_clock_to_just_before_midnight(self, before: int) -> None:
        self._sweep_to(max(self.model.now + 1_000, (self.model.today + 1) * DAY_MS - before))

    def _sweep_to(self, now: int) -> None:
        before = self._flags()
        until = self.model.lift_times()
        flags = self.model.gate_flags()
        out = self.engine.sweep(now)
        self._check_halts(out.halts)
        after = self._flags()
        for key, was in before.items():
            if was and not after.get(key, False):
                assert key in until, f"{key} lifted by a sweep; it lifts only by a command"
                assert now >= until[key], f"{key} lifted at {now}, before {until[key]}"
        self.model.sweep(now)
        self._check_transitions(flags, out.halts)

    # -- outcomes -------------------------------------------------------------------

    @rule(target=outcomes, symbol=symbols, gross=pnls, fee=fees, skew=skews)
    def outcome(self, symbol: str, gross: float, fee: float, skew: int) -> TradeOutcome:
        ts = self.model.now + skew
        o = TradeOutcome(self._uid("o"), BOT, symbol, gross, fee, ts)
        self._send_outcome(o)
        return o

    @rule(o=outcomes)
    def outcome_resent(self, o: TradeOutcome) -> None:
        self._send_outcome(o)

    @precondition(lambda self: self.sent_outcomes)
    @rule(data=st.data())
    def run_of_outcomes_resent(self, data: st.DataObject) -> None:
        """A producer re-sends a whole run (issue 9 item 8): nothing counts twice."""
        sent = self.sent_outcomes
        start = data.draw(st.integers(0, len(sent) - 1))
        for o in sent[start:]:
            self._send_outcome(o)

    def _send_outcome(self, o: TradeOutcome) -> None:
        model = self.model
        was_before = self.model.gate_flags()
        result = self._apply(o, "trading.outcomes")
        if o.ts > model.now + SKEW_MS or self.PNL_SOURCE == "fills":
            future = {"future_event"} if o.ts > model.now + SKEW_MS else set()
            self._reject(result, future | ({"pnl_source"} if self.PNL_SOURCE == "fills" else set()))
            return
        out = self._accepted(result)
        if o.outcome_id in model.seen["outcomes"]:
            return
        model.seen["outcomes"].add(o.outcome_id)
        self.sent_outcomes.append(o)
        net = o.gross_pnl - o.fee
        self._book(o.symbol, o.ts, net, net)
        self._check_transitions(was_before, out.halts)

    def _book(self, symbol: str, ts: int, booked: float, trade: float | None) -> None:
        """Book PnL at ``ts`` and count the trade it ended (a loss enters the breaker)."""
        model, m = self.model, self.model.symbols[symbol]
        trip_starts = m.loss(ts // 1000) if trade is not None and trade < 0.0 else set()
        if utc_day(ts) >= model.today:  # later days are clamped to today (T2)
            m.net += booked
            m.trades += trade is not None
            m.halted = m.halted or m.net <= SESSION_LIMIT
            model.observe_latch()
        if trip_starts:
            self._adopt_trip_start(symbol, trip_starts)

    # -- fills ----------------------------------------------------------------------

    @rule(target=fills, symbol=symbols, side=sides, qty=qtys, price=prices, fee=fees, skew=skews)
    def fill(
        self, symbol: str, side: Side, qty: float, price: float, fee: float, skew: int
    ) -> Fill:
        f = Fill(self._uid("f"), BOT, symbol, side, qty, price, fee, self.model.now + skew)
        self._send_fill(f)
        return f

    @precondition(lambda self: self.model.reservations)
    @rule(target=fills, data=st.data(), part=st.sampled_from([1.0, 0.5, 0.25, 1.5]))
    def fill_of_reservation(self, data: st.DataObject, part: float) -> Fill:
        """A (partial, full or over-) fill reported with its intent_id."""
        live = sorted(self.model.reservations)
        rid = data.draw(st.sampled_from(live))
        r = self.model.reservations[rid]
        side = self.intent_sides[rid]
        f = Fill(
            self._uid("f"),
            BOT,
            r.symbol,
            side,
            r.qty * part,
            100.0,
            0.1,
            self.model.now,
            intent_id=rid,
        )
        self._send_fill(f)
        return f

    @rule(f=fills)
    def fill_resent(self, f: Fill) -> None:
        self._send_fill(f)

    def _send_fill(self, f: Fill) -> None:
        model = self.model
        flags = self.model.gate_flags()
        result = self._apply(f, "trading.fills")
        if f.ts > model.now + SKEW_MS:
            self._reject(result, {"future_event"})
            return
        out = self._accepted(result)
        if f.fill_id in model.seen["fills"]:
            return
        model.seen["fills"].add(f.fill_id)
        r = model.reservations.get(f.intent_id or "")
        if r is not None:
            r.qty -= f.qty
            if r.qty <= FLAT_TOLERANCE * f.qty:
                del model.reservations[f.intent_id or ""]
        signed = f.qty if f.side == "buy" else -f.qty
        gross, fees, ended = model.symbols[f.symbol].fill(signed, f.price, f.fee)
        if self.PNL_SOURCE == "fills" and (gross or fees or ended is not None):
            self._book(f.symbol, f.ts, gross - fees, ended)
        self._check_transitions(flags, out.halts)

    # -- intents --------------------------------------------------------------------

    @rule(
        target=intents,
        symbol=symbols,
        action=st.sampled_from(["open", "open", "close"]),
        side=sides,
        qty=qtys,
        price=prices,
        skew=skews,
    )
    def intent(
        self, symbol: str, action: Action, side: Side, qty: float, price: float, skew: int
    ) -> OrderIntent:
        i = OrderIntent(
            self._uid("i"), BOT, symbol, action, side, qty, price, self.model.now + skew
        )
        self._decide(i)
        return i

    @precondition(lambda self: any(s.qty != 0.0 for s in self.model.symbols.values()))
    @rule(target=intents, data=st.data())
    def close_what_is_held(self, data: st.DataObject) -> OrderIntent:
        """A close for exactly the reducible quantity, or a bit more (issue 9 item 1)."""
        held = [(n, s.qty) for n, s in self.model.symbols.items() if s.qty != 0.0]
        symbol, qty = data.draw(st.sampled_from(held))
        extra = data.draw(st.sampled_from([0.0, 0.0, 0.0005, 1.0, -abs(qty) / 2]))
        side: Side = "sell" if qty > 0 else "buy"
        i = OrderIntent(
            self._uid("i"), BOT, symbol, "close", side, abs(qty) + extra, 100.0, self.model.now
        )
        self._decide(i)
        return i

    @rule(i=intents)
    def intent_resent(self, i: OrderIntent) -> None:
        self._decide(i)

    @rule(i=intents, qty=qtys, symbol=symbols)
    def intent_id_reused(self, i: OrderIntent, qty: float, symbol: str) -> None:
        """Same id, other content (issue 9 item 5): denied, nothing reserved."""
        other = msgspec.structs.replace(i, qty=i.qty + qty, symbol=symbol)
        self._decide(other)

    def _decide(self, i: OrderIntent) -> None:
        model = self.model
        flags = self.model.gate_flags()
        exposure_before = model.exposure()
        reserved_before = dict(model.reservations)
        result = self._apply(i, "trading.intents")
        if i.ts > model.now + SKEW_MS:
            self._reject(result, {"future_event"})
            return
        out = self._accepted(result)
        self._check_transitions(flags, out.halts)
        assert len(out.decisions) == 1, out.decisions
        d = out.decisions[0]
        assert (d.intent_id, d.bot, d.symbol) == (i.intent_id, BOT, i.symbol)
        answer = (d.allowed, d.gate, d.reservation_expires_ts)
        prior = model.decided.get(i.intent_id)
        if prior is not None:
            content, first = prior
            # R3 and R4 may both apply: decisions.md does not order them.
            expired = (False, "expired", None) if model.now - i.ts > TTL_MS else None
            if content == _content(i):
                assert answer in (first, expired), f"replayed intent: {answer}, first {first}"
            else:
                assert answer in ((False, "duplicate_intent_id", None), expired), answer
            assert self._reservation_ids() == set(model.reservations)
            return
        model.decided[i.intent_id] = (_content(i), answer)
        expected = self.model.expected_gates(i)
        assert d.gate in expected, f"{i.action} {i.side} {i.qty} -> {answer}, expected {expected}"
        assert d.allowed == (d.gate is None)
        if not d.allowed:
            assert d.reservation_expires_ts is None
            return
        assert d.reservation_expires_ts == model.now + TTL_MS
        if i.action == "open":
            self._check_open_within_caps(i, exposure_before, reserved_before)
            unit = i.price * i.contract_value
        else:
            unit = 0.0
        model.reservations[i.intent_id] = MReservation(
            i.symbol, i.action, i.qty, unit, model.now + TTL_MS
        )
        self.intent_sides[i.intent_id] = i.side

    # -- operator commands ------------------------------------------------------------

    @rule(
        target=commands,
        command=st.sampled_from(["halt", "resume", "reset_breaker", "reset_session"]),
        symbol=st.none() | symbols,
        skew=st.sampled_from([0, -2_000, -WINDOW_MS + 1_000, 60_000, -WINDOW_MS - 1_000]),
        signing_=st.sampled_from(["good", "good", "good", "forged", "unsigned"]),
    )
    def command(self, command: str, symbol: str | None, skew: int, signing_: str) -> ControlCommand:
        c = ControlCommand(command, BOT, symbol, "fuzz", "ops", self.model.now + skew)  # type: ignore[arg-type]
        if signing_ == "good":
            c = signing.signed(c, SECRET.encode())
        elif signing_ == "forged":
            c = signing.signed(c, b"not-the-secret")
        self._send_command(c)
        return c

    @precondition(lambda self: any(s.net > 0 for s in self.model.symbols.values()))
    @rule(target=commands, data=st.data())
    def reset_session_of_a_winner(self, data: st.DataObject) -> ControlCommand:
        """Resetting a winning symbol lowers the account net: it may breach the daily loss."""
        winners = sorted(n for n, s in self.model.symbols.items() if s.net > 0)
        symbol = data.draw(st.sampled_from(winners))
        c = ControlCommand("reset_session", BOT, symbol, "fuzz", "ops", self.model.now)
        c = signing.signed(c, SECRET.encode())
        self._send_command(c)
        return c

    @rule(c=commands)
    def command_replayed(self, c: ControlCommand) -> None:
        """A captured command appended again (issue 9 item 4b)."""
        self._send_command(c)

    def _send_command(self, c: ControlCommand) -> None:
        model = self.model
        flags = self.model.gate_flags()
        result = self._apply(c, "risk.control")
        good = c.sig is not None and c.sig == signing.sign(c, SECRET.encode())
        if not good or abs(model.now - c.ts) > WINDOW_MS:
            self._reject(result, {"bad_signature"})
            return
        target = c.symbol
        stale = c.ts < model.last_cmd_ts.get(target, c.ts)
        replayed = c.sig in model.applied_sigs.get(target, set())
        if stale or replayed:
            reasons = ({"stale_command"} if stale else set()) | (
                {"replayed_command"} if replayed else set()
            )
            self._reject(result, reasons)
            return
        out = self._accepted(result)
        model.last_cmd_ts[target] = c.ts
        model.applied_sigs.setdefault(target, set()).add(c.sig or "")
        touched = [model.symbols[c.symbol]] if c.symbol else list(model.symbols.values())
        if c.command in ("halt", "resume"):
            if c.symbol is None:
                model.bot_manual = c.command == "halt"
            else:
                touched[0].manual = c.command == "halt"
        for s in touched if c.command.startswith("reset") else []:
            if c.command == "reset_breaker":
                s.reset_breaker()
            else:
                s.reset_session()
        if c.command == "reset_session":
            # Spec §4: "checked live and latched": resetting a winner can take the account
            # past the limit, and the latch holds for the day (findings E1-1, E2-1).
            model.observe_latch()
        for h in out.halts:
            assert _CMD_EVENT_ID.search(h.event_id), f"command event id {h.event_id}"
            assert h.issued_by == "ops"
        after = self.model.gate_flags()
        if after == flags and c.command != "halt":
            assert out.halts == [], f"{c.command} changed no gate but published {out.halts}"


class FillsEngineMachine(EngineMachine):
    """The same machine for a bot booking PnL from fills: round trips are its trades
    and its breaker losses; outcomes are bad input (``pnl_source``)."""

    PNL_SOURCE = "fills"


_SETTINGS = settings(
    max_examples=int(os.environ.get("RISKGATE_FUZZ_EXAMPLES", "100")),
    stateful_step_count=int(os.environ.get("RISKGATE_FUZZ_STEPS", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
EngineMachine.TestCase.settings = _SETTINGS
FillsEngineMachine.TestCase.settings = _SETTINGS
test_engine_machine = EngineMachine.TestCase
test_engine_machine_booking_from_fills = FillsEngineMachine.TestCase
