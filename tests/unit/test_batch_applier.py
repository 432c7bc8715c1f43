"""The shell's per-record loop (``BatchApplier``) after its per-partition hoisting.

Issue 10 (throughput): the kind, the ``Origin`` source and the bot's home
partition are found once per partition and bot, not per record. These tests pin
that the shortcut changes nothing a record can observe: a bot on a wrong
partition is still dead-lettered on every record, a changed partition count
re-judges every home, the counters and the halt log lines are what they were.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import pytest
from aiokafka import TopicPartition
from structlog.testing import capture_logs

from worker.config import Config, load_config
from worker.core import Effects, RiskEngine
from worker.inbound import input_kinds
from worker.kafka.records import OutRecord
from worker.messages import TradeOutcome
from worker.metrics import Metrics
from worker.runtime import ownership as ownership_module
from worker.runtime.batch import BatchApplier
from worker.runtime.ownership import Ownership, home_partition

NOW = 1_767_225_600_000 + 12 * 3_600_000  # 12:00 UTC, far from a rollover
TOPIC = "trading.outcomes"
CONFIG = """
[topics]
partitions = 4
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -10.0
"""


class Record(NamedTuple):
    key: bytes | None
    value: bytes | None
    offset: int
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()


def bot_on(partition: int, partitions: int = 4) -> str:
    """A bot name whose home (murmur2) partition is ``partition``."""
    names = (f"bot{i}" for i in range(1000))
    return next(b for b in names if home_partition(b.encode(), partitions) == partition)


def record(bot: str, offset: int, net: float = 1.0) -> Record:
    value = msgspec.json.encode(TradeOutcome(f"o{offset}", bot, "BTC", net, 0.0, NOW - offset))
    return Record(bot.encode(), value, offset, NOW)


class Applier(NamedTuple):
    config: Config
    engine: RiskEngine
    ownership: Ownership
    metrics: Metrics
    applier: BatchApplier


def applier(partitions: int = 4, text: str = CONFIG) -> Applier:
    config = load_config(text=text, env={})
    engine = RiskEngine(config)

    async def no_read(partitions: frozenset[int]) -> Any:
        raise AssertionError("no restore here")

    ownership = Ownership(config.topics, no_read)
    ownership.input_partitions = partitions
    metrics = Metrics()
    batch = BatchApplier(config, engine, ownership, metrics, input_kinds(config.topics))
    return Applier(config, engine, ownership, metrics, batch)


def reasons(letters: list[OutRecord]) -> list[tuple[int, str]]:
    """(original offset, reason) of each dead letter."""
    out = []
    for letter in letters:
        headers = dict(letter.headers or ())
        out.append(
            (int(headers["riskgate.errors.offset"]), headers["riskgate.errors.exception"].decode())
        )
    return out


def counted(metrics: Metrics, result: str) -> float | None:
    return metrics.registry.get_sample_value(
        "riskgate_events_consumed_total", {"topic": TOPIC, "result": result}
    )


def test_bot_on_a_wrong_partition_is_dead_lettered_on_every_record_after_its_home_was_seen() -> (
    None
):
    """The home check runs once per bot and partition: a bot found at home on its own
    partition is still refused on another, every record, in the same batch and the next."""
    a = applier()
    alpha = bot_on(1)
    home, stray = TopicPartition(TOPIC, 1), TopicPartition(TOPIC, 2)
    letters: list[OutRecord] = []
    for base in (0, 10):
        batch = {
            home: [record(alpha, base), record(alpha, base + 1)],
            stray: [record(alpha, base + 2), record(alpha, base + 3)],
        }
        offsets = a.applier.apply(batch, NOW, Effects(), letters)
        assert offsets == {home: base + 2, stray: base + 4}
    assert reasons(letters) == [
        (2, "bot_partition_mismatch"),
        (3, "bot_partition_mismatch"),
        (12, "bot_partition_mismatch"),
        (13, "bot_partition_mismatch"),
    ]
    assert a.engine.bots[alpha].symbols["BTC"].session.trades == 4
    assert a.ownership.partition_of == {alpha: 1}
    assert counted(a.metrics, "applied") == 4
    assert counted(a.metrics, "deadletter") == 4


def test_home_check_is_judged_again_when_the_partition_count_changes() -> None:
    """A home depends on the partition count: after it changes, a bot accepted on
    partition p before is refused there when its new home is elsewhere."""
    a = applier()
    alpha = next(
        b
        for b in (f"bot{i}" for i in range(1000))
        if home_partition(b.encode(), 4) == 1 and home_partition(b.encode(), 8) != 1
    )
    tp = TopicPartition(TOPIC, 1)
    letters: list[OutRecord] = []
    a.applier.apply({tp: [record(alpha, 0)]}, NOW, Effects(), letters)
    assert letters == []
    a.ownership.input_partitions = 8
    a.applier.apply({tp: [record(alpha, 1)]}, NOW, Effects(), letters)
    assert reasons(letters) == [(1, "bot_partition_mismatch")]


def test_a_key_that_is_not_its_bot_is_not_taken_for_a_bot_at_home() -> None:
    """Only keys whose record passed the home check are remembered: a record whose key
    differs from its bot is refused for that, and remembers nothing."""
    a = applier()
    alpha, beta = bot_on(1), bot_on(2)
    tp = TopicPartition(TOPIC, 1)
    forged = record(beta, 0)._replace(key=alpha.encode())
    letters: list[OutRecord] = []
    a.applier.apply({tp: [forged, record(beta, 1)]}, NOW, Effects(), letters)
    assert reasons(letters) == [(0, "key_mismatch"), (1, "bot_partition_mismatch")]
    assert a.engine.bots == {}


def test_halt_log_lines_name_the_record_that_caused_them_once_each() -> None:
    """Halts are logged once per record that produced them, with its offset, also when a
    record of the same partition is dead-lettered between them."""
    a = applier()
    alpha = bot_on(1)
    tp = TopicPartition(TOPIC, 1)
    losing = record(alpha, 0, net=-20.0)
    other = msgspec.json.encode(TradeOutcome("o2", alpha, "ETH", -20.0, 0.0, NOW))
    bad = Record(alpha.encode(), b"{}", 1, NOW)
    batch = {tp: [losing, bad, Record(alpha.encode(), other, 2, NOW)]}
    with capture_logs() as logs:
        a.applier.apply(batch, NOW, Effects(), [])
    halts = [(e["symbol"], e["offset"]) for e in logs if e["event"] == "gate halted"]
    assert halts == [("BTC", 0), ("ETH", 2)]


def test_home_is_computed_once_per_held_bot_and_every_time_for_a_refused_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only bots whose records were applied are remembered at home: records the engine
    refuses (here an unknown bot) are home-checked every time, so a flood of distinct
    refused keys grows nothing."""
    a = applier(
        text=CONFIG.replace("accept_unknown_bots = true", "accept_unknown_bots = false")
        + "[bots.alpha]\n"
    )
    calls: list[bytes] = []
    real = ownership_module.home_partition

    def counting(key: bytes, partitions: int) -> int:
        calls.append(key)
        return real(key, partitions)

    monkeypatch.setattr(ownership_module, "home_partition", counting)
    alpha, stranger = "alpha", bot_on(real(b"alpha", 4))
    tp = TopicPartition(TOPIC, real(b"alpha", 4))
    batch = {tp: [record(alpha, 0), record(stranger, 1), record(alpha, 2), record(stranger, 3)]}
    letters: list[OutRecord] = []
    a.applier.apply(batch, NOW, Effects(), letters)
    assert reasons(letters) == [(1, "unknown_bot"), (3, "unknown_bot")]
    assert calls == [b"alpha", stranger.encode(), stranger.encode()]
