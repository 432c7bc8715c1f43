"""Interop: librdkafka clients (confluent-kafka, Debian's kcat) feed riskgate and read it back.

The worker dead-letters any input record that is not on its bot's home partition
(murmur2 of the key, the Java/aiokafka partitioner), and judges future skew
against the Kafka record timestamp (docs/spec.md §2, §4). librdkafka defaults to
another partitioner (``consistent_random``: CRC32), so these tests pin both
sides: with ``partitioner=murmur2_random`` every record is applied, without it a
record of ``alpha`` lands elsewhere and comes back as ``bot_partition_mismatch``;
an event stamped beyond the record time + ``max_future_skew_ms`` is
``future_event`` whoever the producer is. What the worker writes (halts,
decisions, dead letters) is read back with confluent-kafka and with kcat, and
each must see exactly the records aiokafka sees.

Everything runs against a private embedded broker behind
:mod:`tests.support.kcat_shim` (Debian's kcat cannot parse Tansu's ApiVersions
response otherwise). kcat is a system package (``make system-deps``): without it
these tests skip, and fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.support.harness import (
    Record,
    create_topics,
    decoded,
    default_partition,
    latest,
    make_config,
    now_ms,
    read_topic,
    running_worker,
    wait_until,
)
from tests.support.kcat_shim import broker_behind_shim
from tests.support.system import require_program
from worker.config import Config

pytestmark = pytest.mark.broker

PARTITIONS = 4
BOT = "alpha"
SKEW_MS = 5 * 60_000
"""The default ``max_future_skew_ms``."""
README = Path(__file__).resolve().parents[2] / "README.md"

BODY = """
[defaults.session]
loss_limit = -50.0

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]

[bots.alpha.portfolio]
max_daily_loss = -500.0
max_concurrent_positions = 3
"""
"""The README's ``local.toml`` limits: its producing examples are run against them."""

_encode = msgspec.json.Encoder().encode


@pytest.fixture(scope="module")
def kcat() -> str:
    """Debian's kcat; missing is a skip here and a failure in CI (the set-up installs it)."""
    return require_program("kcat", package="kcat")


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    """A private embedded broker that kcat can talk to (see :mod:`tests.support.kcat_shim`)."""
    with broker_behind_shim() as shim:
        yield shim.bootstrap_servers


async def _config(bootstrap: str) -> Config:
    config = make_config(bootstrap, BODY, partitions=PARTITIONS)
    await create_topics(config)
    return config


# -- the librdkafka clients ----------------------------------------------------------


