"""Reference model of riskgate's contract (``docs/spec.md``): small, slow, obviously correct.

It is the oracle the integration and chaos tests compare the worker against, so
it is written from the spec and shares no code with ``worker/``: an engine bug
must not show up on both sides of a comparison. It reads events by attribute
(the wire message types, or anything shaped like them), takes its limits as
plain dataclasses (:func:`limits_from_config` builds them from a parsed config
by attribute access) and emits its own plain output records. Everything is
recomputed the long way (sums over every symbol, linear scans); speed is not a
goal, being easy to check against the spec is.

Time follows the spec's rules: :meth:`Model.apply` never moves time-driven
state (rollover, latch release, cooldown end, window eviction, reservation
expiry); only :meth:`Model.sweep` does, with the wall clock it is given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

DAY_MS = 86_400_000
FLAT_TOLERANCE = 1e-9
"""Relative: |qty| at or below this share of the larger of (held, fill) is flat."""
ORDER_TOLERANCE = 1e-9
"""Relative: an order "exceeds" a limit only beyond this (SPEC §4.9)."""
MAX_RECENT_ORDERS = 1_000
"""Orders a bot remembers for ``duplicate_window_ms`` (SPEC §4.9)."""
MAX_NAME = 64
Marks = dict[str, tuple[float, int]]
"""The mark table: symbol → (price, ts) of its latest mark."""


class Rejected(Exception):
    """Bad input (dead-lettered with ``reason``); the model changed nothing."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def utc_day(ts_ms: int) -> int:
    return ts_ms // DAY_MS


# -- limits -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolLimits:
    session_loss_limit: float = -50.0
    breaker_losses: int = 4
    window_secs: int = 14_400
    cooldown_secs: int = 3_600
    max_qty: float = 0.0
    """``[orders]`` per symbol; every order check is off at 0."""
    max_notional: float = 0.0
    price_collar_bps: float = 0.0
    duplicate_window_ms: int = 0
    mark_max_age_ms: int = 60_000
    after_loss_secs: int = 0
    """``[cooldown] after_loss_secs``: entries wait this long after a losing trade."""


@dataclass(frozen=True)
class BotLimits:
    symbols: frozenset[str] | None = None
    pnl_source: str = "outcomes"
    default: SymbolLimits = SymbolLimits()
    overrides: dict[str, SymbolLimits] = field(default_factory=dict)
    max_daily_loss: float | None = None
    max_concurrent_positions: int = 0
    max_gross_exposure: float | None = None
    max_orders_per_sec: int = 0
    """``[orders] max_orders_per_sec``: a bot setting (no per-symbol override)."""
    max_daily_notional: float = 0.0

    def for_symbol(self, symbol: str) -> SymbolLimits:
        return self.overrides.get(symbol, self.default)


@dataclass(frozen=True)
class Limits:
    bots: dict[str, BotLimits] = field(default_factory=dict)
    unknown_bots: BotLimits | None = None
    """Limits of a bot not in ``bots``; None rejects it (``unknown_bot``)."""
    reservation_ttl_ms: int = 30_000
    max_reservations_per_bot: int = 1_000
    dedupe_ids_per_bot: int = 10_000
    intent_ids_per_bot: int = 10_000
    max_future_skew_ms: int = 300_000
    control_secret: bytes | None = None
    replay_window_ms: int = 300_000


def _last_set(*values: Any) -> Any:
    """The most specific setting: the last value that is not None."""
    chosen = None
    for value in values:
        if value is not None:
            chosen = value
    return chosen


