"""The pipelined loop (issues 10 and 16, lever 2): outputs in flight while the next batch runs.

The worker sends a batch's outputs and goes on to fetch and apply the next
batches while their acks are in flight (at most ``max_in_flight`` batches);
offsets commit only once every output and snapshot reflecting them is
acknowledged. Every test drives the real ``Worker`` over ``worker.runtime.memory``,
whose acks are held here until the test releases (or fails) them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, RecordTooLargeError

from tests.support.transport import FaultyBroker, Shell, broker_for, engine_state
from worker.config import Config, load_config
from worker.messages import Event, HaltEvent, OrderIntent, TradeOutcome
from worker.runtime import PublishRefused, home_partition
from worker.runtime.checkpoint import MAX_BATCHES_IN_FLIGHT
from worker.runtime.memory import Sent

NOW = 1_767_268_800_000  # 2026-01-01 12:00 UTC
MIN = 60_000

CONFIG = """
[topics]
partitions = 2
[worker]
commit_interval_ms = 60000
[defaults.breaker]
loss_limit = 2
window_secs = 7200
cooldown_secs = 7200
[defaults.portfolio]
max_gross_exposure = 100000.0
[bots.alpha]
symbols = ["BTC", "ETH"]
"""
"""The clock stands still unless a test moves it: after the first persist, only a stop
(or a revoke) persists, so batches stay in flight as long as their acks do."""

CFG: Config = load_config(text=CONFIG, env={})
HOME = home_partition(b"alpha", CFG.topics.partitions)
OUTCOMES = TopicPartition(CFG.topics.outcomes, HOME)
INTENTS = TopicPartition(CFG.topics.intents, HOME)


def outcome(n: int, symbol: str, net: float) -> TradeOutcome:
    return TradeOutcome(f"o{n}", "alpha", symbol, net, 0.0, NOW - 30 * MIN + n)


def intent(n: int, symbol: str) -> OrderIntent:
    return OrderIntent(f"i{n}", "alpha", symbol, "open", "buy", 1.0, 100.0, NOW - 1_000 + n)


FIRST = outcome(1, "ETH", 5.0)
"""Processed and committed before the test holds acks (the first persist is due at once)."""
LOSS = outcome(2, "BTC", -10.0)  # batch N
TRIP = outcome(3, "BTC", -10.0)  # batch N+1: the breaker trips (a halt)
DENIED = intent(4, "BTC")  # batch N+2: denied by the breaker (a decision)


def produce(broker: FaultyBroker, events: list[Event]) -> None:
    t = CFG.topics
    for e in events:
        topic = t.intents if isinstance(e, OrderIntent) else t.outcomes
        broker.append(topic, e.bot.encode(), msgspec.json.encode(e))


async def settle(condition: Callable[[], bool], steps: int = 10_000) -> None:
    """Let the worker's tasks run until ``condition`` holds (bounded by steps, not time)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def turns(n: int = 500) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def started(shell: Shell, broker: FaultyBroker) -> Shell:
    """A worker that processed FIRST (committed), then every ack is held."""
    produce(broker, [FIRST])
    shell.start(range(CFG.topics.partitions), max_records=1)
    return shell


def outputs(broker: FaultyBroker) -> dict[str, set[tuple[bytes | None, bytes | None]]]:
    """Halts and decisions, as sets: replays may repeat a record, never change one."""
    t = CFG.topics
    return {
        topic: {(r.key, r.value) for r in broker.records(topic)} for topic in (t.halts, t.decisions)
    }


async def reference() -> tuple[object, dict[str, set[tuple[bytes | None, bytes | None]]]]:
    """The same input, never interrupted: its state and outputs."""
    broker = broker_for(CFG, timestamp_ms=NOW)
    produce(broker, [FIRST, LOSS, TRIP, DENIED])
    with Shell(CFG, broker, NOW) as shell:
        shell.start(range(CFG.topics.partitions), max_records=1)
        assert await shell.idle()
        assert await shell.stop()
        assert shell.worker is not None
        return engine_state(shell.worker.engine), outputs(broker)


def position(shell: Shell, tp: TopicPartition) -> int | None:
    consumer = shell.consumer
    assert consumer is not None
    return consumer.positions.get(tp)


