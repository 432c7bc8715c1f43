"""What ``/healthz`` and ``/readyz`` say, from what the poll loop reports (no I/O).

Three separate questions, so a probe never answers one with another:

- **alive** (liveness): the loop ticked within ``stuck_after_ms``. It ticks at
  the end of every iteration and of every bounded broker wait on its path
  (connect attempts, send retries, commits, probes), so an absent or frozen
  broker keeps it alive; only a loop that stopped ticking is stuck.
- **starting**: no broker round trip completed yet.
- **ready**: a broker round trip within ``ready_commit_max_age_ms``, and no
  applied offset waiting longer than that for a *successful* commit. An idle
  worker owes no commit; a metadata probe is a round trip, never a commit.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable

from aiokafka import TopicPartition

from worker.config import WorkerConfig
from worker.metrics import Metrics


class Health:
    def __init__(self, clock: Callable[[], int], config: WorkerConfig, metrics: Metrics) -> None:
        self._clock = clock
        self._config = config
        self._metrics = metrics
        self.last_tick_ms = clock()
        self.last_round_trip_ms: int | None = None
        """None while starting."""
        self.last_commit_ms = 0
        self._owed_since: dict[TopicPartition, int] = {}
        """Per partition, since when applied offsets wait for a successful commit."""

    def tick(self, now: int | None = None) -> None:
        now = self._clock() if now is None else now
        self.last_tick_ms = now
        self._metrics.last_progress.set(now / 1000)

    def round_trip(self, *, commit: bool, still_owed: Container[TopicPartition] = ()) -> None:
        """A broker round trip succeeded; ``commit``: a commit of everything but ``still_owed``."""
        now = self._clock()
        self.last_round_trip_ms = now
        if commit:
            self.last_commit_ms = now
            owed = self._owed_since
            self._owed_since = {tp: t for tp, t in owed.items() if tp in still_owed}
        self.tick(now)

    def owe(self, tps: Iterable[TopicPartition], now: int) -> None:
        """Offsets of ``tps`` were applied at ``now`` and wait for a commit."""
        for tp in tps:
            self._owed_since.setdefault(tp, now)

    def forgive(self, owned: Container[TopicPartition]) -> None:
        """Offsets of partitions no longer owned are nobody's debt here."""
        self._owed_since = {tp: t for tp, t in self._owed_since.items() if tp in owned}

    @property
    def starting(self) -> bool:
        return self.last_round_trip_ms is None

    @property
    def alive(self) -> bool:
        return self._clock() - self.last_tick_ms < self._config.stuck_after_ms

    @property
    def talking(self) -> bool:
        """A recent broker round trip and no overdue commit (the loop's half of readiness)."""
        now = self._clock()
        max_age = self._config.ready_commit_max_age_ms
        trip = self.last_round_trip_ms
        owed = min(self._owed_since.values(), default=None)
        return trip is not None and now - trip < max_age and (owed is None or now - owed < max_age)