def limits_from_config(config: Any) -> Limits:
    """Limits from an object shaped like the TOML contract (attribute access only).

    Every table merges field by field over the one above it: defaults, then the
    bot's table, then the bot's per-symbol override.
    """
    d = config.defaults

    def pick(tables: list[Any], name: str) -> Any:
        return _last_set(*(getattr(t, name, None) for t in tables if t is not None))

    def symbol_limits(*layers: Any) -> SymbolLimits:
        sessions = [getattr(layer, "session", None) for layer in layers]
        breakers = [getattr(layer, "breaker", None) for layer in layers]
        orders = [getattr(layer, "orders", None) for layer in layers]
        cooldowns = [getattr(layer, "cooldown", None) for layer in layers]
        return SymbolLimits(
            session_loss_limit=pick(sessions, "loss_limit"),
            breaker_losses=pick(breakers, "loss_limit"),
            window_secs=pick(breakers, "window_secs"),
            cooldown_secs=pick(breakers, "cooldown_secs"),
            max_qty=pick(orders, "max_qty"),
            max_notional=pick(orders, "max_notional"),
            price_collar_bps=pick(orders, "price_collar_bps"),
            duplicate_window_ms=pick(orders, "duplicate_window_ms"),
            mark_max_age_ms=pick(orders, "mark_max_age_ms"),
            after_loss_secs=pick(cooldowns, "after_loss_secs"),
        )

    def bot_limits(spec: Any) -> BotLimits:
        portfolios = [d.portfolio, getattr(spec, "portfolio", None)]

        def portfolio(name: str) -> Any:
            return _last_set(*(getattr(p, name, None) for p in portfolios if p is not None))

        overrides = getattr(spec, "overrides", None) or {}
        symbols = getattr(spec, "symbols", None)
        return BotLimits(
            symbols=frozenset(symbols) if symbols is not None else None,
            pnl_source=_last_set(d.pnl_source, getattr(spec, "pnl_source", None)),
            default=symbol_limits(d, spec),
            overrides={s: symbol_limits(d, spec, o) for s, o in overrides.items()},
            max_daily_loss=portfolio("max_daily_loss"),
            max_concurrent_positions=portfolio("max_concurrent_positions") or 0,
            max_gross_exposure=portfolio("max_gross_exposure"),
            max_orders_per_sec=pick(
                [d.orders, getattr(spec, "orders", None)], "max_orders_per_sec"
            ),
            max_daily_notional=portfolio("max_daily_notional") or 0.0,
        )

    w = config.worker
    return Limits(
        bots={name: bot_limits(spec) for name, spec in config.bots.items()},
        unknown_bots=bot_limits(None) if d.accept_unknown_bots else None,
        reservation_ttl_ms=w.reservation_ttl_ms,
        max_reservations_per_bot=w.max_reservations_per_bot,
        dedupe_ids_per_bot=getattr(w, "dedupe_ids_per_bot", 10_000),
        intent_ids_per_bot=getattr(w, "intent_ids_per_bot", 10_000),
        max_future_skew_ms=w.max_future_skew_ms,
        control_secret=config.control.resolved_secret(),
        replay_window_ms=config.control.replay_window_ms,
    )


# -- outputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Halt:
    """A HaltEvent: a gate starting (``halted``) or stopping (``resumed``) to block."""

    event_id: str
    bot: str
    symbol: str | None
    kind: str
    gate: str
    ts: int
    until_ts: int | None

    def content(self) -> tuple[str, str | None, str, str, int, int | None]:
        return (self.bot, self.symbol, self.gate, self.kind, self.ts, self.until_ts)


@dataclass(frozen=True)
class Decision:
    """A GateDecision, with the intent fields it echoes."""

    intent_id: str
    bot: str
    symbol: str
    allowed: bool
    gate: str | None
    ts: int
    reservation_expires_ts: int | None
    action: str
    side: str
    qty: float
    price: float


# -- per-symbol state -------------------------------------------------------------------


@dataclass
class Session:
    day: int
    realised: float = 0.0
    fees: float = 0.0
    trades: int = 0
    wins: int = 0
    losses: int = 0
    breakevens: int = 0
    halted: bool = False

    @property
    def net(self) -> float:
        return self.realised - self.fees

    def clear(self) -> None:
        """Every total and the halt back to zero; the day stays."""
        self.realised = self.fees = 0.0
        self.trades = self.wins = self.losses = self.breakevens = 0
        self.halted = False


@dataclass
class Position:
    qty: float = 0.0
    avg_price: float = 0.0
    entry_fees: float = 0.0
    contract_value: float = 1.0
    trip_net: float = 0.0

    def fill(
        self, signed: float, price: float, fee: float, contract_value: float
    ) -> tuple[float, float, float | None]:
        """Apply a fill: (gross realised, fees realised, net of a round trip it ended)."""
        held = self.qty
        if held == 0.0 or (held > 0) == (signed > 0):
            self._add(signed, price, fee, contract_value)
            return 0.0, 0.0, None
        size, held_size = abs(signed), abs(held)
        closed = min(size, held_size)
        direction = 1.0 if held > 0 else -1.0
        gross = (price - self.avg_price) * closed * self.contract_value * direction
        entry_share = self.entry_fees * closed / held_size
        fees = fee * closed / size + entry_share
        self.trip_net += gross - fees
        remaining = held + signed
        if abs(remaining) <= FLAT_TOLERANCE * max(held_size, size):
            return gross, fees, self._flat()
        if (remaining > 0) != (held > 0):  # a flip: the rest opens a new round trip
            net = self._flat()
            self._add(remaining, price, fee * abs(remaining) / size, contract_value)
            return gross, fees, net
        self.qty = remaining
        self.entry_fees -= entry_share
        return gross, fees, None

    def _add(self, signed: float, price: float, fee: float, contract_value: float) -> None:
        size = abs(self.qty) + abs(signed)
        self.avg_price = (abs(self.qty) * self.avg_price + abs(signed) * price) / size
        self.qty += signed
        self.entry_fees += fee
        self.contract_value = contract_value

    def _flat(self) -> float:
        net = self.trip_net
        self.qty = self.avg_price = self.entry_fees = self.trip_net = 0.0
        return net