async def test_the_loop_fetches_the_next_batch_before_the_last_ones_acks_arrive() -> None:
    """The point of lever 2: batch N+1 is fetched, applied and sent while N's acks are out."""
    broker = broker_for(CFG, timestamp_ms=NOW)
    with started(Shell(CFG, broker, NOW), broker) as shell:
        assert await shell.idle()
        assert broker.committed == {OUTCOMES: 1}
        broker.hold_acks()
        produce(broker, [LOSS, TRIP])
        assert shell.worker is not None
        checkpoint = shell.worker.checkpoint
        await settle(lambda: len(checkpoint.in_flight) == 2)  # sent, neither acknowledged
        assert position(shell, OUTCOMES) == 3
        halts = [
            msgspec.json.decode(r.value or b"", type=HaltEvent)
            for r in broker.records(CFG.topics.halts)
        ]
        assert [(h.kind, h.gate) for h in halts] == [("halted", "circuit_breaker")]
        assert broker.committed == {OUTCOMES: 1}
        broker.release_acks()
        assert await shell.idle()
        assert len(checkpoint.in_flight) == 0
        assert await shell.stop()
    assert broker.committed == {OUTCOMES: 3}


async def test_at_most_max_in_flight_batches_await_their_acks() -> None:
    """The bound: with every ack held the loop fetches K+1 batches, then waits for the first."""
    broker = broker_for(CFG, timestamp_ms=NOW)
    with started(Shell(CFG, broker, NOW), broker) as shell:
        assert await shell.idle()
        broker.hold_acks()
        produce(broker, [outcome(10 + n, "ETH", 1.0) for n in range(MAX_BATCHES_IN_FLIGHT + 3)])
        fetched = 1 + MAX_BATCHES_IN_FLIGHT + 1  # FIRST, K in flight, one waiting for room
        await settle(lambda: position(shell, OUTCOMES) == fetched)
        await turns()
        assert position(shell, OUTCOMES) == fetched
        assert shell.worker is not None
        assert len(shell.worker.checkpoint.in_flight) == MAX_BATCHES_IN_FLIGHT + 1
        broker.release_acks()
        assert await shell.idle()
        assert position(shell, OUTCOMES) == 1 + MAX_BATCHES_IN_FLIGHT + 3


async def test_crash_after_later_batches_applied_before_the_acks_commits_nothing_unacked() -> None:
    """(a) Batches N, N+1, N+2 applied and sent, no ack yet, a persist due, the process
    dies: nothing of them is committed, and the restarted worker's replay yields the
    uninterrupted state and the same halts and decisions."""
    expected_state, expected_outputs = await reference()
    broker = broker_for(CFG, timestamp_ms=NOW)
    with started(Shell(CFG, broker, NOW), broker) as shell:
        assert await shell.idle()
        broker.hold_acks()
        produce(broker, [LOSS, TRIP, DENIED])
        assert shell.worker is not None
        checkpoint = shell.worker.checkpoint
        await settle(lambda: len(checkpoint.in_flight) == 3)
        assert position(shell, INTENTS) == 1
        shell.now_ms += MIN  # a persist is due: it must wait for the acks before committing
        await turns()
        assert checkpoint.in_flight and broker.committed == {OUTCOMES: 1}
        shell.kill()
        await turns(10)
        assert broker.committed == {OUTCOMES: 1}
        broker.release_acks()  # to a dead process
        shell.now_ms = NOW  # the replay decides at the reference's time (R4: intents age)
        shell.start(range(CFG.topics.partitions), max_records=1)
        assert await shell.idle()
        assert await shell.stop()
        assert engine_state(shell.worker.engine) == expected_state
    assert broker.committed == {OUTCOMES: 3, INTENTS: 1}
    assert outputs(broker) == expected_outputs
    assert len(broker.records(CFG.topics.halts)) == 2, "the trip's halt, sent again by the replay"


