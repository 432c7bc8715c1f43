"""The checkpoint's own rules: when a persist is due, and persist-then-commit order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import TopicPartition

from worker.config import load_config
from worker.core import Effects
from worker.kafka.records import OutRecord
from worker.runtime.checkpoint import Checkpoint, Offsets, Writes
from worker.runtime.publish import Sending

CONFIG = "[worker]\ncommit_interval_ms = 1000\nmax_unpersisted_keys = 3\n"
TP = TopicPartition("trading.outcomes", 0)


def checkpoint() -> Checkpoint:
    return Checkpoint(load_config(text=CONFIG, env={}).worker)


def dirty(*symbols: str) -> Effects:
    effects = Effects()
    effects.dirty_symbols.update(("alpha", s) for s in symbols)
    return effects


class Broker:
    """Records the order of the persist's writes; ``acked`` decides the snapshots' acks."""

    def __init__(self, *, acked: bool) -> None:
        self.acked = acked
        self.calls: list[tuple[str, object]] = []

    async def confirm(self, sendings: Sequence[Sending], count: int) -> bool:
        self.calls.append(("confirm", [len(s.records) for s in sendings[:count]]))
        return self.acked

    def snapshot(self, keys: Effects) -> list[OutRecord]:
        self.calls.append(("snapshots", sorted(keys.dirty_symbols)))
        return [snapshot(s) for _, s in sorted(keys.dirty_symbols)]

    async def send(self, records: list[OutRecord]) -> Sending:
        self.calls.append(("send", len(records)))
        sending = Sending(records, Timer())
        sending.sent([])
        return sending

    async def commit(self, offsets: Offsets) -> None:
        self.calls.append(("commit", offsets))

    async def persist(self, cp: Checkpoint, now: int) -> bool:
        """A persist and its completion in the background."""
        writes = Writes(self.confirm, self.snapshot, self.send, self.commit)
        return await cp.persist(now, writes) and await cp.persisted(self.confirm)


class Timer:
    def observe(self, seconds: float) -> None:
        pass


def snapshot(symbol: str) -> OutRecord:
    return OutRecord("risk.snapshots", f"alpha/risk/{symbol}".encode(), b"{}", 0)


async def test_offsets_commit_only_after_the_snapshots_are_acknowledged() -> None:
    cp, broker = checkpoint(), Broker(acked=True)
    cp.add(dirty("BTC"), {TP: 5})
    cp.add(dirty("ETH"), {TP: 9})
    assert await broker.persist(cp, 0)
    assert broker.calls == [
        ("snapshots", [("alpha", "BTC"), ("alpha", "ETH")]),
        ("send", 2),
        ("confirm", [2]),
        ("commit", {TP: 9}),
    ]
    assert (cp.unpersisted.dirty_symbols, cp.uncommitted) == (set(), {})


async def test_a_persist_whose_snapshots_are_not_acknowledged_commits_nothing() -> None:
    cp, broker = checkpoint(), Broker(acked=False)
    cp.add(dirty("BTC"), {TP: 5})
    assert not await broker.persist(cp, 0)
    assert broker.calls == [("snapshots", [("alpha", "BTC")]), ("send", 1), ("confirm", [1])]


async def test_a_persist_is_due_on_the_interval_on_too_many_keys_or_never_when_clean() -> None:
    cp, broker = checkpoint(), Broker(acked=True)
    assert not cp.due(10_000), "nothing pending: never due"
    cp.add(dirty("BTC"), {TP: 1})
    assert cp.due(0), "the first persist is due at once"
    await broker.persist(cp, 500)
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
    await broker.persist(cp, 0)
    assert broker.calls[-1] == ("commit", {TP: 5})


async def test_a_revoke_flush_makes_the_persist_due_and_waits_for_the_iteration() -> None:
    cp, broker = checkpoint(), Broker(acked=True)
    cp.add(dirty("BTC"), {TP: 1})
    await broker.persist(cp, 0)
    cp.add(dirty("BTC"), {TP: 2})
    flushing = asyncio.create_task(cp.flush(timeout_s=60))
    await asyncio.sleep(0)
    assert cp.due(1), "a flush request makes the persist due before the interval"
    cp.iteration_done()
    assert await flushing is True
    assert not await cp.flush(timeout_s=0), "no iteration ended: the flush times out"
