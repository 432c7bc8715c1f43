"""What is applied but not yet committed, and the order a persist must keep.

An applied batch goes through three stages here, and its input offsets commit
only at the end of the third:

1. **in flight** (:meth:`Checkpoint.sent`): its outputs are sent, their acks
   not yet confirmed; the loop fetches and applies the next batches meanwhile,
   at most ``max_in_flight`` batches behind (:meth:`Checkpoint.settle`).
2. **unpersisted**: its outputs are acknowledged; its changed keys and offsets
   wait for a persist.
3. **persisting** (:meth:`Checkpoint.persist`): the changed keys' snapshots
   are built at once (the state everything applied so far produced; the
   batches still in flight are claimed by this persist), and the loop goes
   on. In the background the persist waits until the outputs of those
   batches are confirmed (an output must never be lost behind a persisted
   state), sends the snapshots, waits for their acks and only then commits
   the offsets. One persist at a time: a key's next snapshot is never sent
   before the previous one is acknowledged, so a re-sent older version can
   never land last.

A crash anywhere replays from the last commit, and the per-key offset
watermarks in the snapshots make that replay exact.

A persist is due every ``commit_interval_ms``, when too many keys wait, or
when a revoke asks for one (:meth:`Checkpoint.flush`) so the partition's next
owner restores from everything we applied.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from aiokafka import TopicPartition

from worker.config import WorkerConfig
from worker.core import Effects
from worker.kafka.records import OutRecord
from worker.runtime.publish import Sending

Offsets = dict[TopicPartition, int]

MAX_BATCHES_IN_FLIGHT = 4
"""Batches whose outputs may await their acks while the loop goes on: bounds the
records held for a re-send and how far applied state runs ahead of the broker."""


Confirm = Callable[[Sequence[Sending], int], Awaitable[bool]]
"""Wait for the acks of the first ``count`` of the sets (False: gave up, stopping)."""


class Writes(NamedTuple):
    """How a persist reaches the broker (the publisher's and the link's calls)."""

    confirm: Confirm
    snapshot: Callable[[Effects], list[OutRecord]]
    """The records of these keys' snapshots, built before any await."""
    send: Callable[[list[OutRecord]], Awaitable[Sending]]
    commit: Callable[[Offsets], Awaitable[None]]


class _Batch:
    __slots__ = ("acks", "effects", "offsets")

    def __init__(self, acks: Sending, effects: Effects, offsets: Offsets) -> None:
        self.acks, self.effects, self.offsets = acks, effects, offsets