async def test_a_failed_ack_of_batch_n_stops_the_worker_without_committing_n_or_later() -> None:
    """(b) Batch N's acks fail (a refusal) after N+1 was sent and acknowledged: the worker
    stops, and neither N's nor N+1's offsets are committed."""
    broker = broker_for(CFG, timestamp_ms=NOW)
    with started(Shell(CFG, broker, NOW), broker) as shell:
        assert await shell.idle()
        broker.hold_acks()
        produce(broker, [LOSS])
        assert shell.worker is not None
        checkpoint = shell.worker.checkpoint
        await settle(lambda: len(checkpoint.in_flight) == 1)  # N's outputs are all sent
        first = {tp: broker.end(tp) for tp in broker.logs}
        produce(broker, [TRIP])
        await settle(lambda: len(checkpoint.in_flight) == 2)

        def refuse_batch_n(sent: Sent) -> BaseException | None:
            if sent.offset < first[TopicPartition(sent.topic, sent.partition)]:
                refusal: BaseException = RecordTooLargeError("message.max.bytes is smaller")
                return refusal
            return None

        broker.release_acks(refuse_batch_n)
        with pytest.raises(PublishRefused, match=r"refused a record .*max.bytes is smaller"):
            await shell.idle()
    assert broker.committed == {OUTCOMES: 1}


async def test_an_ack_lost_to_an_outage_sends_that_batch_and_every_later_one_again_in_order() -> (
    None
):
    """Batch N's acks fail for a broker outage after N+1 was sent: N and N+1 are sent
    again, in that order, so each partition ends with N+1's outputs last; then both
    commit."""
    broker = broker_for(CFG, timestamp_ms=NOW)
    with started(Shell(CFG, broker, NOW), broker) as shell:
        assert await shell.idle()
        base = {tp: broker.end(tp) for tp in broker.logs}
        broker.hold_acks()
        produce(broker, [LOSS])
        assert shell.worker is not None
        checkpoint = shell.worker.checkpoint
        await settle(lambda: len(checkpoint.in_flight) == 1)
        first = {tp: broker.end(tp) for tp in broker.logs}
        produce(broker, [TRIP])
        await settle(lambda: len(checkpoint.in_flight) == 2)
        sent = {tp: broker.end(tp) for tp in broker.logs}

        def outage_in_batch_n(record: Sent) -> BaseException | None:
            if record.offset < first[TopicPartition(record.topic, record.partition)]:
                outage: BaseException = KafkaConnectionError("the broker went away")
                return outage
            return None

        broker.release_acks(outage_in_batch_n)
        assert await shell.idle()
        assert await shell.stop()
    assert broker.committed == {OUTCOMES: 3}
    resent = []
    for tp, log in broker.logs.items():
        if tp.topic in (CFG.topics.gates, CFG.topics.halts):
            values = [r.value for r in log]
            # N's records then N+1's, once as first sent and once more, in the same order.
            assert values[sent[tp] :] == values[base[tp] : sent[tp]], tp
            resent += [tp.topic] * (len(values) - sent[tp])
    # Each loss: the symbol's and the account's gate records; the trip: its halt.
    assert sorted(resent) == [CFG.topics.gates] * 4 + [CFG.topics.halts]


async def test_a_persist_due_while_the_last_one_is_in_flight_waits_so_keys_cannot_pile_up() -> None:
    """Regression: a persist was never due while the previous one was in flight, so the
    loop ran on, every persist covered everything applied meanwhile and grew, and so did
    the worker's RSS (100k symbols built live: 311 MiB, 240 MiB with this wait)."""
    broker = broker_for(CFG, timestamp_ms=NOW)
    with started(Shell(CFG, broker, NOW), broker) as shell:
        assert await shell.idle()
        assert shell.worker is not None
        checkpoint = shell.worker.checkpoint
        broker.hold_acks()
        shell.now_ms += MIN  # the next persist is due: it claims LOSS, whose acks are held
        produce(broker, [LOSS])
        await settle(lambda: checkpoint.persisting)
        produce(broker, [TRIP])  # applied while that persist is in flight
        await settle(lambda: position(shell, OUTCOMES) == 3)
        shell.now_ms += MIN  # another interval: this persist waits for the one in flight
        produce(broker, [DENIED])
        await turns()
        assert position(shell, INTENTS) == 0, "the loop ran on past a persist it owed"
        assert broker.committed == {OUTCOMES: 1}
        broker.release_acks()
        assert await shell.idle()
        assert position(shell, INTENTS) == 1
        assert await shell.stop()
    assert broker.committed == {OUTCOMES: 3, INTENTS: 1}
