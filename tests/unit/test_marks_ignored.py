"""Bad mark records (issue 11): skipped, counted in ``riskgate_marks_ignored_total{reason}``
with the reasons of SPEC §8, logged once per reason, never dead-lettered; and one the
Kafka client cannot decode no longer wedges the feed."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import msgspec
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from structlog.testing import capture_logs

from tests.support.transport import Shell, broker_for
from worker.config import load_config
from worker.kafka.fetch import Unreadable
from worker.messages import Mark
from worker.metrics import Metrics
from worker.runtime import marks as marks_module
from worker.runtime.marks import MarkFeed

NOW = 1_767_225_600_000
MARKS_TP = TopicPartition("trading.marks", 0)
encode = msgspec.json.encode


class Rec(NamedTuple):
    key: bytes | None
    value: bytes | None
    timestamp: int = NOW


def good(symbol: str, price: float, ts: int = NOW) -> Rec:
    return Rec(symbol.encode(), encode(Mark(symbol, price, ts)))


BAD = [
    Rec(b"BTC", b"{not json"),  # malformed_json
    Rec(b"BTC", b'{"symbol":"\xff","price":1,"ts":1767225600000}'),  # malformed_json: not UTF-8
    Rec(b"BTC", b'{"symbol":"BTC","price":0,"ts":1767225600000}'),  # invalid_message
    Rec(b"BTC", None),  # invalid_message: no value (a tombstone)
    Rec(b"BTC", b'{"symbol":"BTC","price":1,"ts":1767225600000,"pad":"' + b"x" * 200 + b'"}'),
    Rec(b"A B", b'{"symbol":"A B","price":1,"ts":1767225600000}'),  # invalid_name
    Rec(b"*", b'{"symbol":"*","price":1,"ts":1767225600000}'),  # invalid_name
    Rec(b"ETH", encode(Mark("BTC", 1.0, NOW))),  # key_mismatch
    Rec(b"BTC", encode(Mark("BTC", 1.0, NOW + 60_001))),  # future_mark
    Unreadable(MARKS_TP, 7, "UnicodeDecodeError: invalid start byte"),  # undecodable_record
]
EXPECTED = {
    "malformed_json": 2,
    "invalid_message": 2,
    "oversize": 1,
    "invalid_name": 2,
    "key_mismatch": 1,
    "future_mark": 1,
    "undecodable_record": 1,
}


def ignored_metric(metrics: Metrics) -> dict[str, float]:
    """``riskgate_marks_ignored_total`` by reason, as a scrape shows it."""
    return {
        s.labels["reason"]: s.value
        for family in metrics.registry.collect()
        if family.name == "riskgate_marks_ignored"
        for s in family.samples
        if s.name == "riskgate_marks_ignored_total"
    }


def test_every_bad_mark_is_counted_by_reason_in_the_metric_and_logged_once_per_reason() -> None:
    metrics = Metrics()
    feed = MarkFeed(None, max_future_skew_ms=60_000, max_message_bytes=200, metrics=metrics)
    with capture_logs() as logs:
        feed.take([good("BTC", 100.0), *BAD])
        feed.take(BAD)  # the same again: counted again, not logged again
    assert feed.drain() == [Mark("BTC", 100.0, NOW)]
    doubled = {reason: 2 * n for reason, n in EXPECTED.items()}
    assert dict(feed.ignored) == doubled
    assert ignored_metric(metrics) == doubled
    assert sorted(e["reason"] for e in logs) == sorted(EXPECTED)
    assert {e["log_level"] for e in logs} == {"warning"}


def test_a_mark_on_the_size_limit_is_held_and_one_byte_over_is_oversize() -> None:
    value = encode(Mark("BTC", 100.0, NOW))
    feed = MarkFeed(None, max_message_bytes=len(value), metrics=Metrics())
    feed.take([Rec(b"BTC", value), Rec(b"BTC", value + b" ")])
    assert (feed.drain(), dict(feed.ignored)) == ([Mark("BTC", 100.0, NOW)], {"oversize": 1})


async def test_the_worker_counts_the_bad_marks_of_the_history_in_its_metrics() -> None:
    cfg = load_config(text="[topics]\npartitions = 1\n[bots.alpha]\n", env={})
    broker = broker_for(cfg, timestamp_ms=NOW)
    broker.partitions[cfg.topics.marks] = 1
    broker.logs[TopicPartition(cfg.topics.marks, 0)] = []
    broker.append(cfg.topics.marks, b"BTC", b"{not json")
    broker.append(cfg.topics.marks, b"BTC", encode(Mark("BTC", 100.0, NOW)))
    broker.append(cfg.topics.marks, b"BTC", encode(Mark("BTC", 1.0, NOW + 300_001)))
    with Shell(cfg, broker, NOW) as shell:
        worker = shell.start([0])
        assert await shell.idle()
        assert worker.ready is True
        assert worker.engine.marks.latest("BTC") == (100.0, NOW)
        assert ignored_metric(worker.metrics) == {"malformed_json": 1.0, "future_mark": 1.0}
        assert await shell.stop()
    assert all(not log for tp, log in broker.logs.items() if tp.topic == cfg.topics.deadletter)


class _PoisonConsumer:
    """Enough of a group-less aiokafka consumer over one partition whose record at offset 1
    cannot be decoded by the client (``getmany`` raises, leaving the position there)."""

    def __init__(self, records: list[Rec]) -> None:
        self.records = records
        self.pos = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def topics(self) -> set[str]:
        return {MARKS_TP.topic}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, tps: list[TopicPartition]) -> None: ...

    def assignment(self) -> set[TopicPartition]:
        return {MARKS_TP}

    def paused(self) -> set[TopicPartition]:
        return set()

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.records)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.pos = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {MARKS_TP: len(self.records)}

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        end = len(self.records) if max_records is None else self.pos + max_records
        if self.pos <= 1 < end:
            if self.pos == 1:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
            end = 1
        got, self.pos = self.records[self.pos : end], min(end, len(self.records))
        if not got:
            await asyncio.sleep(timeout_ms / 1000)  # the fetch wait, as the client does
        return {MARKS_TP: got} if got else {}


async def test_a_mark_record_the_client_cannot_decode_wedged_the_mark_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect: the history read with a bare ``getmany``, which fails on such a record for
    ever (the worker never ready). Now it is counted (``undecodable_record``) and passed."""
    poisoned = _PoisonConsumer([good("BTC", 100.0), good("BTC", 0.5), good("ETH", 10.0)])
    monkeypatch.setattr(marks_module, "reader", lambda *a, **kw: poisoned)
    metrics = Metrics()
    feed = MarkFeed(marks_module.KafkaMarkSource({}, MARKS_TP.topic, 10), metrics=metrics)
    await feed.restore()
    assert feed.restored is True
    assert feed.drain() == [Mark("BTC", 100.0, NOW), Mark("ETH", 10.0, NOW)]
    assert ignored_metric(metrics) == {"undecodable_record": 1.0}
    await feed.close()


class _FlakySource:
    """History, then two failed reads (the broker gone), then a mark, then nothing."""

    def __init__(self) -> None:
        self.reads = 0

    async def history(self) -> list[Any]:
        return []

    async def follow(self) -> list[Any]:
        self.reads += 1
        if self.reads <= 2:
            raise KafkaConnectionError("broker gone")
        if self.reads == 3:
            return [good("BTC", 100.0)]
        await asyncio.sleep(3600)
        return []

    async def close(self) -> None: ...


async def test_the_mark_follower_stopped_for_good_on_a_failed_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect: one failed read ended the follower task; every mark after it was lost and
    the held marks froze. Now it retries, logging once per kind of failure."""
    monkeypatch.setattr(marks_module, "_RETRY_S", 0)
    source = _FlakySource()
    feed = MarkFeed(source)
    with capture_logs() as logs:
        await feed.restore()
        async with asyncio.timeout(5):
            while not (held := feed.drain()):  # noqa: ASYNC110 - the follower runs on its own
                await asyncio.sleep(0)
    await feed.close()
    assert (held, source.reads) == ([Mark("BTC", 100.0, NOW)], 4)
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "reading marks failed; retrying"),
        ("info", "reading marks again"),
    ]
