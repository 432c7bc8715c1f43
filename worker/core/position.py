"""Signed position with average-cost accounting and round-trip detection."""

from __future__ import annotations

import msgspec

from worker.core.fields import adopt, capture

_FLAT_TOLERANCE = 1e-9
"""Relative tolerance under which a position counts as flat (float residue)."""


class PositionSnapshot(msgspec.Struct):
    """The persisted attributes of :class:`Position`."""

    qty: float
    avg_price: float
    entry_fees: float
    contract_value: float
    round_trip_net: float


class RoundTrip(msgspec.Struct, frozen=True):
    """What one fill realised: PnL to book now, and a finished round trip if any."""

    gross: float
    fees: float
    closed_net: float | None
    """Net PnL of the round trip this fill completed (flat or flip), else None."""


_NOTHING_REALISED = RoundTrip(0.0, 0.0, None)
_FLAT = PositionSnapshot(
    qty=0.0, avg_price=0.0, entry_fees=0.0, contract_value=1.0, round_trip_net=0.0
)


class Position:
    """Signed quantity (long > 0), average entry price and unbooked entry fees.

    A reducing fill realises ``(exit - entry) * qty * contract_value`` (sign by
    side) net of its own fee share and the proportional share of the entry
    fees. One round trip (flat -> ... -> flat, or a flip) is one trade.
    """

    __slots__ = PositionSnapshot.__struct_fields__
    # The persisted attributes, set from a ``PositionSnapshot`` (declared for type checks).
    qty: float
    avg_price: float
    entry_fees: float
    contract_value: float
    round_trip_net: float

    def __init__(self) -> None:
        adopt(self, _FLAT)

    @property
    def is_flat(self) -> bool:
        return self.qty == 0.0

    @property
    def notional(self) -> float:
        return abs(self.qty) * self.avg_price * self.contract_value

    def apply(
        self, signed_qty: float, price: float, fee: float, contract_value: float
    ) -> RoundTrip:
        held = self.qty
        if held == 0.0 or (held > 0.0) == (signed_qty > 0.0):
            self._open(signed_qty, price, fee, contract_value)
            return _NOTHING_REALISED

        fill_size = abs(signed_qty)
        held_size = abs(held)
        closed = min(fill_size, held_size)
        direction = 1.0 if held > 0.0 else -1.0
        gross = (price - self.avg_price) * closed * self.contract_value * direction
        entry_share = self.entry_fees * (closed / held_size)
        fees = fee * (closed / fill_size) + entry_share
        self.round_trip_net += gross - fees

        remaining = held + signed_qty
        scale = max(held_size, fill_size)
        if abs(remaining) <= _FLAT_TOLERANCE * scale:
            return self._finish(gross, fees)
        if (remaining > 0.0) != (held > 0.0):
            trip = self._finish(gross, fees)
            self._open(remaining, price, fee * (abs(remaining) / fill_size), contract_value)
            return trip
        self.qty = remaining
        self.entry_fees -= entry_share
        return RoundTrip(gross, fees, None)

    def _open(self, signed_qty: float, price: float, fee: float, contract_value: float) -> None:
        size = abs(self.qty) + abs(signed_qty)
        self.avg_price = (abs(self.qty) * self.avg_price + abs(signed_qty) * price) / size
        self.qty += signed_qty
        self.entry_fees += fee
        self.contract_value = contract_value

    def _finish(self, gross: float, fees: float) -> RoundTrip:
        net = self.round_trip_net
        self.qty = 0.0
        self.avg_price = 0.0
        self.entry_fees = 0.0
        self.round_trip_net = 0.0
        return RoundTrip(gross, fees, net)

    def snapshot(self) -> PositionSnapshot:
        return capture(self, PositionSnapshot)

    def restore(self, snap: PositionSnapshot) -> None:
        adopt(self, snap)
