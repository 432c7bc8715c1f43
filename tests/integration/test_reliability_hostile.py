"""Hostile input through a running worker: every record dead-lettered, the worker keeps going.

The compact corpus of ``chaos.hostile`` (one record of each kind that must be
rejected: garbage bytes, deep nesting, invalid UTF-8, huge numbers, NaN,
wrong types, bad names, key != bot, far-future events, bad signatures,
oversized records up to several MiB, ...) is produced in one burst, each
record with an original header, followed by one good event. Every bad record
must reach the dead-letter topic exactly as it came (key, value, headers) with
the KIP-1034 style error headers, nothing may change, and the good event after
them must be applied: the worker never stops on bad input.
"""

from __future__ import annotations

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from tests.chaos.hostile import BODY, Case, rejected_cases
from tests.support.harness import (
    Produced,
    Raw,
    Record,
    clock,
    create_topics,
    latest,
    make_config,
    outcome,
    produce_events,
    read_topic,
    running_worker,
    wait_processed,
)
from worker.config import Config
from worker.kafka.options import client_kwargs

pytestmark = pytest.mark.broker

ERROR_HEADERS = (
    "riskgate.errors.topic",
    "riskgate.errors.partition",
    "riskgate.errors.offset",
    "riskgate.errors.exception",
    "riskgate.errors.message",
)
HUGE = (3 << 20) // 2
"""A 1.5 MiB record: more than a Kafka producer sends by default, which brokers accept."""


def _topic(config: Config, case: Case) -> str:
    topics = config.topics
    return {
        "fill": topics.fills,
        "outcome": topics.outcomes,
        "intent": topics.intents,
        "control": topics.control,
    }[case.kind]


async def _produce_big(config: Config, records: list[Raw]) -> list[Produced]:
    """Like the harness's ``produce``, but able to send records of several MiB."""
    producer = AIOKafkaProducer(
        **client_kwargs(config.kafka),
        acks="all",
        max_request_size=16 << 20,
        max_batch_size=1 << 20,
    )
    await producer.start()
    try:
        # Stamped by the in-process worker's clock, as a producer beside it would be:
        # the worker judges future skew against the record timestamp.
        futures = [
            await producer.send(
                r.topic, r.value, key=r.key, headers=r.headers, timestamp_ms=clock()
            )
            for r in records
        ]
        return [Produced(m.topic, m.partition, m.offset) for m in [await f for f in futures]]
    finally:
        await producer.stop()


async def test_every_hostile_record_is_dead_lettered_and_the_worker_keeps_going(
    kafka_bootstrap: str,
) -> None:
    config = make_config(kafka_bootstrap, BODY)
    topics = config.topics
    await create_topics(config)
    now = clock()
    cases = rejected_cases(now)
    # And one bigger than what any producer sends by default.
    cases.append(
        Case(
            "1.5 MiB record",
            "outcome",
            b"alpha",
            b'{"pad":"' + b"x" * HUGE + b'"}',
            frozenset({"oversize"}),
        )
    )
    assert len(cases) == 106, "the corpus's rejected cases (105) and the 1.5 MiB record"

    async with running_worker(config) as running:
        baseline = await produce_events(
            config, [outcome("alpha", "BTCUSDT", -5.0, 0.1, ts=now - 120_000)]
        )
        await wait_processed(config, baseline, alive=running.check_alive)
        snapshots_before = await latest(config.kafka, topics.snapshots)

        raws = [
            Raw(_topic(config, c), c.key, c.value, [("hostile.case", c.name.encode())])
            for c in cases
        ]
        produced = await _produce_big(config, raws)
        good = await produce_events(config, [outcome("alpha", "ETHUSDT", 7.0, ts=now - 1_000)])
        await wait_processed(config, produced + good, alive=running.check_alive, within=60)
        engine = running.worker.engine
        assert engine.bots["alpha"].symbols["ETHUSDT"].session.net_pnl == 7.0  # still going
        # Configured bots are held from assignment; rejected ones leave no state.
        assert sorted(engine.bots) == sorted(config.bots)
        assert {b: set(engine.bots[b].symbols) for b in config.bots if b != "alpha"} == {
            b: set() for b in config.bots if b != "alpha"
        }
        assert engine.bots["alpha"].manual_halt is None
        assert set(engine.bots["alpha"].symbols) == {"BTCUSDT", "ETHUSDT"}

    dead = await read_topic(config.kafka, topics.deadletter, within=60)
    by_origin: dict[tuple[str, int, int], Record] = {}
    for record in dead:
        headers = dict(record.headers)
        assert all(headers.get(h) for h in ERROR_HEADERS), record.headers
        origin = (
            headers["riskgate.errors.topic"].decode(),
            int(headers["riskgate.errors.partition"]),
            int(headers["riskgate.errors.offset"]),
        )
        assert origin not in by_origin, f"dead-lettered twice: {origin}"
        by_origin[origin] = record
    print(f"\n{len(cases)} hostile records through a running worker, {len(dead)} dead letters")
    failures = []
    for case, where in zip(cases, produced, strict=True):
        origin = (where.topic, where.partition, where.offset)
        if origin not in by_origin:
            failures.append(f"{case.name}: not dead-lettered")
            continue
        record = by_origin.pop(origin)
        headers = dict(record.headers)
        reason = headers["riskgate.errors.exception"].decode()
        if reason not in case.expect:
            failures.append(f"{case.name}: dead-lettered as {reason}, expected {set(case.expect)}")
        if headers.get("hostile.case") != case.name.encode():
            failures.append(f"{case.name}: original header lost")
        if record.key != case.key:
            failures.append(f"{case.name}: key {record.key!r} != {case.key!r}")
        dropped = headers.get("riskgate.errors.value.dropped")
        if dropped is not None:
            # Too big for any producer to copy: the headers point at the original.
            if int(dropped) != len(case.value or b"") or record.value is not None:
                failures.append(f"{case.name}: dropped value header {dropped!r} is wrong")
        elif record.value != case.value:
            failures.append(f"{case.name}: value changed")
    assert not failures, "\n".join(failures)
    assert not by_origin, f"unexpected dead letters: {sorted(by_origin)}"

    # Nothing changed but the good event's key (and no state for rejected bots).
    snapshots_after = await latest(config.kafka, topics.snapshots)
    changed = {
        k
        for k in snapshots_after.keys() | snapshots_before.keys()
        if (r := snapshots_after.get(k)) is None
        or snapshots_before.get(k) is None
        or r.value != snapshots_before[k].value
    }
    assert changed <= {"alpha/risk/ETHUSDT", "alpha/portfolio"}, changed
    portfolio = snapshots_after.get("alpha/portfolio")
    if portfolio is not None and portfolio.value is not None:
        assert msgspec.json.decode(portfolio.value)["manual_halt"] is None
    gates = await latest(config.kafka, topics.gates)
    # Symbol gate records only for alpha; a silent configured bot has its account record.
    assert {k for k in gates if not k.startswith("alpha/")} == {
        f"{b}/gate" for b in config.bots if b != "alpha"
    }, sorted(gates)
    assert await read_topic(config.kafka, topics.halts) == []
