"""Exact running sums: a figure kept up to date term by term that always reads as
``math.fsum`` of the terms it currently holds.

A bot's account net, gross exposure and unrealised PnL are sums over its
symbols, read on every decision and every account record. Summing every
symbol per read is O(symbols); a plain running float is O(1) but drifts, and
its last bits depend on the order the changes came in (a restore, a replay and
the live run would disagree near a limit). This keeps the sum *exactly*, the
way ``math.fsum`` does: a short list of floats whose exact sum is the exact
sum of the terms. Adding a term appends it and removing one appends its
negation, both exact; every few changes the list is folded back into a few
partials by ``fsum`` itself (exact too); reading rounds the list once,
correctly (and only when read). So the figure equals ``math.fsum`` of the current terms, whatever
order they were added and removed in (a zero sum reads ``0.0``, never ``-0.0``).

Terms must be finite. Validated messages bound every price, quantity and
amount by 1e15, so no term or partial comes anywhere near overflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

_fsum = math.fsum

COMPACT_AT = 16
"""Terms held before they are folded into a few partials: ``fsum`` is C, a Python
two-sum loop per change cost more than appending and re-reading a short list."""


class ExactSum:
    """The exact sum of a changing multiset of floats; ``value`` is its ``fsum``."""

    __slots__ = ("_value", "partials")

    def __init__(self, terms: Iterable[float] = ()) -> None:
        self.partials: list[float] = _partials([t for t in terms if t])
        """Non-zero floats whose exact sum is the exact sum of the terms (a few partials,
        then the terms added or removed since, up to ``COMPACT_AT``)."""
        self._value: float | None = None
        """``fsum`` of the partials once read, None until then after a change: a sum
        changed far more often than read (the exposure, per fill) rounds only when read."""

    @property
    def value(self) -> float:
        """The terms' sum, correctly rounded (``math.fsum``)."""
        value = self._value
        if value is None:
            value = self._value = _fsum(self.partials)
        return value

    def add(self, x: float) -> None:
        """Add the term ``x`` (exactly)."""
        self.replace(0.0, x)

    def replace(self, old: float, new: float) -> None:
        """One term changed from ``old`` to ``new``: remove the one, add the other (exactly)."""
        if old != new:
            partials = self.partials
            if new:
                partials.append(new)
            if old:
                partials.append(-old)
            if len(partials) > COMPACT_AT:
                self.partials = _partials(partials)
            self._value = None


def _partials(terms: list[float]) -> list[float]:
    """A few floats with the exact sum of ``terms`` (which it extends): the rounded sum,
    then the rounded remainder, until nothing remains (``fsum`` runs at C speed).

    Each ``fsum`` is the correctly rounded exact sum of the terms less the partials
    found so far; the remainder shrinks by ~2**-53 each round and, being a multiple
    of the smallest float, reaches exactly 0 (one to three rounds in practice).
    """
    found: list[float] = []
    total = math.fsum(terms)
    while total:
        found.append(total)
        terms.append(-total)
        total = math.fsum(terms)
    found.reverse()
    return found
