"""Shared helpers for the real-broker worker tests (``test_worker_*.py``).

Everything a test needs to drive the worker end to end: a config on unique
topics, producing events, reading topics to their end, waiting with a deadline,
running the worker in-process or as a real subprocess, and the reference: the
same input through the contract's independent model (``tests/support/model.py``,
written from ``docs/spec.md``; never the engine, which would check the worker
against itself), and the views that compare the worker's topics with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client.parser import text_string_to_metric_families

from tests.support.compare import (
    HaltView,
    halt_views,
    model_gates,
    model_halts,
    model_portfolios,
    model_symbols,
    record_gates,
    snapshot_portfolios,
    snapshot_symbols,
)
from tests.support.model import Model, limits_from_config
from worker.clock import wall_clock_ms
from worker.config import Config, KafkaConfig, load_config
from worker.kafka.options import client_kwargs, reader
from worker.kafka.topics import ensure_topics
from worker.messages import Event, TradeOutcome
from worker.runtime import Clock, Worker

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MIN_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SESSION_TIMEOUT_MS = 1_000

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode

ANCHOR_MS = 20_254 * DAY_MS + 12 * HOUR_MS
"""12:00 UTC on 2025-06-15: what :func:`clock` reads when this module is imported."""
_CLOCK_OFFSET_MS = ANCHOR_MS - time.time_ns() // 1_000_000


now_ms = wall_clock_ms
"""The real wall clock (for workers in a subprocess, which cannot be given a clock)."""


def clock() -> int:
    """The in-process tests' clock: real pace, but starting at noon UTC of a fixed day.

    The worker expires cooldowns and rolls sessions over at 00:00 UTC against
    its clock (a periodic sweep), so events stamped "now" on the real clock make
    a test depend on when it runs. Injected into the worker and used for every
    event timestamp, this one keeps each test hours away from a UTC midnight.
    """
    return time.time_ns() // 1_000_000 + _CLOCK_OFFSET_MS


def same_day_window(span_ms: int) -> tuple[int, int]:
    """``(start, now)`` on the real clock, at most ``span_ms`` long, never before 00:00 UTC today.

    For subprocess workers: events in this window all belong to today's session.
    """
    now = now_ms()
    return max(now - span_ms, now - now % DAY_MS), now


# -- configuration -----------------------------------------------------------------


def topics_toml(prefix: str, partitions: int) -> str:
    """A ``[topics]`` table with every topic name under ``prefix``."""
    names = {
        "fills": "trading.fills",
        "outcomes": "trading.outcomes",
        "intents": "trading.intents",
        "control": "risk.control",
        "snapshots": "risk.snapshots",
        "gates": "risk.gates",
        "halts": "risk.halts",
        "decisions": "risk.decisions",
        "deadletter": "risk.deadletter",
        "marks": "trading.marks",
    }
    lines = [f'{field} = "{prefix}.{name}"' for field, name in names.items()]
    return "[topics]\n" + "\n".join(lines) + f"\npartitions = {partitions}\n"


def config_text(
    bootstrap: str,
    body: str,
    *,
    partitions: int = 4,
    prefix: str = "",
    session_timeout_ms: int = SESSION_TIMEOUT_MS,
    log_level: str = "INFO",
    kafka_extra: str = "",
) -> str:
    """A complete TOML file: unique topics and group id, JSON logs, a free HTTP port.

    ``body`` holds the test's own tables (``[defaults.*]``, ``[bots.*]``, ...);
    ``kafka_extra`` more ``key = value`` lines for ``[kafka]``. INFO logs let
    :class:`WorkerProcess` find the metrics port of a subprocess.

    The session timeout is short on purpose: Tansu makes a join wait about half
    the session timeout, and a member that left (or was SIGKILLed) holds up the
    next join for about two session timeouts - 5 s and 18 s with the default
    10 s, 1 s and 1 s with 1 s. A slow loop costs a rebalance, never correctness.
    """
    prefix = prefix or f"t{uuid.uuid4().hex[:12]}"
    return (
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\ngroup_id = "{prefix}.riskgate"\n'
        f'client_id = "{prefix}"\nsession_timeout_ms = {session_timeout_ms}\n'
        f"heartbeat_interval_ms = {session_timeout_ms // 4}\n{kafka_extra}\n"
        + topics_toml(prefix, partitions)
        + '\n[http]\nhost = "127.0.0.1"\nport = 0\n'
        + f'\n[log]\nformat = "json"\nlevel = "{log_level}"\n\n'
        + body
    )


def make_config(bootstrap: str, body: str, *, partitions: int = 4) -> Config:
    return load_config(text=config_text(bootstrap, body, partitions=partitions), env={})


async def create_topics(config: Config) -> None:
    created = await ensure_topics(config.kafka, config.topics)
    assert created, "topics already existed: names must be unique per test"


# -- producing ---------------------------------------------------------------------


class Produced(NamedTuple):
    topic: str
    partition: int
    offset: int


class Raw(NamedTuple):
    """A record given as bytes (bad input, or anything the event types cannot express)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None


