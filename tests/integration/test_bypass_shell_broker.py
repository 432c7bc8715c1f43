"""The worker shell against a real broker and a foreign producer (confluent-kafka).

Issue 15 item 1: bad records - null-valued headers from a librdkafka producer,
a header key that is not UTF-8 - are dead-lettered and the worker moves on.
(No librdkafka tool here can write that key: confluent-kafka sends a bytes key
as its ``str()``, and Debian's kcat cannot talk to the embedded broker; it is
written with aiokafka's pure-Python record builder instead.)
Issue 9 item 12: input topics with different partition counts refuse to
start; librdkafka's default partitioner puts bots on partitions that are not
their murmur2 home (dead-lettered ``bot_partition_mismatch``) while
``partitioner=murmur2_random`` co-partitions with aiokafka.
Issue 15 items 12 and 13: inconsistent timeouts refuse to start with one
line; SIGTERM stops a worker whose broker froze while it was joining.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiokafka.producer.message_accumulator as accumulator_module
import aiokafka.producer.producer as producer_module
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from confluent_kafka import Producer
from structlog.testing import capture_logs

from tests.support.harness import (
    MIN_MS,
    Produced,
    WorkerProcess,
    clock,
    config_text,
    create_topics,
    default_partition,
    latest,
    outcome,
    read_topic,
    running_worker,
    wait_processed,
    wait_until,
)
from tests.support.ops import http_status, logged
from worker.config import Config, load_config
from worker.kafka.broker import EmbeddedBroker
from worker.kafka.topics import TopicLayoutError, admin_client, ensure_topics
from worker.runtime import Worker

pytestmark = pytest.mark.broker

_encode = msgspec.json.Encoder().encode
BODY = """
[defaults]
accept_unknown_bots = true
"""


Headers = list[tuple[str, str | bytes | None]] | None


def produce_confluent(
    config: Config,
    records: Sequence[tuple[str, bytes, bytes, Headers]],
    *,
    partitioner: str | None = None,
) -> list[Produced]:
    """Send ``(topic, key, value, headers)`` with librdkafka; where each one landed, in order.

    (Delivery reports arrive grouped by partition, not in the order produced.)
    """
    settings: dict[str, Any] = {"bootstrap.servers": config.kafka.bootstrap_servers, "acks": "all"}
    if partitioner is not None:
        settings["partitioner"] = partitioner
    producer = Producer(settings)
    landed: list[Produced | None] = [None] * len(records)
    errors: list[Any] = []

    def delivered(index: int) -> Any:
        def report(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(error)
            else:
                landed[index] = Produced(message.topic(), message.partition(), message.offset())

        return report

    for i, (topic, key, value, headers) in enumerate(records):
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered(i))
    assert producer.flush(30) == 0, "undelivered records"
    assert errors == []
    return [p for p in landed if p is not None]


class _RawKey(str):
    """A header key whose bytes on the wire are not UTF-8 (the Python builder calls encode)."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe"


async def produce_undecodable_header(
    config: Config, topic: str, key: bytes, value: bytes, monkeypatch: pytest.MonkeyPatch
) -> Produced:
    with monkeypatch.context() as patch:
        patch.setattr(accumulator_module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
        patch.setattr(producer_module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
        producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers)
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                topic, value, key=key, headers=[(_RawKey("h"), b"x")]
            )
        finally:
            await producer.stop()
    return Produced(sent.topic, sent.partition, sent.offset)


def dead_letters(records: list[Any]) -> list[dict[str, Any]]:
    return [
        {"key": r.key, "value": r.value, "headers": r.headers, **dict(r.headers)} for r in records
    ]