@dataclass
class SymbolState:
    limits: SymbolLimits
    session: Session
    position: Position = field(default_factory=Position)
    losses: list[int] = field(default_factory=list)
    """Breaker: loss times in Unix seconds, sorted."""
    tripped_at: int | None = None
    manual_halt: tuple[str, str, int] | None = None
    """(reason, issued_by, ts) of the operator halt."""
    killed: tuple[str, str, int] | None = None
    """(reason, issued_by, ts) of the operator's kill switch (every intent denied)."""
    cooldown_until: int | None = None
    """After-loss cooldown: entries wait until this wall time (ms)."""

    def blocks(self) -> tuple[bool, bool, bool, bool]:
        """Whether each of ``SYMBOL_GATES`` blocks (the kill switch is judged apart)."""
        return (
            self.manual_halt is not None,
            self.session.halted,
            self.tripped_at is not None,
            self.cooldown_until is not None,
        )

    def record_cooldown(self, ts_ms: int) -> None:
        """A losing trade at ``ts_ms``: entries wait ``after_loss_secs`` from it; another
        loss meanwhile extends the wait (never shortens it)."""
        secs = self.limits.after_loss_secs
        if secs:
            end = ts_ms + secs * 1000
            self.cooldown_until = max(end, self.cooldown_until or end)

    def record_loss(self, ts_ms: int) -> None:
        """A loss at its own time (Unix seconds).

        While tripped, a loss before the cooldown's end is not recorded; one after
        it waits in the window for the clock to end the trip. Otherwise the breaker
        trips if any window ``(end - window, end]`` containing this loss, ending at
        a recorded loss, holds the limit; the trip starts at the first such end.
        """
        lim, t = self.limits, ts_ms // 1000
        if lim.breaker_losses == 0:
            return
        if self.tripped_at is not None:
            if t >= max(self.tripped_at + lim.cooldown_secs, self.tripped_at + 1):
                self.losses = sorted([*self.losses, t])
            return
        self.losses = sorted([*self.losses, t])
        ends = sorted({e for e in self.losses if t <= e < t + lim.window_secs})
        self.tripped_at = self._first_full_window(ends)

    def _first_full_window(self, ends: list[int]) -> int | None:
        window, limit = self.limits.window_secs, self.limits.breaker_losses
        for end in ends:
            if sum(1 for loss in self.losses if end - window < loss <= end) >= limit:
                return end
        return None

    def tick(self, now_ms: int) -> None:
        """The wall clock: end a cooldown it passed (losses after its end count afresh,
        and may trip again at once), then evict losses older than the window."""
        lim, now = self.limits, now_ms // 1000
        if self.cooldown_until is not None and now_ms >= self.cooldown_until:
            self.cooldown_until = None
        if self.tripped_at is not None and now >= self.tripped_at + lim.cooldown_secs:
            cut = max(self.tripped_at + lim.cooldown_secs, self.tripped_at + 1)
            self.losses = [t for t in self.losses if t >= cut]
            self.tripped_at = self._first_full_window(sorted(set(self.losses)))
        self.losses = [t for t in self.losses if t > now - lim.window_secs]


# -- per-bot state ----------------------------------------------------------------------


@dataclass
class Reservation:
    symbol: str
    action: str
    qty: float
    """Remaining quantity: fills with the intent's id consume it."""
    notional: float
    """Remaining notional of an open (0 for a close), in proportion to ``qty``."""
    expires_ts: int


@dataclass
class BotState:
    name: str
    limits: BotLimits
    day: int
    symbols: dict[str, SymbolState] = field(default_factory=dict)
    latched: bool = False
    manual_halt: tuple[str, str, int] | None = None
    killed: tuple[str, str, int] | None = None
    reservations: dict[str, Reservation] = field(default_factory=dict)
    seen: dict[str, OrderedDict[str, None]] = field(default_factory=dict)
    """Per input topic, the most recent event ids (dedupe window)."""
    intents: OrderedDict[str, tuple[tuple[Any, ...], Decision]] = field(default_factory=OrderedDict)
    commands: dict[str | None, tuple[int, set[str]]] = field(default_factory=dict)
    """Per target (a symbol, None for the bot): the last applied command's ts and the
    digests of the commands applied at that ts (an older one is stale anyway)."""
    seqs: dict[tuple[str | None, str], int] = field(default_factory=dict)
    order_times: list[int] = field(default_factory=list)
    """Record times of every allowed intent (``max_orders_per_sec``)."""
    recent_orders: OrderedDict[tuple[str, str, float, float], int] = field(
        default_factory=OrderedDict
    )
    """(symbol, side, qty, price) → record time it was last allowed, oldest first
    (``duplicate_window_ms``; at most ``MAX_RECENT_ORDERS``)."""
    notional_today: float = 0.0
    """Notional of the opens allowed in the bot's UTC day (``max_daily_notional``)."""

    def account_net(self) -> float:
        """Today's sessions' nets, summed exactly and rounded once (``fsum``)."""
        nets = [s.session.net for s in self.symbols.values() if s.session.day == self.day]
        return math.fsum(nets)

    def daily_loss_breached(self) -> bool:
        limit = self.limits.max_daily_loss
        return limit is not None and self.account_net() <= limit

    def gross_exposure(self) -> float:
        """The positions at entry price, summed exactly and rounded once (``fsum``)."""
        return math.fsum(
            abs(s.position.qty) * s.position.avg_price * s.position.contract_value
            for s in self.symbols.values()
        )

    def exceeds_exposure(self, notional: float, cap: float) -> bool:
        """The gross exposure, the opens' remaining notional and ``notional``, summed
        exactly, exceed ``cap`` (the sign of an ``fsum`` is exact)."""
        reserved = [r.notional for r in self.reservations.values() if r.action == "open"]
        return math.fsum([self.gross_exposure(), *reserved, notional, -cap]) > 0.0