def default_partition(key: bytes, partitions: int) -> int:
    """Where the Java/aiokafka default partitioner (murmur2) puts ``key``."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


def outcome(
    bot: str, symbol: str, gross: float, fee: float = 0.0, *, ts: int, outcome_id: str = ""
) -> TradeOutcome:
    return TradeOutcome(
        outcome_id=outcome_id or f"o-{uuid.uuid4().hex[:16]}",
        bot=bot,
        symbol=symbol,
        gross_pnl=gross,
        fee=fee,
        ts=ts,
    )


def as_raw(config: Config, event: Event) -> Raw:
    """The record the producers of SPEC §2 would send: JSON value, key = bot id."""
    topics = config.topics
    topic = {
        "Fill": topics.fills,
        "TradeOutcome": topics.outcomes,
        "OrderIntent": topics.intents,
        "ControlCommand": topics.control,
    }[type(event).__name__]
    return Raw(topic, event.bot.encode(), _encode(event))


class Feed:
    """One producer for many sends (``async with Feed(kafka) as feed``)."""

    def __init__(self, kafka: KafkaConfig, *, linger_ms: int = 5) -> None:
        self._producer = AIOKafkaProducer(
            **client_kwargs(kafka), acks="all", linger_ms=linger_ms, max_batch_size=1024 * 1024
        )

    async def __aenter__(self) -> Feed:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, records: Iterable[Raw]) -> list[Produced]:
        """Send every record (in order), wait for the acks, return where each one landed."""
        producer = self._producer
        futures = [
            await producer.send(
                r.topic, r.value, key=r.key, headers=r.headers, partition=r.partition
            )
            for r in records
        ]
        metadata = await asyncio.gather(*futures)
        return [Produced(m.topic, m.partition, m.offset) for m in metadata]


async def produce(kafka: KafkaConfig, records: Iterable[Raw]) -> list[Produced]:
    async with Feed(kafka) as feed:
        return await feed.send(records)


async def produce_events(config: Config, events: Iterable[Event]) -> list[Produced]:
    return await produce(config.kafka, (as_raw(config, e) for e in events))


# -- reading -----------------------------------------------------------------------


class Record(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


async def read_topic(kafka: KafkaConfig, topic: str, within: float = 15.0) -> list[Record]:
    """Every record of ``topic`` that is on the broker now, sorted by partition and offset.

    "The end" is the larger of the listed end offset and the high watermark of
    the fetches: Tansu's ListOffsets answers the *base offset of the last batch
    + 1*, not the log end offset, so the listed end alone can stop inside the
    last batch (the fetch high watermark is right).
    """
    consumer = reader(
        client_kwargs(kafka),
        fetch_max_wait_ms=20,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    records: list[Record] = []
    try:
        await consumer.topics()  # a metadata round trip, so the partitions are known
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert tps, f"topic {topic} does not exist"
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        async with asyncio.timeout(within):
            while pending:
                # max_records=None drains whole fetched batches: never stops inside one.
                batch = await consumer.getmany(*pending, timeout_ms=200)
                for tp, tp_records in batch.items():
                    records.extend(
                        Record(tp.partition, r.offset, r.key, r.value, list(r.headers or ()))
                        for r in tp_records
                    )
                for tp in list(pending):
                    end = max(ends[tp], consumer.highwater(tp) or 0)
                    if await consumer.position(tp) >= end:
                        pending.discard(tp)
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def last_per_key(records: Iterable[Record]) -> dict[str, Record]:
    """Compaction's view: the last record per key (tombstones included, as ``value=None``)."""
    out: dict[str, Record] = {}
    for r in records:
        if r.key is not None:
            out[r.key.decode()] = r
    return out


