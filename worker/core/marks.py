"""The global mark table: the latest mark price per symbol (issue 11, "Mark prices").

Marks are market-wide, not per bot: every worker holds the same table, built
from every partition of the marks topic (Kafka Streams' GlobalKTable is the
model). The table keeps, per symbol, the mark with the latest ``ts``; a mark
stamped earlier than the one held is ignored, so whatever order a reader meets
the records in (a restart re-reads the topic), the table ends the same.

Freshness is judged against a clock the caller passes (the decision's wall
clock): this module does no I/O and reads no clock.
"""

from __future__ import annotations

from typing import NamedTuple

from worker.messages import Mark


class MarkEntry(NamedTuple):
    price: float
    ts: int


class MarkTable:
    """Latest mark per symbol, with its ``ts``."""

    __slots__ = ("_marks", "version")

    def __init__(self) -> None:
        self._marks: dict[str, MarkEntry] = {}
        self.version = 0
        """Counts the changes: whoever caches a valuation at the marks compares it."""

    def __len__(self) -> int:
        return len(self._marks)

    def apply(self, mark: Mark) -> bool:
        """Hold ``mark`` unless one with a later ``ts`` is held; True if the table changed.

        At an equal ``ts`` the later record wins (one symbol's marks share a
        partition, so "later" is the topic's order, the same on every read).
        """
        held = self._marks.get(mark.symbol)
        if held is not None and (mark.ts < held.ts or held == (mark.price, mark.ts)):
            return False
        self._marks[mark.symbol] = MarkEntry(mark.price, mark.ts)
        self.version += 1
        return True

    def latest(self, symbol: str) -> MarkEntry | None:
        """The held mark of ``symbol`` whatever its age, None if none was received."""
        return self._marks.get(symbol)

    def fresh(self, symbol: str, now_ms: int, max_age_ms: int) -> float | None:
        """The mark price if one at most ``max_age_ms`` old at ``now_ms`` is held, else None.

        A mark stamped ahead of ``now_ms`` is fresh (its age is negative): the
        producer's clock runs ahead, the price is still the newest known.
        """
        held = self._marks.get(symbol)
        if held is None or now_ms - held.ts > max_age_ms:
            return None
        return held.price

    def stale(self, symbol: str, now_ms: int, max_age_ms: int) -> bool:
        """A mark is held but too old: a check that needs it must fail closed.

        No mark at all is not stale: positions are then valued at their entry
        price (unrealised 0), as before marks existed.
        """
        held = self._marks.get(symbol)
        return held is not None and now_ms - held.ts > max_age_ms


def unrealised_pnl(qty: float, avg_price: float, contract_value: float, mark: float) -> float:
    """``qty * (mark - avg_price) * contract_value``: signed ``qty``, so a short gains
    when the mark falls. 0 for a flat position."""
    if qty == 0.0:
        return 0.0
    return qty * (mark - avg_price) * contract_value


def exposure(qty: float, avg_price: float, contract_value: float, mark: float | None) -> float:
    """Gross exposure of a position: at the mark when there is one, else at entry price."""
    price = avg_price if mark is None else mark
    return abs(qty) * price * contract_value
