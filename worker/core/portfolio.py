"""Account-wide risk of one bot (the seed's ``PortfolioRisk``) plus reservations."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, Protocol

import msgspec

from worker.config import PortfolioConfig
from worker.core.exact import ExactSum
from worker.core.intents import IntentWindow
from worker.core.session import utc_day

QTY_TOLERANCE = 1e-9
"""Relative tolerance of quantity comparisons (float residue of partial fills)."""

MAX_RESERVATIONS = 1_000
"""Hard ceiling on outstanding reservations per bot, whatever ``max_reservations_per_bot``
says: every one is in the bot's portfolio snapshot, which must stay well under the
1 MiB record limit."""
NAME_BYTES_BUDGET = 96 * 1024
"""Ceiling on the JSON bytes of the ids and symbols of outstanding reservations. Typical
names (a UUID and a ticker: ~50 bytes) fit 2,000 reservations, so the count caps first;
long ids with symbols of 64 four-byte characters (~320 bytes) cap here at ~300."""

_encode = msgspec.json.Encoder().encode


def _name_bytes(intent_id: str, symbol: str) -> int:
    return len(_encode(intent_id)) + len(_encode(symbol))


class Reservation(msgspec.Struct, frozen=True, omit_defaults=True):
    """What an allowed intent holds until fills with its ``intent_id`` consume it or it expires.

    An open holds notional (exposure) and a concurrency slot. A close
    (``close=True``, notional 0) holds quantity of the position it reduces, so
    concurrent closes can never together exceed the position. ``qty`` is what is
    left to fill; a fill releases only what it filled. Snapshots written before
    partial fills were tracked have no ``qty``: such a reservation is released
    whole by its first fill, as it was then.
    """

    symbol: str
    notional: float
    expires_ts: int
    qty: float | None = None
    close: bool = False


class PersistedPortfolio(Protocol):
    """What a portfolio record holds of :class:`PortfolioRisk` (``PortfolioSnapshot``)."""

    halted: bool
    last_reset_day: int
    reservations: dict[str, Reservation]
    intent_ids: bytes


class _Held:
    """Reservations on one symbol, summed so a decision never scans every reservation."""

    __slots__ = ("close_qty", "closes", "opens")

    def __init__(self) -> None:
        self.opens = 0
        self.closes = 0
        self.close_qty = 0.0


class PortfolioRisk:
    """Daily-loss latch on the sum of symbol net PnLs, concurrency and exposure caps.

    Unlike the seed the latch is persisted: once breached, the bot stays halted
    for the UTC day even if its PnL recovers or the worker restarts.
    """

    __slots__ = (
        "_held",
        "_name_bytes",
        "_open_notional",
        "config",
        "halted",
        "intents",
        "last_reset_day",
        "reservations",
    )

    def __init__(self, config: PortfolioConfig) -> None:
        self.config = config
        self.halted = False
        self.last_reset_day = 0
        self.reservations: dict[str, Reservation] = {}
        self.intents = IntentWindow()
        self._held: dict[str, _Held] = {}
        self._open_notional = ExactSum()
        """The opens' remaining notional, summed exactly as they come and go."""
        self._name_bytes = 0
        """``_name_bytes`` of every outstanding reservation, summed."""

    def daily_loss_breached(self, account_net: float) -> bool:
        limit = self.config.max_daily_loss
        return limit is not None and account_net <= limit

    def observe(self, account_net: float, ts_ms: int) -> bool:
        """Re-check the live PnL at ``ts_ms``; True if this observation latched the halt."""
        self.tick(ts_ms)
        if utc_day(ts_ms) < self.last_reset_day:
            return False  # a late event of an earlier day does not halt today
        if not self.halted and self.daily_loss_breached(account_net):
            self.halted = True
            return True
        return False

    def tick(self, now_ms: int) -> bool:
        """UTC rollover clears the latch; True if it rolled over."""
        day = utc_day(now_ms)
        if day <= self.last_reset_day:
            return False
        self.last_reset_day = day
        self.halted = False
        return True

    def blocked_by_daily_loss(self, account_net: float) -> bool:
        """Checked live *and* latched."""
        return self.halted or self.daily_loss_breached(account_net)

    # -- reservations --------------------------------------------------------------

    def reserve(
        self,
        intent_id: str,
        symbol: str,
        notional: float,
        expires_ts: int,
        *,
        qty: float | None = None,
        close: bool = False,
    ) -> None:
        """Hold a reservation under a new ``intent_id`` (the caller checked it is new)."""
        r = self.reservations[intent_id] = Reservation(symbol, notional, expires_ts, qty, close)
        self._count(r, 1)
        self._name_bytes += _name_bytes(intent_id, symbol)

    def full(self, max_reservations: int) -> bool:
        """No room for another reservation (count or snapshot bytes)."""
        cap = min(max_reservations, MAX_RESERVATIONS)
        return len(self.reservations) >= cap or self._name_bytes >= NAME_BYTES_BUDGET

    def consume(self, intent_id: str, symbol: str, qty: float) -> bool:
        """A fill of ``qty`` on ``symbol`` for ``intent_id``: release what it filled.

        The rest stays reserved (in proportion for an open's notional) until
        filled or expired. True if a reservation changed. A fill on another
        symbol than the intent's is a producer error and releases nothing.
        """
        r = self.reservations.get(intent_id)
        if r is None or r.symbol != symbol:
            return False
        self._count(r, -1)
        held = r.qty
        if held is None or held - qty <= QTY_TOLERANCE * held:
            del self.reservations[intent_id]
            self._name_bytes -= _name_bytes(intent_id, symbol)
        else:
            left = held - qty
            kept = msgspec.structs.replace(r, qty=left, notional=r.notional * (left / held))
            self.reservations[intent_id] = kept
            self._count(kept, 1)
        return True

    def expire_reservations(self, now_ms: int) -> list[str]:
        expired = [i for i, r in self.reservations.items() if r.expires_ts <= now_ms]
        for intent_id in expired:
            r = self.reservations.pop(intent_id)
            self._count(r, -1)
            self._name_bytes -= _name_bytes(intent_id, r.symbol)
        return expired

    def _count(self, r: Reservation, sign: int) -> None:
        held = self._held.get(r.symbol)
        if held is None:
            held = self._held[r.symbol] = _Held()
        if r.close:
            held.closes += sign
            held.close_qty += sign * (r.qty or 0.0)
        else:
            held.opens += sign
            self._open_notional.add(sign * r.notional)
        if not (held.opens or held.closes):
            del self._held[r.symbol]

    def _resum(self) -> None:
        """Recompute the running sums (restore)."""
        self._held = {}
        self._open_notional = ExactSum()
        self._name_bytes = 0
        for intent_id, r in self.reservations.items():
            self._count(r, 1)
            self._name_bytes += _name_bytes(intent_id, r.symbol)

    @property
    def reserved_notional(self) -> float:
        """Remaining notional of the outstanding opens, correctly rounded (``fsum``)."""
        return self._open_notional.value

    def reserved_close_qty(self, symbol: str) -> float:
        """Quantity of ``symbol`` that outstanding closes may still fill."""
        held = self._held.get(symbol)
        return 0.0 if held is None else held.close_qty

    def reserved_symbols(self) -> set[str]:
        """Symbols an outstanding open holds a concurrency slot on."""
        return {s for s, held in self._held.items() if held.opens}

    def concurrency_blocks(self, open_symbols: Collection[str], symbol: str) -> bool:
        """An entry on a symbol that is neither open nor reserved needs a free slot.

        Counts the union of open and reserved symbols without building it: a decision pays for the
        symbols an open reservation holds, never for every open position."""
        cap = self.config.max_concurrent_positions
        if cap == 0 or symbol in open_symbols:
            return False
        held = self._held.get(symbol)
        if held is not None and held.opens:
            return False
        taken = len(open_symbols)
        if taken >= cap:
            return True
        if taken + len(self._held) < cap:
            return False  # not even every reserved symbol besides the open ones fills it
        taken += sum(1 for s, h in self._held.items() if h.opens and s not in open_symbols)
        return taken >= cap

    def exposure_blocks(self, gross_exposure: float, notional: float) -> bool:
        """The gross exposure (as the account record shows it), the opens' remaining
        notional and ``notional`` exceed the cap: judged on their exact sum (the sign of
        an ``fsum`` is exact), so the verdict depends on no order of summation."""
        cap = self.config.max_gross_exposure
        if cap is None:
            return False
        return math.fsum([gross_exposure, *self._open_notional.partials, notional, -cap]) > 0.0

    def persisted(self, *, whole: bool) -> dict[str, Any]:
        """The fields of :class:`PersistedPortfolio`, the intent window whole or (``whole``
        false: persisted as chunk records beside it, :mod:`worker.core.idlog`) empty."""
        return {
            "halted": self.halted,
            "last_reset_day": self.last_reset_day,
            "reservations": dict(self.reservations),
            "intent_ids": self.intents.dump() if whole else b"",
        }

    def restore(self, snap: PersistedPortfolio) -> None:
        self.halted = snap.halted
        self.last_reset_day = snap.last_reset_day
        self.reservations = dict(snap.reservations)
        self.intents.load(snap.intent_ids)
        self._resum()