async def latest(kafka: KafkaConfig, topic: str) -> dict[str, Record]:
    return last_per_key(await read_topic(kafka, topic))


async def read_values(kafka: KafkaConfig, topic: str, kind: type[T]) -> list[T]:
    """Every value on the append-only ``topic`` now, decoded as ``kind`` (``dict[str, Any]``:
    the JSON as sent). A tombstone there fails the test: only snapshots and gate records
    are compacted, so none belongs on the topics read this way."""
    values = []
    for r in await read_topic(kafka, topic):
        assert r.value is not None, f"tombstone on {topic} at offset {r.offset}"
        values.append(msgspec.json.decode(r.value, type=kind))
    return values


def decoded(records: dict[str, Record]) -> dict[str, Any]:
    """Last JSON value per key (tombstones dropped)."""
    return {k: msgspec.json.decode(r.value) for k, r in records.items() if r.value is not None}


async def committed_offsets(
    kafka: KafkaConfig, group_id: str, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The group's committed offsets (0 where nothing is committed), without joining it.

    A consumer with the group id that never subscribes only fetches offsets
    (Tansu drops the admin client's OffsetFetch, so this goes the consumer way).
    """
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: (await consumer.committed(tp)) or 0 for tp in tps}
    finally:
        await consumer.stop()


async def rewind_commits(config: Config, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for the worker's group, as a lost or failed commit would leave them.

    Tansu refuses commits from a non-member, so this briefly joins the group
    (with the worker's range assignor) and leaves again; no worker may be running.
    """
    kafka = config.kafka
    consumer = AIOKafkaConsumer(
        *config.topics.inputs(),
        **client_kwargs(kafka),
        group_id=kafka.group_id,
        enable_auto_commit=False,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=50)
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def produced_ends(produced: Iterable[Produced]) -> dict[TopicPartition, int]:
    """Per partition, the offset after the last record produced (exact on every broker)."""
    ends: dict[TopicPartition, int] = {}
    for p in produced:
        tp = TopicPartition(p.topic, p.partition)
        ends[tp] = max(ends.get(tp, 0), p.offset + 1)
    return ends


async def all_committed(config: Config, produced: Iterable[Produced]) -> bool:
    """True when the group's committed offsets cover every produced record."""
    ends = produced_ends(produced)
    committed = await committed_offsets(config.kafka, config.kafka.group_id, ends)
    return all(committed[tp] >= end for tp, end in ends.items())


# -- waiting -----------------------------------------------------------------------


async def wait_until(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float,
    what: str,
    interval: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``within`` seconds.

    ``alive`` is called on every round and should raise if the thing under test
    died (so a crashed worker fails fast with its own error instead of a timeout).
    """
    deadline = time.monotonic() + within
    while True:
        if alive is not None:
            alive()
        last = await probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}; last={last!r}")
        await asyncio.sleep(interval)


# -- the worker, in-process --------------------------------------------------------


@dataclass
class InProcess:
    worker: Worker
    task: asyncio.Task[None]

    def check_alive(self) -> None:
        if self.task.done():
            error = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"worker task ended unexpectedly: {error!r}")

    async def stop(self) -> None:
        """Graceful stop (finish batch, persist, commit, leave the group); the task is
        awaited, so an exception inside the worker is raised here."""
        self.worker.stop()
        try:
            async with asyncio.timeout(30):
                await self.task
        finally:
            if not self.task.done():
                self.task.cancel()


@contextlib.asynccontextmanager
async def running_worker(
    config: Config, *, clock: Clock = clock, ready_timeout: float = 30.0, wait: bool = True
) -> AsyncIterator[InProcess]:
    """A Worker on this event loop (on :func:`clock`); by default waits until it is ready.

    On exit the worker is stopped (finish batch, persist, commit, leave the
    group) and its task awaited, so an exception inside the worker fails the test.
    """
    worker = Worker(config, clock=clock)
    running = InProcess(worker, asyncio.create_task(worker.run(), name="riskgate-worker"))
    try:
        if wait:
            await wait_ready(running, ready_timeout)
        yield running
    finally:
        await running.stop()


async def wait_ready(running: InProcess, within: float = 30.0) -> None:
    async def ready() -> bool:
        return running.worker.ready

    await wait_until(
        ready, within=within, what="worker ready", interval=0.02, alive=running.check_alive
    )


async def wait_processed(
    config: Config,
    produced: Iterable[Produced],
    *,
    alive: Callable[[], None] | None = None,
    within: float = 20.0,
) -> None:
    """Until the group committed every produced record (so its outputs and snapshots are acked)."""
    produced = list(produced)
    await wait_until(
        lambda: all_committed(config, produced),
        within=within,
        what=f"{len(produced)} produced records committed",
        alive=alive,
    )


# -- the worker, as a real process -------------------------------------------------


@dataclass
class WorkerProcess:
    """``riskgate run --config FILE`` in a child process, stopped by PID."""

    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    runs: list[int] = field(default_factory=list)

    def command(self) -> list[str]:
        """The program that is the worker, before ``run --config FILE``."""
        return [sys.executable, "-m", "worker.cli"]

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [*self.command(), "run", "--config", str(self.config_path)],
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")},
            )
        finally:
            log.close()
        self.runs.append(self.proc.pid)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"worker process exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no leaving the group."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, grace: float = 20.0) -> int | None:
        """SIGTERM (graceful shutdown), SIGKILL after ``grace`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def http_port(self) -> int:
        """The metrics port of the current run (from its "http listening" log line)."""
        for line in reversed(self.log_path.read_text().splitlines()):
            if '"http listening"' in line:
                return int(msgspec.json.decode(line)["port"])
        raise AssertionError(f"no http listening line in the worker log:\n{self.log_tail()}")

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Scrape ``/metrics``: (sample name, sorted labels) → value."""
        url = f"http://127.0.0.1:{self.http_port()}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            text = await response.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# -- the reference model -----------------------------------------------------------


def reference(config: Config, events: Iterable[Event], now: int) -> Model:
    """The same input through the reference model, in produce order, bad input skipped.

    Every event is applied at wall time ``now``, then the model sweeps at ``now``
    (the worker sweeps on its clock too). Its ``halts`` and ``decisions`` are what
    must have been published.
    """
    model = Model(limits_from_config(config))
    model.run(events, now)
    model.sweep(now)
    return model


def _values(records: dict[str, Record]) -> list[tuple[str, dict[str, Any]]]:
    return [(k, msgspec.json.decode(r.value)) for k, r in records.items() if r.value is not None]


def expected_snapshots(model: Model) -> dict[str, dict[str, Any]]:
    """The model's symbol states (see :func:`support.compare.symbol_view`)."""
    return model_symbols(model)


def persisted_snapshots(records: dict[str, Record]) -> dict[str, dict[str, Any]]:
    """Symbol snapshots as read from the compacted topic (last value per key), as the model's."""
    return snapshot_symbols(_values(records))


def expected_portfolios(model: Model, *, reservations: bool = True) -> dict[str, dict[str, Any]]:
    """The model's portfolios (see :func:`support.compare.portfolio_view`)."""
    return model_portfolios(model, reservations=reservations)


def persisted_portfolios(
    records: dict[str, Record], *, reservations: bool = True
) -> dict[str, dict[str, Any]]:
    """``<bot>/portfolio`` snapshots from the compacted topic, as the model's."""
    return snapshot_portfolios(_values(records), reservations=reservations)


def expected_halts(model: Model) -> list[HaltView]:
    return model_halts(model)


def published_halts(records: Iterable[Record]) -> list[HaltView]:
    """The halt topic's events, in the order read."""
    return halt_views(msgspec.json.decode(r.value) for r in records if r.value is not None)


def expected_gates(model: Model) -> dict[str, list[str]]:
    """The blocking gates per gate record key (see :func:`support.compare.model_gates`)."""
    return model_gates(model)


def published_gates(records: dict[str, Record]) -> dict[str, list[str]]:
    """The blocking gates of the last gate record per key."""
    return record_gates(_values(records))
