"""Revoke bookkeeping of the Worker shell (no broker: the listener is called directly)."""

from __future__ import annotations

from aiokafka import TopicPartition

from worker.app import Worker
from worker.config import load_config


async def test_revoked_partitions_offsets_are_never_committed_later() -> None:
    """Offsets whose state is forgotten unpersisted must not survive a revoke: if the
    partition came back in the next assignment, committing them would skip events
    whose effects were never persisted."""
    worker = Worker(load_config(text="[defaults]\naccept_unknown_bots = true\n", env={}))
    kept = TopicPartition("trading.outcomes", 0)
    revoked = TopicPartition("trading.outcomes", 1)
    worker._assigned = {kept, revoked}
    worker._uncommitted = {kept: 10, revoked: 20}
    worker._partition_of = {"alpha": 0, "beta": 1}
    worker.engine.bot("alpha")
    worker.engine.bot("beta")

    await worker._on_revoked([revoked])

    assert worker._uncommitted == {kept: 10}
    assert set(worker.engine.bots) == {"alpha"}
    assert worker._partition_of == {"alpha": 0}
