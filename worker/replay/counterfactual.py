"""What the limits would have prevented: the counterfactual books of a replay.

The rule is :data:`RULE`, word for word what the report and docs/replay.md
say. This module books PnL itself from the events (SPEC §4.3), independent of
the engine's own bookkeeping (which keeps only today's session).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.messages import Fill, Gate, HaltEvent, TradeOutcome

DAY_MS = 86_400_000
FLAT_TOLERANCE = 1e-9
"""SPEC §4.3 flat tolerance, relative to the larger of position and fill."""
RULE: tuple[str, ...] = (
    "A symbol blocks entries while one of its gates is halted (manual halt, session halt, "
    "circuit breaker) or one of its bot's gates is (manual halt, daily-loss latch), as the "
    "replay's own halt and resume events say.",
    "A trade is prevented when it started while its symbol blocked entries: for a bot booking "
    "PnL from outcomes, an outcome applied while blocked; for a bot booking from fills, a round "
    "trip (flat to flat, or up to a flip) whose opening fill was applied while blocked, with "
    "every later fill of that round trip, even after the block lifted. Fills adding to a round "
    "trip opened before the block are kept.",
    "Blocked is judged just before the event is applied: the loss that trips a gate is not "
    "prevented by it; the trades after it are.",
    "Net PnL with the limits = actual net PnL minus the net PnL of the prevented trades. Losses "
    "avoided sums the losses of prevented trades (a positive number), wins forgone their wins; "
    "effect = with - actual = avoided - forgone.",
    "First order: the halts come from the history as it happened (every recorded trade applied), "
    "and nothing is invented in place of a prevented trade. Intent-only caps (concurrent "
    "positions, gross exposure) mark no trades; they appear as decision counts.",
    "Time halted is measured on the replay clock, from the record or sweep that started a block "
    "to the one that ended it (or the end of the replay), summed over holders (symbol-hours).",
    "Worst intraday drawdown: per UTC day of the replay clock, equity starts at 0 and the largest "
    "fall from its running peak that day is the day's drawdown; the worst day's is reported "
    "(a positive amount). Open positions at the end count only what they realised (no marks).",
)
"""The counterfactual rule, stated plainly; printed in the report and in docs/replay.md."""
SYMBOL_GATES: frozenset[Gate] = frozenset({"session_halt", "circuit_breaker"})
"""Gates a bot-level (symbol ``null``) resume clears on every symbol (a bot-target reset)."""


class Drawdown:
    """Worst intraday fall from the day's running peak; the day restarts equity at 0."""

    __slots__ = ("day", "level", "peak", "worst")

    def __init__(self) -> None:
        self.day = -1
        self.level = 0.0
        self.peak = 0.0
        self.worst = 0.0

    def add(self, t: int, delta: float) -> None:
        day = t // DAY_MS
        if day != self.day:
            self.day, self.level, self.peak = day, 0.0, 0.0
        level = self.level = self.level + delta
        if level > self.peak:
            self.peak = level
        elif self.peak - level > self.worst:
            self.worst = self.peak - level


class Book:
    """One bot's (or everyone's) actual and with-limits PnL, and what the difference is made of."""

    __slots__ = (
        "actual",
        "avoided",
        "blocked_trades",
        "dd_actual",
        "dd_kept",
        "forgone",
        "kept",
        "series",
        "trades",
    )

    def __init__(self, keep_series: bool) -> None:
        self.actual = 0.0
        self.kept = 0.0
        self.avoided = 0.0
        self.forgone = 0.0
        self.trades = 0
        self.blocked_trades = 0
        self.dd_actual = Drawdown()
        self.dd_kept = Drawdown()
        self.series: tuple[list[int], list[float], list[float]] | None = (
            ([], [], []) if keep_series else None
        )

    def realise(self, t: int, net: float, prevented: bool) -> None:
        self.actual += net
        self.dd_actual.add(t, net)
        if not prevented:  # (a prevented amount moves nothing: the next booking starts the day)
            self.kept += net
            self.dd_kept.add(t, net)
        if self.series is not None:
            ts, actual, kept = self.series
            ts.append(t)
            actual.append(self.actual)
            kept.append(self.kept)

    def trade(self, t: int, net: float, prevented: bool) -> None:
        """A whole trade booked at once (an outcome)."""
        self.realise(t, net, prevented)
        self.close_trade(net, prevented)
        if prevented:
            self.blocked_trades += 1

    def close_trade(self, net: float, prevented: bool) -> None:
        """A finished trade: counted, and when prevented, split into avoided or forgone."""
        self.trades += 1
        if prevented:
            if net < 0:
                self.avoided -= net
            else:
                self.forgone += net


class _Trip:
    """A fills-booked round trip: the position it holds and what it realised so far."""

    __slots__ = ("avg", "cv", "entry_fees", "net", "prevented", "qty")

    def __init__(self, qty: float, price: float, fee: float, cv: float, prevented: bool) -> None:
        self.qty = qty
        self.avg = price
        self.entry_fees = fee
        self.cv = cv
        self.net = 0.0
        self.prevented = prevented


