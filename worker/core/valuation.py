"""One bot's open positions, and their value at the marks, kept exactly per change.

Exposure and concurrency checks read only the symbols holding a position, so a
decision costs the same whatever number of flat symbols the bot has. The
valuation (unrealised PnL, gross exposure) is read by every decision, every
account record and the daily-loss latch after every event, so it is not
recomputed per read: when a fill or a mark moves one symbol, only that symbol
is re-valued, and the bot's sums drop its old value and take its new one
exactly (:class:`~worker.core.exact.ExactSum`). A read is O(1) and equals
``math.fsum`` over the open positions' values (docs/performance.md, lever 1).

Marks are market-wide: whoever applies one must :meth:`Valuation.track` every
bot's symbol it re-values (``events.apply_mark``, via the engine).
"""

from __future__ import annotations

import math

from worker.core.exact import ExactSum
from worker.core.marks import MarkTable, exposure, unrealised_pnl
from worker.core.symbol import SymbolRisk

_NOTHING = (0.0, 0.0)
"""What a flat (or untracked) symbol adds: no unrealised PnL, no exposure."""


class Valuation:
    """The bot's open positions at the market-wide marks (shared, read only)."""

    __slots__ = ("_exposure", "_stale_after", "_terms", "_unrealised", "marks", "open")

    def __init__(self, marks: MarkTable) -> None:
        self.marks = marks
        self.open: dict[str, SymbolRisk] = {}
        """Symbols holding a position, by name (kept in step by :meth:`track`)."""
        self._terms: dict[str, tuple[float, float]] = {}
        """Per open symbol, the (unrealised PnL, exposure) it adds to the sums below."""
        self._unrealised = ExactSum()
        self._exposure = ExactSum()
        self._stale_after = math.inf
        """Wall time up to which no open position's mark that matters is stale: a lower
        bound (closing a position or a newer mark only moves the true one later)."""

    def track(self, sym: SymbolRisk) -> None:
        """``sym``'s position or mark changed (fill, mark, restore): re-value it alone and
        adjust the sums by its old and new value."""
        name = sym.symbol
        old = self._terms.pop(name, _NOTHING)
        if sym.position.qty == 0.0:
            self.open.pop(name, None)
            new = _NOTHING
        else:
            self.open[name] = sym
            new = self._terms[name] = self._value(sym)
        if old[0] != new[0]:  # without a mark both are 0: no call (hot path, every fill)
            self._unrealised.replace(old[0], new[0])
        self._exposure.replace(old[1], new[1])

    def rebuild(self, symbols: dict[str, SymbolRisk]) -> None:
        """Value every open position afresh (after a bulk restore): O(symbols), once."""
        self._stale_after = math.inf
        self.open = {name: sym for name, sym in symbols.items() if sym.position.qty != 0.0}
        self._terms = {name: self._value(sym) for name, sym in self.open.items()}
        self._unrealised = ExactSum(u for u, _ in self._terms.values())
        self._exposure = ExactSum(e for _, e in self._terms.values())

    def _value(self, sym: SymbolRisk) -> tuple[float, float]:
        """(unrealised PnL, exposure) of ``sym``'s open position at its latest mark, else
        at its entry price (nothing unrealised); lowers the staleness bound to its mark's."""
        p = sym.position
        held = self.marks.latest(sym.symbol)
        if held is None:
            return 0.0, exposure(p.qty, p.avg_price, p.contract_value, None)
        age = sym.mark_max_age_ms
        if age is not None and held.ts + age < self._stale_after:
            self._stale_after = held.ts + age
        return (
            unrealised_pnl(p.qty, p.avg_price, p.contract_value, held.price),
            exposure(p.qty, p.avg_price, p.contract_value, held.price),
        )

    def unrealised(self) -> float:
        """The open positions at their latest marks (positions without one count 0)."""
        return self._unrealised.value

    def gross_exposure(self) -> float:
        """Open positions at their marks (else at entry price), correctly rounded: the
        same whatever order positions were opened, marked or restored."""
        return self._exposure.value

    def stale_mark(self, now_ms: int) -> str | None:
        """An open symbol whose mark matters (``SymbolRisk.mark_max_age_ms``) and is
        older than that at ``now_ms``, if any (O(1) while none can be).

        Past the lower bound, one pass finds a stale one or the true bound again."""
        if now_ms <= self._stale_after:
            return None
        latest = self.marks.latest
        stale_after = math.inf
        for name, sym in self.open.items():
            age = sym.mark_max_age_ms
            if age is None:
                continue
            held = latest(name)
            if held is None:
                continue
            if now_ms - held.ts > age:
                return name
            stale_after = min(stale_after, held.ts + age)
        self._stale_after = stale_after
        return None
