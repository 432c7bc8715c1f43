"""Read snapshot partitions to their end: the state a worker must have before consuming.

"The end" is the end offset captured when the read starts, and "reached" means
the consumer's position got there — not "no record for a while" — so
compaction gaps, deleted segments and transaction markers cannot hang it.

Every fetched batch is consumed whole (``getmany`` without ``max_records``), so
the position only ever stops on a batch boundary. That matters on Tansu, the
embedded broker: its ListOffsets answers the *base offset of the last batch + 1*
rather than the log end offset, so a read capped by a record count could reach
that "end" in the middle of the last batch and silently drop the snapshots
after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition


class SnapshotRead(NamedTuple):
    partitions: frozenset[int]
    records: dict[str, bytes | None]
    """Last value per key (None is a tombstone)."""
    bot_partitions: dict[str, int]
    """Bot id (the key's first part) → the partition its snapshots live on."""
    read: int
    seconds: float


async def read_snapshot_partitions(
    client_kwargs: dict[str, Any], topic: str, partitions: Iterable[int] | None = None
) -> SnapshotRead:
    """Last value per key of the given (default: all) partitions, read to their captured end."""
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(
        **client_kwargs,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    records: dict[str, bytes | None] = {}
    bot_partitions: dict[str, int] = {}
    read = 0
    try:
        if partitions is None:
            await consumer.topics()  # refreshes metadata for every topic
            partitions = consumer.partitions_for_topic(topic) or ()
        wanted = frozenset(partitions)
        tps = [TopicPartition(topic, p) for p in sorted(wanted)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        while pending:
            # No max_records: never stop inside a batch (see the module docstring).
            batch = await consumer.getmany(*pending, timeout_ms=200)
            for tp, tp_records in batch.items():
                read += len(tp_records)
                for record in tp_records:
                    if record.key is not None:
                        key = record.key.decode("utf-8", "replace")
                        records[key] = record.value
                        bot_partitions[key.partition("/")[0]] = tp.partition
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return SnapshotRead(wanted, records, bot_partitions, read, time.perf_counter() - started)