@dataclass
class Segment:
    """One gate blocking one holder (``symbol`` None: the bot) on the replay clock."""

    bot: str
    symbol: str | None
    gate: Gate
    start_ms: int
    end_ms: int | None = None
    open: bool = False
    """Still blocking when the replay ended (``end_ms`` is then the replay's end)."""


@dataclass
class Blocks:
    """Which gates block now, from the halt/resume events; and every block as a segment."""

    active: dict[tuple[str, str | None], dict[Gate, Segment]] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)

    def blocked(self, bot: str, symbol: str) -> bool:
        active = self.active
        return bool(active.get((bot, symbol))) or bool(active.get((bot, None)))

    def event(self, h: HaltEvent, t: int) -> None:
        key = (h.bot, h.symbol)
        if h.kind == "halted":
            blocking = self.active.setdefault(key, {})
            if h.gate not in blocking:  # a repeated manual halt keeps the block it extends
                started = blocking[h.gate] = Segment(h.bot, h.symbol, h.gate, t)
                self.segments.append(started)
            return
        holders = [key]
        if h.symbol is None and h.gate in SYMBOL_GATES:
            holders = [k for k in self.active if k[0] == h.bot and k[1] is not None]
        for holder in holders:
            gates = self.active.get(holder)
            seg = gates.pop(h.gate) if gates and h.gate in gates else None
            if seg is not None:
                seg.end_ms = t


class Ledger:
    """Per-bot books and the overall one, fed with every applied outcome, and with the fills
    of bots booking PnL from fills (the caller knows which: the config says)."""

    def __init__(self) -> None:
        self.blocks = Blocks()
        self.books: dict[str, Book] = {}
        self.overall = Book(keep_series=False)
        self._trips: dict[tuple[str, str], _Trip] = {}

    def book(self, bot: str) -> Book:
        book = self.books.get(bot)
        if book is None:
            book = self.books[bot] = Book(keep_series=True)
        return book

    def outcome(self, o: TradeOutcome, t: int) -> None:
        bot = o.bot
        active = self.blocks.active
        prevented = bool(active) and (
            bool(active.get((bot, o.symbol))) or bool(active.get((bot, None)))
        )
        net = o.gross_pnl - o.fee
        book = self.books.get(bot) or self.book(bot)
        book.trade(t, net, prevented)
        self.overall.trade(t, net, prevented)

    def fill(self, f: Fill, t: int) -> None:
        """SPEC §4.3 average-cost accounting, round trip by round trip."""
        key = (f.bot, f.symbol)
        signed = f.qty if f.side == "buy" else -f.qty
        trip = self._trips.get(key)
        if trip is None or trip.qty == 0.0:
            self._open(key, signed, f.price, f.fee, f.contract_value)
            return
        held = abs(trip.qty)
        if (trip.qty > 0) == (signed > 0):
            trip.avg = (held * trip.avg + f.qty * f.price) / (held + f.qty)
            trip.qty += signed
            trip.entry_fees += f.fee
            return
        closed = min(f.qty, held)
        direction = 1.0 if trip.qty > 0 else -1.0
        gross = (f.price - trip.avg) * closed * trip.cv * direction
        entry_share = trip.entry_fees * closed / held
        trip.entry_fees -= entry_share
        net = gross - f.fee * closed / f.qty - entry_share
        trip.net += net
        for book in (self.book(f.bot), self.overall):
            book.realise(t, net, trip.prevented)
        remaining = trip.qty + signed
        if abs(remaining) <= FLAT_TOLERANCE * max(held, f.qty):
            self._finish(f.bot, trip)
            trip.qty = 0.0
        elif (remaining > 0) == (trip.qty > 0):
            trip.qty = remaining
        else:  # a flip: the rest of the fill opens the next round trip
            self._finish(f.bot, trip)
            rest_fee = f.fee * (1.0 - closed / f.qty)
            self._open(key, remaining, f.price, rest_fee, f.contract_value)

    def _open(self, key: tuple[str, str], qty: float, price: float, fee: float, cv: float) -> None:
        prevented = self.blocks.blocked(*key)
        self._trips[key] = _Trip(qty, price, fee, cv, prevented)
        if prevented:
            self.book(key[0]).blocked_trades += 1
            self.overall.blocked_trades += 1

    def _finish(self, bot: str, trip: _Trip) -> None:
        for book in (self.book(bot), self.overall):
            book.close_trade(trip.net, trip.prevented)

    def finish(self, end_ms: int) -> None:
        """Close the books at the end: open segments end now; open round trips count as trades
        (their realised part: no marks, so nothing unrealised is valued)."""
        for seg in self.blocks.segments:
            if seg.end_ms is None:
                seg.end_ms = end_ms
                seg.open = True
        for (bot, _), trip in self._trips.items():
            if trip.qty != 0.0 and trip.net != 0.0:
                self._finish(bot, trip)
        self._trips.clear()
