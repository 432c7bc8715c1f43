"""Applying a finished snapshot read to the engine (Quix Streams calls this recovery).

A restore is more than ``engine.restore``: the worker takes the next owner
epoch of the partitions read, rewrites keys a zombie writer touched so
compaction drops its records, holds every configured bot homed on those
partitions even before it sends anything, and owes the gate record of every
bot held, because the gates topic may have lost them and a reader must never
take a missing record for "allowed".
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, ParamSpec

import structlog

from worker.config import Config
from worker.core import Effects, RiskEngine
from worker.core.snapshot import SnapshotError, parse_chunk_key, parse_key
from worker.errors import Rejected
from worker.kafka.restore import SnapshotRead
from worker.metrics import Metrics
from worker.runtime.ownership import Ownership, home_partition

log = structlog.get_logger("riskgate.worker")

RESTORE_PART = 2_000
"""Records applied between two yields to the event loop (~20 ms of CPU)."""


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None on other C libraries (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


_malloc_trim = _find_malloc_trim()


def settle_heap() -> None:
    """After a restore: hand the freed pages back to the OS, freeze what was restored.

    A restore reads every record (~600 bytes a symbol) before it applies them;
    glibc keeps the freed values' pages when live objects sit above them in the
    heap, so a worker restored from 100k symbols held ~600 bytes a symbol more
    than one that built the same state live (``malloc_trim`` returns them).
    Frozen (``gc.freeze``), the ~750k objects of 100k restored symbols are not
    traversed by later collections (a full one took 0.2-0.7 s); bot state holds
    no reference cycles, so a bot forgotten later is still freed by its reference
    counts. (Cyclic garbage made by other tasks during the restore is frozen too,
    never collected: a bounded leak per restore, against a collection of every
    restored object.)
    """
    if _malloc_trim is not None:
        _malloc_trim(0)
    gc.freeze()


_P = ParamSpec("_P")


def _drained(steps: Callable[_P, Iterator[None]]) -> Callable[_P, None]:
    """Run a stepped restore to its end without yielding (one signature for both drivers)."""

    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        for _ in steps(*args, **kwargs):
            pass

    return run


def _yielding(steps: Callable[_P, Iterator[None]]) -> Callable[_P, Coroutine[Any, Any, None]]:
    """Run a stepped restore to its end, letting the event loop run at every step."""

    async def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        for _ in steps(*args, **kwargs):
            await asyncio.sleep(0)

    return run


class Recovery:
    """Restores finished reads into the engine; says what must be republished and rewritten."""

    def __init__(
        self, config: Config, engine: RiskEngine, ownership: Ownership, metrics: Metrics
    ) -> None:
        self._config = config
        self._engine = engine
        self._ownership = ownership
        self._metrics = metrics
        self.applying = asyncio.Lock()
        """Held while the loop applies restores (:meth:`restore_async` suspends between
        parts). A revoke takes it before forgetting bots, so no later part can re-create
        a bot the revoke forgot, nor mark a revoked partition restored."""

    def _steps(
        self,
        read: SnapshotRead,
        now: int,
        effects: Effects,
        *,
        republish: Effects,
        rewrite: Effects,
    ) -> Iterator[None]:
        """Restore ``read``; add the gate records owed to ``republish``, zombie keys to ``rewrite``.

        A part at a time (one ``yield`` after each part and after each bot's sweep).
        Every configured bot homed on these partitions gets its account record
        even before it sends anything, so a silent bot is not denied forever as
        unknown. Empties ``read.records`` (each part's values freed once applied).
        """
        ownership = self._ownership
        ownership.take_over(read)
        records = read.records
        # Keys, not records read: a key written many times (or a claim) restores once;
        # a tombstone restores nothing. "fenced": the zombie records the epoch fence
        # left out, never among the restored (findings E1-2).
        keys, values = len(records), sum(value is not None for value in records.values())
        job = self._engine.restoring(now, effects)
        order = list(records)
        collecting = gc.isenabled()
        # The restore allocates ~7 objects a symbol and frees no cycles: collections
        # during it only traverse the new state again and again (~40 % of its CPU).
        gc.disable()
        try:
            for start in range(0, len(order), RESTORE_PART):
                # Popped: each part's values are freed once applied, before the next is decoded.
                job.feed([(key, records.pop(key)) for key in order[start : start + RESTORE_PART]])
                yield
            yield from job.finishing()  # a bot's sweep at a time
            settle_heap()
        finally:
            if collecting:
                gc.enable()
        if read.fenced:
            log.warning(
                "ignored snapshots of a previous owner written after a newer one (zombie writer)",
                partitions=sorted(read.partitions),
                keys=len(read.fenced),
            )
            self._rewrite(read.fenced, rewrite)
        ignored = job.ignored
        for key, why in ignored:
            log.warning("ignoring snapshot", key=key, reason=why)
        self._adopt_configured_bots(read.partitions, now)
        held = self._engine.bot_ids()
        for bot_id, partition in ownership.partition_of.items():
            if partition in read.partitions and bot_id in held:
                republish.dirty_bots.add(bot_id)
                republish.dirty_symbols.update((bot_id, s) for s in self._engine.symbols_of(bot_id))
        m = self._metrics
        m.restore_seconds.observe(read.seconds)
        m.restore_records.labels("restored").inc(values - len(ignored))
        m.restore_records.labels("ignored").inc(len(ignored))
        if read.fenced_records:
            m.restore_records.labels("fenced").inc(read.fenced_records)
        log.info(
            "restored",
            partitions=sorted(read.partitions),
            records=read.read,
            keys=keys,
            ignored=len(ignored),
            seconds=round(read.seconds, 3),
        )

    restore = _drained(_steps)
    """:meth:`_steps` in one go, the event loop held throughout: for tools and tests
    (``bench.e2e_restore`` compares the loop lag of both)."""

    restore_async = _yielding(_steps)
    """:meth:`_steps`, yielding to the event loop after every ``RESTORE_PART`` records and
    every bot's sweep: 100k symbols take ~1 s of CPU, during which health probes, the
    group's heartbeats and other partitions' work would otherwise wait. The worker's
    loop applies restores with this one, under :attr:`applying`."""

    def _rewrite(self, keys: Iterable[str], rewrite: Effects) -> None:
        """Persist these keys again under our epoch, so compaction drops the zombie's records."""
        engine = self._engine
        for key in keys:
            chunk = parse_chunk_key(key)
            if chunk is not None:
                # Chunks are immutable: the bot's windows are written afresh, under new numbers.
                if engine.rewrite_ids(chunk[0]):
                    rewrite.dirty_bots.add(chunk[0])
                continue
            with contextlib.suppress(SnapshotError):
                bot_id, symbol = parse_key(key)
                if bot_id not in engine.bot_ids():
                    continue
                if symbol is None:
                    rewrite.dirty_bots.add(bot_id)
                elif symbol in engine.symbols_of(bot_id):
                    rewrite.dirty_symbols.add((bot_id, symbol))

    def _adopt_configured_bots(self, partitions: frozenset[int], now: int) -> None:
        """Hold every configured bot whose home (murmur2 of its id) is one of ``partitions``."""
        ownership = self._ownership
        count = ownership.input_partitions
        if not count:
            return
        for bot_id in self._config.bots:
            if bot_id in ownership.partition_of:
                continue
            home = home_partition(bot_id.encode(), count)
            if home in partitions:
                try:
                    self._engine.bot(bot_id, now)
                except Rejected as exc:
                    log.warning("configured bot not held", bot=bot_id, error=str(exc))
                    continue
                ownership.partition_of[bot_id] = home
