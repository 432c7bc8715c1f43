"""Drive the engine through history with the wall clock taken from event time.

The replay is a worker whose clock reads each record's arrival time when it
applies it (the Kafka record timestamp, or the file's time, see
:mod:`worker.replay.inputs`), never going back. Like the live loop it sweeps
whenever its clock reaches the next sweep time (``sweep_interval_ms`` after
the previous sweep), before applying the record; and it also wakes at the
``until_ts`` of every halt it saw (a cooldown's end, the next 00:00 UTC), so a
resume carries the time it would have had live (up to the sweep interval)
even when no record arrives then. Rollovers, cooldown ends, loss eviction and
reservation expiry therefore happen before exactly the records they preceded
live, and a recorded live stream replays to the same halt events (proved by
``tests/integration/test_replay_live.py``).

Only the engine's public API is used: ``RiskEngine(config)``, ``apply``,
``sweep`` and the ``Effects`` they return.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

import msgspec

from worker.config import Config, bot_settings
from worker.core import Origin, RiskEngine
from worker.errors import Rejected
from worker.messages import Fill, GateDecision, HaltEvent, OrderIntent, TradeOutcome
from worker.replay.counterfactual import Ledger
from worker.replay.inputs import InputRecord

CHECK_EVERY = 4096
"""Records between looks at the stop flag and progress reports (cheap, yet sub-second)."""


@dataclass
class ReplayResult:
    """Everything a report needs from one replay."""

    ledger: Ledger
    halts: list[HaltEvent] = field(default_factory=list)
    decisions: dict[str, Counter[str]] = field(default_factory=dict)
    """Per bot: ``allowed`` or the denying gate → count."""
    rejected: Counter[str] = field(default_factory=Counter)
    bad_records: list[InputRecord] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    seen: int = 0
    """Records consumed (fewer than the input when interrupted)."""
    total: int = 0
    start_ms: int | None = None
    end_ms: int | None = None
    interrupted: bool = False

    def dead_letters(self) -> list[dict[str, Any]]:
        """Bad input as the worker would dead-letter it: where, why, and the original.

        Records the decoder refused keep their original bytes; records the engine
        refused (unknown bot, future event, ...) were decoded, and only their
        event is kept (a copy of every good record's bytes would double the
        replay's memory): their ``original`` is the event re-encoded, and says so.
        """
        rows = []
        for rec in self.bad_records:
            error = rec.error
            raw = rec.raw if rec.raw is not None else msgspec.json.encode(rec.event)
            rows.append(
                {
                    "source": rec.source,
                    "position": rec.position,
                    "reason": error.reason if error else "invalid_message",
                    "message": str(error) if error else "",
                    "original": raw.decode("utf-8", "backslashreplace"),
                    "reencoded": rec.raw is None,
                }
            )
        return rows


class Replay:
    """One configuration replayed over one ordered input."""

    def __init__(self, config: Config) -> None:
        self.engine = RiskEngine(config)
        self.interval = config.worker.sweep_interval_ms
        self.config = config
        self._fills_cache: dict[str, bool] = {}
        self.ledger = Ledger()
        self.result = ReplayResult(self.ledger)
        self._dues: list[int] = []
        self._next_sweep = -1
        self._clock = -1

    def _books_fills(self, bot: str) -> bool:
        """Whether ``bot`` books PnL from fills (else fills only move positions): cached, as
        resolving a bot's settings merges tables."""
        known = self._fills_cache.get(bot)
        if known is None:
            settings = bot_settings(self.config, bot)
            known = self._fills_cache[bot] = settings is not None and settings.pnl_source == "fills"
        return known

    def run(
        self,
        records: Sequence[InputRecord],
        *,
        with_origin: bool = False,
        end_ms: int | None = None,
        stop: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ReplayResult:
        """Apply ``records`` in order; ``with_origin`` passes ``topic/partition`` offsets as the
        worker does (topic input: offset order per partition); ``end_ms`` sweeps up to it."""
        result = self.result
        result.total = len(records)
        if records:
            result.start_ms = records[0].time
        seen = 0
        dues, apply = self._dues, self._apply  # locals: this loop runs once per event
        for seen, rec in enumerate(records):
            if not seen & (CHECK_EVERY - 1) and seen:
                if stop is not None and stop():
                    result.interrupted = True
                    break
                if progress is not None:
                    progress(seen)
            t = rec.time if rec.time > self._clock else self._clock  # never goes back
            if dues and dues[0] <= t:
                self._wake(t)
            if t >= self._next_sweep:
                self._sweep(t)
            self._clock = t
            apply(rec, t, with_origin)
        else:
            seen = len(records)
        result.seen = seen
        if progress is not None:
            progress(seen)
        self._finish(None if result.interrupted else end_ms)
        return result

    def _apply(self, rec: InputRecord, t: int, with_origin: bool) -> None:
        event = rec.event
        if event is None:
            self._reject(rec, rec.error)
            return
        try:
            origin = Origin(rec.source, rec.position) if with_origin else None
            out = self.engine.apply(event, t, origin, record_ts=rec.time)
        except Rejected as exc:
            self._reject(rec, exc)
            return
        result = self.result
        result.applied += 1
        if out.skipped:
            result.duplicates += 1
            return
        kind = type(event)
        if kind is TradeOutcome:
            self.ledger.outcome(event, t)  # type: ignore[arg-type]
        elif kind is Fill:
            if self._books_fills(event.bot):
                self.ledger.fill(event, t)  # type: ignore[arg-type]
        elif kind is OrderIntent:
            self._count(result.decisions, out.decisions)
        if out.halts:
            self._halts(out.halts, t)

    def _finish(self, end_ms: int | None) -> None:
        """Sweep up to the end (an interrupted replay ends where it stopped) and close the books."""
        end = self._clock if end_ms is None else max(self._clock, end_ms)
        if end >= 0:
            self._wake(end)
            if end > self._clock or end >= self._next_sweep:
                self._sweep(end)
            self._clock = end
        self.result.end_ms = end if end >= 0 else None
        self.ledger.finish(end)

    def _wake(self, t: int) -> None:
        """Sweeps at the due times (halt ``until_ts``) up to ``t``, as a live clock passes them."""
        dues = self._dues
        while dues and dues[0] <= t:
            at = max(heapq.heappop(dues), self._next_sweep)
            if self._clock < at <= t:
                self._clock = at
                self._sweep(at)

    def _sweep(self, t: int) -> None:
        out = self.engine.sweep(t)
        self._next_sweep = t + self.interval
        if out.halts:
            self._halts(out.halts, t)

    def _halts(self, halts: list[HaltEvent], t: int) -> None:
        blocks = self.ledger.blocks
        for h in halts:
            self.result.halts.append(h)
            blocks.event(h, t)
            if h.until_ts is not None and h.kind == "halted":
                heapq.heappush(self._dues, h.until_ts)

    @staticmethod
    def _count(decisions: dict[str, Counter[str]], out: list[GateDecision]) -> None:
        for d in out:
            counts = decisions.get(d.bot)
            if counts is None:
                counts = decisions[d.bot] = Counter()
            counts["allowed" if d.allowed else (d.gate or "denied")] += 1

    def _reject(self, rec: InputRecord, error: Rejected | None) -> None:
        reason = error.reason if error is not None else "invalid_message"
        self.result.rejected[reason] += 1
        self.result.bad_records.append(rec._replace(error=error))


class RunOptions(TypedDict, total=False):
    """The keywords of :meth:`Replay.run`, named once for :func:`replay` to pass on."""

    with_origin: bool
    end_ms: int | None
    stop: Callable[[], bool] | None
    progress: Callable[[int], None] | None


def replay(
    config: Config, records: Sequence[InputRecord], **options: Unpack[RunOptions]
) -> ReplayResult:
    """Replay ``records`` under ``config`` (see :meth:`Replay.run` for ``options``)."""
    return Replay(config).run(records, **options)
