"""The worker shell's own bypasses (no broker: the in-memory transport, worker.runtime.memory).

Issue 15: item 1 (one bad record must never stop the loop), item 7 (readiness
needs a successful commit), item 8 (startup / liveness states), item 12
(timeouts checked against each other), item 13 (stop in every state).
Issue 9: item 4 (the Kafka record timestamp reaches the engine), item 12 (a
bot on a second partition number), and the suspected heartbeat and
recreated-topic items.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import msgspec
import pytest
import yaml
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner

import worker.kafka.watch as watch_module
import worker.runtime.batch as batch_module
from tests.support.transport import Shell, broker_for
from worker import inbound
from worker.config import Config, ConfigError, load_config
from worker.core import RiskEngine
from worker.kafka.fetch import fetch
from worker.kafka.options import check_timeouts
from worker.kafka.progress import InputProgress
from worker.messages import TradeOutcome
from worker.metrics import Metrics
from worker.runtime import Worker, home_partition
from worker.runtime.deadletter import DeadLetters
from worker.runtime.memory import InMemoryBroker, MemoryConsumer, MemoryTransport, Stored
from worker.runtime.transport import Connection, Rebalance

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_767_225_600_000 + 12 * 3_600_000  # 12:00 UTC, far from a session rollover
MIN = 60_000
HEARTBEAT_MS = 1_000
MAX_AGE_MS = 5_000
CONFIG = f"""
[topics]
partitions = 4
[defaults]
accept_unknown_bots = true
[worker]
heartbeat_interval_ms = {HEARTBEAT_MS}
ready_commit_max_age_ms = {MAX_AGE_MS}
"""


def config(text: str = CONFIG) -> Config:
    return load_config(text=text, env={})


def outcome(bot: str, n: int, net: float = 1.0, symbol: str = "BTC") -> bytes:
    return msgspec.json.encode(TradeOutcome(f"o{n}", bot, symbol, net, 0.0, NOW - MIN + n))


def bot_on(partition: int, partitions: int = 4) -> str:
    """A bot name whose home (murmur2) partition is ``partition``."""
    names = (f"bot{i}" for i in range(1000))
    return next(b for b in names if home_partition(b.encode(), partitions) == partition)


def deadletters(broker: InMemoryBroker, cfg: Config) -> list[dict[str, Any]]:
    return [
        {"key": r.key, "value": r.value, **{k: (v or b"").decode() for k, v in r.headers}}
        for r in broker.records(cfg.topics.deadletter)
    ]


def trades(shell: Shell, bot: str, symbol: str = "BTC") -> int:
    assert shell.worker is not None
    risk = shell.worker.engine.bots.get(bot)
    return 0 if risk is None or symbol not in risk.symbols else risk.symbols[symbol].session.trades


# -- issue 15 item 12: timeouts checked against each other --------------------------


@pytest.mark.parametrize(
    ("kafka", "worker", "named"),
    [
        (
            "session_timeout_ms = 30000\nrequest_timeout_ms = 15000",
            "",
            ("kafka.request_timeout_ms (15000)", "kafka.session_timeout_ms (30000)"),
        ),
        (
            "session_timeout_ms = 9000\nheartbeat_interval_ms = 3001",
            "",
            ("kafka.heartbeat_interval_ms (3001)", "kafka.session_timeout_ms (9000)"),
        ),
        (
            "fetch_max_wait_ms = 15000",
            "",
            ("kafka.fetch_max_wait_ms (15000)", "kafka.request_timeout_ms (15000)"),
        ),
        (
            "session_timeout_ms = 12000\nmax_poll_interval_ms = 11000",
            "",
            ("kafka.session_timeout_ms (12000)", "kafka.max_poll_interval_ms (11000)"),
        ),
        (
            "",
            "stuck_after_ms = 20000",
            ("worker.stuck_after_ms (20000)", "kafka.request_timeout_ms (15000) + 5000"),
        ),
    ],
)
def test_kafka_timeouts_that_contradict_each_other_are_refused_at_start(
    kafka: str, worker: str, named: tuple[str, ...]
) -> None:
    cfg = config(f"[kafka]\n{kafka}\n[worker]\n{worker}\n")
    with pytest.raises(ConfigError) as refused:
        Worker(cfg)
    message = str(refused.value)
    assert message.startswith("inconsistent timeouts: ")
    assert message.count(";") == 0, "exactly one rule broken"
    for key in named:
        assert key in message


def test_default_and_kubernetes_timeouts_are_consistent() -> None:
    check_timeouts(config("").kafka, config("").worker)
    configmap = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    shipped = load_config(text=configmap["data"]["riskgate.toml"], env={})
    check_timeouts(shipped.kafka, shipped.worker)


# -- issue 15 item 1: one bad record never stops the loop ----------------------------


async def test_one_bad_record_never_crash_loops_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever fails for one record (here: a failure nobody foresaw inside decoding)
    is that record's dead letter with its original bytes; the next record is applied."""
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    alpha = bot_on(1)
    poison = outcome(alpha, 1)[:-1] + b', "poison": 1}'
    real_decode = inbound.decode_input

    def decode(kind: Any, key: bytes | None, value: bytes | None, max_bytes: int) -> Any:
        if value is not None and b"poison" in value:
            raise RecursionError("nobody foresaw this")
        return real_decode(kind, key, value, max_bytes)

    monkeypatch.setattr(batch_module, "decode_input", decode)
    broker.append(cfg.topics.outcomes, alpha.encode(), poison, headers=[("trace", b"t-1")])
    broker.append(cfg.topics.outcomes, alpha.encode(), outcome(alpha, 2))
    with Shell(cfg, broker, NOW) as shell:
        shell.start(range(4))
        assert await shell.idle()
        assert trades(shell, alpha) == 1
        assert await shell.stop()
    [letter] = deadletters(broker, cfg)
    assert letter["value"] == poison and letter["key"] == alpha.encode()
    assert letter["trace"] == "t-1"
    assert letter["riskgate.errors.exception"] == "unprocessable"
    assert letter["riskgate.errors.message"] == "RecursionError: nobody foresaw this"
    assert letter["riskgate.errors.offset"] == "0"
    tp = TopicPartition(cfg.topics.outcomes, 1)
    assert broker.committed[tp] == 2, "the commit moved past the bad record"


