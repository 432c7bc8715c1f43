"""A thin front for one bot: the state it owns, and the paths that change it.

:class:`BotRisk` owns the bot's symbols (:mod:`worker.core.symbol`), its
account (:mod:`worker.core.account`), its replay guards and id windows
(:mod:`worker.core.replay`), and when the wall clock next matters (its
deadline). It decides intents and sweeps; fills and outcomes are
:mod:`worker.core.events`, operator commands :mod:`worker.core.commands`,
the gate policy :mod:`worker.core.gates`, its portfolio record
:mod:`worker.core.bot_snapshot`. Every transition becomes a halt
event in :func:`worker.core.halt_events.emit`, and only there.
"""

from __future__ import annotations

from worker.config import BotSettings
from worker.core import bot_snapshot, halt_events
from worker.core.account import Account
from worker.core.answers import recall, settle
from worker.core.controls import UNREADABLE_BLOCK, BotControls, kill_block
from worker.core.effects import Effects, Origin
from worker.core.gates import decision, evaluate, kill_verdict
from worker.core.idlog import IdLogRef
from worker.core.intents import id_digest
from worker.core.marks import MarkTable
from worker.core.portfolio import PortfolioRisk
from worker.core.replay import Holder, IdChunkOut, IdWindows
from worker.core.session import MS_PER_DAY, utc_day
from worker.core.snapshot import ManualHalt, PortfolioSnapshot, SymbolSnapshot
from worker.core.symbol import SymbolRisk, manual_block
from worker.messages import (
    AccountGateState,
    Block,
    OrderIntent,
)