class Checkpoint:
    """Applied batches from their outputs' send to their offsets' commit."""

    def __init__(self, config: WorkerConfig, *, max_in_flight: int = MAX_BATCHES_IN_FLIGHT) -> None:
        self._config = config
        self.max_in_flight = max_in_flight
        self.in_flight: deque[_Batch] = deque()
        """Batches whose outputs are sent and not yet confirmed, oldest first."""
        self.unpersisted = Effects()
        """Keys changed since the last persist (their outputs are already acknowledged)."""
        self.uncommitted: Offsets = {}
        """Next offset to consume per input partition, applied since the last persist."""
        self._persisting: asyncio.Task[bool] | None = None
        self._persisting_offsets: Offsets = {}
        self._next_persist = 0
        self._flush_requested = asyncio.Event()
        self._flushed = asyncio.Event()

    # -- stage 1: outputs in flight -----------------------------------------------

    def sent(self, acks: Sending, effects: Effects, offsets: Mapping[TopicPartition, int]) -> None:
        """A batch's outputs are sent: its keys and offsets wait for their acks."""
        self.in_flight.append(_Batch(acks, effects, dict(offsets)))

    async def settle(self, confirm: Confirm, limit: int) -> bool:
        """Confirm the oldest batches until at most ``limit`` are in flight.

        Batches whose acks all arrived move on without waiting, in order (an
        older batch's offsets never overwrite a newer one's); a failed one is
        confirmed at once (:meth:`Publisher.confirm`: re-sent, or it raises). False if
        ``confirm`` gave up (stopping): nothing of those batches commits.
        """
        self._take_landed()
        excess = len(self.in_flight) - limit
        if self.in_flight and self.in_flight[0].acks.failed():
            excess = max(excess, 1)  # a failure is handled at once (re-sent, or it stops us)
        if excess > 0:
            if not await confirm([b.acks for b in self.in_flight], excess):
                return False
            for _ in range(excess):
                self._take(self.in_flight.popleft())
            self._take_landed()  # a re-send confirms every later batch too
        return True

    def _take_landed(self) -> None:
        in_flight = self.in_flight
        while in_flight and in_flight[0].acks.landed():
            self._take(in_flight.popleft())

    def _take(self, batch: _Batch) -> None:
        self.add(batch.effects, batch.offsets)

    # -- stage 2: acknowledged, waiting for a persist --------------------------------

    def add(self, effects: Effects, offsets: Mapping[TopicPartition, int]) -> None:
        """A batch whose outputs are acknowledged: its keys and offsets wait for a persist."""
        self.unpersisted.dirty_symbols |= effects.dirty_symbols
        self.unpersisted.dirty_bots |= effects.dirty_bots
        self.uncommitted.update(offsets)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Never commit these offsets: the state behind them is forgotten unpersisted."""
        stages = [self.uncommitted, self._persisting_offsets, *(b.offsets for b in self.in_flight)]
        for tp in tps:
            for offsets in stages:
                offsets.pop(tp, None)

    def owed(self) -> set[TopicPartition]:
        """Partitions with applied offsets not yet committed, at any stage."""
        owed = set(self.uncommitted) | set(self._persisting_offsets)
        for batch in self.in_flight:
            owed.update(batch.offsets)
        return owed

    def due(self, now: int) -> bool:
        pending = self.unpersisted
        if not (pending.dirty_symbols or pending.dirty_bots or self.uncommitted or self.in_flight):
            return False
        if self._flush_requested.is_set():
            return True
        # Due even while the last persist is in flight: persist() then waits for it, so
        # the loop runs at most one interval (or max_unpersisted_keys) ahead of the
        # persist in flight. Without that wait, keys piled up behind slow persists, each
        # persist grew, and so did the worker's RSS (100k live symbols: 311 MiB vs 240).
        return now >= self._next_persist or (
            len(pending.dirty_symbols) >= self._config.max_unpersisted_keys
        )

    # -- stage 3: persist, then commit ---------------------------------------------------

    @property
    def quiet(self) -> bool:
        """No output unconfirmed and no persist in flight."""
        return not self.in_flight and self._persisting is None

    def abandon(self) -> None:
        """The loop is gone (stopped or killed): a persist in flight ends here, uncommitted."""
        if self._persisting is not None:
            self._persisting.cancel()

    @property
    def persisting(self) -> bool:
        """A persist still waits for its outputs, its snapshots' acks or its commit."""
        return self._persisting is not None and not self._persisting.done()

    async def persist(self, now: int, writes: Writes) -> bool:
        """Persist-then-commit everything applied so far, completed in the background.

        ``writes.snapshot`` builds the changed keys' records now (the state
        these offsets produced; batches still in flight are claimed by this
        persist). A background task waits until those batches' outputs are
        confirmed, then sends the records, waits for their acks, and only then
        commits (:meth:`persisted` waits for it). False if waiting for the
        previous persist gave up (stopping).
        """
        if self._persisting is not None and not await self.persisted(writes.confirm):
            return False
        dirty, offsets = self.unpersisted, self.uncommitted
        outputs = []
        for batch in self.in_flight:  # oldest first: a newer offset overwrites an older one
            dirty.dirty_symbols |= batch.effects.dirty_symbols
            dirty.dirty_bots |= batch.effects.dirty_bots
            offsets.update(batch.offsets)
            batch.effects, batch.offsets = Effects(), {}
            outputs.append(batch.acks)
        self.unpersisted, self.uncommitted = Effects(), {}
        self._next_persist = now + self._config.commit_interval_ms
        records = writes.snapshot(dirty)
        self._persisting_offsets = offsets
        self._persisting = asyncio.ensure_future(self._complete(outputs, records, offsets, writes))
        return True

    async def _complete(
        self, outputs: list[Sending], records: list[OutRecord], offsets: Offsets, writes: Writes
    ) -> bool:
        for sending in outputs:  # the loop confirms them (re-sending after an outage)
            await sending.confirmed()
        snapshots = await writes.send(records)
        if not await writes.confirm([snapshots], 1):
            return False
        # Committing now: what the commit pays is no longer owed (see owed()).
        self._persisting_offsets = {}
        if offsets:  # forget() may have emptied it meanwhile
            await writes.commit(offsets)
        return True

    async def persisted(self, confirm: Confirm) -> bool:
        """Wait for the persist in flight (outputs and snapshots acknowledged, offsets
        committed), confirming every batch in flight first: only the loop confirms a
        failed one. False if it gave up (stopping); raises what stopped it."""
        task = self._persisting
        if task is None:
            return True
        if not task.done() and not await self.settle(confirm, 0):
            return False
        try:
            return await task
        finally:
            if task.done():
                self._persisting, self._persisting_offsets = None, {}

    def persist_failed(self) -> bool:
        """Without waiting: the persist in flight gave up; raises what stopped it."""
        task = self._persisting
        if task is None or not task.done():
            return False
        self._persisting, self._persisting_offsets = None, {}
        return not task.result()

    # -- revoke handshake -------------------------------------------------------

    @property
    def flushing(self) -> bool:
        """A revoke waits for this iteration to persist everything and wait for it."""
        return self._flush_requested.is_set()

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
