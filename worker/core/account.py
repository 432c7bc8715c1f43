"""One bot's account: the account net, open positions, the latch, reservations.

The daily-loss latch, every decision and every account record read today's
account net: the sum of the bot's symbols' session nets of its current UTC
day. Summing every symbol per read cost O(symbols) per decision and per
account record (docs/performance.md, lever 1), so the sum is kept exactly
(:class:`~worker.core.exact.ExactSum`): when a session changes, its old net
leaves the sum and its new one enters, and the figure read is ``math.fsum``
of the symbols' nets — the same whatever order events, rollovers and restores
came in. The sum is rebuilt once (O(symbols)) when the bot's day moves or after
an operator command changed sessions outside the event paths.

Fills release what they filled of their intent's reservation here (R2); intents
are answered in :mod:`worker.core.answers`; open positions are valued at the
marks in :mod:`worker.core.valuation`.
"""

from __future__ import annotations

import math
from collections.abc import KeysView

from worker.core.exact import ExactSum
from worker.core.marks import MarkTable
from worker.core.portfolio import PortfolioRisk
from worker.core.session import MS_PER_DAY, utc_day
from worker.core.symbol import SymbolRisk
from worker.core.valuation import Valuation
from worker.messages import AccountGateState, Block, Fill


class Account:
    """Account-wide state of one bot over its symbols (shared with the bot, read only)."""

    __slots__ = (
        "_estimate",
        "_net",
        "_net_day",
        "_slack",
        "max_reservations",
        "portfolio",
        "reservation_ttl_ms",
        "symbols",
        "valuation",
    )

    def __init__(
        self,
        portfolio: PortfolioRisk,
        symbols: dict[str, SymbolRisk],
        *,
        reservation_ttl_ms: int,
        max_reservations: int,
        marks: MarkTable | None = None,
    ) -> None:
        self.portfolio = portfolio
        self.valuation = Valuation(marks if marks is not None else MarkTable())
        """The open positions and their value at the marks."""
        self.symbols = symbols
        """The bot's symbols (the bot adds them; the account reads them and writes only
        each one's ``booked_net``)."""
        self.reservation_ttl_ms = reservation_ttl_ms
        self.max_reservations = max_reservations
        self._net = ExactSum()
        """Today's account net: each symbol's ``booked_net`` (its session's net of
        ``_net_day``, else 0.0) is one of its terms."""
        self._net_day = -1
        """UTC day whose account net ``_net`` holds; -1 when it must be rebuilt."""
        self._estimate = 0.0
        """``_net`` as a float running sum since it was last read exactly (see ``latch``)."""
        self._slack = 0.0
        """What bounds the estimate's error: the magnitudes summed into it since."""
        self._rebuild_net(portfolio.last_reset_day)

    # -- account net -------------------------------------------------------------

    def account_net(self, day: int) -> float:
        """Sum of the symbols' session nets of ``day`` (sessions of another day do not
        count), correctly rounded (``fsum``). O(1) for the bot's current day; another
        day (a decision after midnight before the sweep rolled the bot) is summed."""
        today = self.portfolio.last_reset_day
        if day != today:
            sessions = (s.session for s in self.symbols.values())
            return math.fsum(s.net_pnl for s in sessions if s.last_reset_day == day) + 0.0
        if self._net_day != today:
            self._rebuild_net(today)
        return self._exact()

    def _exact(self) -> float:
        """Today's exact account net (``_net`` current); the estimate restarts from it."""
        net = self._estimate = self._net.value
        self._slack = abs(net)
        return net

    def book(self, sym: SymbolRisk) -> None:
        """``sym``'s session changed (an event booked on it, it rolled over, a restore):
        its old net leaves today's account net, its new one enters (exactly)."""
        day = self._net_day
        if day != self.portfolio.last_reset_day:
            return  # rebuilt at the next read
        session = sym.session
        new = session.net_pnl if session.last_reset_day == day else 0.0
        old = sym.booked_net
        if new != old:  # unchanged (a rollover of a flat day): nothing to do
            sym.booked_net = new
            self._net.replace(old, new)
            self._estimate += new - old
            self._slack += abs(new) + abs(old)

    def resum(self) -> None:
        """Sessions changed outside the event paths (operator resets): rebuilt when read."""
        self._net_day = -1

    def rebuild(self) -> None:
        """Every account figure afresh from the symbols, once (O(symbols)): the one entry
        point after the bot's symbols were restored in bulk."""
        self._rebuild_net(self.portfolio.last_reset_day)
        self.valuation.rebuild(self.symbols)

    def _rebuild_net(self, day: int) -> None:
        for s in self.symbols.values():  # ``or 0.0``: flat sessions share one float
            s.booked_net = (s.session.net_pnl or 0.0) if s.session.last_reset_day == day else 0.0
        self._net = ExactSum(s.booked_net for s in self.symbols.values())
        self._net_day = day
        self._exact()

    def loss_blocking(self, day: int) -> bool:
        """``portfolio_daily_loss`` blocks on ``day``: latched, or breached live.

        Exactly what :meth:`blocks` lists: a losing position carried past the
        rollover that released the latch still blocks opens, so the halts topic
        must not say ``resumed`` until the figure is back above the limit. O(1)."""
        portfolio = self.portfolio
        if portfolio.halted or portfolio.config.max_daily_loss is None:
            return portfolio.halted
        return portfolio.daily_loss_breached(self.decision_net(day * MS_PER_DAY))

    def decision_net(self, now_ms: int) -> float:
        """Today's account net for a decision; with ``include_unrealised``, the equity."""
        return self.account_net(utc_day(now_ms)) + self.loss_unrealised()

    # -- marks -------------------------------------------------------------------

    def unrealised(self) -> float:
        """The open positions at their latest marks (:meth:`Valuation.unrealised`)."""
        return self.valuation.unrealised()

    def loss_unrealised(self) -> float:
        """What the daily-loss limit adds to the account net: the unrealised PnL with
        ``[portfolio] include_unrealised`` (the default), else nothing."""
        return self.unrealised() if self.portfolio.config.include_unrealised else 0.0

    def stale_mark(self, now_ms: int) -> str | None:
        """An open symbol whose mark matters and is stale (:meth:`Valuation.stale_mark`)."""
        return self.valuation.stale_mark(now_ms)

    def latch(self, ts_ms: int) -> bool:
        """Latch the daily loss if the account reached it after an event at ``ts_ms`` (hot
        path: O(1)); True when this latched it.

        An event only ever latches: the day, and with it the latch's release, move
        with the wall clock in ``sweep``. One of an earlier day than the bot's is
        late and counts toward nothing today; one stamped on a later day counts
        toward the current day (its session clamped it there).

        The verdict is the exact figures' (``latch_exact``). Far above the limit a
        float estimate says so first: each change folded into it errs by at most
        2**-52 of ``_slack``, so the margin (1e-6 of it) covers 10**9 changes, and
        every exact read (each decision, each account record) restarts it.
        """
        portfolio = self.portfolio
        limit = portfolio.config.max_daily_loss
        day = portfolio.last_reset_day
        if limit is None or portfolio.halted or ts_ms // MS_PER_DAY < day:
            return False
        if self._net_day == day:  # clearly above the limit: no exact rounding per event
            valuation = self.valuation  # no open position: nothing unrealised (exactly 0)
            unrealised = (
                valuation.unrealised()
                if valuation.open and portfolio.config.include_unrealised
                else 0.0
            )
            margin = 1e-6 * (1.0 + abs(limit) + abs(unrealised) + self._slack)
            if self._estimate + unrealised - limit > margin:
                return False
        return self.latch_exact()

    def latch_exact(self) -> bool:
        """Latch if today's account net (with ``include_unrealised``, the equity) is at or
        past the limit, whatever the event's day (an operator reset lowered it); True
        when this latched it. Judged on the figures the account record publishes."""
        portfolio = self.portfolio
        if (
            portfolio.halted
            or portfolio.config.max_daily_loss is None
            or not portfolio.daily_loss_breached(self.loss_equity())
        ):
            return False
        portfolio.halted = True
        return True

    def loss_equity(self) -> float:
        """What the daily-loss limit is judged on: today's account net, plus the unrealised
        PnL with ``include_unrealised`` (the default)."""
        day = self.portfolio.last_reset_day
        net = self._exact() if self._net_day == day else self.account_net(day)
        if self.portfolio.config.include_unrealised:
            net += self.valuation.unrealised()
        return net

    def blocks(self) -> list[Block]:
        """The daily-loss block, checked live *and* latched."""
        portfolio = self.portfolio
        limit = portfolio.config.max_daily_loss
        if limit is None and not portfolio.halted:
            return []
        unrealised = self.loss_unrealised()
        if not portfolio.halted and not portfolio.daily_loss_breached(self.loss_equity()):
            return []
        basis = "account net PnL" if unrealised == 0.0 else "equity (with unrealised PnL)"
        reason = f"{basis} reached max daily loss {limit:g}"
        day = portfolio.last_reset_day
        return [Block("portfolio_daily_loss", reason, (day + 1) * MS_PER_DAY)]

    # -- positions ----------------------------------------------------------------

    def track(self, sym: SymbolRisk) -> None:
        """``sym``'s position or mark changed (fill, mark, restore): :meth:`Valuation.track`."""
        self.valuation.track(sym)

    def open_symbols(self) -> KeysView[str]:
        """The symbols holding a position (a live view: O(1), nothing copied)."""
        return self.valuation.open.keys()

    def gross_exposure(self) -> float:
        """Open positions at their marks, else at entry price (:mod:`worker.core.valuation`)."""
        return self.valuation.gross_exposure()

    def gate_state(self, bot: str, blocks: list[Block], seq: int, now_ms: int) -> AccountGateState:
        """The account record of the bot (its bot-wide ``blocks``); a pure read, O(1).
        Equity is today's realised net + unrealised PnL."""
        net = self.account_net(self.portfolio.last_reset_day)
        unrealised = self.unrealised()
        return AccountGateState(
            bot=bot,
            entries_allowed=not blocks,
            blocks=blocks,
            account_net_pnl=net,
            open_positions=len(self.valuation.open),
            gross_exposure=self.gross_exposure(),
            updated_ts=now_ms,
            seq=seq,
            unrealised_pnl=unrealised,
            equity=net + unrealised,
        )

    # -- reservations --------------------------------------------------------------

    def consume(self, f: Fill) -> bool:
        """A fill releases only what it filled of its intent's reservation (R2); True if a
        reservation changed."""
        return f.intent_id is not None and self.portfolio.consume(f.intent_id, f.symbol, f.qty)