class _Record(NamedTuple):
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    offset: int


def test_a_null_valued_header_is_dead_lettered_with_the_original_headers() -> None:
    """Issue 15 item 1 as reported: ``len(None)`` on a null header value stopped the loop."""
    cfg = config()
    tp = TopicPartition("trading.outcomes", 2)
    record = _Record(b"alpha", b"{not json", (("trace", None), ("x", b"1")), 7)
    letters = DeadLetters(cfg.topics, Metrics())
    letter = letters.of(tp, record, reason="malformed_json", message="not JSON")
    assert (letter.key, letter.value) == (b"alpha", b"{not json")
    assert letter.headers is not None
    assert letter.headers[:2] == [("trace", None), ("x", b"1")]
    assert dict(letter.headers[2:])["riskgate.errors.offset"] == b"7"


class Poisoned(MemoryConsumer):
    """Like aiokafka with a record it cannot decode (a header key that is not UTF-8):
    any ``getmany`` that would return it raises, returns nothing and moves nothing."""

    bad: ClassVar[set[tuple[TopicPartition, int]]] = set()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Stored]]:
        before = dict(self.positions)
        got = await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        if any((tp, r.offset) in self.bad for tp, records in got.items() for r in records):
            self.positions = before
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return got


async def test_a_record_the_client_cannot_decode_does_not_wedge_its_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    alpha, beta = bot_on(0), bot_on(3)
    tp = TopicPartition(cfg.topics.outcomes, 0)
    for n in range(6):
        broker.append(cfg.topics.outcomes, alpha.encode(), outcome(alpha, n))
        broker.append(cfg.topics.outcomes, beta.encode(), outcome(beta, n))
    monkeypatch.setattr(Poisoned, "bad", {(tp, 2)})
    append = broker.append

    def keyless_anywhere(topic: str, key: bytes | None, value: bytes | None, **kw: Any) -> Any:
        if key is None and kw.get("partition") is None:
            kw["partition"] = 0  # a real producer picks any partition for a null key
        return append(topic, key, value, **kw)

    monkeypatch.setattr(broker, "append", keyless_anywhere)
    with Shell(cfg, broker, NOW, consumer_class=Poisoned) as shell:
        shell.start(range(4), max_records=4)
        assert await shell.idle()
        assert (trades(shell, alpha), trades(shell, beta)) == (5, 6)
        assert await shell.stop()
    [letter] = deadletters(broker, cfg)
    assert (letter["key"], letter["value"]) == (None, b"")
    assert letter["riskgate.errors.value.null"] == "true"
    assert letter["riskgate.errors.exception"] == "undecodable_record"
    assert letter["riskgate.errors.topic"] == tp.topic
    assert (letter["riskgate.errors.partition"], letter["riskgate.errors.offset"]) == ("0", "2")
    assert letter["riskgate.errors.message"].startswith("UnicodeDecodeError: ")
    assert broker.committed[tp] == 6


