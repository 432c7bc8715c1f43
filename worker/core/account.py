"""One bot's account: the running account net, open positions, the latch, reservations.

The daily-loss latch is judged on the sum of today's symbol net PnLs. Summing
every symbol per event would cost O(symbols), so the sum is kept by deltas
(O(1) per event), re-summed when the day changes, after ``NET_RESYNC`` deltas
(bounding float drift), after any change outside the event paths (rollover,
operator reset, restore), and exactly whenever it is near the limit.

Fills release what they filled of their intent's reservation here (R2); intents
are answered in :mod:`worker.core.answers`; open positions are valued at the
marks in :mod:`worker.core.valuation`.
"""

from __future__ import annotations

from worker.core.marks import MarkTable
from worker.core.portfolio import PortfolioRisk
from worker.core.session import MS_PER_DAY, utc_day
from worker.core.symbol import SymbolRisk
from worker.core.valuation import Valuation
from worker.messages import AccountGateState, Block, Fill

NET_RESYNC = 256
"""Deltas folded into a bot's running account net before it is summed afresh."""


def edge(limit: float, net: float) -> float:
    """How close to the limit the running account net must be to recompute it exactly.

    Far above the float drift of ``NET_RESYNC`` deltas, far below any real money.
    """
    return 1e-6 * (1.0 + abs(limit) + abs(net))


class Account:
    """Account-wide state of one bot over its symbols (shared with the bot, read only)."""

    __slots__ = (
        "_net_day",
        "_net_sum",
        "_net_updates",
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
        """The bot's symbols (the bot adds them; the account only reads)."""
        self.reservation_ttl_ms = reservation_ttl_ms
        self.max_reservations = max_reservations
        self._net_day = -1
        """UTC day of the running account net in ``_net_sum``; -1 when it must be recomputed."""
        self._net_sum = 0.0
        self._net_updates = 0

    # -- account net -------------------------------------------------------------

    def account_net(self, day: int) -> float:
        """Sum of today's symbol net PnLs (sessions of another day do not count)."""
        return sum(
            s.session.net_pnl for s in self.symbols.values() if s.session.last_reset_day == day
        )

    def running_net(self, day: int) -> float:
        """``account_net(day)`` kept up to date by deltas (see the module's docstring)."""
        if self._net_day != day or self._net_updates >= NET_RESYNC:
            self._net_sum = self.account_net(day)
            self._net_day = day
            self._net_updates = 0
        return self._net_sum

    def resum(self) -> None:
        """A session changed outside the event paths: sum afresh next time."""
        self._net_day = -1

    def fold(self, day_before: int, day_after: int, delta: float) -> None:
        """Keep the running account net in step with one session change."""
        if day_after != day_before:
            self._net_day = -1  # the session rolled to a new day: re-sum
        elif day_before == self._net_day:
            self._net_sum += delta
            self._net_updates += 1

    def decision_net(self, now_ms: int) -> float:
        """Today's account net for a decision: O(1) running sum, exact near the limit;
        with ``include_unrealised``, the equity (open positions at their marks)."""
        day = utc_day(now_ms)
        unrealised = self.loss_unrealised()
        net = self.running_net(day) + unrealised
        limit = self.portfolio.config.max_daily_loss
        if limit is not None and abs(net - limit) <= edge(limit, net):
            net = self.account_net(day) + unrealised
        return net

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
        path); True when this latched it.

        An event only ever latches: the day, and with it the latch's release, move
        with the wall clock in ``sweep``. One of an earlier day than the bot's is
        late and counts toward nothing today; one stamped on a later day counts
        toward the current day (its session clamped it there).
        """
        portfolio = self.portfolio
        limit = portfolio.config.max_daily_loss
        if limit is None or portfolio.halted:
            return False
        day = portfolio.last_reset_day
        if ts_ms // MS_PER_DAY < day:
            return False
        if self._net_day == day and self._net_updates < NET_RESYNC:
            net = self._net_sum  # ``running_net``, inlined
        else:
            net = self.running_net(day)
        unrealised = self.loss_unrealised() if self.valuation.open else 0.0
        net += unrealised
        if net - limit > 1e-6 * (1.0 + abs(limit) + abs(net)):  # ``edge``, inlined
            return False  # clearly above the limit: nothing to latch
        if abs(net - limit) <= edge(limit, net):
            net = self.account_net(day) + unrealised  # on the edge: decide on the exact sum
        if portfolio.daily_loss_breached(net):
            portfolio.halted = True
            return True
        return False

    def latch_exact(self) -> bool:
        """Latch if the exact account net of the current day is past the limit (after an
        operator reset lowered it); True when this latched it."""
        portfolio = self.portfolio
        if portfolio.halted or not portfolio.daily_loss_breached(
            self.account_net(portfolio.last_reset_day) + self.loss_unrealised()
        ):
            return False
        portfolio.halted = True
        return True

    def blocks(self, net: float | None = None) -> list[Block]:
        """The daily-loss block, checked live *and* latched.

        ``net``: today's ``account_net`` when the caller summed it already. The sum
        is O(symbols) and the account record needs it too, so the record sums it
        once (every batch builds that record for every bot it touched); nothing
        is summed at all without a daily-loss limit.
        """
        portfolio = self.portfolio
        day = portfolio.last_reset_day
        unrealised = self.loss_unrealised()
        if not portfolio.halted:
            if portfolio.config.max_daily_loss is None:
                return []
            if net is None:
                net = self.account_net(day)
            if not portfolio.daily_loss_breached(net + unrealised):
                return []
        limit = portfolio.config.max_daily_loss
        basis = "account net PnL" if unrealised == 0.0 else "equity (with unrealised PnL)"
        reason = f"{basis} reached max daily loss {limit:g}"
        return [Block("portfolio_daily_loss", reason, (day + 1) * MS_PER_DAY)]

    # -- positions ----------------------------------------------------------------

    def track(self, sym: SymbolRisk) -> None:
        """``sym``'s position changed (fill, restore): :meth:`Valuation.track`."""
        self.valuation.track(sym)

    def open_symbols(self) -> set[str]:
        return set(self.valuation.open)

    def gross_exposure(self) -> float:
        """Open positions at their marks, else at entry price (:mod:`worker.core.valuation`)."""
        return self.valuation.gross_exposure()

    def gate_state(
        self, bot: str, blocks: list[Block], net: float, seq: int, now_ms: int
    ) -> AccountGateState:
        """The account record of the bot (its bot-wide ``blocks``, today's account
        ``net``); a pure read. Equity is today's realised net + unrealised PnL."""
        unrealised = self.unrealised()
        return AccountGateState(
            bot=bot,
            entries_allowed=not blocks,
            blocks=blocks,
            account_net_pnl=net,
            open_positions=len(self.open_symbols()),
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
