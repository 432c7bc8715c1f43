"""Exact running sums: a figure kept up to date term by term that always reads as
``math.fsum`` of the terms it currently holds.

A bot's account net, gross exposure and unrealised PnL are sums over its
symbols, read on every decision and every account record. Summing every
symbol per read is O(symbols); a plain running float is O(1) but drifts, and
its last bits depend on the order the changes came in (a restore, a replay and
the live run would disagree near a limit). This keeps the sum *exactly*, the
way ``math.fsum`` does (Shewchuk's algorithm): a short list of partials whose
exact sum is the exact sum of the terms. Adding a term is exact, and removing
one is adding its negation, also exact; reading rounds the partials once,
correctly. So the figure equals ``math.fsum`` of the current terms, whatever
order they were added and removed in (a zero sum reads ``0.0``, never ``-0.0``).

Terms must be finite. Validated messages bound every price, quantity and
amount by 1e15, so no term or partial comes anywhere near overflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class ExactSum:
    """The exact sum of a changing multiset of floats; ``value`` is its ``fsum``."""

    __slots__ = ("partials", "value")

    def __init__(self, terms: Iterable[float] = ()) -> None:
        self.partials: list[float] = _partials(list(terms))
        """Non-zero floats whose exact sum is the exact sum of the terms (smallest first)."""
        self.value = math.fsum(self.partials)
        """The terms' sum, correctly rounded (``math.fsum``): O(1) to read."""

    def add(self, x: float) -> None:
        """Add the term ``x`` (exactly)."""
        if x:
            self.value = math.fsum(self._grow(x))

    def replace(self, old: float, new: float) -> None:
        """One term changed from ``old`` to ``new``: remove the one, add the other (exactly)."""
        if old != new:
            if new:
                self._grow(new)
            if old:
                self._grow(-old)
            self.value = math.fsum(self.partials)

    def _grow(self, x: float) -> list[float]:
        """Shewchuk's grow-expansion (``math.fsum``'s inner loop): fold ``x`` into the
        partials with error-free two-sums, dropping the zeros; returns the partials."""
        partials = self.partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                hi = y + x
                lo = x - (hi - y)
            else:
                hi = x + y
                lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x] if x else []
        return partials


def _partials(terms: list[float]) -> list[float]:
    """Partials of many terms at once (a rebuild): ``fsum`` runs at C speed, so take the
    rounded sum, then the rounded remainder, until nothing remains.

    Each ``fsum`` is the correctly rounded exact sum of the terms less the partials
    found so far; the remainder shrinks by ~2**-53 each round and, being a multiple
    of the smallest float, reaches exactly 0 (two or three rounds in practice).
    """
    found: list[float] = []
    total = math.fsum(terms)
    while total:
        found.append(total)
        terms.append(-total)
        total = math.fsum(terms)
    found.reverse()
    return found
