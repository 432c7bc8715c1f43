"""Effects → Kafka records: topics, keys, partitions and bytes of every output.

Pure (no I/O) so the layout contract of SPEC §2 — keys, co-partitioned
snapshots, dead-letter headers — is testable without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec

from worker.config import TopicsConfig
from worker.engine import Effects, RiskEngine
from worker.snapshot import encode, portfolio_key, symbol_key

Headers = list[tuple[str, bytes]]

_encode = msgspec.json.Encoder().encode


class OutRecord(NamedTuple):
    topic: str
    key: bytes | None
    """None only for a dead letter whose original record had no key."""
    value: bytes | None
    partition: int | None = None
    headers: Headers | None = None


def gate_key(bot: str, symbol: str | None) -> str:
    return f"{bot}/gate/{symbol}" if symbol is not None else f"{bot}/gate"


def output_records(
    engine: RiskEngine, effects: Effects, topics: TopicsConfig, now_ms: int
) -> list[OutRecord]:
    """Halts, decisions and the gate states of every changed key (once per batch)."""
    records = [OutRecord(topics.halts, h.bot.encode(), _encode(h)) for h in effects.halts]
    records.extend(
        OutRecord(topics.decisions, d.bot.encode(), _encode(d)) for d in effects.decisions
    )
    bots = engine.bots
    for bot_id, symbol in effects.dirty_symbols:
        bot = bots.get(bot_id)
        sym = bot.symbols.get(symbol) if bot is not None else None
        if bot is not None and sym is not None:
            state = bot.gate_state(sym, now_ms)
            records.append(
                OutRecord(topics.gates, gate_key(bot_id, symbol).encode(), _encode(state))
            )
    for bot_id in effects.dirty_bots:
        bot = bots.get(bot_id)
        if bot is not None:
            account = bot.account_gate_state(now_ms)
            records.append(
                OutRecord(topics.gates, gate_key(bot_id, None).encode(), _encode(account))
            )
    return records


def heartbeat_records(
    engine: RiskEngine, bot_ids: Iterable[str], topics: TopicsConfig, now_ms: int
) -> list[OutRecord]:
    """Account gate records re-published so clients can tell a live owner from a dead one."""
    return [
        OutRecord(
            topics.gates,
            gate_key(b, None).encode(),
            _encode(engine.bots[b].account_gate_state(now_ms)),
        )
        for b in bot_ids
        if b in engine.bots
    ]


def snapshot_records(
    engine: RiskEngine, effects: Effects, topics: TopicsConfig, partition_of: Mapping[str, int]
) -> list[OutRecord]:
    """Snapshots of changed keys, on the partition co-numbered with the bot's input."""
    records: list[OutRecord] = []
    bots = engine.bots
    for bot_id, symbol in effects.dirty_symbols:
        bot = bots.get(bot_id)
        sym = bot.symbols.get(symbol) if bot is not None else None
        if sym is not None:
            records.append(
                OutRecord(
                    topics.snapshots,
                    symbol_key(bot_id, symbol).encode(),
                    encode(sym.snapshot()),
                    partition_of[bot_id],
                )
            )
    for bot_id in effects.dirty_bots:
        bot = bots.get(bot_id)
        if bot is not None:
            records.append(
                OutRecord(
                    topics.snapshots,
                    portfolio_key(bot_id).encode(),
                    encode(bot.portfolio_snapshot()),
                    partition_of[bot_id],
                )
            )
    return records


def deadletter_record(
    topics: TopicsConfig,
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    error_class: str,
    message: str,
) -> OutRecord:
    """KIP-1034 style: original key, value and headers untouched, plus error headers."""
    return OutRecord(
        topics.deadletter,
        key,  # untouched: a null key stays null (b"" would be a different key)
        value,
        None,
        [
            *headers,
            ("riskgate.errors.topic", source_topic.encode()),
            ("riskgate.errors.partition", str(partition).encode()),
            ("riskgate.errors.offset", str(offset).encode()),
            ("riskgate.errors.exception", error_class.encode()),
            ("riskgate.errors.message", message.encode()[:4096]),
        ],
    )