def exceeds(value: float, cap: float) -> bool:
    """``value`` beyond ``cap`` by more than the spec's 1e-9 relative float tolerance."""
    return value - cap > ORDER_TOLERANCE * max(abs(value), abs(cap))


def order_check(bot: BotState, i: Any, marks: Marks, now_ms: int, record_ts: int) -> str | None:
    """SPEC §4.9, in its order: the erroneous-order checks every intent meets."""
    lim = bot.limits.for_symbol(i.symbol)
    if lim.max_qty and exceeds(i.qty, lim.max_qty):
        return "max_order_qty"
    if lim.max_notional and exceeds(i.qty * i.price * i.contract_value, lim.max_notional):
        return "max_order_notional"
    if lim.price_collar_bps:
        held = marks.get(i.symbol)
        if held is None or now_ms - held[1] > lim.mark_max_age_ms:
            return "stale_mark"  # the collar cannot be judged: fail closed
        if exceeds(abs(i.price - held[0]) / held[0] * 10_000, lim.price_collar_bps):
            return "price_collar"
    rate = bot.limits.max_orders_per_sec
    if rate and sum(1 for t in bot.order_times if t > record_ts - 1000) >= rate:
        return "order_rate"
    window = lim.duplicate_window_ms
    seen = bot.recent_orders.get((i.symbol, i.side, i.qty, i.price))
    if window and seen is not None and record_ts - seen < window:
        return "duplicate_order"
    return None


def evaluate(
    bot: BotState,
    intent: Any,
    max_reservations: int,
    marks: Marks | None = None,
    now_ms: int = 0,
    record_ts: int = 0,
) -> str | None:
    """The gate order of the spec for an intent: the gate that blocks it, or None.

    ``marks``: the mark table (symbol → (price, ts)) the price collar reads at
    ``now_ms``; ``record_ts``: the intent's record time (order rate, duplicates).
    """
    sym = bot.symbols.get(intent.symbol)
    if bot.killed is not None or (sym is not None and sym.killed is not None):
        return "kill_switch"  # every intent, closes included
    order = order_check(bot, intent, marks or {}, now_ms, record_ts)
    if order is not None:
        return order  # an erroneous order, closes included
    held = sym.position.qty if sym is not None else 0.0
    if intent.action == "close":
        if not ((held > 0 and intent.side == "sell") or (held < 0 and intent.side == "buy")):
            return "no_position"  # nothing to reduce
        pending = sum(
            r.qty
            for r in bot.reservations.values()
            if r.symbol == intent.symbol and r.action == "close"
        )
        if intent.qty - (abs(held) - pending) > FLAT_TOLERANCE * max(abs(held), intent.qty):
            return "reduce_only_exceeds_position"  # close exceeds the reducible position
        if len(bot.reservations) >= max_reservations:
            return "max_concurrent_positions"  # too many outstanding reservations
        return None  # reduce-only exit
    if bot.manual_halt is not None or (sym is not None and sym.manual_halt is not None):
        return "manual_halt"  # halted by an operator
    if sym is not None and sym.session.halted:
        return "session_halt"  # session loss limit
    if sym is not None and sym.tripped_at is not None:
        return "circuit_breaker"  # breaker tripped
    if sym is not None and sym.cooldown_until is not None:
        return "loss_cooldown"  # after a losing trade on the symbol
    if bot.latched or bot.daily_loss_breached():
        return "portfolio_daily_loss"  # account daily loss
    lim = bot.limits
    notional = intent.qty * intent.price * intent.contract_value
    if lim.max_daily_notional and exceeds(bot.notional_today + notional, lim.max_daily_notional):
        return "daily_notional"  # the day's budget of opens
    cap = lim.max_concurrent_positions
    taken = {s for s, st in bot.symbols.items() if st.position.qty != 0.0}
    taken |= {r.symbol for r in bot.reservations.values() if r.action == "open"}
    if cap and intent.symbol not in taken and len(taken) >= cap:
        return "max_concurrent_positions"  # no free position slot
    exposure_cap = lim.max_gross_exposure
    if exposure_cap is not None and bot.exceeds_exposure(notional, exposure_cap):
        return "gross_exposure"  # gross exposure cap
    if len(bot.reservations) >= max_reservations:
        return "max_concurrent_positions"  # too many outstanding reservations
    return None  # entries allowed


