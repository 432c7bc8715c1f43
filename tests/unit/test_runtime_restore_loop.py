"""The worker's loop applies restores in parts (issue 16): it keeps serving, and a revoke
arriving mid-restore can never leave a forgotten bot behind.

``Recovery.restore_async`` suspends between parts, so other coroutines (health,
the mark feed, heartbeats, rebalance callbacks) run during a large restore; a
revoke's forget waits for a restore being applied (``Recovery.applying``), so no
later part re-creates a bot it forgot, nor marks a revoked partition restored.
Every test drives the real ``Worker`` over ``worker.runtime.memory``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest
from aiokafka import TopicPartition

from tests.support.transport import FaultyBroker, Shell, broker_for, engine_state
from worker.config import Config, load_config
from worker.messages import TradeOutcome
from worker.runtime import home_partition
from worker.runtime import recovery as recovery_module
from worker.runtime.worker import Worker

NOW = 1_767_268_800_000  # 2026-01-01 12:00 UTC
MIN = 60_000

CONFIG = """
[topics]
partitions = 2
[defaults]
accept_unknown_bots = true
[worker]
commit_interval_ms = 60000
[defaults.breaker]
loss_limit = 2
window_secs = 7200
cooldown_secs = 7200
"""

CFG: Config = load_config(text=CONFIG, env={})
BOTS = [f"bot{n}" for n in range(12)]
HOMES = {bot: home_partition(bot.encode(), CFG.topics.partitions) for bot in BOTS}
REVOKED = 0
KEPT = 1
ON_REVOKED = {bot for bot, home in HOMES.items() if home == REVOKED}
ON_KEPT = {bot for bot, home in HOMES.items() if home == KEPT}


def tps(partition: int) -> set[TopicPartition]:
    return {TopicPartition(topic, partition) for topic in CFG.topics.inputs()}


async def settle(condition: Callable[[], bool], steps: int = 100_000) -> None:
    """Let the worker's tasks run until ``condition`` holds (bounded by steps, not time)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def persisted(broker: FaultyBroker) -> tuple[object, dict[TopicPartition, int]]:
    """A first worker applies two outcomes per bot and stops (snapshots persisted, offsets
    committed): its state and the offsets committed, for the next worker to restore."""
    for n, bot in enumerate(BOTS):
        for symbol in ("BTC", "ETH"):
            event = TradeOutcome(f"o{n}{symbol}", bot, symbol, -1.0, 0.0, NOW - 30 * MIN + n)
            broker.append(CFG.topics.outcomes, bot.encode(), msgspec.json.encode(event))
    with Shell(CFG, broker, NOW) as first:
        first.start(range(CFG.topics.partitions))
        assert await first.idle()
        assert await first.stop()
        assert first.worker is not None
        assert set(first.worker.engine.bots) == set(BOTS)
        return engine_state(first.worker.engine), dict(broker.committed)


@pytest.fixture
def one_record_a_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part of one record: every record of the restore is a point where it suspends."""
    monkeypatch.setattr(recovery_module, "RESTORE_PART", 1)


@pytest.mark.usefixtures("one_record_a_part")
async def test_the_loop_keeps_serving_while_a_large_restore_is_in_progress() -> None:
    """Another coroutine runs between the restore's parts: it sees every bot count from
    none to all while the partitions are not restored yet (the synchronous restore let
    nothing run until its end, so only 0 and the full count could be seen)."""
    broker = broker_for(CFG, timestamp_ms=NOW)
    expected, _ = await persisted(broker)
    with Shell(CFG, broker, NOW) as shell:
        worker = shell.start(range(CFG.topics.partitions))
        seen: list[int] = []

        async def watch(worker: Worker) -> None:
            await worker.started.wait()
            while worker.ownership.restored != tps(REVOKED) | tps(KEPT):
                seen.append(len(worker.engine.bots))
                await asyncio.sleep(0)

        watching = asyncio.create_task(watch(worker))
        assert await shell.idle()
        await watching
        assert sorted(set(seen)) == list(range(len(BOTS) + 1))
        assert engine_state(worker.engine) == expected
        assert worker.ready


@pytest.mark.usefixtures("one_record_a_part")
async def test_ready_was_reported_while_a_read_restore_was_still_being_applied() -> None:
    """Regression: ``ready`` asked only whether a restore was still being *read*; once
    read, the suspended apply let ``/readyz`` answer 200 with part of the state in."""
    broker = broker_for(CFG, timestamp_ms=NOW)
    await persisted(broker)
    with Shell(CFG, broker, NOW) as shell:
        worker = shell.start(range(CFG.topics.partitions))
        ready_while_applying: list[bool] = []

        async def watch(worker: Worker) -> None:
            await worker.started.wait()
            while worker.ownership.restored != tps(REVOKED) | tps(KEPT):
                if worker.engine.bots:
                    ready_while_applying.append(worker.ready)
                await asyncio.sleep(0)

        watching = asyncio.create_task(watch(worker))
        assert await shell.idle()
        await watching
        assert ready_while_applying and not any(ready_while_applying)
        assert worker.ready


@pytest.mark.usefixtures("one_record_a_part")
async def test_revoke_mid_restore_leaves_no_forgotten_bot_and_commits_nothing_revoked() -> None:
    """A revoke of one partition arrives while the restore of both is suspended between
    parts, its persist timed out (the case where the flush does not already order it
    after the loop's iteration): no bot homed on the revoked partition is left in the
    engine, the partition is never marked restored and nothing of it commits; given
    back, it restores to the state the first worker persisted."""
    broker = broker_for(CFG, timestamp_ms=NOW)
    expected, committed = await persisted(broker)
    with Shell(CFG, broker, NOW) as shell:
        worker = shell.start(range(CFG.topics.partitions))

        async def timed_out(timeout_s: float) -> bool:
            return False

        worker.checkpoint.flush = timed_out  # type: ignore[method-assign]
        await settle(lambda: 0 < len(worker.engine.bots) < len(BOTS) // 2)
        assert not worker.ownership.restored, "the revoke must land mid-restore"
        assert await shell.revoke([REVOKED])
        assert set(worker.engine.bots) == ON_KEPT
        assert worker.ownership.restored == tps(KEPT)
        assert worker.ownership.assigned == tps(KEPT)
        assert await shell.idle()
        assert set(worker.engine.bots) == ON_KEPT
        assert broker.committed == committed

        await shell.assign([REVOKED])
        assert await shell.idle()
        assert worker.ownership.restored == tps(REVOKED) | tps(KEPT)
        assert engine_state(worker.engine) == expected
        assert await shell.stop()
    assert broker.committed == committed
