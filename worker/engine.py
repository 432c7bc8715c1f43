"""The risk engine: applies events to per-bot state and says what to publish.

Pure and synchronous ("bring your own I/O"): every method takes the time it
needs as an argument and returns :class:`Effects` — halt/resume events,
decisions, and which keys are dirty — instead of publishing anything. The
Kafka shell turns effects into records; tests and benchmarks call it directly.

Replay safety lives here too. Every state holder (a symbol, a bot's portfolio)
remembers per input partition the last offset applied to it (``Origin``), and
each bot remembers its recent fill and outcome ids (:mod:`worker.risk.dedupe`),
so an event replayed after a crash, or re-sent by a producer under a new offset,
changes nothing. Operator commands are guarded per target: one older than the
last applied, or applied already, is refused.

Time-driven state (UTC rollover, the daily-loss latch's release, breaker
cooldowns and window eviction) moves only with the wall clock given to
:meth:`RiskEngine.sweep` and :meth:`RiskEngine.restore`; an event's own ``ts``
places it (the loss window, the day it counts toward) but never advances time.
Whether an event is accepted depends only on the record and state, never on
when it is processed (``record_ts``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, NamedTuple

from worker import signing
from worker.config import BotSettings, Config, bot_settings
from worker.messages import (
    AccountGateState,
    Block,
    ControlCommand,
    Event,
    Fill,
    Gate,
    GateDecision,
    GateState,
    HaltEvent,
    HaltKind,
    OrderIntent,
    TradeOutcome,
)
from worker.core import (
    CircuitBreaker,
    PortfolioRisk,
    PortfolioRiskSnapshot,
    Position,
    SessionPnl,
    utc_day,
)
from worker.core.dedupe import IdWindow
from worker.core.idlog import ChunkedLog, IdLogRef
from worker.core.intents import Seen, content_digest, id_digest
from worker.core.portfolio import QTY_TOLERANCE
from worker.core.session import MS_PER_DAY
from worker.core.snapshot import (
    ManualHalt,
    PortfolioSnapshot,
    SnapshotError,
    SymbolSnapshot,
    chunk_key,
    decode_chunk,
    decode_snapshot,
    parse_chunk_key,
)

_NEVER = 1 << 62
IdChunkOut = tuple[str, int, bytes]
"""A chunk record to write: window name, chunk number, entries (:mod:`worker.risk.idlog`)."""
_NET_RESYNC = 256
"""Deltas folded into a bot's running account net before it is summed afresh."""
_SYMBOL_GATES: tuple[Gate, Gate, Gate] = ("manual_halt", "session_halt", "circuit_breaker")
_BOT_GATES: tuple[Gate, Gate] = ("manual_halt", "portfolio_daily_loss")
_MAX_SAME_TS_COMMANDS = 64
"""Digests remembered of commands applied at a target's latest command ``ts``."""


class Rejected(Exception):
    """Bad input: the event must be dead-lettered and must change nothing.

    ``reason`` is a short stable label (metrics, dead-letter headers);
    the message says what exactly was wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Origin(NamedTuple):
    """Where an event came from: ``topic/partition`` and its offset."""

    source: str
    offset: int


class Effects:
    """What applying events produced; one instance can collect a whole batch."""

    __slots__ = ("decisions", "dirty_bots", "dirty_symbols", "halts", "skipped")

    def __init__(self) -> None:
        self.halts: list[HaltEvent] = []
        self.decisions: list[GateDecision] = []
        self.dirty_symbols: set[tuple[str, str]] = set()
        self.dirty_bots: set[str] = set()
        self.skipped = 0
        """Events dropped as replays (offset at or below a watermark) or duplicate ids."""


class _Holder:
    """Shared replay guard and event numbering of a symbol and of a bot."""

    __slots__ = (
        "applied",
        "command_digests",
        "gate_seq",
        "halt_seq",
        "halt_seqs",
        "last_command_ts",
        "manual_halt",
        "seq_base",
    )

    def __init__(self) -> None:
        self.applied: dict[str, int] = {}
        self.last_command_ts: int | None = None
        """``ts`` of the last operator command applied to this target."""
        self.command_digests: dict[str, None] = {}
        """Digests of the commands applied at ``last_command_ts``. Any earlier command is
        refused as stale by its ``ts``, so only these can be replayed undetected."""
        self.manual_halt: ManualHalt | None = None
        self.halt_seq = 0
        """Halt/resume events emitted in all (what snapshots of older versions numbered by)."""
        self.halt_seqs: dict[str, int] = {}
        """Per gate, the sequence number in the ``event_id`` of its last halt/resume event."""
        self.seq_base = 0
        """Where every gate's numbering starts: after the holder-wide ``halt_seq`` of a
        snapshot written before numbering was per gate, so no id is ever reused."""
        self.gate_seq = 0

    def fresh(self, origin: Origin | None) -> bool:
        """False for an event at or below this holder's watermark; else record it."""
        if origin is None:
            return True
        last = self.applied.get(origin.source)
        if last is not None and origin.offset <= last:
            return False
        self.applied[origin.source] = origin.offset
        return True

    def replayed(self, origin: Origin | None) -> bool:
        """True for an event at or below this holder's watermark (changes nothing)."""
        if origin is None:
            return False
        last = self.applied.get(origin.source)
        return last is not None and origin.offset <= last

    def check_command(self, c: ControlCommand, digest: str) -> None:
        """Refuse a command applied already, or older than the last one applied here (C1).

        A captured signed ``resume`` re-appended after a later ``halt`` must not
        undo it, whatever its signature window says.
        """
        if digest in self.command_digests:
            raise Rejected("replayed_command", f"command {digest} was applied already")
        last = self.last_command_ts
        if last is not None and c.ts < last:
            raise Rejected(
                "stale_command", f"command ts {c.ts} is older than the last applied ({last})"
            )

    def record_command(self, c: ControlCommand, digest: str) -> None:
        if self.last_command_ts is None or c.ts > self.last_command_ts:
            self.last_command_ts = c.ts
            self.command_digests.clear()
        if len(self.command_digests) < _MAX_SAME_TS_COMMANDS:
            self.command_digests[digest] = None

    def next_halt_seq(self, gate: Gate) -> int:
        """The next ``event_id`` number of a data- or clock-driven transition, per gate.

        Only fills/outcomes and the clock advance it (one ordered source per gate);
        a command's event is named after the command (``cmd-<digest>``). So a
        replay after a crash numbers events as the first run did, however it
        interleaves control and data topics. A shared count did not: a replay
        could give ``.../circuit_breaker/1`` to a ``resumed`` that the first run
        had published as a ``halted``, and a consumer dropping duplicate ids
        (SPEC §3) would keep the wrong one.
        """
        self.halt_seq += 1
        seq = self.halt_seqs.get(gate, self.seq_base) + 1
        self.halt_seqs[gate] = seq
        return seq

    def seqs_snapshot(self) -> dict[str, Any]:
        """Snapshot fields every holder has: event numbering and the command guard."""
        return {
            "halt_seq": self.halt_seq,
            "halt_seqs": dict(self.halt_seqs),
            "halt_seq_base": self.seq_base,
            "gate_seq": self.gate_seq,
            "last_command_ts": self.last_command_ts,
            "command_digests": list(self.command_digests),
        }

    def restore_seqs(self, snap: SymbolSnapshot | PortfolioSnapshot) -> None:
        self.halt_seq = snap.halt_seq
        self.gate_seq = snap.gate_seq
        self.last_command_ts = snap.last_command_ts
        self.command_digests = dict.fromkeys(snap.command_digests)
        if snap.halt_seqs is None:  # written before numbering was per gate
            self.halt_seqs = {}
            self.seq_base = snap.halt_seq
        else:
            self.halt_seqs = dict(snap.halt_seqs)
            self.seq_base = snap.halt_seq_base

    def next_gate_seq(self) -> int:
        self.gate_seq += 1
        return self.gate_seq