def _valid_name(name: str) -> bool:
    return (
        1 <= len(name) <= MAX_NAME
        and "/" not in name
        and not any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in name)
    )


def canonical_command(c: Any, *, with_sig: bool) -> bytes:
    """Sorted-key compact JSON of a command (the signature covers it without ``sig``)."""
    fields: dict[str, Any] = {
        "command": c.command,
        "bot": c.bot,
        "symbol": c.symbol,
        "reason": c.reason,
        "issued_by": c.issued_by,
        "ts": c.ts,
    }
    if with_sig:
        fields["sig"] = c.sig
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def command_digest(c: Any) -> str:
    return hashlib.sha256(canonical_command(c, with_sig=True)).hexdigest()


# -- the model --------------------------------------------------------------------------

SYMBOL_GATES = ("manual_halt", "session_halt", "circuit_breaker", "loss_cooldown")
_COMMAND_GATE = {
    "halt": "manual_halt",
    "resume": "manual_halt",
    "reset_session": "session_halt",
    "reset_breaker": "circuit_breaker",
    "kill": "kill_switch",
}


class _State:
    """Every bot's state and its halt events, and what the wall clock does to them."""

    def __init__(self) -> None:
        self.bots: dict[str, BotState] = {}
        self.halts: list[Halt] = []
        self.marks: Marks = {}

    def _symbol_transitions(
        self,
        bot: BotState,
        symbol: str,
        before: tuple[bool, ...],
        ts: int,
        cause: str | None,
    ) -> None:
        sym = bot.symbols[symbol]
        until = {
            "loss_cooldown": sym.cooldown_until,
            "manual_halt": None,
            "session_halt": (sym.session.day + 1) * DAY_MS,
            "circuit_breaker": (
                (sym.tripped_at + sym.limits.cooldown_secs) * 1000
                if sym.tripped_at is not None
                else None
            ),
        }
        for gate, was, now in zip(SYMBOL_GATES, before, sym.blocks(), strict=True):
            if was != now:
                kind = "halted" if now else "resumed"
                self._emit(bot, symbol, kind, gate, ts, until[gate] if now else None, cause)

    def _emit(
        self,
        bot: BotState,
        symbol: str | None,
        kind: str,
        gate: str,
        ts: int,
        until_ts: int | None,
        cause: str | None = None,
    ) -> None:
        """One HaltEvent; ids: ``cmd-<digest>`` for commands, else a per-gate count."""
        if cause is None:
            seq = bot.seqs.get((symbol, gate), 0) + 1
            bot.seqs[(symbol, gate)] = seq
            cause = str(seq)
        event_id = f"{bot.name}/{symbol or '*'}/{gate}/{cause}"
        self.halts.append(Halt(event_id, bot.name, symbol, kind, gate, ts, until_ts))

    # -- the wall clock ------------------------------------------------------------------

    def sweep(self, now_ms: int) -> None:
        """Everything the wall clock ends by ``now_ms``: rollover, cooldowns, eviction, expiry."""
        for bot in self.bots.values():
            self._sweep_bot(bot, now_ms)

    def _sweep_bot(self, bot: BotState, now_ms: int) -> None:
        self._roll_day(bot, now_ms)
        for name in bot.symbols:
            self._tick_symbol(bot, name, now_ms)
        if not bot.latched and bot.daily_loss_breached():  # e.g. a reset of a winner
            bot.latched = True
            self._emit(bot, None, "halted", "portfolio_daily_loss", now_ms, (bot.day + 1) * DAY_MS)
        for intent_id, r in list(bot.reservations.items()):
            if r.expires_ts <= now_ms:
                del bot.reservations[intent_id]

    def _roll_day(self, bot: BotState, now_ms: int) -> None:
        """The bot's UTC day to the wall clock's: a new day releases the latch."""
        day = utc_day(now_ms)
        if day > bot.day:
            bot.day = day
            bot.notional_today = 0.0  # the daily notional budget restarts
            if bot.latched:
                bot.latched = False
                self._emit(bot, None, "resumed", "portfolio_daily_loss", now_ms, None)

    def _tick_symbol(self, bot: BotState, name: str, now_ms: int) -> None:
        """One symbol to the wall clock: rollover, cooldown end, eviction."""
        sym = bot.symbols[name]
        before = sym.blocks()
        day = utc_day(now_ms)
        if day > sym.session.day:
            sym.session.clear()
            sym.session.day = day
        sym.tick(now_ms)
        self._symbol_transitions(bot, name, before, now_ms, cause=None)

    # -- comparable state ------------------------------------------------------------------

    def symbol_states(self) -> dict[str, dict[str, Any]]:
        """``<bot>/risk/<symbol>`` → the state that gates orders (see :func:`symbol_view`)."""
        out: dict[str, dict[str, Any]] = {}
        for bot in self.bots.values():
            for name, sym in bot.symbols.items():
                s, p = sym.session, sym.position
                out[f"{bot.name}/risk/{name}"] = {
                    "net_pnl": s.net,
                    "realised": s.realised,
                    "fees": s.fees,
                    "trades": s.trades,
                    "wins": s.wins,
                    "losses": s.losses,
                    "breakevens": s.breakevens,
                    "halted": s.halted,
                    "day": s.day,
                    "recent_losses": list(sym.losses),
                    "tripped_at": sym.tripped_at,
                    "position_qty": p.qty,
                    "avg_price": p.avg_price,
                    "entry_fees": p.entry_fees,
                    "manual_halt": sym.manual_halt,
                }
        return out

    def bot_states(self) -> dict[str, dict[str, Any]]:
        """``<bot>/portfolio`` → latch, day, bot-level halt and outstanding reservations."""
        return {
            bot.name: {
                "latched": bot.latched,
                "day": bot.day,
                "manual_halt": bot.manual_halt,
                "reservations": {
                    i: (r.symbol, r.qty, r.notional) for i, r in bot.reservations.items()
                },
            }
            for bot in self.bots.values()
        }


