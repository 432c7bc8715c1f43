"""Is the loop making progress on each input partition, and did a partition's log restart?

Two questions the shell must answer honestly, from what it observes (no I/O
here, so both are tested with plain numbers):

- **Heartbeats.** A ``<bot>/gate`` heartbeat tells clients "the owner of this
  bot is alive and its gates are current". That is only true when every input
  partition carrying the bot's events is being worked: since the previous
  heartbeat, a fetch response for it arrived (the client is fetching it) *and*
  the loop either consumed records from it or had nothing left to read
  (position at the high watermark). A paused (restoring), unfetched or
  wedged partition withholds the heartbeat of every bot on that partition
  number, so clients see those bots go stale instead of reading them as fresh.

- **Recreated input topics.** Each state holder remembers the highest offset it
  applied per input partition (its watermark) and skips anything at or below
  it, which is what makes replays exact. If an input topic is deleted and
  recreated (or truncated), its offsets restart at 0 and those watermarks
  silently skip the new events. The sign is a log whose end (high watermark)
  is at or below an offset already applied from it: impossible for the same
  log. :meth:`InputProgress.offsets_reset` reports it once per episode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

from worker.core.engine import RiskEngine


@dataclass
class _Partition:
    poll_seen: int | None = None
    """The client's last-poll timestamp for this partition, as last observed."""
    fetched_at: int | None = None
    """Our clock when a new fetch response for it was first observed."""
    advanced_at: int | None = None
    """Our clock when the loop last consumed (or skipped) records of it."""
    applied: int = -1
    """Highest offset known to have been applied from it (-1: none)."""
    reset: bool = False
    """A reset was reported and its log end has not passed ``applied`` since."""


class InputProgress:
    """Per owned input partition: fetch and consume observations, in the worker's clock."""

    def __init__(self, input_topics: Iterable[str]) -> None:
        self._topics = tuple(input_topics)
        self._parts: dict[TopicPartition, _Partition] = {}

    def __contains__(self, tp: TopicPartition) -> bool:
        return tp in self._parts

    def track(self, tp: TopicPartition, applied: int) -> None:
        """Follow ``tp`` (now fetchable), whose restored state applied up to ``applied``."""
        self._parts[tp] = _Partition(applied=applied)

    def forget(self, keep: Iterable[TopicPartition]) -> None:
        """Drop partitions no longer owned (a revoked partition's history means nothing)."""
        keep = set(keep)
        for tp in [tp for tp in self._parts if tp not in keep]:
            del self._parts[tp]

    def polled(self, tp: TopicPartition, poll_ts: int | None, now: int) -> None:
        part = self._parts.get(tp)
        if part is not None and poll_ts is not None and poll_ts != part.poll_seen:
            part.poll_seen = poll_ts
            part.fetched_at = now

    def consumed(self, tp: TopicPartition, last_offset: int, now: int) -> None:
        part = self._parts.get(tp)
        if part is not None:
            part.advanced_at = now
            part.applied = max(part.applied, last_offset)

    def progressing(
        self, tp: TopicPartition, since: int, position: int | None, highwater: int | None
    ) -> bool:
        """Fetched since ``since``, and consumed since then or nothing left to read."""
        part = self._parts.get(tp)
        if part is None or part.fetched_at is None or part.fetched_at < since:
            return False
        caught_up = position is not None and highwater is not None and position >= highwater
        return caught_up or (part.advanced_at is not None and part.advanced_at >= since)

    def numbers(self) -> set[int]:
        """Partition numbers with at least one input partition followed."""
        return {tp.partition for tp in self._parts}

    def stalled(
        self,
        since: int,
        positions: Mapping[TopicPartition, int | None],
        highwaters: Mapping[TopicPartition, int | None],
    ) -> set[TopicPartition]:
        """Input partitions of the followed numbers (every input topic) not progressing.

        A partition of such a number that is not followed (paused while it
        restores, or not ours) is not progressing either.
        """
        return {
            tp
            for n in self.numbers()
            for topic in self._topics
            if not self.progressing(
                tp := TopicPartition(topic, n), since, positions.get(tp), highwaters.get(tp)
            )
        }

    def offsets_reset(self, tp: TopicPartition, highwater: int | None) -> int | None:
        """The applied offset when ``tp``'s log end fell to or below it (first time only)."""
        part = self._parts.get(tp)
        if part is None or highwater is None or part.applied < 0:
            return None
        if highwater > part.applied:
            part.reset = False
            return None
        if part.reset:
            return None
        part.reset = True
        return part.applied


def applied_watermarks(
    engine: RiskEngine, partition_of: Mapping[str, int], tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Highest offset applied from each of ``tps`` by any state holder of its bots (-1: none).

    One pass over the bots of those partition numbers; run when a partition
    becomes fetchable after its restore, not per batch.
    """
    wanted = {f"{tp.topic}/{tp.partition}": tp for tp in tps}
    numbers = {tp.partition for tp in wanted.values()}
    out = dict.fromkeys(wanted.values(), -1)
    bots = [b for b in engine.bot_ids() if partition_of.get(b) in numbers]
    for source, offset in engine.watermarks(bots).items():
        tp = wanted.get(source)
        if tp is not None:
            out[tp] = offset
    return out
