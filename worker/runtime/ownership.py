"""Which input partitions, bots and snapshot partitions this worker owns right now.

An assignment pauses the new partitions and reads their snapshot partitions in
the background; only once that restore is applied is a partition *restored*,
and only restored partitions ever commit offsets (P3). A bot's home partition
is computed from its id (:func:`home_partition`), so every worker and every
replay agrees on it; its events are accepted on that partition only. Each
owned partition carries an *owner epoch* (one more than the highest found at
restore) written with every snapshot, and an ownership claim owed ahead of the
first snapshot there, so a zombie's later writes are fenced at the next restore.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from worker.config import TopicsConfig
from worker.errors import Rejected
from worker.kafka.records import OutRecord, claim_record
from worker.kafka.restore import SnapshotRead
from worker.messages import Event

log = structlog.get_logger("riskgate.worker")

ReadSnapshots = Callable[[frozenset[int]], Coroutine[Any, Any, SnapshotRead]]


@functools.lru_cache(maxsize=65_536)
def home_partition(key: bytes, partitions: int) -> int:
    """Where the Java/aiokafka default partitioner (murmur2) puts ``key``: the producer contract.

    A bot's home is computed, not learnt from the first record seen, so every
    worker and every replay agrees on it whatever order records arrive in.
    """
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class Ownership:
    """Assigned and restored partitions, restores in flight, bot homes, epochs and claims."""

    def __init__(self, topics: TopicsConfig, read: ReadSnapshots) -> None:
        self._topics = topics
        self._read = read
        self.input_partitions = 0
        """Partition count of every input topic (checked equal at start); 0 until connected."""
        self.assigned: set[TopicPartition] = set()
        self.restored: set[TopicPartition] = set()
        """Assigned partitions whose restore is applied: the only ones whose offsets commit."""
        self.partition_of: dict[str, int] = {}
        """Bot → input partition number, which is also its snapshot partition."""
        self.epochs: dict[int, int] = {}
        """Per owned partition, the owner epoch written with its snapshots (zombie fence)."""
        self._claims: dict[int, OutRecord] = {}
        """Ownership claims owed, sent ahead of the next persist's snapshots."""
        self._restoring: dict[frozenset[int], asyncio.Task[SnapshotRead]] = {}

    @property
    def restoring(self) -> bool:
        """A restore is still being read."""
        return bool(self._restoring)

    def check_home(self, event: Event, tp: TopicPartition) -> None:
        """A bot's events are accepted only on its home partition number (see ``home_partition``).

        Anywhere else its state would be held twice - by two owners, or twice
        in the snapshots - and a restore would keep whichever copy it read last.
        """
        if not self.input_partitions:
            return
        home = home_partition(event.bot.encode(), self.input_partitions)
        if tp.partition != home:
            raise Rejected(
                "bot_partition_mismatch",
                f"bot {event.bot!r} belongs on partition {home} (murmur2 of its key over "
                f"{self.input_partitions} partitions), not {tp.partition}: producers must use "
                f"the murmur2 partitioner (librdkafka: partitioner=murmur2_random)",
            )

    # -- rebalance -------------------------------------------------------------

    def assign(self, assigned: Iterable[TopicPartition]) -> set[TopicPartition]:
        """Take ``assigned``; start reading the new ones' snapshots. Returns them (to pause)."""
        new = set(assigned) - self.assigned
        self.assigned |= new
        partitions = frozenset(tp.partition for tp in new)
        if partitions:
            log.info("partitions assigned; restoring", partitions=sorted(partitions))
            self._restoring[partitions] = asyncio.create_task(self._read(partitions))
        return new

    def revoke(self, revoked: set[TopicPartition]) -> set[str]:
        """Give ``revoked`` up; returns the bots homed there, which the engine must forget."""
        self.assigned -= revoked
        self.restored -= revoked
        partitions = {tp.partition for tp in revoked}
        for key, task in list(self._restoring.items()):
            if key & partitions:
                task.cancel()
                del self._restoring[key]
        for partition in partitions:
            self.epochs.pop(partition, None)
        gone = {bot for bot, p in self.partition_of.items() if p in partitions}
        for bot in gone:
            del self.partition_of[bot]
        log.info("partitions revoked", partitions=sorted(partitions), bots=len(gone))
        return gone

    def finished_restores(self) -> Iterator[tuple[SnapshotRead, set[TopicPartition]]]:
        """Each restore read to its end, with the partitions still owned it covers.

        A failed read is logged and started again; a cancelled or disowned one is dropped.
        """
        for key, task in list(self._restoring.items()):
            if not task.done():
                continue
            del self._restoring[key]
            owned = {tp for tp in self.assigned if tp.partition in key}
            if task.cancelled() or not owned:
                continue
            error = task.exception()
            if error is not None:
                log.warning("restore failed; retrying", partitions=sorted(key), error=repr(error))
                self._restoring[key] = asyncio.create_task(self._read(key))
                continue
            yield task.result(), owned

    def mark_restored(self, owned: set[TopicPartition]) -> None:
        self.restored |= owned

    def committable(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The offsets of partitions owned *and restored* now (P3).

        Offsets taken before a revoke whose persist timed out must not commit
        even if the partition has come back since, nor may any of a partition
        whose restore is not applied yet.
        """
        return {tp: o for tp, o in offsets.items() if tp in self.restored}

    def cancel_restores(self) -> None:
        for task in self._restoring.values():
            task.cancel()

    # -- epochs and claims -----------------------------------------------------------

    def take_over(self, read: SnapshotRead) -> None:
        """Learn the homes ``read`` found; take the next epoch of its partitions; owe claims."""
        for bot, partition in read.bot_partitions.items():
            self.partition_of.setdefault(bot, partition)
        for partition in read.partitions:
            epoch = self.epochs[partition] = read.epochs.get(partition, 0) + 1
            self._claims[partition] = claim_record(self._topics, partition, epoch)

    def with_claims(self, snapshots: list[OutRecord]) -> list[OutRecord]:
        """``snapshots`` preceded by our claim on each partition they are the first write to."""
        written = {r.partition for r in snapshots if r.partition in self._claims}
        return [self._claims.pop(p) for p in sorted(written)] + snapshots
