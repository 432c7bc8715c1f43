"""The checkpoint's own rules: when a persist is due, and persist-then-commit order."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from worker.config import load_config
from worker.core import Effects
from worker.runtime.checkpoint import Checkpoint, Offsets

CONFIG = "[worker]\ncommit_interval_ms = 1000\nmax_unpersisted_keys = 3\n"
TP = TopicPartition("trading.outcomes", 0)


def checkpoint() -> Checkpoint:
    return Checkpoint(load_config(text=CONFIG, env={}).worker)


def dirty(*symbols: str) -> Effects:
    effects = Effects()
    effects.dirty_symbols.update(("alpha", s) for s in symbols)
    return effects


class Broker:
    """Records the order of the persist's two writes; ``acked`` decides the first."""

    def __init__(self, *, acked: bool) -> None:
        self.acked = acked
        self.calls: list[tuple[str, object]] = []

    async def write(self, keys: Effects) -> bool:
        self.calls.append(("snapshots", sorted(keys.dirty_symbols)))
        return self.acked

    async def commit(self, offsets: Offsets) -> None:
        self.calls.append(("commit", offsets))


async def test_offsets_commit_only_after_the_snapshots_are_acknowledged() -> None:
    cp, broker = checkpoint(), Broker(acked=True)
    cp.add(dirty("BTC"), {TP: 5})
    cp.add(dirty("ETH"), {TP: 9})
    assert await cp.persist(0, broker.write, broker.commit)
    assert broker.calls == [
        ("snapshots", [("alpha", "BTC"), ("alpha", "ETH")]),
        ("commit", {TP: 9}),
    ]
    assert (cp.unpersisted.dirty_symbols, cp.uncommitted) == (set(), {})


async def test_a_persist_whose_snapshots_are_not_acknowledged_commits_nothing() -> None:
    cp, broker = checkpoint(), Broker(acked=False)
    cp.add(dirty("BTC"), {TP: 5})
    assert not await cp.persist(0, broker.write, broker.commit)
    assert broker.calls == [("snapshots", [("alpha", "BTC")])]


async def test_a_persist_is_due_on_the_interval_on_too_many_keys_or_never_when_clean() -> None:
    cp, broker = checkpoint(), Broker(acked=True)
    assert not cp.due(10_000), "nothing pending: never due"
    cp.add(dirty("BTC"), {TP: 1})
    assert cp.due(0), "the first persist is due at once"
    await cp.persist(500, broker.write, broker.commit)
    cp.add(dirty("BTC"), {TP: 2})
    assert not cp.due(1_499)
    assert cp.due(1_500)
    cp.add(dirty("ETH", "SOL"), {})
    assert cp.due(600), "max_unpersisted_keys (3) reached before the interval"


async def test_forgotten_offsets_are_never_committed() -> None:
    cp, broker = checkpoint(), Broker(acked=True)
    other = TopicPartition("trading.outcomes", 1)
    cp.add(dirty("BTC"), {TP: 5, other: 7})
    cp.forget([other])
    await cp.persist(0, broker.write, broker.commit)
    assert broker.calls[-1] == ("commit", {TP: 5})


async def test_a_revoke_flush_makes_the_persist_due_and_waits_for_the_iteration() -> None:
    cp, broker = checkpoint(), Broker(acked=True)
    cp.add(dirty("BTC"), {TP: 1})
    await cp.persist(0, broker.write, broker.commit)
    cp.add(dirty("BTC"), {TP: 2})
    flushing = asyncio.create_task(cp.flush(timeout_s=60))
    await asyncio.sleep(0)
    assert cp.due(1), "a flush request makes the persist due before the interval"
    cp.iteration_done()
    assert await flushing is True
    assert not await cp.flush(timeout_s=0), "no iteration ended: the flush times out"
