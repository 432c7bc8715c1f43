"""What is applied but not yet persisted, and the order a persist must keep.

Every batch's outputs are acknowledged before its effects reach the
checkpoint (:meth:`Checkpoint.add`), so when :meth:`Checkpoint.persist` later
writes the changed keys' snapshots, every output reflecting that state is
already on its topic. Then, and only once the snapshots are acknowledged, the
input offsets commit: a crash anywhere replays from the last commit, and the
per-key offset watermarks in the snapshots make that replay exact.

A persist is due every ``commit_interval_ms``, when too many keys wait, or
when a revoke asks for one (:meth:`Checkpoint.flush`) so the partition's next
owner restores from everything we applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiokafka import TopicPartition

from worker.config import WorkerConfig
from worker.core import Effects

Offsets = dict[TopicPartition, int]


class Checkpoint:
    """Dirty keys and uncommitted offsets since the last persist; when the next one is due."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self.unpersisted = Effects()
        """Keys changed since the last persist (their outputs are already acknowledged)."""
        self.uncommitted: Offsets = {}
        """Next offset to consume per input partition, applied since the last persist."""
        self._next_persist = 0
        self._flush_requested = asyncio.Event()
        self._flushed = asyncio.Event()

    def add(self, effects: Effects, offsets: Mapping[TopicPartition, int]) -> None:
        """A batch whose outputs are acknowledged: its keys and offsets wait for a persist."""
        self.unpersisted.dirty_symbols |= effects.dirty_symbols
        self.unpersisted.dirty_bots |= effects.dirty_bots
        self.uncommitted.update(offsets)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Never commit these offsets: the state behind them is forgotten unpersisted."""
        for tp in tps:
            self.uncommitted.pop(tp, None)

    def due(self, now: int) -> bool:
        pending = self.unpersisted
        if not (pending.dirty_symbols or pending.dirty_bots or self.uncommitted):
            return False
        return (
            now >= self._next_persist
            or self._flush_requested.is_set()
            or len(pending.dirty_symbols) >= self._config.max_unpersisted_keys
        )

    async def persist(
        self,
        now: int,
        write: Callable[[Effects], Awaitable[bool]],
        commit: Callable[[Offsets], Awaitable[None]],
    ) -> bool:
        """Persist-then-commit: ``write`` the dirty keys (acknowledged), only then ``commit``.

        ``write`` must build its records before its first await: the state it
        snapshots is the state these offsets produced. False if it gave up
        (stopping): nothing is committed then.
        """
        dirty, offsets = self.unpersisted, self.uncommitted
        self.unpersisted = Effects()
        self.uncommitted = {}
        self._next_persist = now + self._config.commit_interval_ms
        if not await write(dirty):
            return False
        if offsets:
            await commit(offsets)
        return True

    # -- revoke handshake -------------------------------------------------------

    async def flush(self, timeout_s: float) -> bool:
        """Ask the loop to persist at the end of its iteration; wait at most ``timeout_s``.

        The loop never waits on this, so a revoke cannot deadlock it.
        """
        self._flushed.clear()
        self._flush_requested.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._flushed.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._flush_requested.clear()

    def iteration_done(self) -> None:
        """The loop finished an iteration (persisting if a flush asked): release the waiter."""
        if self._flush_requested.is_set():
            self._flushed.set()