class BotRisk(Holder):
    """Everything one bot owns: its symbols, its account and its replay guards."""

    __slots__ = (
        "account",
        "bot",
        "controls",
        "deadline",
        "ids",
        "manual_halt",
        "marks",
        "settings",
        "shown_loss",
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
        marks: MarkTable | None = None,
    ) -> None:
        """``day``: the UTC day of the wall clock when the bot is created (its current day)."""
        super().__init__()
        self.bot = settings.bot
        self.settings = settings
        self.symbols: dict[str, SymbolRisk] = {}
        portfolio = PortfolioRisk(settings.portfolio)
        portfolio.last_reset_day = day
        self.marks = marks if marks is not None else MarkTable()
        """The engine's mark table, shared by every bot (market-wide)."""
        self.account = Account(
            portfolio,
            self.symbols,
            reservation_ttl_ms=reservation_ttl_ms,
            max_reservations=max_reservations,
            marks=self.marks,
        )
        self.ids = IdWindows(dedupe_keep, portfolio.intents)
        self.manual_halt: ManualHalt | None = None
        self.controls = BotControls(settings, day)
        self.deadline = (day + 1) * MS_PER_DAY
        """Earliest wall time at which a sweep, or a decision's symbol tick, can change
        anything (rollover, expiry): before it, ``decide`` skips the tick."""
        self.shown_loss: bool | None = False
        """What the halts topic last said of ``portfolio_daily_loss`` (True: halted), so
        its events diff against what was published (``halt_events.as_published``);
        None after a restore until the restore's sweep re-derives it (not persisted)."""

    @property
    def portfolio(self) -> PortfolioRisk:
        return self.account.portfolio

    @property
    def day(self) -> int:
        """The bot's current UTC day: the wall clock's as of the last sweep or restore."""
        return self.account.portfolio.last_reset_day

    def touch(self, out: Effects) -> None:
        out.dirty_bots.add(self.bot)

    def symbol(self, name: str) -> SymbolRisk:
        """The symbol's state, created in the bot's current day (never in an event's: one
        stamped past midnight must not start a session the wall clock has not reached)."""
        sym = self.symbols.get(name)
        if sym is None:
            sym = self.symbols[name] = SymbolRisk(name, self.settings, self.day, self.marks)
        return sym

    def signature(self) -> tuple[bool, ...]:
        """Which bot-level gates block, in ``halt_events.BOT_GATES`` order."""
        controls = self.controls
        return (
            controls.kill is not None,
            self.manual_halt is not None,
            controls.unreadable,
            self.loss_blocking(),
            controls.drawdown.halted,
        )

    def loss_blocking(self) -> bool:
        """``portfolio_daily_loss`` blocks: latched, or breached live on the bot's day
        (decision H10-1; :meth:`Account.loss_blocking`)."""
        return self.account.loss_blocking(self.day)

    def bot_blocks(self) -> list[Block]:
        """The bot's own blocks (kill switch, manual halt, unreadable state), in gate order."""
        controls = self.controls
        blocks = [kill_block(controls.kill)] if controls.kill is not None else []
        if self.manual_halt is not None:
            blocks.append(manual_block(self.manual_halt))
        if controls.unreadable:
            blocks.append(UNREADABLE_BLOCK)
        return blocks

    # -- events --------------------------------------------------------------------

    def decide(
        self,
        i: OrderIntent,
        now_ms: int,
        origin: Origin | None,
        out: Effects,
        record_ts: int | None = None,
    ) -> None:
        """Answer an intent: only an allowed one changes risk state (its reservation, its
        place in the order rate, duplicate and notional counts); nothing creates symbol
        state (a symbol never touched is flat and unblocked, N3). ``record_ts``: the
        intent's record time (``now_ms`` when None)."""
        if not self.fresh(origin):
            out.skipped += 1
            return
        self.touch(out)  # its watermark moved, even for a repeat or a denial (D2)
        account = self.account
        ttl = account.reservation_ttl_ms
        key = id_digest(i.intent_id)
        answer = recall(account.portfolio, i, now_ms, ttl, key)
        if answer is not None and answer.allowed:
            killed = kill_verdict(self, self.symbols.get(i.symbol))
            if killed is not None:  # remembered as first answered: a resume allows it again
                answer = decision(i, killed.gate, killed.reason, now_ms)
        if answer is None:
            sym = self.symbols.get(i.symbol)
            if sym is not None and now_ms >= self.deadline:
                # Before the deadline the tick is a no-op: the deadline is never later
                # than the bot's and every symbol's next rollover, trip end, window
                # eviction and cooldown end (restores lower it to their clock).
                self.tick_symbol(sym, now_ms, out)
            at = now_ms if record_ts is None else record_ts
            verdict = evaluate(i, self, sym, now_ms, at)
            answer = settle(account.portfolio, i, verdict, now_ms, ttl, key=key)
            if answer.allowed:
                self.controls.allowed(i, self.settings.orders_for(i.symbol), at)
            if answer.reservation_expires_ts is not None:
                self.deadline = min(self.deadline, answer.reservation_expires_ts)
        out.decisions.append(answer)

    # -- time ----------------------------------------------------------------------

    def sweep(self, now_ms: int, out: Effects) -> None:
        """Wall-clock expiry: rollover, cooldowns, reservations. Cheap until a deadline."""
        if now_ms < self.deadline:
            return
        self.deadline = (utc_day(now_ms) + 1) * MS_PER_DAY
        before = self.signature()
        self._roll_day(now_ms, out)
        for sym in self.symbols.values():  # the bot's day is current: no roll per symbol
            self._tick(sym, now_ms, out)
            self.deadline = sym.wake(self.deadline)
        # No latch judgement here: the latch moves on events only, each above the
        # portfolio's own watermark. A sweep right after a restore may see symbols of
        # two persists (a crash between their records), whose sum is no account net
        # that ever was, and would latch on a loss never incurred (D2).
        portfolio = self.account.portfolio
        if portfolio.expire_reservations(now_ms):
            self.touch(out)
        for r in portfolio.reservations.values():
            self.deadline = min(self.deadline, r.expires_ts)
        self.emit(self, before, now_ms, out)

    def _roll_day(self, now_ms: int, out: Effects) -> bool:
        """Move the bot's day (and release the latch) when the wall clock passed midnight.

        Callers publish the latch's transition: ``sweep`` at its end, a symbol tick
        (restore, a decision) at once, so sessions and the latch never disagree on
        what day it is.
        """
        # The drawdown's new day opens at the equity now: the positions carried over
        # at their marks (realised PnL starts the day at 0).
        rolled = self.controls.tick(now_ms, self.account.unrealised())
        if not self.account.portfolio.tick(now_ms) and not rolled:
            return False
        self.account.resum()
        self.gate_seq += 1
        self.touch(out)
        return True

    def tick_symbol(self, sym: SymbolRisk, now_ms: int, out: Effects) -> None:
        """A symbol's wall-clock changes (rollover, cooldown end, eviction) at ``now_ms``."""
        bot_before = self.signature()
        if self._roll_day(now_ms, out):
            self.emit(self, bot_before, now_ms, out)
        self._tick(sym, now_ms, out)

    def _tick(self, sym: SymbolRisk, now_ms: int, out: Effects) -> None:
        """:meth:`tick_symbol` once the bot's day is current at ``now_ms`` (a sweep rolled
        it first): re-checking the bot's day per symbol valued every open position again."""
        before = sym.signature()
        rolled, changed = sym.tick(now_ms)
        if rolled:
            self.account.book(sym)
        if changed:
            sym.gate_seq += 1
            sym.touch(out)
            self.emit(sym, before, now_ms, out)

    # -- transitions → halt/resume events ---------------------------------------------

    emit = halt_events.emit
    """``bot.emit(holder, before, ts_ms, out, cause=...)``: events for the gates of
    ``holder`` that flipped, made in :func:`worker.core.halt_events.emit` only."""

    # -- reads -----------------------------------------------------------------------

    def account_blocks(self) -> list[Block]:
        drawdown = self.controls.drawdown_block()
        tail = [drawdown] if drawdown is not None else []
        return [*self.bot_blocks(), *self.account.blocks(), *tail]

    def account_gate_state(self, now_ms: int) -> AccountGateState:
        """The bot-wide gates and account figures; a pure read, O(1) in the symbols (the
        account keeps its figures exactly as they change, docs/performance.md)."""
        blocks = self.account_blocks()
        return self.account.gate_state(self.bot, blocks, self.gate_seq, now_ms)

    # -- snapshots ---------------------------------------------------------------------

    def portfolio_snapshot(self, id_logs: dict[str, IdLogRef] | None = None) -> PortfolioSnapshot:
        """The portfolio record (:func:`worker.core.bot_snapshot.portfolio_snapshot`)."""
        return bot_snapshot.portfolio_snapshot(self, id_logs)

    def persist(self) -> tuple[list[IdChunkOut], PortfolioSnapshot, list[tuple[str, int]]]:
        """A persist's portfolio record, with the id chunks to write before it and those to
        tombstone after it (:meth:`IdWindows.persist`)."""
        chunks, refs, drops = self.ids.persist()
        return chunks, self.portfolio_snapshot(refs), drops

    def restore_symbol(self, symbol: str, snap: SymbolSnapshot, now_ms: int, out: Effects) -> None:
        """Restore, then apply the stale-snapshot policy (``tick``) at ``now_ms``."""
        sym = self.symbol(symbol)
        sym.restore(snap)
        self.account.track(sym)
        self.account.book(sym)
        self.tick_symbol(sym, now_ms, out)
        self.deadline = sym.wake(self.deadline)

    def load_symbol(self, symbol: str, snap: SymbolSnapshot, now_ms: int) -> None:
        """Restore one of many symbols: no tick, no deadline of its own. The sweep the bulk
        restore runs once every record is in (due at ``now_ms``) ticks each symbol once
        and takes the bot's next deadline from all of them (:class:`worker.core.restore.Restore`).
        """
        sym = self.symbol(symbol)
        sym.restore(snap)
        self.account.track(sym)
        self.deadline = min(self.deadline, now_ms)

    def restore_portfolio(self, snap: PortfolioSnapshot, now_ms: int, out: Effects) -> None:
        """Take the portfolio record back (:func:`worker.core.bot_snapshot.restore_portfolio`)."""
        bot_snapshot.restore_portfolio(self, snap, now_ms)
        self.shown_loss = None  # what was published: derived at the restore's sweep
