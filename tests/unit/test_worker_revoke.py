"""Revoke bookkeeping of the Worker shell (no broker: the group's callback is called directly)."""

from __future__ import annotations

from aiokafka import TopicPartition

from tests.support.transport import broker_for
from worker.config import load_config
from worker.core import Effects
from worker.runtime import Worker
from worker.runtime.memory import MemoryTransport

NOW = 1_767_225_600_000


async def test_revoked_partitions_offsets_are_never_committed_later() -> None:
    """Offsets whose state is forgotten unpersisted must not survive a revoke: if the
    partition came back in the next assignment, committing them would skip events
    whose effects were never persisted."""
    cfg = load_config(text="[defaults]\naccept_unknown_bots = true\n", env={})
    transport = MemoryTransport(broker_for(cfg, timestamp_ms=NOW), cfg.topics.snapshots)
    worker = Worker(cfg, clock=lambda: NOW, transport=transport)
    kept = TopicPartition("trading.outcomes", 0)
    revoked = TopicPartition("trading.outcomes", 1)
    assert worker.ownership.assign([kept, revoked]) == {kept, revoked}
    worker.checkpoint.add(Effects(), {kept: 10, revoked: 20})
    worker.ownership.partition_of.update(alpha=0, beta=1)
    worker.engine.bot("alpha")
    worker.engine.bot("beta")

    await worker.on_revoked([revoked])

    assert worker.checkpoint.uncommitted == {kept: 10}
    assert set(worker.engine.bots) == {"alpha"}
    assert worker.ownership.partition_of == {"alpha": 0}
    assert worker.ownership.assigned == {kept}
