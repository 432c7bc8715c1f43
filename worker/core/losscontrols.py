"""Loss controls beyond the seed's: intraday drawdown and the after-loss cooldown (issue 11).

Both follow decision T1: applying an event may *engage* them, only the wall
clock (``tick`` from sweep or restore) releases them. An event's own ``ts``
places it (T2): a late event of an earlier UTC day does not move today's
drawdown, and a cooldown runs from the losing trade's time.
"""

from __future__ import annotations

import msgspec

from worker.core.session import next_midnight_ms, utc_day


class DrawdownSnapshot(msgspec.Struct):
    day: int
    peak: float
    halted: bool


class Drawdown:
    """``max_drawdown``: latch the bot for the UTC day when equity falls that far below
    the day's peak (LEAN's and Hummingbot's intraday drawdown limits).

    The peak starts each day at the equity the bot opens it with (its open
    positions at their marks; realised PnL restarts at 0) and only rises.
    The latch holds for the rest of the day, through restarts (persisted),
    whatever the equity does next.
    """

    __slots__ = ("day", "halted", "limit", "peak")

    def __init__(self, limit: float, day: int, opening_equity: float = 0.0) -> None:
        self.limit = limit
        """Quote amount, positive; 0 = off (the peak is still followed)."""
        self.day = day
        self.peak = opening_equity
        self.halted = False

    @property
    def until_ts(self) -> int:
        """When the latch lifts: the next 00:00 UTC of its day."""
        return next_midnight_ms(self.day * 86_400_000)

    def observe(self, equity: float, ts_ms: int) -> bool:
        """Equity after an event stamped ``ts_ms``; True if this observation latched.

        An event of an earlier day than the tracker's is late and counts for
        nothing; one stamped ahead across midnight counts toward today (T2).
        """
        if utc_day(ts_ms) < self.day:
            return False
        self.peak = max(self.peak, equity)
        if self.halted or not self.limit or self.peak - equity < self.limit:
            return False
        self.halted = True
        return True

    def tick(self, now_ms: int, opening_equity: float) -> bool:
        """UTC rollover by the wall clock: a new day, its peak the equity now; True if rolled."""
        day = utc_day(now_ms)
        if day <= self.day:
            return False
        self.day, self.peak, self.halted = day, opening_equity, False
        return True

    def snapshot(self) -> DrawdownSnapshot:
        return DrawdownSnapshot(day=self.day, peak=self.peak, halted=self.halted)

    def restore(self, snap: DrawdownSnapshot) -> None:
        self.day, self.peak, self.halted = snap.day, snap.peak, snap.halted


class LossCooldown:
    """``after_loss_secs`` (freqtrade's CooldownPeriod): entries on a symbol wait this long
    after a losing trade on it, counted from the trade's time.

    Another loss meanwhile extends the wait to its own end; the wall clock
    (``tick``) alone ends it, so the resume is published by the sweep.
    """

    __slots__ = ("secs", "until_ms")

    def __init__(self, secs: int) -> None:
        self.secs = secs
        self.until_ms: int | None = None

    @property
    def blocking(self) -> bool:
        return self.until_ms is not None

    def record_loss(self, ts_ms: int) -> bool:
        """A losing trade closed at ``ts_ms``; True if the cooldown started blocking now."""
        if not self.secs:
            return False
        end = ts_ms + self.secs * 1000
        held = self.until_ms
        self.until_ms = end if held is None else max(held, end)
        return held is None

    def tick(self, now_ms: int) -> bool:
        """End the wait once the wall clock reaches it; True if it ended."""
        if self.until_ms is None or now_ms < self.until_ms:
            return False
        self.until_ms = None
        return True

    def reset(self) -> None:
        self.until_ms = None