async def test_bad_records_from_librdkafka_are_dead_lettered_and_the_worker_moves_on(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(text=config_text(kafka_bootstrap, BODY, partitions=2), env={})
    await create_topics(config)
    topic = config.topics.outcomes
    t = clock() - 10 * MIN_MS
    broken = b'{"outcome_id": "broken",'
    # The null header value reached len(None) on the dead-letter path.
    produced = produce_confluent(
        config, [(topic, b"alpha", broken, [("trace", None)])], partitioner="murmur2_random"
    )
    first = _encode(outcome("alpha", "BTC", 1.0, ts=t))
    produced.append(await produce_undecodable_header(config, topic, b"alpha", first, monkeypatch))
    later: list[tuple[str, bytes, bytes, Headers]] = [
        (topic, b"alpha", _encode(outcome("alpha", "BTC", 2.0, ts=t + 1)), [("n", None)]),
        (topic, b"alpha", _encode(outcome("alpha", "BTC", 3.0, ts=t + 2)), None),
    ]
    produced += produce_confluent(config, later, partitioner="murmur2_random")
    assert len({p.partition for p in produced}) == 1
    assert [p.offset for p in produced] == [0, 1, 2, 3]
    async with running_worker(config) as running:
        await wait_processed(config, produced, alive=running.check_alive, within=60)
        risk = running.worker.engine.bots["alpha"].symbols["BTC"]
        assert (risk.session.trades, risk.session.realised) == (2, 5.0)
        running.check_alive()
    letters = dead_letters(await read_topic(config.kafka, config.topics.deadletter))
    by_offset = {int(d["riskgate.errors.offset"]): d for d in letters}
    assert sorted(by_offset) == [produced[0].offset, produced[1].offset]
    malformed = by_offset[produced[0].offset]
    assert (malformed["key"], malformed["value"]) == (b"alpha", broken)
    assert malformed["headers"][0] == ("trace", None), "the null header value kept as null"
    assert malformed["riskgate.errors.exception"] == b"malformed_json"
    undecodable = by_offset[produced[1].offset]
    assert (undecodable["key"], undecodable["value"]) == (None, b"")
    assert undecodable["riskgate.errors.value.null"] == b"true"
    assert undecodable["riskgate.errors.exception"] == b"undecodable_record"
    assert undecodable["riskgate.errors.topic"] == topic.encode()
    assert undecodable["riskgate.errors.partition"] == str(produced[1].partition).encode()


async def test_input_topics_with_different_partition_counts_refuse_to_start(
    kafka_bootstrap: str,
) -> None:
    config = load_config(text=config_text(kafka_bootstrap, BODY, partitions=2), env={})
    async with admin_client(config.kafka) as admin:
        await admin.create_topics([NewTopic(config.topics.fills, 3, 1)])
    await ensure_topics(config.kafka, config.topics)
    with pytest.raises(TopicLayoutError) as refused:
        await Worker(config).run()
    assert str(refused.value).startswith(
        f"input topics have different partition counts ({config.topics.fills} has 3, "
        f"{config.topics.outcomes} has 2, {config.topics.intents} has 2, "
        f"{config.topics.control} has 2)"
    )


async def test_librdkafka_needs_murmur2_random_to_co_partition_with_aiokafka(
    kafka_bootstrap: str,
) -> None:
    """The producer contract: murmur2 (librdkafka ``partitioner=murmur2_random``).

    librdkafka's default (``consistent_random``, CRC32) puts some bots on another
    partition number than aiokafka/Java would: those records are dead-lettered
    ``bot_partition_mismatch`` and each bot's state is held on its home only.
    """
    partitions = 4
    config = load_config(text=config_text(kafka_bootstrap, BODY, partitions=partitions), env={})
    await create_topics(config)
    topic = config.topics.outcomes
    bots = [f"bot-{uuid.uuid4().hex[:6]}-{i}" for i in range(24)]
    t = clock() - 10 * MIN_MS

    def feed(tag: str) -> list[tuple[str, bytes, bytes, None]]:
        return [
            (
                topic,
                b.encode(),
                _encode(outcome(b, "BTC", 1.0, ts=t, outcome_id=f"{tag}-{b}")),
                None,
            )
            for b in bots
        ]

    murmur = produce_confluent(config, feed("m"), partitioner="murmur2_random")
    crc = produce_confluent(config, feed("c"))
    home = {b: default_partition(b.encode(), partitions) for b in bots}
    assert [p.partition for p in murmur] == [home[b] for b in bots]
    strays = {b for b, p in zip(bots, crc, strict=True) if p.partition != home[b]}
    assert strays, "precondition: CRC32 differs from murmur2 for some of 24 keys"
    async with running_worker(config) as running:
        await wait_processed(config, murmur + crc, alive=running.check_alive, within=60)
        engine = running.worker.engine
        trades = {b: engine.bots[b].symbols["BTC"].session.trades for b in bots}
        assert trades == {b: 1 if b in strays else 2 for b in bots}
        registry = running.worker.metrics.registry
        mismatches = {"reason": "bot_partition_mismatch"}
        assert registry.get_sample_value("riskgate_deadletters_total", mismatches) == len(strays)
    letters = dead_letters(await read_topic(config.kafka, config.topics.deadletter))
    assert {d["key"].decode() for d in letters} == strays
    assert {d["riskgate.errors.exception"] for d in letters} == {b"bot_partition_mismatch"}
    snapshots = await latest(config.kafka, config.topics.snapshots)
    # ``/owner`` records are the owners' epoch claims (worker/kafka/restore.py), not bot state.
    where = {k.split("/")[0]: r.partition for k, r in snapshots.items() if not k.startswith("/")}
    assert where == home


def test_inconsistent_timeouts_stop_riskgate_run_with_one_line(tmp_path: Path) -> None:
    """Issue 15 item 12: the shipped 30 s session / 15 s request never joined; now refused."""
    text = config_text("127.0.0.1:1", BODY, session_timeout_ms=30_000)
    text = text.replace("[kafka]\n", "[kafka]\nrequest_timeout_ms = 15000\n", 1)
    path = tmp_path / "riskgate.toml"
    path.write_text(text)
    worker = WorkerProcess(path, tmp_path / "worker.log")
    worker.start()
    assert worker.proc is not None
    assert worker.proc.wait(60) == 1
    lines = worker.log_path.read_text().strip().splitlines()
    assert lines == [
        "Error: inconsistent timeouts: kafka.request_timeout_ms (15000) must be greater than "
        "kafka.session_timeout_ms (30000): the broker may hold a JoinGroup request that "
        "long, so the group would never be joined"
    ]


async def test_sigterm_stops_a_worker_whose_broker_froze_while_it_joined(
    embedded_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Issue 15 item 13: SIGTERM used to be ignored while the worker was stuck joining."""
    text = config_text(
        embedded_broker.bootstrap_servers,
        BODY,
        partitions=2,
        session_timeout_ms=3_000,
        kafka_extra="request_timeout_ms = 5000\n",
    )
    config = load_config(text=text, env={})
    await create_topics(config)
    path = tmp_path / "riskgate.toml"
    path.write_text(text)
    worker = WorkerProcess(path, tmp_path / "worker.log")
    bound_s = Worker(config).shutdown_bound_s
    try:
        worker.start()

        async def clients_started() -> bool:
            return bool(logged(worker.log_path, "worker started"))

        await wait_until(clients_started, within=60, what="clients started", interval=0.01)
        embedded_broker.pause()  # the join (or whatever follows it) never completes
        await asyncio.sleep(3)
        worker.check_alive()
        code = await asyncio.to_thread(worker.terminate, bound_s + 5)
        assert code == 0, worker.log_tail()
        assert logged(worker.log_path, "stopping")[0]["signal"] == "SIGTERM"
        assert logged(worker.log_path, "worker stopped")
    finally:
        embedded_broker.resume()
        await asyncio.to_thread(worker.kill)


async def test_recreated_input_topic_is_said_loudly(kafka_bootstrap: str) -> None:
    """Suspected item (issue 9): offsets restart below the snapshots' watermarks.

    The log lines are taken from structlog itself (``capture_logs``), not from the
    process's stdout: where those go depends on whether an earlier test of the same
    process configured logging (an in-process ``serve()`` writes JSON to stderr), so
    reading stdout made this test pass or fail by the order files ran in."""
    config = load_config(text=config_text(kafka_bootstrap, BODY, partitions=2), env={})
    await create_topics(config)
    topic = config.topics.outcomes
    t = clock() - 10 * MIN_MS
    before = produce_confluent(
        config,
        [
            (topic, b"alpha", _encode(outcome("alpha", "BTC", 1.0, ts=t + i)), None)
            for i in range(5)
        ],
        partitioner="murmur2_random",
    )
    async with running_worker(config) as running:
        await wait_processed(config, before, alive=running.check_alive, within=60)
    async with admin_client(config.kafka) as admin:
        await admin.delete_topics([topic])
    await ensure_topics(config.kafka, config.topics)  # recreated: offsets restart at 0
    after = produce_confluent(
        config,
        [(topic, b"alpha", _encode(outcome("alpha", "BTC", -9.0, ts=t + 9)), None)],
        partitioner="murmur2_random",
    )
    assert (after[0].partition, after[0].offset) == (before[0].partition, 0)
    with capture_logs() as logs:
        async with running_worker(config) as running:
            registry = running.worker.metrics.registry
            where = {"topic": topic, "partition": str(after[0].partition)}

            def resets() -> float | None:
                return registry.get_sample_value("riskgate_input_offset_resets_total", where)

            async def said() -> bool:
                return bool(resets())

            await wait_until(
                said, within=60, what="offset reset detected", alive=running.check_alive
            )
            assert resets() == 1
            assert running.worker.engine.bots["alpha"].symbols["BTC"].session.trades == 5
    lines = [entry for entry in logs if "restarted below" in entry["event"]]
    assert [entry["log_level"] for entry in lines] == ["error"]


GHOST_SESSION_MS = 20_000
"""The ghost member's session (see the test below)."""


async def test_sigterm_stops_a_worker_stuck_joining_behind_a_ghost_member(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Issue 15 item 13 with a valid config: a static member that died without leaving
    (session 20 s) holds every JoinGroup; the worker is alive, not ready, and stops on
    SIGTERM at once instead of after the join.

    The session broker serves (the group is the test's own; nothing is frozen). The
    ghost's session is 20 s: Tansu holds its own join about half of that, and it must
    outlast the worker's start, the 6 s stuck and the SIGTERM (about 10 s).
    """
    text = config_text(
        kafka_bootstrap,
        BODY,
        partitions=2,
        session_timeout_ms=3_000,
        kafka_extra="request_timeout_ms = 5000\n",
    )
    config = load_config(text=text, env={})
    await create_topics(config)
    ghost = AIOKafkaConsumer(
        *config.topics.inputs(),
        bootstrap_servers=config.kafka.bootstrap_servers,
        group_id=config.kafka.group_id,
        group_instance_id="ghost",
        session_timeout_ms=GHOST_SESSION_MS,
        heartbeat_interval_ms=3_000,
        request_timeout_ms=GHOST_SESSION_MS + 10_000,
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    await ghost.start()
    try:
        async with asyncio.timeout(60):
            while not ghost.assignment():
                await ghost.getmany(timeout_ms=100)
    finally:
        await ghost.stop()  # a static member leaves no LeaveGroup behind
    path = tmp_path / "riskgate.toml"
    path.write_text(text)
    worker = WorkerProcess(path, tmp_path / "worker.log")
    try:
        worker.start()

        async def clients_started() -> bool:
            return bool(logged(worker.log_path, "worker started"))

        await wait_until(clients_started, within=60, what="clients started", interval=0.05)
        await asyncio.sleep(6)  # past one JoinGroup request timeout: stuck joining
        http = worker.http_port()
        assert (await http_status(http, "/healthz"), await http_status(http, "/readyz")) == (
            200,
            503,
        )
        assert not logged(worker.log_path, "partitions assigned; restoring")
        code = await asyncio.to_thread(worker.terminate, Worker(config).shutdown_bound_s + 5)
        assert code == 0, worker.log_tail()
        assert logged(worker.log_path, "worker stopped")
    finally:
        await asyncio.to_thread(worker.kill)