class SymbolRisk(_Holder):
    """Session PnL, breaker and position of one (bot, symbol)."""

    __slots__ = ("born", "breaker", "key", "position", "session", "symbol")

    def __init__(self, symbol: str, settings: BotSettings, day: int) -> None:
        super().__init__()
        self.born: dict[str, int] = {}
        """The bot's watermarks when this symbol was created live (see ``BotRisk._created``)."""
        session_cfg, breaker_cfg = settings.risk_for(symbol)
        self.symbol = symbol
        self.key = (settings.bot, symbol)
        """``(bot, symbol)``, as it goes into ``Effects.dirty_symbols``."""
        self.session = SessionPnl(session_cfg)
        self.session.last_reset_day = day
        self.breaker = CircuitBreaker(breaker_cfg)
        self.position = Position()

    def signature(self) -> tuple[bool, bool, bool]:
        """Which symbol-level gates block, in ``_SYMBOL_GATES`` order."""
        return (
            self.manual_halt is not None,
            self.session.halted,
            self.breaker.tripped_at is not None,
        )

    def blocks(self) -> list[Block]:
        blocks: list[Block] = []
        if self.manual_halt is not None:
            blocks.append(_manual_block(self.manual_halt))
        if self.session.halted:
            s = self.session
            blocks.append(
                Block(
                    "session_halt",
                    f"session net PnL {s.net_pnl:.2f} reached loss limit {s.config.loss_limit:g}",
                    (s.last_reset_day + 1) * 86_400_000,
                )
            )
        until = self.breaker.until_secs
        if until is not None:
            cfg = self.breaker.config
            blocks.append(
                Block(
                    "circuit_breaker",
                    f"{cfg.loss_limit} losses within {cfg.window_secs}s; "
                    f"cooling down for {cfg.cooldown_secs}s",
                    until * 1000,
                )
            )
        return blocks

    def snapshot(self) -> SymbolSnapshot:
        return SymbolSnapshot(
            session_pnl=self.session.snapshot(),
            circuit_breaker=self.breaker.snapshot(),
            position=self.position.snapshot(),
            manual_halt=self.manual_halt,
            applied_offsets=dict(self.applied),
            born=dict(self.born),
            **self.seqs_snapshot(),
        )

    def restore(self, snap: SymbolSnapshot) -> None:
        self.session.restore(snap.session_pnl)
        self.breaker.restore(snap.circuit_breaker)
        if snap.position is not None:
            self.position.restore(snap.position)
        self.manual_halt = snap.manual_halt
        self.applied = dict(snap.applied_offsets)
        self.born = dict(snap.born)
        self.restore_seqs(snap)


def _manual_block(halt: ManualHalt) -> Block:
    return Block("manual_halt", f"halted by {halt.issued_by}: {halt.reason}", None)


_RESUME_REASONS: dict[Gate, str] = {
    "manual_halt": "manual halt lifted",
    "session_halt": "session rolled over at 00:00 UTC",
    "circuit_breaker": "breaker cooldown elapsed",
    "portfolio_daily_loss": "portfolio latch cleared at 00:00 UTC",
}


