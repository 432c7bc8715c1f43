"""Sliding-window loss circuit breaker (the seed's ``CircuitBreaker``)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

import msgspec

from worker.config import BreakerConfig
from worker.core.fields import adopt, capture


class CircuitBreakerSnapshot(msgspec.Struct):
    """The seed's persisted shape: loss times and trip time in Unix seconds (the attributes
    of :class:`CircuitBreaker`; the trip time keeps the seed's name on the wire)."""

    recent_losses: list[int]
    tripped_at: int | None = msgspec.field(name="tripped_at_unix_secs")


class CircuitBreaker:
    """Trips when ``loss_limit`` losses fall inside a rolling ``window_secs``.

    Losses are placed at their own event time, so a backlog of losses hours
    apart replayed at once does not trip it. Once tripped it blocks for
    ``cooldown_secs`` from the tripping loss and then auto-resets, forgetting
    its losses. A win does not un-trip it. Time-driven changes (cooldown end,
    eviction) follow the wall clock passed to ``tick``, never an event's own time.
    """

    __slots__ = ("config", "recent_losses", "tripped_at")

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.recent_losses: list[int] = []
        self.tripped_at: int | None = None

    @property
    def is_tripped(self) -> bool:
        return self.tripped_at is not None

    @property
    def until_secs(self) -> int | None:
        """When the current trip ends by itself, or None when not tripped."""
        if self.tripped_at is None:
            return None
        return self.tripped_at + self.config.cooldown_secs

    def record_loss(self, ts_secs: int) -> bool:
        """Record a loss at its event time; True if this loss tripped the breaker.

        Only the wall clock (``tick``) ends a cooldown or evicts old losses: a loss
        stamped ahead of the clock must not lift a trip early, nor push earlier
        losses out of the window they still share with losses yet to arrive. So
        the trip test counts the losses of each window that contains this loss
        instead of evicting relative to the newest one.
        """
        config = self.config
        limit = config.loss_limit
        if limit == 0:
            return False
        tripped_at = self.tripped_at
        losses = self.recent_losses
        if tripped_at is not None:
            if ts_secs >= max(tripped_at + config.cooldown_secs, tripped_at + 1):
                # Stamped after the cooldown, which the clock has not ended yet: it
                # waits in the window and counts once ``tick`` lifts the trip.
                insort(losses, ts_secs)
            return False
        if not losses or ts_secs >= losses[-1]:
            losses.append(ts_secs)
            return self._trips(len(losses) - 1)
        insort(losses, ts_secs)
        first = bisect_left(losses, ts_secs)
        # Windows ending at this loss or at a later one within a window of it.
        last = bisect_left(losses, ts_secs + config.window_secs)
        return any(self._trips(end) for end in range(first, last))

    def _trips(self, end: int) -> bool:
        """Trip if the window ``(losses[end] - window_secs, losses[end]]`` holds the limit."""
        losses = self.recent_losses
        newest = losses[end]
        start = bisect_right(losses, newest - self.config.window_secs, 0, end)
        if end - start + 1 >= self.config.loss_limit:
            self.tripped_at = newest
            return True
        return False

    def tick(self, now_secs: int) -> bool:
        """Cooldown expiry and window eviction against the wall clock; True on reset."""
        reset = self._expire(now_secs)
        self._evict(now_secs)
        return reset

    def reset(self) -> None:
        self.tripped_at = None
        self.recent_losses.clear()

    def _expire(self, now_secs: int) -> bool:
        """End a trip whose cooldown the wall clock passed.

        It forgets the losses up to the trip and before the cooldown's end; losses
        stamped after both (recorded meanwhile) count afresh.
        """
        tripped_at = self.tripped_at
        if tripped_at is None:
            return False
        until = tripped_at + self.config.cooldown_secs
        if now_secs < until:
            return False
        losses = self.recent_losses
        del losses[: bisect_left(losses, max(until, tripped_at + 1))]
        self.tripped_at = None
        if len(losses) >= self.config.loss_limit:
            self._retrip()
        return True

    def _retrip(self) -> None:
        for end in range(len(self.recent_losses)):
            if self._trips(end):
                return

    def _evict(self, now_secs: int) -> None:
        cutoff = now_secs - self.config.window_secs
        losses = self.recent_losses
        drop = 0
        while drop < len(losses) and losses[drop] <= cutoff:
            drop += 1
        if drop:
            del losses[:drop]

    def snapshot(self) -> CircuitBreakerSnapshot:
        return capture(self, CircuitBreakerSnapshot)

    def restore(self, snap: CircuitBreakerSnapshot) -> None:
        adopt(self, snap)
        self.recent_losses.sort()  # the seed's writer never promised an order
