"""Sliding-window loss circuit breaker (the seed's ``CircuitBreaker``)."""

from __future__ import annotations

from bisect import insort

import msgspec

from worker.config import BreakerConfig


class CircuitBreakerSnapshot(msgspec.Struct):
    """The seed's persisted shape: loss times and trip time in Unix seconds."""

    recent_losses: list[int]
    tripped_at_unix_secs: int | None


class CircuitBreaker:
    """Trips when ``loss_limit`` losses fall inside a rolling ``window_secs``.

    Losses are placed at their own event time, so a backlog of losses hours
    apart replayed at once does not trip it. Once tripped it blocks for
    ``cooldown_secs`` from the tripping loss and then auto-resets, forgetting
    its losses. A win does not un-trip it.
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
        """Record a loss at its event time; True if this loss tripped the breaker."""
        config = self.config
        tripped_at = self.tripped_at
        if tripped_at is not None:
            if ts_secs < tripped_at + config.cooldown_secs:
                return False  # still cooling down: the loss is not recorded
            self.reset()  # the cooldown ended by this loss's time (``_expire``)
        limit = config.loss_limit
        if limit == 0:
            return False
        losses = self.recent_losses
        if not losses or ts_secs >= losses[-1]:
            losses.append(ts_secs)
        else:
            insort(losses, ts_secs)
        newest = losses[-1]
        if losses[0] <= newest - config.window_secs:
            self._evict(newest)
        if len(losses) >= limit:
            # After eviction every kept loss lies within one window of the newest.
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
        until = self.until_secs
        if until is not None and now_secs >= until:
            self.reset()
            return True
        return False

    def _evict(self, now_secs: int) -> None:
        cutoff = now_secs - self.config.window_secs
        losses = self.recent_losses
        drop = 0
        while drop < len(losses) and losses[drop] <= cutoff:
            drop += 1
        if drop:
            del losses[:drop]

    def snapshot(self) -> CircuitBreakerSnapshot:
        return CircuitBreakerSnapshot(
            recent_losses=list(self.recent_losses), tripped_at_unix_secs=self.tripped_at
        )

    def restore(self, snap: CircuitBreakerSnapshot) -> None:
        self.recent_losses = sorted(snap.recent_losses)
        self.tripped_at = snap.tripped_at_unix_secs
