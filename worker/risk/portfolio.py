"""Account-wide risk of one bot (the seed's ``PortfolioRisk``) plus reservations."""

from __future__ import annotations

import msgspec

from worker.config import PortfolioConfig
from worker.risk.session import utc_day


class Reservation(msgspec.Struct, frozen=True):
    """Notional held for an allowed ``open`` until its fill arrives or it expires."""

    symbol: str
    notional: float
    expires_ts: int


class PortfolioRiskSnapshot(msgspec.Struct):
    halted: bool
    last_reset_day: int
    reservations: dict[str, Reservation] = {}


class PortfolioRisk:
    """Daily-loss latch on the sum of symbol net PnLs, concurrency and exposure caps.

    Unlike the seed the latch is persisted: once breached, the bot stays halted
    for the UTC day even if its PnL recovers or the worker restarts.
    """

    __slots__ = ("config", "halted", "last_reset_day", "reservations")

    def __init__(self, config: PortfolioConfig) -> None:
        self.config = config
        self.halted = False
        self.last_reset_day = 0
        self.reservations: dict[str, Reservation] = {}

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

    def reserve(self, intent_id: str, symbol: str, notional: float, expires_ts: int) -> None:
        self.reservations[intent_id] = Reservation(symbol, notional, expires_ts)

    def release(self, intent_id: str) -> Reservation | None:
        return self.reservations.pop(intent_id, None)

    def expire_reservations(self, now_ms: int) -> list[str]:
        expired = [i for i, r in self.reservations.items() if r.expires_ts <= now_ms]
        for intent_id in expired:
            del self.reservations[intent_id]
        return expired

    @property
    def reserved_notional(self) -> float:
        return sum(r.notional for r in self.reservations.values())

    def reserved_symbols(self) -> set[str]:
        return {r.symbol for r in self.reservations.values()}

    def concurrency_blocks(self, open_symbols: set[str], symbol: str) -> bool:
        """An entry on a symbol that is neither open nor reserved needs a free slot."""
        cap = self.config.max_concurrent_positions
        if cap == 0:
            return False
        taken = open_symbols | self.reserved_symbols()
        return symbol not in taken and len(taken) >= cap

    def exposure_blocks(self, gross_exposure: float, notional: float) -> bool:
        cap = self.config.max_gross_exposure
        return cap is not None and gross_exposure + self.reserved_notional + notional > cap

    def snapshot(self) -> PortfolioRiskSnapshot:
        return PortfolioRiskSnapshot(
            halted=self.halted,
            last_reset_day=self.last_reset_day,
            reservations=dict(self.reservations),
        )

    def restore(self, snap: PortfolioRiskSnapshot) -> None:
        self.halted = snap.halted
        self.last_reset_day = snap.last_reset_day
        self.reservations = dict(snap.reservations)
