"""One bot's open positions, and their value at the marks.

Exposure and concurrency checks read only the symbols holding a position, so a
decision costs the same whatever number of flat symbols the bot has. Their
valuation (unrealised PnL, gross exposure, when the first mark that matters
goes stale) is one pass over them, cached until a mark or a position changes:
a decision reads it up to three times, and the daily-loss latch after every
fill (docs/performance.md).
"""

from __future__ import annotations

import math

from worker.core.marks import MarkTable, exposure, unrealised_pnl
from worker.core.symbol import SymbolRisk


class Valuation:
    """The bot's open positions at the market-wide marks (shared, read only)."""

    __slots__ = ("_exposure", "_stale_after", "_unrealised", "_valued_at", "marks", "open")

    def __init__(self, marks: MarkTable) -> None:
        self.marks = marks
        self.open: dict[str, SymbolRisk] = {}
        """Symbols holding a position, by name (kept in step by :meth:`track`)."""
        self._valued_at = -1
        """``marks.version`` the cached valuation below was made at; -1: positions moved."""
        self._unrealised = 0.0
        self._exposure = 0.0
        self._stale_after = math.inf
        """Wall time after which some open position's mark that matters is stale."""

    def track(self, sym: SymbolRisk) -> None:
        """Keep the open symbols in step after ``sym``'s position changed (fill, restore)."""
        self._valued_at = -1
        if sym.position.is_flat:
            self.open.pop(sym.symbol, None)
        else:
            self.open[sym.symbol] = sym

    def unrealised(self) -> float:
        """The open positions at their latest marks (positions without one count 0).

        Without any mark held it is 0 at once: every fill moves a position, and the
        daily-loss latch reads this after each one (re-valuing every open position
        per fill made fills 2.6x slower, docs/performance.md)."""
        if not self.marks:
            return 0.0
        if self._valued_at != self.marks.version:
            self._value()
        return self._unrealised

    def gross_exposure(self) -> float:
        """Open positions at their marks (else at entry price), exactly rounded (``fsum``):
        the same whatever order positions were opened or restored."""
        if self._valued_at != self.marks.version:
            self._value()
        return self._exposure

    def stale_mark(self, now_ms: int) -> str | None:
        """An open symbol whose mark matters (``SymbolRisk.mark_max_age_ms``) and is
        older than that at ``now_ms``, if any (O(1) while none is)."""
        if self._valued_at != self.marks.version:
            self._value()
        if now_ms <= self._stale_after:
            return None
        for name, sym in self.open.items():
            age = sym.mark_max_age_ms
            if age is not None and self.marks.stale(name, now_ms, age):
                return name
        return None

    def _value(self) -> None:
        """One pass over the open positions at the current marks: unrealised PnL, exposure
        and when the first mark that matters goes stale."""
        unrealised: list[float] = []
        exposures: list[float] = []
        stale_after = math.inf
        latest = self.marks.latest
        for sym in self.open.values():
            p = sym.position
            held = latest(sym.symbol)
            if held is None:
                exposures.append(p.notional)
                continue
            unrealised.append(unrealised_pnl(p.qty, p.avg_price, p.contract_value, held.price))
            exposures.append(exposure(p.qty, p.avg_price, p.contract_value, held.price))
            age = sym.mark_max_age_ms
            if age is not None and held.ts + age < stale_after:
                stale_after = held.ts + age
        self._unrealised = math.fsum(unrealised)
        self._exposure = math.fsum(exposures)
        self._stale_after = stale_after
        self._valued_at = self.marks.version