async def test_fetch_returns_the_good_records_around_an_unreadable_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = InMemoryBroker({"in": 1})
    tp = TopicPartition("in", 0)
    for n in range(5):
        broker.append("in", b"k", str(n).encode(), partition=0)
    consumer = Poisoned(broker, max_records=10)
    monkeypatch.setattr(Poisoned, "bad", {(tp, 3)})
    consumer.take([tp])
    fetched = await fetch(consumer, 0, 100)
    assert [r.offset for r in fetched.batch[tp]] == [0, 1, 2]
    assert [(u.tp, u.offset) for u in fetched.unreadable] == [(tp, 3)]
    assert consumer.positions[tp] == 4
    fetched = await fetch(consumer, 0, 100)
    assert ([r.offset for r in fetched.batch[tp]], fetched.unreadable) == ([4], [])


class Slow(Poisoned):
    """Isolation reads that hang once the position reaches 2 (a bound or stop() ends them)."""

    hung: ClassVar[asyncio.Event]

    async def getmany(self, *partitions: TopicPartition, **kwargs: Any) -> Any:
        if partitions and self.positions[partitions[0]] == 2:
            self.hung.set()
            await asyncio.Event().wait()
        return await super().getmany(*partitions, **kwargs)


async def test_an_interrupted_isolation_puts_the_positions_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records read one by one but never returned must be read again, not skipped."""
    broker = InMemoryBroker({"in": 1})
    tp = TopicPartition("in", 0)
    for n in range(5):
        broker.append("in", b"k", str(n).encode(), partition=0)
    consumer = Slow(broker, max_records=10)
    monkeypatch.setattr(Poisoned, "bad", {(tp, 3)})
    monkeypatch.setattr(Slow, "hung", asyncio.Event(), raising=False)
    consumer.take([tp])
    reading = asyncio.create_task(fetch(consumer, 0, 100))
    await Slow.hung.wait()
    assert consumer.positions[tp] == 2
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert consumer.positions[tp] == 0


# -- issue 9 item 4: the Kafka record timestamp reaches the engine ---------------------


async def test_the_kafka_record_timestamp_is_passed_to_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    seen: list[int | None] = []
    real_apply = RiskEngine.apply

    def apply(self: RiskEngine, *args: Any, record_ts: int | None = None, **kw: Any) -> Any:
        seen.append(record_ts)
        return real_apply(self, *args, record_ts=record_ts, **kw)

    monkeypatch.setattr(RiskEngine, "apply", apply)
    alpha = bot_on(2)
    broker.append(cfg.topics.outcomes, alpha.encode(), outcome(alpha, 1), timestamp_ms=NOW - 7)
    with Shell(cfg, broker, NOW) as shell:
        shell.start(range(4))
        assert await shell.idle()
        assert await shell.stop()
    assert seen == [NOW - 7]


# -- issue 9 item 12: one bot, one partition number ------------------------------------


def test_home_partition_is_the_java_and_aiokafka_default_partitioner() -> None:
    every = list(range(12))
    for i in range(500):
        key = f"bot-{i}".encode()
        assert home_partition(key, 12) == DefaultPartitioner()(key, every, every)


async def test_a_bot_on_a_second_partition_number_is_dead_lettered() -> None:
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    alpha = bot_on(1)
    broker.append(cfg.topics.outcomes, alpha.encode(), outcome(alpha, 1))
    stray = outcome(alpha, 2, symbol="ETH")
    broker.append(cfg.topics.fills, alpha.encode(), b"{}", partition=3)  # bad JSON elsewhere too
    broker.append(cfg.topics.outcomes, alpha.encode(), stray, partition=2)
    with Shell(cfg, broker, NOW) as shell:
        shell.start(range(4))
        assert await shell.idle()
        worker = shell.worker
        assert worker is not None
        assert set(worker.engine.bots[alpha].symbols) == {"BTC"}
        assert worker.ownership.partition_of[alpha] == 1
        mismatches = {"reason": "bot_partition_mismatch"}
        registry = worker.metrics.registry
        assert registry.get_sample_value("riskgate_deadletters_total", mismatches) == 1
        assert await shell.stop()
    reasons = {d["value"]: d["riskgate.errors.exception"] for d in deadletters(broker, cfg)}
    assert reasons == {b"{}": "invalid_message", stray: "bot_partition_mismatch"}
    snapshot_partitions = {r.partition for r in broker.records(cfg.topics.snapshots)}
    assert snapshot_partitions == {1}


# -- issue 15 item 7: ready needs a successful commit -----------------------------------


async def test_readyz_requires_a_recent_successful_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    alpha = bot_on(0)
    with Shell(cfg, broker, NOW) as shell:
        worker = shell.start(range(4))
        broker.append(cfg.topics.outcomes, alpha.encode(), outcome(alpha, 1))
        assert await shell.idle()
        assert worker.ready, "committed: nothing owed"
        committed_at = worker.health.last_commit_ms

        async def refused(offsets: Any) -> None:
            raise KafkaConnectionError("commit refused")

        assert shell.consumer is not None
        monkeypatch.setattr(shell.consumer, "commit", refused)
        broker.append(cfg.topics.outcomes, alpha.encode(), outcome(alpha, 2))
        assert await shell.idle()
        assert worker.ready, "owed, but not for long yet"
        shell.now_ms += MAX_AGE_MS
        assert await shell.idle()  # idle: the loop probes the broker, which answers
        assert worker.health.last_round_trip_ms == shell.now_ms
        assert worker.health.last_commit_ms == committed_at, "a probe is not a commit"
        assert not worker.ready

        monkeypatch.undo()
        broker.append(cfg.topics.outcomes, alpha.encode(), outcome(alpha, 3))
        shell.now_ms += 1_000
        assert await shell.idle()
        assert worker.ready
        assert await shell.stop()


async def test_an_idle_worker_owes_no_commit_and_stays_ready() -> None:
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    with Shell(cfg, broker, NOW) as shell:
        worker = shell.start(range(4))
        assert await shell.idle()
        for _ in range(3):
            shell.now_ms += MAX_AGE_MS
            assert await shell.idle()
            assert worker.ready
        assert worker.health.last_commit_ms == 0
        assert await shell.stop()


# -- issue 15 item 8: startup, liveness ------------------------------------------------


class Absent(MemoryTransport):
    """A broker that refuses two connects; the clock moves on by ``step_ms`` at each attempt."""

    def __init__(self, broker: InMemoryBroker, cfg: Config, now: list[int], step_ms: int) -> None:
        super().__init__(broker, cfg.topics.snapshots)
        self.now, self.step_ms = now, step_ms
        self.refusals = 2
        self.seen: list[tuple[bool, bool]] = []
        self.worker: Worker | None = None

    async def connect(self, topics: Collection[str], rebalance: Rebalance) -> Connection:
        assert self.worker is not None
        self.now[0] += self.step_ms  # each attempt comes almost stuck_after_ms after the last
        self.seen.append((self.worker.starting, self.worker.healthy))
        if self.refusals:
            self.refusals -= 1
            raise KafkaConnectionError("no broker")
        return await super().connect(topics, rebalance)


async def test_liveness_reflects_a_stuck_loop_not_a_missing_broker() -> None:
    now = [NOW]
    cfg = config()
    stuck = cfg.worker.stuck_after_ms
    transport = Absent(broker_for(cfg, timestamp_ms=NOW), cfg, now, stuck - 1)
    worker = Worker(cfg, clock=lambda: now[0], transport=transport)
    transport.worker = worker
    assert (worker.starting, worker.healthy, worker.ready) == (True, True, False)
    running = asyncio.create_task(worker.run())
    await worker.started.wait()  # two refused connects first: alive, still starting
    assert transport.seen == [(True, True)] * 3
    assert (worker.starting, worker.healthy) == (False, True)
    worker.stop()
    await running
    now[0] += stuck
    assert not worker.healthy, "no tick for stuck_after_ms: the loop is stuck"


# -- issue 15 item 13: stop works in every state ----------------------------------------


class Joining(MemoryConsumer):
    """aiokafka while a group join never completes: ``getmany`` waits without a bound."""

    entered: ClassVar[asyncio.Event]

    async def getmany(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        await asyncio.Event().wait()


@pytest.mark.parametrize("stuck_in", ["connect", "join"])
async def test_stop_ends_the_worker_while_it_is_stuck(
    stuck_in: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    reached = asyncio.Event()

    class Unanswered(MemoryTransport):
        async def connect(self, topics: Collection[str], rebalance: Rebalance) -> Connection:
            reached.set()
            if stuck_in == "connect":
                await asyncio.Event().wait()
            return await super().connect(topics, rebalance)

    consumer = Joining(broker)
    worker = Worker(
        cfg,
        clock=lambda: NOW,
        transport=Unanswered(broker, cfg.topics.snapshots, consumer=consumer),
    )
    monkeypatch.setattr(Joining, "entered", asyncio.Event(), raising=False)
    running = asyncio.create_task(worker.run())
    await reached.wait()
    if stuck_in == "join":
        await Joining.entered.wait()
    worker.stop()
    async with asyncio.timeout(worker.shutdown_bound_s):  # a guard: it returns at once
        await running
    assert running.exception() is None


# -- suspected: heartbeats while a partition is stuck ------------------------------------


def test_input_progress_defines_a_progressing_partition() -> None:
    topics = ("fills", "outcomes")
    progress = InputProgress(topics)
    f0, o0 = TopicPartition("fills", 0), TopicPartition("outcomes", 0)
    for tp in (f0, o0):
        progress.track(tp, -1)
        progress.polled(tp, 111, now=100)
    # Fetched since 50 and caught up: progressing.
    assert progress.stalled(50, {f0: 5, o0: 9}, {f0: 5, o0: 9}) == set()
    # Behind and not consumed since 50: stalled, even though it was fetched.
    assert progress.stalled(50, {f0: 5, o0: 3}, {f0: 5, o0: 9}) == {o0}
    progress.consumed(o0, 3, now=120)
    assert progress.stalled(50, {f0: 5, o0: 4}, {f0: 5, o0: 9}) == set()
    # No fetch response since 150 (same poll timestamp): stalled however caught up.
    progress.polled(f0, 111, now=200)
    progress.polled(o0, 222, now=200)
    assert progress.stalled(150, {f0: 5, o0: 9}, {f0: 5, o0: 9}) == {f0}
    # A number with one topic not followed (paused while restoring) is stalled.
    progress.forget([o0])
    assert progress.stalled(0, {o0: 9}, {o0: 9}) == {f0}


class Stuck(MemoryConsumer):
    """Fetches every partition except ``stuck``, whose records are never returned."""

    stuck: TopicPartition | None = None

    async def getmany(self, *partitions: TopicPartition, **kwargs: Any) -> Any:
        wanted = [tp for tp in (partitions or self.positions) if tp != self.stuck]
        return await super().getmany(*wanted, **kwargs) if wanted else {}

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return 0 if tp == self.stuck else self.polls


async def test_a_stuck_input_partition_withholds_its_bots_gate_heartbeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    alpha, beta = bot_on(0), bot_on(2)
    stuck = TopicPartition(cfg.topics.fills, 2)
    monkeypatch.setattr(Stuck, "stuck", stuck)
    for bot in (alpha, beta):
        broker.append(cfg.topics.outcomes, bot.encode(), outcome(bot, 1))
    with Shell(cfg, broker, NOW, consumer_class=Stuck) as shell:
        worker = shell.start(range(4))
        assert await shell.idle()
        broker.append(stuck.topic, beta.encode(), b"{}", partition=2)  # never fetched
        gates_before = len(broker.records(cfg.topics.gates))
        for _ in range(3):
            shell.now_ms += HEARTBEAT_MS
            assert await shell.idle()
        keys = [r.key for r in broker.records(cfg.topics.gates)[gates_before:]]
        assert keys == [f"{alpha}/gate".encode()] * 3
        stalled = worker.metrics.registry.get_sample_value("riskgate_stalled_input_partitions")
        assert stalled == 1
        assert await shell.stop()


# -- suspected: input topics recreated --------------------------------------------------


def test_input_progress_reports_a_log_end_below_the_applied_offsets_once() -> None:
    progress = InputProgress(["in"])
    tp = TopicPartition("in", 0)
    progress.track(tp, 41)
    assert progress.offsets_reset(tp, 42) is None
    assert progress.offsets_reset(tp, 7) == 41
    assert progress.offsets_reset(tp, 8) is None, "said once per episode"
    assert progress.offsets_reset(tp, 50) is None
    progress.consumed(tp, 60, now=0)
    assert progress.offsets_reset(tp, 60) == 60


async def test_recreated_input_topic_is_detected_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Recorded at the logger, not on a stream: structlog caches the stream of whichever
    # test used the logger first, so stdout/stderr capture depends on test order.
    errors: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        watch_module.log, "error", lambda event, **kw: errors.append((event, kw)), raising=False
    )
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    alpha = bot_on(3)
    tp = TopicPartition(cfg.topics.outcomes, 3)
    for n in range(5):
        broker.append(cfg.topics.outcomes, alpha.encode(), outcome(alpha, n))
    with Shell(cfg, broker, NOW) as shell:
        shell.start(range(4))
        assert await shell.idle()
        assert await shell.stop()
        # The topic is deleted and recreated: its offsets restart at 0.
        broker.logs[tp] = []
        broker.committed.pop(tp, None)
        for n in range(5, 7):
            broker.append(cfg.topics.outcomes, alpha.encode(), outcome(alpha, n))
        worker = shell.start(range(4))
        assert await shell.idle()
        shell.now_ms += 1_000
        assert await shell.idle()
        resets = worker.metrics.registry.get_sample_value(
            "riskgate_input_offset_resets_total", {"topic": tp.topic, "partition": "3"}
        )
        assert resets == 1
        assert await shell.stop()
    assert [(e, kw["topic"], kw["partition"]) for e, kw in errors if "restarted below" in e] == [
        (errors[0][0], tp.topic, 3)
    ]
    assert len(errors) == 1