class BotRisk(_Holder):
    """Everything one bot owns: its symbols and its portfolio."""

    __slots__ = (
        "_deadline",
        "_net_day",
        "_net_sum",
        "_net_updates",
        "_open",
        "bot",
        "fill_ids",
        "id_logs",
        "max_reservations",
        "outcome_ids",
        "portfolio",
        "reservation_ttl_ms",
        "settings",
        "symbols",
    )

    def __init__(
        self,
        settings: BotSettings,
        *,
        reservation_ttl_ms: int,
        dedupe_keep: int,
        max_reservations: int = 1_000,
        day: int,
    ) -> None:
        """``day``: the UTC day of the wall clock when the bot is created (its current day)."""
        super().__init__()
        self.bot = settings.bot
        self.settings = settings
        self.symbols: dict[str, SymbolRisk] = {}
        self.portfolio = PortfolioRisk(settings.portfolio)
        self.portfolio.last_reset_day = day
        self.reservation_ttl_ms = reservation_ttl_ms
        self.max_reservations = max_reservations
        # One id window per input topic: each is filled in that topic's offset
        # order, which replays reproduce exactly whatever the interleaving.
        self.outcome_ids = IdWindow(dedupe_keep)
        self.fill_ids = IdWindow(dedupe_keep)
        self.id_logs = {
            "outcomes": ChunkedLog(self.outcome_ids),
            "fills": ChunkedLog(self.fill_ids),
            "intents": ChunkedLog(self.portfolio.intents),
        }
        """How the id windows are persisted: chunk records beside the portfolio record."""
        self._deadline = (day + 1) * MS_PER_DAY
        """Earliest wall time at which a sweep can change anything (rollover, expiry)."""
        self._net_day = -1
        """UTC day of the running account net in ``_net_sum``; -1 when it must be recomputed."""
        self._net_sum = 0.0
        self._net_updates = 0
        self._open: dict[str, SymbolRisk] = {}
        """Symbols holding a position: all that exposure and concurrency checks read, so
        a decision costs the same whatever number of flat symbols the bot has."""

    # -- queries ---------------------------------------------------------------

    @property
    def day(self) -> int:
        """The bot's current UTC day: the wall clock's as of the last sweep or restore."""
        return self.portfolio.last_reset_day

    def symbol(self, name: str, ts_ms: int | None = None) -> SymbolRisk:
        """The symbol's state, created in the bot's current day.

        ``ts_ms`` (the creating event's time) is not used: an event stamped past
        midnight must not start a session in a day the wall clock has not reached.
        """
        sym = self.symbols.get(name)
        if sym is None:
            sym = self.symbols[name] = SymbolRisk(name, self.settings, self.day)
        return sym

    def account_net(self, day: int) -> float:
        """Sum of today's symbol net PnLs (sessions of another day do not count)."""
        return sum(
            s.session.net_pnl for s in self.symbols.values() if s.session.last_reset_day == day
        )

    def _running_account_net(self, day: int) -> float:
        """``account_net(day)`` kept up to date by deltas: O(1) per event, not O(symbols).

        Recomputed from scratch when the day changes, after ``_NET_RESYNC`` deltas
        (bounding float drift), and whenever a session changed outside the event
        paths (rollover, operator reset, restore), which reset ``_net_day``.
        """
        if self._net_day != day or self._net_updates >= _NET_RESYNC:
            self._net_sum = self.account_net(day)
            self._net_day = day
            self._net_updates = 0
        return self._net_sum

    def open_symbols(self) -> set[str]:
        return set(self._open)

    def gross_exposure(self) -> float:
        """Exactly rounded (``fsum``): the same whatever order positions were opened or restored."""
        return math.fsum(s.position.notional for s in self._open.values())

    def _track_position(self, sym: SymbolRisk) -> None:
        """Keep ``_open`` in step after ``sym``'s position changed (fill, restore)."""
        if sym.position.is_flat:
            self._open.pop(sym.symbol, None)
        else:
            self._open[sym.symbol] = sym

    def signature(self) -> tuple[bool, bool]:
        return (self.manual_halt is not None, self.portfolio.halted)

    def account_blocks(self) -> list[Block]:
        blocks = list(_first(self.manual_halt))
        limit = self.portfolio.config.max_daily_loss
        day = self.day
        if self.portfolio.halted or self.portfolio.daily_loss_breached(self.account_net(day)):
            blocks.append(
                Block(
                    "portfolio_daily_loss",
                    f"account net PnL reached max daily loss {limit:g}",
                    (day + 1) * MS_PER_DAY,
                )
            )
        return blocks

    def seqs_snapshot(self) -> dict[str, Any]:
        """The holder's fields plus the bot's id windows, which live in its portfolio record."""
        return {
            **super().seqs_snapshot(),
            "outcome_ids": self.outcome_ids.dump(),
            "fill_ids": self.fill_ids.dump(),
        }

    def restore_seqs(self, snap: SymbolSnapshot | PortfolioSnapshot) -> None:
        super().restore_seqs(snap)
        if isinstance(snap, PortfolioSnapshot):
            if snap.outcome_ids is not None:
                self.outcome_ids.load(snap.outcome_ids)
            if snap.fill_ids is not None:
                self.fill_ids.load(snap.fill_ids)

    # -- events ----------------------------------------------------------------

    def apply_outcome(self, o: TradeOutcome, origin: Origin | None, out: Effects) -> None:
        # Hot path (one call per outcome): small helpers are inlined.
        ts = o.ts
        sym = self.symbols.get(o.symbol) or self._created(o.symbol, ts, origin)
        fresh = self.fresh(origin)  # the portfolio's own watermark (D2)
        if not self._admit(sym, self.outcome_ids.first(o.outcome_id, origin, fresh), origin, out):
            out.skipped += 1
            return
        session = sym.session
        breaker = sym.breaker
        was_halted = session.halted
        tripped_before = breaker.tripped_at
        day_before = session.last_reset_day
        gross, fee = o.gross_pnl, o.fee
        if session.record_close(gross, fee, ts) is not None:
            self._fold_net(day_before, session.last_reset_day, gross - fee)
        if gross - fee < 0.0:
            self._record_loss(sym, ts, tripped_before)
        out.dirty_symbols.add(sym.key)
        self._after_change(sym, was_halted, tripped_before, ts, out, portfolio_fresh=fresh)

    def apply_fill(self, f: Fill, origin: Origin | None, out: Effects) -> None:
        ts = f.ts
        sym = self.symbols.get(f.symbol) or self._created(f.symbol, ts, origin)
        fresh = self.fresh(origin)  # the portfolio's own watermark (D2)
        if not self._admit(sym, self.fill_ids.first(f.fill_id, origin, fresh), origin, out):
            out.skipped += 1
            return
        if f.intent_id is not None and fresh:
            self._consume_reservation(f, out)
        signed_qty = f.qty if f.side == "buy" else -f.qty
        trip = sym.position.apply(signed_qty, f.price, f.fee, f.contract_value)
        self._track_position(sym)
        out.dirty_symbols.add(sym.key)
        out.dirty_bots.add(self.bot)
        closed_net = trip.closed_net
        booked = trip.fees or trip.gross
        if self.settings.pnl_source != "fills" or (closed_net is None and not booked):
            # Nothing booked: no gate can change, but a new UTC day may still roll the latch.
            if fresh:
                self._observe_portfolio(ts, out)
            return
        session = sym.session
        breaker = sym.breaker
        was_halted = session.halted
        tripped_before = breaker.tripped_at
        day_before = session.last_reset_day
        moved = booked and session.book(trip.gross, trip.fees, ts)
        # A round trip ends even when its last leg realises nothing by itself.
        if closed_net is not None:
            session.count_trade(closed_net, ts)
            if closed_net < 0.0:
                self._record_loss(sym, ts, tripped_before)
        if moved or session.last_reset_day != day_before:
            self._fold_net(day_before, session.last_reset_day, trip.gross - trip.fees)
        self._after_change(sym, was_halted, tripped_before, ts, out, portfolio_fresh=fresh)

    def _consume_reservation(self, f: Fill, out: Effects) -> None:
        """A fill releases only what it filled of its intent's reservation (R2).

        The caller passes only fills the replay guards admitted (a re-sent copy
        under a new offset releases nothing) and that are above the bot's own
        watermark: the portfolio is its own record, so a replay after a crash must
        not release again what the persisted portfolio already released.
        """
        if f.intent_id is not None and self.portfolio.consume(f.intent_id, f.symbol, f.qty):
            out.dirty_bots.add(self.bot)

    def _fold_net(self, day_before: int, day_after: int, delta: float) -> None:
        """Keep the running account net in step with one session change."""
        if day_after != day_before:
            self._net_day = -1  # the session rolled to a new day: re-sum
        elif day_before == self._net_day:
            self._net_sum += delta
            self._net_updates += 1

    def _after_change(
        self,
        sym: SymbolRisk,
        was_halted: bool,
        tripped_before: int | None,
        ts_ms: int,
        out: Effects,
        *,
        portfolio_fresh: bool,
    ) -> None:
        """Halt/resume events for what an event flipped, then the portfolio latch.

        The latch is the portfolio's state: an event at or below the portfolio's
        watermark (replayed after a crash that persisted the portfolio but not
        this symbol) must not re-judge it against a partly caught-up account (D2).
        """
        if sym.session.halted is not was_halted or sym.breaker.tripped_at != tripped_before:
            before = (sym.manual_halt is not None, was_halted, tripped_before is not None)
            self._symbol_transitions(sym, before, ts_ms, out)
        if portfolio_fresh:
            self._observe_portfolio(ts_ms, out)

    def _created(self, name: str, ts_ms: int, origin: Origin | None) -> SymbolRisk:
        """A symbol first seen by a fill or outcome; live, it remembers the bot's watermarks.

        Events at or below them happened before it existed, so a bot-wide reset
        replayed after a crash must not reach it (D2). During a replay (the bot
        already saw ``origin``) it is a symbol whose record the crash lost: it
        takes every reset after its creation, as it did live.
        """
        sym = self.symbol(name, ts_ms)
        if origin is not None and self.applied.get(origin.source, -1) < origin.offset:
            sym.born = dict(self.applied)
        return sym

    def _admit(self, sym: SymbolRisk, first: bool, origin: Origin | None, out: Effects) -> bool:
        """Replay guards of a fill/outcome: its topic's id window, then the symbol's watermark.

        ``first`` is the window's verdict (``IdWindow.first``), taken for every
        record, even one the symbol's watermark then skips, so a replay after a
        crash rebuilds the window exactly (D1). The window is part of the
        portfolio record, which must therefore be persisted again.
        """
        out.dirty_bots.add(self.bot)
        return first and sym.fresh(origin)

    def decide(self, i: OrderIntent, now_ms: int, origin: Origin | None, out: Effects) -> None:
        if not self.fresh(origin):
            out.skipped += 1
            return
        out.dirty_bots.add(self.bot)  # its watermark moved, even for a repeat or a denial (D2)
        out.decisions.append(self._answer(i, now_ms, out))

    def _answer(self, i: OrderIntent, now_ms: int, out: Effects) -> GateDecision:
        """Decide one new intent: staleness, then its id, then the gates (decisions R1-R4).

        Only an allowed intent changes risk state (its reservation); every decided
        one is remembered in the bot's intent window. Nothing creates symbol state:
        a symbol the bot never touched is judged as flat and unblocked (N3).
        """
        age = now_ms - i.ts
        if age > self.reservation_ttl_ms:
            reason = f"intent is {age} ms old; reservations last {self.reservation_ttl_ms} ms"
            return _decision(i, "expired", reason, now_ms)
        portfolio = self.portfolio
        key = id_digest(i.intent_id)
        content = content_digest(i)
        seen = portfolio.intents.get(key)
        if seen is not None:
            if seen.content == content:
                return self._repeat(i, seen)
            return _decision(i, "duplicate_intent_id", _REUSED_ID, now_ms)
        if i.intent_id in portfolio.reservations:  # remembered no more, still reserved
            return _decision(i, "duplicate_intent_id", _REUSED_ID, now_ms)
        sym = self.symbols.get(i.symbol)
        if sym is not None:
            self._tick_symbol(sym, now_ms, out)
        gate, reason = self._evaluate(i, sym, now_ms)
        expires = None
        if gate is None:
            expires = now_ms + self.reservation_ttl_ms
            close = i.action == "close"
            notional = 0.0 if close else i.notional
            portfolio.reserve(i.intent_id, i.symbol, notional, expires, qty=i.qty, close=close)
            self._wake_at(expires)
        portfolio.intents.remember(key, content, now_ms - i.ts, gate)
        out.dirty_bots.add(self.bot)
        return _decision(i, gate, reason, now_ms, expires)

    def _repeat(self, i: OrderIntent, seen: Seen) -> GateDecision:
        """The same intent again: the first decision again, reserving nothing more.

        Rebuilt from the compact window entry, so it reads the same live and
        after a restore; a denial's reason names its gate, not the first text.
        """
        ts = i.ts + seen.delay
        if seen.gate is not None:
            return _decision(i, seen.gate, f"repeat of an intent denied by {seen.gate}", ts)
        return _decision(i, None, _ALLOWED[i.action], ts, ts + self.reservation_ttl_ms)

    def _evaluate(
        self, i: OrderIntent, sym: SymbolRisk | None, now_ms: int
    ) -> tuple[Gate | None, str]:
        """Gate order of SPEC §4; the first block answers. ``sym`` None: never touched."""
        portfolio = self.portfolio
        if i.action == "close":
            return self._evaluate_close(i, sym)
        blocks = [*_first(self.manual_halt), *(sym.blocks() if sym is not None else ())]
        if blocks:
            return blocks[0].gate, blocks[0].reason
        if portfolio.blocked_by_daily_loss(self._decision_net(now_ms)):
            limit = portfolio.config.max_daily_loss
            return "portfolio_daily_loss", f"account reached max daily loss {limit:g}"
        if portfolio.concurrency_blocks(self.open_symbols(), i.symbol):
            cap = portfolio.config.max_concurrent_positions
            return "max_concurrent_positions", f"{cap} positions already open or reserved"
        if portfolio.exposure_blocks(self.gross_exposure(), i.notional):
            exposure_cap = portfolio.config.max_gross_exposure
            return "gross_exposure", f"notional {i.notional:g} would exceed {exposure_cap:g}"
        return self._reservation_cap() or (None, _ALLOWED["open"])

    def _evaluate_close(self, i: OrderIntent, sym: SymbolRisk | None) -> tuple[Gate | None, str]:
        """A close bypasses the gates only for what it reduces, net of other closes (R1)."""
        held = sym.position.qty if sym is not None else 0.0
        if held == 0.0:
            return "no_position", f"no open {i.symbol} position to close"
        if (held > 0.0) != (i.side == "sell"):
            return "no_position", f"a {i.side} does not reduce the open position"
        reducible = abs(held) - self.portfolio.reserved_close_qty(i.symbol)
        if i.qty - reducible > QTY_TOLERANCE * max(abs(held), i.qty):
            return (
                "reduce_only_exceeds_position",
                f"close of {i.qty:g} exceeds the {max(reducible, 0.0):g} of the position "
                "not already being closed",
            )
        return self._reservation_cap() or (None, _ALLOWED["close"])

    def _reservation_cap(self) -> tuple[Gate, str] | None:
        """Outstanding reservations are capped: they are all in the portfolio snapshot."""
        if not self.portfolio.full(self.max_reservations):
            return None
        held = len(self.portfolio.reservations)
        return (
            "max_concurrent_positions",
            f"{held} reservations outstanding; report fills with their intent_id",
        )

    def _decision_net(self, now_ms: int) -> float:
        """Today's account net for a decision: O(1) running sum, exact near the limit."""
        day = utc_day(now_ms)
        net = self._running_account_net(day)
        limit = self.portfolio.config.max_daily_loss
        if limit is not None and abs(net - limit) <= _edge(limit, net):
            net = self.account_net(day)
        return net

    def control(self, c: ControlCommand, origin: Origin | None, out: Effects) -> None:
        """An operator command; Rejected, changing nothing, when stale or replayed (C1).

        Its halt event is named after the command (C3) and published only when a
        gate starts or stops blocking, or for a ``halt`` (the operator's verdict):
        a reset or resume of something not blocked publishes nothing (C2).
        """
        digest = signing.command_digest(c)
        if c.symbol is None:
            self._control_bot(c, digest, origin, out)
            return
        sym = self.symbols.get(c.symbol)
        if sym is not None:
            if sym.replayed(origin):
                out.skipped += 1
                return
            sym.check_command(c, digest)
        else:
            sym = self.symbol(c.symbol)
        sym.fresh(origin)
        sym.record_command(c, digest)
        before = sym.signature()
        gate = _apply_command(sym, c)
        self._net_day = -1
        out.dirty_symbols.add(sym.key)
        if c.command == "halt" or sym.signature() != before:
            self._emit_command(sym, sym.symbol, gate, c, digest=digest, out=out)
        # The portfolio's own watermark moves too (the portfolio record goes with the
        # symbol's): a replay that finds the latch persisted must not judge it again (D3).
        if self.fresh(origin) and c.command == "reset_session":
            self._latch_on_reset(c, digest, out)

    def _control_bot(
        self, c: ControlCommand, digest: str, origin: Origin | None, out: Effects
    ) -> None:
        # The bot's watermark guards every bot-level command, so a replayed reset
        # is skipped instead of re-emitting its HaltEvent; each symbol's own
        # watermark guards what the reset does to it (D2).
        replayed = self.replayed(origin)
        if not replayed:
            self.check_command(c, digest)
        self.fresh(origin)
        if c.command in ("halt", "resume"):
            if replayed:
                out.skipped += 1
                return
            changed = c.command == "halt" or self.manual_halt is not None
            self.manual_halt = _halt_from(c) if c.command == "halt" else None
        else:
            self._net_day = -1
            changed = False
            for sym in self.symbols.values():
                if _born_before(sym, origin) and sym.fresh(origin):
                    before = sym.signature()
                    _apply_command(sym, c)
                    changed = changed or sym.signature() != before
                    out.dirty_symbols.add(sym.key)
            if replayed:
                out.skipped += 1
                return
        self.record_command(c, digest)
        out.dirty_bots.add(self.bot)
        if changed:
            gate = _command_gate(c)
            self._emit_command(self, None, gate, c, digest=digest, out=out)
        # No latch judgement: a bot-wide ``reset_session`` zeroes every session of
        # today, so the account is at 0, above any limit (limits are negative).

    def _latch_on_reset(self, c: ControlCommand, digest: str, out: Effects) -> None:
        """Latch the daily loss if a ``reset_session`` took the account to the limit.

        Resetting one *winning* session lowers the account net. Left to the live
        check alone, the bot would be blocked only while breached and trade again
        the same day once the account recovered: a bypass of the latch (findings
        E1-1; SPEC §4.4 "checked live and latched"). Judged on the exact sum and
        whatever the command's ``ts``: the reset cleared a session of today. The
        event is the command's (C3: ``cmd-<digest>``, at its ``ts``); callers run
        this only above the portfolio's own watermark, so a replay after a crash
        neither re-latches nor publishes it twice (D3).
        """
        portfolio = self.portfolio
        if portfolio.halted or not portfolio.daily_loss_breached(self.account_net(self.day)):
            return
        before = self.signature()
        portfolio.halted = True
        self._bot_transitions(before, c.ts, out, issued_by=c.issued_by, command=digest)

    def _emit_command(
        self,
        holder: _Holder,
        symbol: str | None,
        gate: Gate,
        c: ControlCommand,
        *,
        digest: str,
        out: Effects,
    ) -> None:
        self._emit(
            holder,
            symbol,
            _command_kind(c),
            gate,
            _command_reason(c),
            ts_ms=c.ts,
            out=out,
            issued_by=c.issued_by,
            command=digest,
        )

    # -- time --------------------------------------------------------------------

    def sweep(self, now_ms: int, out: Effects) -> None:
        """Wall-clock expiry: rollover, cooldowns, reservations. Cheap until a deadline."""
        if now_ms < self._deadline:
            return
        self._deadline = (utc_day(now_ms) + 1) * MS_PER_DAY
        before = self.signature()
        self._roll_day(now_ms, out)
        for sym in self.symbols.values():
            self._tick_symbol(sym, now_ms, out)
            self._wake_for_breaker(sym)
        # No latch judgement here: the latch moves on events only, each above the
        # portfolio's own watermark. A sweep right after a restore may see symbols of
        # two persists (a crash between their records), whose sum is no account net
        # that ever was, and would latch on a loss never incurred (D2).
        portfolio = self.portfolio
        if portfolio.expire_reservations(now_ms):
            out.dirty_bots.add(self.bot)
        for r in portfolio.reservations.values():
            self._wake_at(r.expires_ts)
        self._bot_transitions(before, now_ms, out)

    def _roll_day(self, now_ms: int, out: Effects) -> bool:
        """Move the bot's day (and release the latch) when the wall clock passed midnight.

        Callers publish the latch's transition: ``sweep`` at its end, a symbol tick
        (restore, a decision) at once, so sessions and the latch never disagree on
        what day it is.
        """
        if not self.portfolio.tick(now_ms):
            return False
        self._net_day = -1
        out.dirty_bots.add(self.bot)
        return True

    def _tick_symbol(self, sym: SymbolRisk, now_ms: int, out: Effects) -> None:
        """A symbol's wall-clock changes (rollover, cooldown end, eviction) at ``now_ms``."""
        bot_before = self.signature()
        if self._roll_day(now_ms, out):
            self._bot_transitions(bot_before, now_ms, out)
        before = sym.signature()
        losses = len(sym.breaker.recent_losses)
        rolled = sym.session.tick(now_ms)
        reset = sym.breaker.tick(now_ms // 1000)
        if rolled:
            self._net_day = -1
        if rolled or reset or len(sym.breaker.recent_losses) != losses:
            out.dirty_symbols.add((self.bot, sym.symbol))
            self._symbol_transitions(sym, before, now_ms, out)

    def _record_loss(self, sym: SymbolRisk, ts_ms: int, tripped_before: int | None) -> None:
        breaker = sym.breaker
        tripped = breaker.record_loss(ts_ms // 1000)
        if tripped or tripped_before is None or breaker.tripped_at != tripped_before:
            # Unless the loss was dropped by a trip that is still on, a deadline moved.
            self._wake_for_breaker(sym)

    def _wake_for_breaker(self, sym: SymbolRisk) -> None:
        """Sweep when the trip ends and when the oldest loss leaves the window.

        Evicting on time (not only on the next loss) keeps ``recent_losses`` in
        the gate record current and makes state independent of restart timing.
        """
        breaker = sym.breaker
        config = breaker.config
        deadline = self._deadline
        if breaker.tripped_at is not None:
            deadline = min(deadline, (breaker.tripped_at + config.cooldown_secs) * 1000)
        if breaker.recent_losses:
            deadline = min(deadline, (breaker.recent_losses[0] + config.window_secs) * 1000)
        self._deadline = deadline

    def _wake_at(self, ts_ms: int) -> None:
        self._deadline = min(self._deadline, ts_ms)

    def _observe_portfolio(self, ts_ms: int, out: Effects) -> None:
        """Latch the daily loss if the account reached it after an event at ``ts_ms`` (hot path).

        An event only ever latches: the day, and with it the latch's release, move
        with the wall clock in ``sweep``. One of an earlier day than the bot's is
        late and counts toward nothing today; one stamped on a later day counts
        toward the current day (its session clamped it there).
        """
        portfolio = self.portfolio
        limit = portfolio.config.max_daily_loss
        if limit is None or portfolio.halted:
            return
        day = portfolio.last_reset_day
        if ts_ms // MS_PER_DAY < day:
            return
        if self._net_day == day and self._net_updates < _NET_RESYNC:
            net = self._net_sum  # ``_running_account_net``, inlined
        else:
            net = self._running_account_net(day)
        if net - limit > 1e-6 * (1.0 + abs(limit) + abs(net)):  # ``_edge``, inlined
            return  # clearly above the limit: nothing to latch
        if abs(net - limit) <= _edge(limit, net):
            net = self.account_net(day)  # on the edge: decide on the exact sum
        if portfolio.daily_loss_breached(net):
            before = self.signature()
            portfolio.halted = True
            out.dirty_bots.add(self.bot)
            self._bot_transitions(before, ts_ms, out)

    # -- transitions → halt/resume events -----------------------------------------

    def _symbol_transitions(
        self, sym: SymbolRisk, before: tuple[bool, bool, bool], ts_ms: int, out: Effects
    ) -> None:
        after = sym.signature()
        if after == before:
            return
        blocks = {b.gate: b for b in sym.blocks()}
        for gate, was, now in zip(_SYMBOL_GATES, before, after, strict=True):
            if was == now:
                continue
            block = blocks.get(gate)
            if now and block is not None:
                self._emit(
                    sym,
                    sym.symbol,
                    "halted",
                    gate,
                    block.reason,
                    ts_ms=ts_ms,
                    out=out,
                    until_ts=block.until_ts,
                )
            else:
                self._emit(
                    sym, sym.symbol, "resumed", gate, _RESUME_REASONS[gate], ts_ms=ts_ms, out=out
                )

    def _bot_transitions(
        self,
        before: tuple[bool, bool],
        ts_ms: int,
        out: Effects,
        *,
        issued_by: str | None = None,
        command: str | None = None,
    ) -> None:
        """Events for the bot-level gates that flipped; ``command``: the digest of the
        command that caused them (their ids name it, C3)."""
        after = self.signature()
        if after == before:
            return
        blocks = {b.gate: b for b in self.account_blocks()}
        for gate, was, now in zip(_BOT_GATES, before, after, strict=True):
            if was == now:
                continue
            block = blocks.get(gate)
            if now and block is not None:
                self._emit(
                    self,
                    None,
                    "halted",
                    gate,
                    block.reason,
                    ts_ms=ts_ms,
                    out=out,
                    until_ts=block.until_ts,
                    issued_by=issued_by,
                    command=command,
                )
            else:
                self._emit(
                    self,
                    None,
                    "resumed",
                    gate,
                    _RESUME_REASONS[gate],
                    ts_ms=ts_ms,
                    out=out,
                    issued_by=issued_by,
                    command=command,
                )

    def _emit(
        self,
        holder: _Holder,
        symbol: str | None,
        kind: HaltKind,
        gate: Gate,
        reason: str,
        *,
        ts_ms: int,
        out: Effects,
        until_ts: int | None = None,
        issued_by: str | None = None,
        command: str | None = None,
    ) -> None:
        """One halt/resume event; ``command``: the digest of the command that caused it."""
        tail = f"cmd-{command}" if command is not None else holder.next_halt_seq(gate)
        out.halts.append(
            HaltEvent(
                event_id=f"{self.bot}/{symbol or '*'}/{gate}/{tail}",
                bot=self.bot,
                symbol=symbol,
                kind=kind,
                gate=gate,
                reason=reason,
                ts=ts_ms,
                until_ts=until_ts,
                issued_by=issued_by,
            )
        )
        if symbol is None:
            out.dirty_bots.add(self.bot)
        else:
            out.dirty_symbols.add((self.bot, symbol))

    # -- records -------------------------------------------------------------------

    def gate_state(self, sym: SymbolRisk, now_ms: int) -> GateState:
        """The symbol's own gates; the bot-wide ones are in :meth:`account_gate_state`."""
        blocks = sym.blocks()
        return GateState(
            bot=self.bot,
            symbol=sym.symbol,
            entries_allowed=not blocks,
            blocks=blocks,
            net_pnl=sym.session.net_pnl,
            trades=sym.session.trades,
            recent_losses=len(sym.breaker.recent_losses),
            position_qty=sym.position.qty,
            updated_ts=now_ms,
            seq=sym.next_gate_seq(),
        )

    def account_gate_state(self, now_ms: int) -> AccountGateState:
        blocks = self.account_blocks()
        return AccountGateState(
            bot=self.bot,
            entries_allowed=not blocks,
            blocks=blocks,
            account_net_pnl=self.account_net(self.day),
            open_positions=len(self.open_symbols()),
            gross_exposure=self.gross_exposure(),
            updated_ts=now_ms,
            seq=self.next_gate_seq(),
        )

    def portfolio_snapshot(self, id_logs: dict[str, IdLogRef] | None = None) -> PortfolioSnapshot:
        """The portfolio state, id windows whole (a self-contained record, the older format)
        or, given ``id_logs`` (:meth:`persist`), by reference to their chunk records."""
        p = self.portfolio
        if id_logs is None:
            fields = self.seqs_snapshot()
        else:
            fields = {**_Holder.seqs_snapshot(self), "id_logs": id_logs}
        return PortfolioSnapshot(
            halted=p.halted,
            last_reset_day=p.last_reset_day,
            manual_halt=self.manual_halt,
            reservations=dict(p.reservations),
            intent_ids=p.intents.dump() if id_logs is None else b"",
            applied_offsets=dict(self.applied),
            **fields,
        )

    def persist(self) -> tuple[list[IdChunkOut], PortfolioSnapshot, list[tuple[str, int]]]:
        """A persist's portfolio record, with the id chunks to write before it and those to
        tombstone after it (:mod:`worker.risk.idlog`): the record stays small, and the ids
        that did not change are not written again."""
        chunks: list[IdChunkOut] = []
        drops: list[tuple[str, int]] = []
        refs: dict[str, IdLogRef] = {}
        for name, log in self.id_logs.items():
            sealed, refs[name], dropped = log.persist()
            chunks.extend((name, n, data) for n, data in sealed)
            drops.extend((name, n) for n in dropped)
        return chunks, self.portfolio_snapshot(refs), drops

    def restore_id_logs(
        self, refs: Mapping[str, IdLogRef], chunks: Mapping[str, Mapping[int, bytes]]
    ) -> list[str]:
        """The id windows a portfolio record references; returns the keys of missing chunks."""
        missing: list[str] = []
        for name, ref in refs.items():
            log = self.id_logs.get(name)
            if log is not None:
                lost = log.restore(ref, chunks.get(name, {}))
                missing.extend(chunk_key(self.bot, name, n) for n in lost)
        return missing

    def renumber_id_logs(self) -> None:
        """Write every id window again under new chunk numbers (see ``ChunkedLog.renumber``)."""
        for log in self.id_logs.values():
            log.renumber()

    # -- restore -------------------------------------------------------------------

    def restore_symbol(self, symbol: str, snap: SymbolSnapshot, now_ms: int, out: Effects) -> None:
        """Restore, then apply the stale-snapshot policy (``tick``) at ``now_ms``."""
        sym = self.symbol(symbol, now_ms)
        sym.restore(snap)
        self._track_position(sym)
        self._net_day = -1
        self._tick_symbol(sym, now_ms, out)
        self._wake_for_breaker(sym)

    def restore_portfolio(self, snap: PortfolioSnapshot, now_ms: int, out: Effects) -> None:
        # The latch, unlike the seed's, survives restarts.
        self.portfolio.restore(
            PortfolioRiskSnapshot(
                halted=snap.halted,
                last_reset_day=snap.last_reset_day,
                reservations=snap.reservations,
                intents=snap.intent_ids,
            )
        )
        self.manual_halt = snap.manual_halt
        self.applied = dict(snap.applied_offsets)
        self.restore_seqs(snap)
        self._wake_at(now_ms)


def _edge(limit: float, net: float) -> float:
    """How close to the limit the running account net must be to recompute it exactly.

    Far above the float drift of ``_NET_RESYNC`` deltas, far below any real money.
    """
    return 1e-6 * (1.0 + abs(limit) + abs(net))


_ALLOWED = {"open": "entries allowed", "close": "reduce-only exit: bypasses entry gates"}
_REUSED_ID = "intent_id already used for a different intent"


def _decision(
    i: OrderIntent, gate: Gate | None, reason: str, ts: int, expires: int | None = None
) -> GateDecision:
    """The answer to ``i`` (allowed when ``gate`` is None), echoing what it answers (R5)."""
    return GateDecision(
        intent_id=i.intent_id,
        bot=i.bot,
        symbol=i.symbol,
        allowed=gate is None,
        gate=gate,
        reason=reason,
        ts=ts,
        reservation_expires_ts=expires,
        action=i.action,
        side=i.side,
        qty=i.qty,
        price=i.price,
    )


def _born_before(sym: SymbolRisk, origin: Origin | None) -> bool:
    """Did ``sym`` exist when the event at ``origin`` was first applied? (``_created``)"""
    return origin is None or sym.born.get(origin.source, -1) < origin.offset


def _first(halt: ManualHalt | None) -> tuple[Block, ...]:
    return (_manual_block(halt),) if halt is not None else ()


def _halt_from(c: ControlCommand) -> ManualHalt:
    return ManualHalt(reason=c.reason, issued_by=c.issued_by, ts=c.ts)


def _command_gate(c: ControlCommand) -> Gate:
    if c.command == "reset_breaker":
        return "circuit_breaker"
    if c.command == "reset_session":
        return "session_halt"
    return "manual_halt"


def _command_kind(c: ControlCommand) -> HaltKind:
    return "halted" if c.command == "halt" else "resumed"


def _command_reason(c: ControlCommand) -> str:
    return f"{c.command} by {c.issued_by}: {c.reason}"


def _apply_command(sym: SymbolRisk, c: ControlCommand) -> Gate:
    if c.command == "halt":
        sym.manual_halt = _halt_from(c)
    elif c.command == "resume":
        sym.manual_halt = None
    elif c.command == "reset_breaker":
        sym.breaker.reset()
    else:
        sym.session.reset()
    return _command_gate(c)


_UNSAFE_NAME = re.compile(r"[/\s]")
MAX_NAME_CHARS = 64


def _check_name(kind: str, name: str) -> None:
    """Names become parts of ``/``-separated keys and event ids: reject before they
    create state (N1). ``*`` names the whole bot in event ids, so no symbol may use it;
    control and format characters would display as something else (or nothing)."""
    problem = None
    if not 0 < len(name) <= MAX_NAME_CHARS:
        problem = f"must be 1..{MAX_NAME_CHARS} characters"
    elif _UNSAFE_NAME.search(name):
        problem = "contains '/' or whitespace"
    elif any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        problem = "contains control or format characters"
    elif kind == "symbol" and name == "*":
        problem = "'*' names the whole bot"
    if problem is not None:
        raise Rejected("invalid_name", f"{kind} {name!r} {problem}")


class RiskEngine:
    """All bots this worker owns, with config-driven validation of every event."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bots: dict[str, BotRisk] = {}
        self._control_secret = config.control.resolved_secret()
        self._max_skew_ms = config.worker.max_future_skew_ms

    def bot(self, bot_id: str, now_ms: int = 0) -> BotRisk:
        """The bot's state, created on first use; Rejected if the bot is unknown.

        A new bot starts in the UTC day of ``now_ms`` (the wall clock); without it,
        in day 0 until the first restore, sweep or decision moves it to the clock's.
        """
        bot = self.bots.get(bot_id)
        if bot is None:
            bot = self._create(self._settings(bot_id), now_ms)
        return bot

    def _settings(self, bot_id: str) -> BotSettings:
        """A bot's effective settings; Rejected if the bot is unknown. Creates nothing."""
        _check_name("bot", bot_id)
        settings = bot_settings(self.config, bot_id)
        if settings is None:
            raise Rejected("unknown_bot", f"bot {bot_id!r} is not configured")
        return settings

    def _create(self, settings: BotSettings, now_ms: int) -> BotRisk:
        worker = self.config.worker
        bot = self.bots[settings.bot] = BotRisk(
            settings,
            reservation_ttl_ms=worker.reservation_ttl_ms,
            dedupe_keep=worker.dedupe_ids_per_bot,
            max_reservations=worker.max_reservations_per_bot,
            day=utc_day(now_ms),
        )
        return bot

    def validate(self, event: Event, now_ms: int, *, record_ts: int | None = None) -> BotRisk:
        """Every check that makes an event bad input, before anything changes.

        A bot seen for the first time is created only once its event passed every
        check: rejected input must not leave state behind (an unknown-bot flood
        under ``accept_unknown_bots`` would otherwise grow memory and the heartbeat
        gate records without bound).

        Time checks (future skew, a command's signature window) are judged against
        ``record_ts``, the Kafka record's timestamp (``now_ms`` when None, for pure
        callers), so a record is accepted or refused alike live, late and on replay (T3).
        """
        bot = self.bots.get(event.bot)
        settings = bot.settings if bot is not None else self._settings(event.bot)
        symbol = event.symbol
        allowed = settings.symbols
        if symbol is not None and (bot is None or symbol not in bot.symbols):
            if allowed is not None and symbol not in allowed:
                raise Rejected(
                    "unknown_symbol", f"symbol {symbol!r} is not configured for bot {event.bot!r}"
                )
            _check_name("symbol", symbol)
        ref_ms = now_ms if record_ts is None else record_ts
        if event.ts > ref_ms + self._max_skew_ms:
            raise Rejected(
                "future_event", f"ts {event.ts} is ahead of the record's time ({ref_ms})"
            )
        if type(event) is TradeOutcome:
            if settings.pnl_source == "fills":
                raise Rejected(
                    "pnl_source",
                    f"bot {event.bot!r} books PnL from fills; outcomes would double-count",
                )
        elif type(event) is ControlCommand and self._control_secret is not None:
            problem = signing.verify(
                event, self._control_secret, ref_ms, self.config.control.replay_window_ms
            )
            if problem is not None:
                raise Rejected("bad_signature", problem)
        return bot if bot is not None else self._create(settings, now_ms)

    def apply(
        self,
        event: Event,
        now_ms: int,
        origin: Origin | None = None,
        out: Effects | None = None,
        *,
        record_ts: int | None = None,
    ) -> Effects:
        """Apply one event; raises Rejected (changing nothing) for bad input.

        ``now_ms`` is the wall clock; ``record_ts`` the Kafka record's timestamp
        that validation is judged against (see :meth:`validate`).
        """
        if out is None:
            out = Effects()
        bot = self.validate(event, now_ms, record_ts=record_ts)
        kind = type(event)
        if kind is TradeOutcome:
            bot.apply_outcome(event, origin, out)  # type: ignore[arg-type]
        elif kind is Fill:
            bot.apply_fill(event, origin, out)  # type: ignore[arg-type]
        elif kind is OrderIntent:
            bot.decide(event, now_ms, origin, out)  # type: ignore[arg-type]
        else:
            bot.control(event, origin, out)  # type: ignore[arg-type]
        return out

    def sweep(self, now_ms: int, out: Effects | None = None) -> Effects:
        if out is None:
            out = Effects()
        for bot in self.bots.values():
            bot.sweep(now_ms, out)
        return out

    def forget(self, bot_ids: set[str]) -> None:
        """Drop bots whose partition this worker no longer owns."""
        for bot_id in bot_ids:
            self.bots.pop(bot_id, None)

    def restore(
        self, records: Mapping[str, bytes | None], now_ms: int, out: Effects | None = None
    ) -> list[tuple[str, str]]:
        """Restore from the last value per snapshot key; returns ``(key, why)`` of ignored ones.

        Corrupt values, unknown versions, bots no longer configured and symbols no
        longer in their bot's ``symbols`` (N2) are ignored (never fatal, never
        misread); tombstones (None) are skipped. Then every restored bot is swept
        at ``now_ms``: the wall clock, not the snapshot, says what day it is.
        """
        if out is None:
            out = Effects()
        ignored: list[tuple[str, str]] = []
        restored: dict[str, BotRisk] = {}
        legacy: list[tuple[BotRisk, SymbolSnapshot]] = []
        chunks: dict[str, dict[str, dict[int, bytes]]] = {}
        """bot -> window -> chunk number -> entries"""
        refs: dict[str, dict[str, IdLogRef]] = {}
        for key, value in records.items():
            if value is None:
                continue
            chunk = parse_chunk_key(key)
            if chunk is not None:
                bot_id, window, number = chunk
                try:
                    entries = decode_chunk(value)
                    chunks.setdefault(bot_id, {}).setdefault(window, {})[number] = entries
                except SnapshotError as exc:
                    ignored.append((key, str(exc)))
                continue
            try:
                bot_id, symbol, snap = decode_snapshot(key, value)
                bot = self.bot(bot_id, now_ms)
                if symbol is not None:
                    self._check_restored_symbol(bot, symbol)
            except (SnapshotError, Rejected) as exc:
                ignored.append((key, str(exc)))
                continue
            restored[bot_id] = bot
            if isinstance(snap, SymbolSnapshot) and symbol is not None:
                bot.restore_symbol(symbol, snap, now_ms, out)
                if snap.recent_outcome_ids or snap.recent_fill_ids:
                    legacy.append((bot, snap))
            elif isinstance(snap, PortfolioSnapshot):
                bot.restore_portfolio(snap, now_ms, out)
                if snap.id_logs is not None:
                    refs[bot_id] = snap.id_logs
        for bot_id, bot_refs in refs.items():
            missing = restored[bot_id].restore_id_logs(bot_refs, chunks.get(bot_id, {}))
            ignored.extend((key, "id chunk missing: newer entries kept") for key in missing)
        for bot, snap in legacy:  # after the portfolios, whose windows they join
            bot.outcome_ids.adopt(snap.recent_outcome_ids)
            bot.fill_ids.adopt(snap.recent_fill_ids)
            bot.renumber_id_logs()  # entries added before the oldest: written afresh
        for bot in restored.values():
            bot.sweep(now_ms, out)
        return ignored

    @staticmethod
    def _check_restored_symbol(bot: BotRisk, symbol: str) -> None:
        """A snapshot of a symbol the config no longer allows (or never could) is ignored;
        its events are then dead-lettered as ``unknown_symbol`` (N2)."""
        _check_name("symbol", symbol)
        allowed = bot.settings.symbols
        if allowed is not None and symbol not in allowed:
            raise Rejected(
                "unknown_symbol", f"symbol {symbol!r} is no longer configured for bot {bot.bot!r}"
            )
