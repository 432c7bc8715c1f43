"""Per-symbol session PnL with a daily loss halt (the seed's ``SessionPnl``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from worker.config import SessionConfig
from worker.core.fields import adopt, capture

MS_PER_DAY = 86_400_000

Classification = Literal["win", "loss", "breakeven"]


def utc_day(ts_ms: int) -> int:
    """Days since the Unix epoch of a UTC timestamp: the session's identity."""
    return ts_ms // MS_PER_DAY


def next_midnight_ms(ts_ms: int) -> int:
    return (utc_day(ts_ms) + 1) * MS_PER_DAY


class SessionPnlSnapshot(msgspec.Struct):
    """The seed's persisted shape, field for field (the attributes of :class:`SessionPnl`)."""

    realised: float
    fees: float
    trades: int
    wins: int
    losses: int
    breakevens: int
    halted: bool
    last_reset_day: int


_FRESH = SessionPnlSnapshot(0.0, 0.0, 0, 0, 0, 0, False, 0)
"""A session with nothing booked, of day 0."""


class SessionPnl:
    """Realised PnL of one symbol for the current UTC day.

    Trades are classified on **net** (gross - fee): a small gross win eaten by
    fees is a loss. Once net PnL reaches ``loss_limit`` the session halts until
    the next 00:00 UTC rollover, which resets every total. The rollover follows
    the wall clock given to ``tick``; an event's own ``ts`` only decides whether
    it is late (an earlier day: ignored).
    """

    __slots__ = ("config", *SessionPnlSnapshot.__struct_fields__)
    # The persisted attributes, set from a ``SessionPnlSnapshot`` (declared for type checks).
    trades: int
    wins: int
    losses: int
    breakevens: int
    last_reset_day: int
    realised: float
    fees: float
    halted: bool

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        adopt(self, _FRESH)

    def _reset(self) -> None:
        """Totals and halt cleared; the day stays."""
        day = self.last_reset_day
        adopt(self, _FRESH)
        self.last_reset_day = day

    @property
    def net_pnl(self) -> float:
        return self.realised - self.fees

    @property
    def win_rate(self) -> float | None:
        """Wins over decided trades; break-evens are excluded."""
        decided = self.wins + self.losses
        return self.wins / decided if decided else None

    def _enter_day(self, ts_ms: int) -> bool:
        """False if the event is from an earlier UTC day than the session.

        An event stamped on a *later* day counts toward the current one: only the
        wall clock (``tick``) rolls the day, so a producer stamping an event past
        midnight cannot lift a halt or wipe today's losses early.
        """
        return ts_ms // MS_PER_DAY >= self.last_reset_day

    def book(self, gross: float, fee: float, ts_ms: int) -> bool:
        """Add realised PnL without counting a trade (a partial close booked from fills).

        Returns False, changing nothing, when the event belongs to an earlier
        UTC day than the session: yesterday's loss does not halt today.
        """
        if ts_ms // MS_PER_DAY < self.last_reset_day:  # ``_enter_day``, inlined (hot path)
            return False
        self.realised += gross
        self.fees += fee
        if not self.halted and self.realised - self.fees <= self.config.loss_limit:
            self.halted = True  # ``net_pnl`` reached the limit (inlined, as above)
        return True

    def count_trade(self, net: float, ts_ms: int) -> Classification | None:
        """Count one closed trade by its net result; None if from an earlier day."""
        if not self._enter_day(ts_ms):
            return None
        return self._classify(net)

    def record_close(self, gross: float, fee: float, ts_ms: int) -> Classification | None:
        """One closed trade (the seed's ``record_close``): book it and count it."""
        if not self.book(gross, fee, ts_ms):
            return None
        return self._classify(gross - fee)

    def _classify(self, net: float) -> Classification:
        self.trades += 1
        if net > 0.0:
            self.wins += 1
            return "win"
        if net < 0.0:
            self.losses += 1
            return "loss"
        self.breakevens += 1
        return "breakeven"

    def tick(self, now_ms: int) -> bool:
        """UTC rollover against the wall clock; True if the session rolled over."""
        day = utc_day(now_ms)
        if day <= self.last_reset_day:
            return False
        self._reset()
        self.last_reset_day = day
        return True

    def reset(self) -> None:
        """Operator reset: today's totals and halt cleared; the day stays (wall clock's)."""
        self._reset()

    def snapshot(self) -> SessionPnlSnapshot:
        return capture(self, SessionPnlSnapshot)

    def restore(self, snap: SessionPnlSnapshot) -> None:
        adopt(self, snap)