def _confluent_produce(
    bootstrap: str,
    records: list[tuple[str, bytes, int]],
    *,
    partitioner: str = "murmur2_random",
) -> list[int]:
    """Send (topic, value, record timestamp or 0 for now) keyed by the bot; their partitions."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": partitioner, "acks": "all"})
    landed: list[int] = []

    def delivered(err: KafkaError | None, msg: Any) -> None:
        assert err is None, err
        landed.append(msg.partition())

    for topic, value, timestamp in records:
        producer.produce(topic, value, key=BOT.encode(), timestamp=timestamp, on_delivery=delivered)
        producer.flush(15)  # one at a time: the order across topics is the test's
    assert len(landed) == len(records)
    return landed


def _confluent_read(bootstrap: str, topic: str, within: float = 15.0) -> list[Record]:
    """Every record of ``topic``, to the end of each partition (partition EOF events)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"interop-{uuid.uuid4().hex}",  # assign() only: never joins
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    records: list[Record] = []
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, -2) for p in partitions])  # -2: beginning
        pending = set(partitions)
        deadline = time.monotonic() + within
        while pending:
            assert time.monotonic() < deadline, f"confluent-kafka did not reach the end of {topic}"
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                pending.discard(msg.partition())
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            pairs = msg.headers() or []
            assert isinstance(pairs, list)  # confluent-kafka returns headers as a list of pairs
            headers = [(k, v) for k, v in pairs if isinstance(v, bytes)]
            records.append(Record(partition, offset, msg.key(), msg.value(), headers))
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def _kcat(kcat: str, bootstrap: str, *args: str, stdin: bytes = b"") -> bytes:
    """Run kcat to completion (without blocking the loop the worker runs on); its stdout."""
    proc = await asyncio.create_subprocess_exec(
        kcat,
        "-b",
        bootstrap,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate(stdin)
    assert proc.returncode == 0, f"kcat {' '.join(args)} exited {proc.returncode}: {err.decode()}"
    return out


async def _kcat_produce(
    kcat: str, bootstrap: str, topic: str, values: list[bytes], *, partitioner: str
) -> None:
    """One value per line, key = the bot, as the README's kcat example sends them."""
    assert all(b"\n" not in v for v in values)
    lines = b"".join(v + b"\n" for v in values)
    args = ("-P", "-t", topic, "-k", BOT, "-X", f"partitioner={partitioner}")
    await _kcat(kcat, bootstrap, *args, stdin=lines)


async def _kcat_read(kcat: str, bootstrap: str, topic: str) -> list[Record]:
    """Every record of ``topic`` (kcat ``-e`` stops at the end of every partition)."""
    out = await _kcat(kcat, bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q")
    records = []
    for line in out.splitlines():
        r = msgspec.json.decode(line)
        pairs = r.get("headers") or []
        headers = [(pairs[i], pairs[i + 1].encode()) for i in range(0, len(pairs), 2)]
        key = None if r["key"] is None else r["key"].encode()
        value = None if r["payload"] is None else r["payload"].encode()
        records.append(Record(r["partition"], r["offset"], key, value, headers))
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def _send(
    producer: str,
    kcat: str,
    bootstrap: str,
    topic: str,
    values: list[bytes],
    *,
    partitioner: str = "murmur2_random",
) -> None:
    """``values`` keyed by the bot, in order, with ``producer``: kcat or confluent-kafka."""
    if producer == "kcat":
        await _kcat_produce(kcat, bootstrap, topic, values, partitioner=partitioner)
    else:
        records = [(topic, v, 0) for v in values]
        await asyncio.to_thread(_confluent_produce, bootstrap, records, partitioner=partitioner)


# -- the scenario --------------------------------------------------------------------


def _outcome(symbol: str, gross: float, ts: int, n: int) -> bytes:
    return _encode(
        {
            "outcome_id": f"o-{uuid.uuid4().hex[:12]}-{n}",
            "bot": BOT,
            "symbol": symbol,
            "gross_pnl": gross,
            "fee": 0.5,
            "ts": ts,
        }
    )


def _intent(intent_id: str, symbol: str, price: float, ts: int) -> bytes:
    return _encode(
        {
            "intent_id": intent_id,
            "bot": BOT,
            "symbol": symbol,
            "action": "open",
            "side": "buy",
            "qty": 0.01,
            "price": price,
            "ts": ts,
        }
    )


def _reasons(records: list[Record]) -> list[tuple[str, bytes | None]]:
    """(``riskgate.errors.exception``, original value) of each dead letter."""
    return [(dict(r.headers)["riskgate.errors.exception"].decode(), r.value) for r in records]


async def _wait_for(
    config: Config, topic: str, count: int, check_alive: Callable[[], None]
) -> list[Record]:
    async def enough() -> list[Record]:
        records = await read_topic(config.kafka, topic)
        return records if len(records) >= count else []

    return await wait_until(
        enough, within=30, what=f"{count} records on {topic}", alive=check_alive
    )


async def _read_back_with_both(
    config: Config, kcat: str, topic: str, count: int, check_alive: Callable[[], None]
) -> list[Record]:
    """The topic as aiokafka reads it, after checking confluent-kafka and kcat read the same."""
    seen = await _wait_for(config, topic, count, check_alive)
    bootstrap = config.kafka.bootstrap_servers
    assert await asyncio.to_thread(_confluent_read, bootstrap, topic) == seen
    assert await _kcat_read(kcat, bootstrap, topic) == seen
    assert len(seen) == count, [r.value for r in seen]
    return seen


def _assert_home(records: list[Record]) -> None:
    home = default_partition(BOT.encode(), PARTITIONS)
    assert {r.partition for r in records} == {home}


@pytest.mark.parametrize("producer", ["confluent-kafka", "kcat"])
async def test_librdkafka_producer_feeds_halts_and_decisions_both_clients_read(
    bootstrap: str, kcat: str, producer: str
) -> None:
    """Outcomes and intents from a librdkafka producer with ``murmur2_random``: all applied.

    Three losses on ETHUSDT (net -54.50 past the -50 limit) halt it; then an intent
    on ETHUSDT is denied by ``session_halt`` and one on BTCUSDT allowed. The halt and
    both decisions are read back with confluent-kafka and kcat, record for record.
    """
    config = await _config(bootstrap)
    topics = config.topics
    now = now_ms()
    losses = [_outcome("ETHUSDT", gross, now, n) for n, gross in enumerate([-20.0, -15.0, -18.0])]
    intents = [_intent("i-eth-1", "ETHUSDT", 3500.0, now), _intent("i-btc-1", "BTCUSDT", 65e3, now)]
    async with running_worker(config, clock=now_ms) as running:
        alive = running.check_alive
        await _send(producer, kcat, bootstrap, topics.outcomes, losses)
        (halt,) = await _read_back_with_both(config, kcat, topics.halts, 1, alive)
        await _send(producer, kcat, bootstrap, topics.intents, intents)
        decisions = await _read_back_with_both(config, kcat, topics.decisions, 2, alive)
        inputs = [*await read_topic(config.kafka, topics.outcomes)]
        inputs += await read_topic(config.kafka, topics.intents)
        letters = await read_topic(config.kafka, topics.deadletter)
    assert letters == []
    _assert_home(inputs)
    assert [r.value for r in inputs] == [*losses, *intents]
    assert halt.value is not None
    event = msgspec.json.decode(halt.value)
    assert (halt.key, event["event_id"], event["kind"], event["gate"]) == (
        b"alpha",
        "alpha/ETHUSDT/session_halt/1",
        "halted",
        "session_halt",
    )
    answered = [msgspec.json.decode(r.value or b"null") for r in decisions]
    assert [
        (d["intent_id"], d["symbol"], d["allowed"], d["gate"], d["side"], d["qty"], d["price"])
        for d in answered
    ] == [
        ("i-eth-1", "ETHUSDT", False, "session_halt", "buy", 0.01, 3500.0),
        ("i-btc-1", "BTCUSDT", True, None, "buy", 0.01, 65e3),
    ]


@pytest.mark.parametrize("producer", ["confluent-kafka", "kcat"])
async def test_librdkafka_default_partitioner_is_dead_lettered_bot_partition_mismatch(
    bootstrap: str, kcat: str, producer: str
) -> None:
    """Without ``partitioner=murmur2_random`` librdkafka puts ``alpha`` on CRC32's partition.

    The worker must not apply it there (it would hold alpha's state twice): the
    record comes back as a dead letter with its original bytes; the same record
    with murmur2_random is applied.
    """
    home = default_partition(BOT.encode(), PARTITIONS)
    assert zlib.crc32(BOT.encode()) % PARTITIONS != home, "the scenario needs them to differ"
    config = await _config(bootstrap)
    topics = config.topics
    now = now_ms()
    stray, good = _outcome("BTCUSDT", -5.0, now, 0), _outcome("BTCUSDT", -5.0, now, 1)
    async with running_worker(config, clock=now_ms) as running:
        await _send(
            producer, kcat, bootstrap, topics.outcomes, [stray], partitioner="consistent_random"
        )
        await _send(producer, kcat, bootstrap, topics.outcomes, [good])
        (letter,) = await _read_back_with_both(
            config, kcat, topics.deadletter, 1, running.check_alive
        )
        inputs = await read_topic(config.kafka, topics.outcomes)
        symbols = await _btc_snapshot(config, running.check_alive)
    assert sorted((r.partition, r.value) for r in inputs) == sorted(
        [(zlib.crc32(BOT.encode()) % PARTITIONS, stray), (home, good)]
    )
    assert _reasons([letter]) == [("bot_partition_mismatch", stray)]
    assert symbols["session_pnl"]["trades"] == 1


async def _snapshot_where(
    config: Config,
    key: str,
    check_alive: Callable[[], None],
    done: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """The last snapshot under ``key``, once there is one for which ``done`` holds."""

    async def persisted() -> dict[str, Any]:
        found = decoded(await latest(config.kafka, config.topics.snapshots)).get(key)
        return found if found is not None and done(found) else {}

    return await wait_until(persisted, within=30, what=f"{key} snapshot", alive=check_alive)


async def _btc_snapshot(config: Config, check_alive: Callable[[], None]) -> dict[str, Any]:
    """alpha/BTCUSDT's persisted state, once there is one."""
    return await _snapshot_where(config, "alpha/risk/BTCUSDT", check_alive, lambda s: True)


async def test_confluent_kafka_future_skew_is_judged_against_the_record_timestamp(
    bootstrap: str, kcat: str
) -> None:
    """An event 10 min ahead is refused (``future_event``) when its record is stamped now,
    and applied when the producer stamps the record at the event's time: the worker
    compares ``ts`` with the record time, not with its own clock."""
    config = await _config(bootstrap)
    now = now_ms()
    ahead = now + 2 * SKEW_MS
    refused, applied = _outcome("BTCUSDT", 0.0, ahead, 0), _outcome("BTCUSDT", 0.0, ahead, 1)
    topic = config.topics.outcomes
    async with running_worker(config, clock=now_ms) as running:
        await asyncio.to_thread(
            _confluent_produce, bootstrap, [(topic, refused, now), (topic, applied, ahead)]
        )
        (letter,) = await _read_back_with_both(
            config, kcat, config.topics.deadletter, 1, running.check_alive
        )
        symbol = await _btc_snapshot(config, running.check_alive)
    assert _reasons([letter]) == [("future_event", refused)]
    assert symbol["session_pnl"]["trades"] == 1


async def test_kcat_future_skew_is_judged_against_the_record_timestamp(
    bootstrap: str, kcat: str
) -> None:
    """kcat stamps each record with the time it sends it (CreateTime), so ``ts`` must be the
    producer's now (``$(date +%s%3N)``): 10 min ahead is ``future_event``, now is applied."""
    config = await _config(bootstrap)
    now = now_ms()
    refused = _outcome("BTCUSDT", 0.0, now + 2 * SKEW_MS, 0)
    applied = _outcome("BTCUSDT", 0.0, now, 1)
    async with running_worker(config, clock=now_ms) as running:
        await _kcat_produce(
            kcat,
            bootstrap,
            config.topics.outcomes,
            [refused, applied],
            partitioner="murmur2_random",
        )
        (letter,) = await _read_back_with_both(
            config, kcat, config.topics.deadletter, 1, running.check_alive
        )
        symbol = await _btc_snapshot(config, running.check_alive)
    assert _reasons([letter]) == [("future_event", refused)]
    assert symbol["session_pnl"]["trades"] == 1


# -- the README's "Producing to riskgate" examples -----------------------------------

README_BOOTSTRAPS = ("127.0.0.1:9092", "kafka:9092")
"""Where the examples send: the local setup's ``riskgate broker`` (Python), a Kafka (kcat)."""


def readme_examples() -> dict[str, tuple[str, str]]:
    """The section's code blocks by client: (language, code), exactly as a reader copies them."""
    section = README.read_text().split("\n## Producing to riskgate\n", 1)[1].split("\n## ", 1)[0]
    found: dict[str, tuple[str, str]] = {}
    for lang, code in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL):
        if lang == "python" and "from aiokafka import" in code:
            found["aiokafka"] = (lang, code)
        elif lang == "python" and "from confluent_kafka import" in code:
            found["confluent-kafka"] = (lang, code)
        elif lang == "sh" and re.search(r"\bkcat .*-P\b", code):
            found["kcat-produce"] = (lang, code)
        elif lang == "sh" and re.search(r"\bkcat .*-C\b", code):
            found["kcat-consume"] = (lang, code)
    assert sorted(found) == ["aiokafka", "confluent-kafka", "kcat-consume", "kcat-produce"]
    return found


def aimed(code: str, bootstrap: str, config: Config) -> str:
    """The example sent to ``bootstrap`` and to ``config``'s (prefixed) topics, nothing else."""
    (address,) = [a for a in README_BOOTSTRAPS if a in code]
    assert code.count(address) == 1, f"{address} more than once in\n{code}"
    prefix = config.topics.outcomes.removesuffix("trading.outcomes")
    code, renamed = re.subn(r"(?<![\w.])((?:trading|risk)\.[a-z]+)\b", prefix + r"\1", code)
    assert renamed == 1, f"one topic per example expected in\n{code}"
    return code.replace(address, bootstrap)


async def _run_example(lang: str, code: str) -> bytes:
    """Run a Python example with this interpreter, a shell one with bash (pipefail)."""
    if lang == "python":
        argv = [sys.executable, "-c", code]
    else:
        argv = ["bash", "-c", "set -euo pipefail\n" + code]  # kcat: the one on PATH
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, f"{code}\nexited {proc.returncode}:\n{err.decode()}"
    return out


async def test_readme_producing_examples_feed_a_worker(bootstrap: str, kcat: str) -> None:
    """README drift fails here: each example of "Producing to riskgate" is run as printed
    (only the broker address and topic prefix changed) against a worker with the
    README's limits, and must have been applied, not dead-lettered."""
    examples = readme_examples()
    config = await _config(bootstrap)
    async with running_worker(config, clock=now_ms) as running:
        alive = running.check_alive
        for name in ("aiokafka", "confluent-kafka", "kcat-produce"):
            lang, code = examples[name]
            await _run_example(lang, aimed(code, bootstrap, config))
        eth = await _snapshot_where(
            config, "alpha/risk/ETHUSDT", alive, lambda s: s["session_pnl"]["trades"] == 4
        )
        btc = await _snapshot_where(config, "alpha/risk/BTCUSDT", alive, lambda s: True)
        halts = await _wait_for(config, config.topics.halts, 2, alive)
        lang, code = examples["kcat-consume"]
        output = await _run_example(lang, aimed(code, bootstrap, config))
        letters = await read_topic(config.kafka, config.topics.deadletter)
    assert letters == []
    assert (eth["session_pnl"]["realised"], eth["session_pnl"]["fees"]) == (-65.5, 2.0)
    assert eth["session_pnl"]["halted"] is True
    assert (btc["position"]["qty"], btc["position"]["avg_price"]) == (0.01, 65000.0)
    envelopes = [msgspec.json.decode(line) for line in output.splitlines()]
    assert [(e["key"], e["partition"], e["payload"].encode()) for e in envelopes] == [
        ("alpha", h.partition, h.value) for h in halts
    ]
    assert [msgspec.json.decode(h.value or b"{}")["event_id"] for h in halts] == [
        "alpha/ETHUSDT/session_halt/1",  # the third aiokafka loss: -54.50 past -50
        "alpha/ETHUSDT/circuit_breaker/1",  # the kcat loss: the 4th within the window
    ]