class Model(_State):
    """Every bot's state, fed one event at a time; collects halts and decisions."""

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self.limits = limits
        self.decisions: list[Decision] = []

    # -- input ---------------------------------------------------------------------

    def apply(self, event: Any, now_ms: int, record_ts: int | None = None) -> None:
        """Apply one event decided at wall time ``now_ms``; raises Rejected, changing nothing."""
        bot = self._validate(event, now_ms if record_ts is None else record_ts, now_ms)
        kind = type(event).__name__
        if kind == "TradeOutcome":
            self._outcome(bot, event, now_ms)
        elif kind == "Fill":
            self._fill(bot, event, now_ms)
        elif kind == "OrderIntent":
            self._intent(bot, event, now_ms, now_ms if record_ts is None else record_ts)
        else:
            self._control(bot, event, now_ms)

    def run(self, events: Any, now_ms: int) -> list[int]:
        """Apply every event at ``now_ms``; returns the indices of rejected ones."""
        rejected = []
        for i, event in enumerate(events):
            try:
                self.apply(event, now_ms)
            except Rejected:
                rejected.append(i)
        return rejected

    def _validate(self, e: Any, record_ts: int, now_ms: int) -> BotState:
        if not _valid_name(e.bot):
            raise Rejected("invalid_name", f"bot {e.bot!r}")
        bot = self.bots.get(e.bot)
        limits = bot.limits if bot is not None else self.limits.bots.get(e.bot)
        if limits is None:
            limits = self.limits.unknown_bots
        if limits is None:
            raise Rejected("unknown_bot", e.bot)
        if e.symbol is not None:
            if limits.symbols is not None and e.symbol not in limits.symbols:
                raise Rejected("unknown_symbol", e.symbol)
            if not _valid_name(e.symbol) or e.symbol == "*":
                raise Rejected("invalid_name", f"symbol {e.symbol!r}")
        if e.ts > record_ts + self.limits.max_future_skew_ms:
            raise Rejected("future_event", f"ts {e.ts} ahead of record time {record_ts}")
        kind = type(e).__name__
        if kind == "TradeOutcome" and limits.pnl_source == "fills":
            raise Rejected("pnl_source", "outcome for a bot that books PnL from fills")
        if kind == "ControlCommand":
            self._check_command(bot, e, record_ts)
        if bot is None:
            bot = self.bots[e.bot] = BotState(e.bot, limits, utc_day(now_ms))
        return bot

    def _check_command(self, bot: BotState | None, c: Any, record_ts: int) -> None:
        secret = self.limits.control_secret
        if secret is not None:
            expected = hmac.new(
                secret, canonical_command(c, with_sig=False), hashlib.sha256
            ).hexdigest()
            if not c.sig or c.sig != expected:
                raise Rejected("bad_signature", "missing or wrong signature")
            if abs(record_ts - c.ts) > self.limits.replay_window_ms:
                raise Rejected("bad_signature", "outside the replay window")
        if bot is not None and c.symbol in bot.commands:
            last_ts, digests = bot.commands[c.symbol]
            if c.ts < last_ts:
                raise Rejected("stale_command", f"older than {last_ts}")
            if c.ts == last_ts and command_digest(c) in digests:
                raise Rejected("replayed_command", "already applied")

    def _symbol(self, bot: BotState, name: str) -> SymbolState:
        sym = bot.symbols.get(name)
        if sym is None:
            # On the bot's day: only the clock (a sweep) moves days, so every
            # holder of a bot is on the same day.
            sym = bot.symbols[name] = SymbolState(bot.limits.for_symbol(name), Session(day=bot.day))
        return sym

    def _first_time(self, bot: BotState, topic: str, event_id: str) -> bool:
        """Dedupe: False for an id in the topic's window; else remember it (bounded)."""
        window = bot.seen.setdefault(topic, OrderedDict())
        if event_id in window:
            return False
        window[event_id] = None
        if len(window) > self.limits.dedupe_ids_per_bot:
            window.popitem(last=False)
        return True

    # -- data events -----------------------------------------------------------------

    def _outcome(self, bot: BotState, o: Any, now_ms: int) -> None:
        if not self._first_time(bot, "outcomes", o.outcome_id):
            return
        sym = self._symbol(bot, o.symbol)
        before = sym.blocks()
        net = o.gross_pnl - o.fee
        self._book(sym, o.gross_pnl, o.fee, o.ts)
        self._count(sym, net, o.ts)
        self._data_transitions(bot, o.symbol, before, o.ts)

    def _fill(self, bot: BotState, f: Any, now_ms: int) -> None:
        if not self._first_time(bot, "fills", f.fill_id):
            return
        release = bot.reservations.get(f.intent_id) if f.intent_id is not None else None
        if release is not None and release.symbol == f.symbol:
            left = release.qty - f.qty
            if left <= FLAT_TOLERANCE * release.qty:
                del bot.reservations[f.intent_id]
            else:
                release.notional *= left / release.qty
                release.qty = left
        sym = self._symbol(bot, f.symbol)
        before = sym.blocks()
        signed = f.qty if f.side == "buy" else -f.qty
        gross, fees, trip_net = sym.position.fill(signed, f.price, f.fee, f.contract_value)
        if bot.limits.pnl_source == "fills":
            if gross or fees:
                self._book(sym, gross, fees, f.ts)
            if trip_net is not None:
                self._count(sym, trip_net, f.ts)
        self._data_transitions(bot, f.symbol, before, f.ts)

    @staticmethod
    def _book(sym: SymbolState, gross: float, fee: float, ts: int) -> None:
        """Realised PnL into the session, unless the event is of an earlier day."""
        s = sym.session
        if utc_day(ts) < s.day:
            return
        s.realised += gross
        s.fees += fee
        if s.net <= sym.limits.session_loss_limit:
            s.halted = True

    @staticmethod
    def _count(sym: SymbolState, net: float, ts: int) -> None:
        """One closed trade classified on net; a loss also enters the breaker window."""
        s = sym.session
        if utc_day(ts) >= s.day:
            s.trades += 1
            if net > 0:
                s.wins += 1
            elif net < 0:
                s.losses += 1
            else:
                s.breakevens += 1
        if net < 0:
            sym.record_loss(ts)
            sym.record_cooldown(ts)

    def _data_transitions(
        self, bot: BotState, symbol: str, before: tuple[bool, ...], ts: int
    ) -> None:
        self._symbol_transitions(bot, symbol, before, ts, cause=None)
        if utc_day(ts) >= bot.day and not bot.latched and bot.daily_loss_breached():
            bot.latched = True
            self._emit(bot, None, "halted", "portfolio_daily_loss", ts, (bot.day + 1) * DAY_MS)

    # -- intents ---------------------------------------------------------------------

    def apply_mark(self, mark: Any) -> None:
        """A mark price: held unless one stamped later is (at an equal ``ts`` the later wins).

        The model holds the table for the price collar only: positions valued at
        the marks (equity limits, drawdown, exposure at the mark, ``stale_mark`` of
        an open position) are modelled by tests/adversarial/test_controls_machine.py,
        so a comparison that feeds marks keeps them off the marked symbols' bots.
        """
        held = self.marks.get(mark.symbol)
        if held is None or mark.ts >= held[1]:
            self.marks[mark.symbol] = (mark.price, mark.ts)

    def _intent(self, bot: BotState, i: Any, now_ms: int, record_ts: int) -> None:
        """Staleness, then the id (same content: same answer), then the gates."""
        ttl = self.limits.reservation_ttl_ms
        if now_ms - i.ts > ttl:
            self.decisions.append(self._decision(i, now_ms, "expired", None))
            return
        content = (i.bot, i.symbol, i.action, i.side, i.qty, i.price, i.contract_value, i.ts)
        seen = bot.intents.get(i.intent_id)
        if seen is not None and seen[0] == content:
            sym = bot.symbols.get(i.symbol)
            killed = bot.killed is not None or (sym is not None and sym.killed is not None)
            if seen[1].allowed and killed:  # the kill switch answers repeats too
                self.decisions.append(self._decision(i, now_ms, "kill_switch", None))
            else:
                self.decisions.append(seen[1])
            return
        if seen is not None or i.intent_id in bot.reservations:
            self.decisions.append(self._decision(i, now_ms, "duplicate_intent_id", None))
            return
        if i.symbol in bot.symbols:  # the bot's day and the symbol's gates as of now
            self._roll_day(bot, now_ms)
            self._tick_symbol(bot, i.symbol, now_ms)
        gate = evaluate(bot, i, self.limits.max_reservations_per_bot, self.marks, now_ms, record_ts)
        expires: int | None = None
        if gate is None:
            expires = now_ms + ttl
            notional = i.qty * i.price * i.contract_value if i.action == "open" else 0.0
            bot.reservations[i.intent_id] = Reservation(
                i.symbol, i.action, i.qty, notional, expires
            )
            self._count_order(bot, i, record_ts, notional)
        decision = self._decision(i, now_ms, gate, expires)
        bot.intents[i.intent_id] = (content, decision)
        if len(bot.intents) > self.limits.intent_ids_per_bot:
            bot.intents.popitem(last=False)
        self.decisions.append(decision)

    @staticmethod
    def _count_order(bot: BotState, i: Any, record_ts: int, notional: float) -> None:
        """An allowed intent takes its place in the order rate and the duplicate window;
        an allowed open spends its notional from the day's budget."""
        if bot.limits.max_orders_per_sec:
            bot.order_times.append(record_ts)
        if bot.limits.for_symbol(i.symbol).duplicate_window_ms:
            order = (i.symbol, i.side, i.qty, i.price)
            bot.recent_orders.pop(order, None)
            bot.recent_orders[order] = record_ts
            if len(bot.recent_orders) > MAX_RECENT_ORDERS:
                bot.recent_orders.popitem(last=False)
        bot.notional_today += notional

    @staticmethod
    def _decision(i: Any, now_ms: int, gate: str | None, expires: int | None) -> Decision:
        return Decision(
            intent_id=i.intent_id,
            bot=i.bot,
            symbol=i.symbol,
            allowed=gate is None,
            gate=gate,
            ts=now_ms,
            reservation_expires_ts=expires,
            action=i.action,
            side=i.side,
            qty=i.qty,
            price=i.price,
        )

    # -- operator commands -------------------------------------------------------------

    def _control(self, bot: BotState, c: Any, now_ms: int) -> None:
        digest = command_digest(c)
        last_ts, digests = bot.commands.get(c.symbol, (c.ts, set()))
        if c.ts > last_ts:
            digests = set()
        bot.commands[c.symbol] = (c.ts, digests | {digest})
        cause = f"cmd-{digest[:16]}"
        gate = _COMMAND_GATE[c.command]
        kind = "halted" if c.command == "halt" else "resumed"
        if c.command in ("kill", "resume"):
            target: BotState | SymbolState = (
                self._symbol(bot, c.symbol) if c.symbol is not None else bot
            )
            was_killed = target.killed is not None
            target.killed = (c.reason, c.issued_by, c.ts) if c.command == "kill" else None
            if c.command == "kill":  # always answered, like a halt
                self._emit(bot, c.symbol, "killed", "kill_switch", c.ts, None, cause)
                return
            if was_killed:  # a resume lifts the kill switch first (gate order)
                self._emit(bot, c.symbol, "resumed", "kill_switch", c.ts, None, cause)
        if c.symbol is not None:
            sym = self._symbol(bot, c.symbol)
            before = sym.blocks()
            self._command_on(sym, c)
            changed = sym.blocks() != before
        elif c.command in ("halt", "resume"):
            changed = bot.manual_halt is not None or c.command == "halt"
            bot.manual_halt = (c.reason, c.issued_by, c.ts) if c.command == "halt" else None
        else:
            index = 1 if c.command == "reset_session" else 2
            changed = any(s.blocks()[index] for s in bot.symbols.values())
            for sym in bot.symbols.values():
                self._command_on(sym, c)
        # A halt always answers (the operator waits for it); the rest only on a change.
        if changed or c.command == "halt":
            self._emit(bot, c.symbol, kind, gate, c.ts, None, cause)
        if not bot.latched and bot.daily_loss_breached():  # a winner's session was reset
            bot.latched = True
            until = (bot.day + 1) * DAY_MS
            self._emit(bot, None, "halted", "portfolio_daily_loss", c.ts, until, cause)

    @staticmethod
    def _command_on(sym: SymbolState, c: Any) -> None:
        if c.command == "halt":
            sym.manual_halt = (c.reason, c.issued_by, c.ts)
        elif c.command == "resume":
            sym.manual_halt = None
        elif c.command == "reset_breaker":
            sym.losses, sym.tripped_at = [], None
        else:
            sym.session.clear()
