"""Effects → Kafka records: topics, keys, partitions and bytes of every output.

Pure (no I/O) so the layout contract of SPEC §2 — keys, co-partitioned
snapshots, dead-letter headers — is testable without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec

from worker.config import TopicsConfig
from worker.core.effects import Effects
from worker.core.engine import RiskEngine
from worker.core.idlog import IdChunk
from worker.core.snapshot import chunk_key, encode, portfolio_key, symbol_key
from worker.kafka.restore import CLAIM_KEY, epoch_headers
from worker.messages import AccountGateState, GateState

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
    records.extend(_gate_record(topics, s) for s in engine.gate_states(effects, now_ms))
    return records


def _gate_record(topics: TopicsConfig, state: GateState | AccountGateState) -> OutRecord:
    symbol = state.symbol if isinstance(state, GateState) else None
    return OutRecord(topics.gates, gate_key(state.bot, symbol).encode(), _encode(state))


def heartbeat_records(
    engine: RiskEngine, bot_ids: Iterable[str], topics: TopicsConfig, now_ms: int
) -> list[OutRecord]:
    """Account gate records re-published so clients can tell a live owner from a dead one
    (the same ``seq``: nothing changed, only ``updated_ts`` says the owner is alive)."""
    beat = Effects()
    beat.dirty_bots.update(bot_ids)
    return [_gate_record(topics, s) for s in engine.gate_states(beat, now_ms)]


def snapshot_records(
    engine: RiskEngine,
    effects: Effects,
    topics: TopicsConfig,
    partition_of: Mapping[str, int],
    epochs: Mapping[int, int] | None = None,
) -> list[OutRecord]:
    """Snapshots of changed keys, on the partition co-numbered with the bot's input.

    Per bot, the portfolio record goes first and is written whenever any of the
    bot's symbols is (decision D2). A bot's records share one partition, so a
    crash leaves a prefix of them: the portfolio is then never behind a symbol,
    and a replay re-judges nothing the portfolio decided (the daily-loss latch,
    intents, reservation releases) against a partly caught-up account — each
    holder takes only the events above its own watermark. Every record carries
    its writer's owner epoch (the zombie fence of :mod:`worker.kafka.restore`).

    The bot's id windows go as chunk records (:mod:`worker.core.idlog`): the
    newly sealed ones just before the portfolio record that references them,
    tombstones of those out of the window after the bot's last record.
    """
    records: list[OutRecord] = []
    for bot_id, chunks, portfolio, symbols, drops in engine.snapshots(effects):
        partition = partition_of[bot_id]
        headers = epoch_headers(epochs.get(partition, 0)) if epochs else None
        records.extend(
            OutRecord(
                topics.snapshots,
                chunk_key(bot_id, window, number).encode(),
                encode(IdChunk(entries=entries)),
                partition,
                headers,
            )
            for window, number, entries in chunks
        )
        records.append(
            OutRecord(
                topics.snapshots,
                portfolio_key(bot_id).encode(),
                encode(portfolio),
                partition,
                headers,
            )
        )
        records.extend(
            OutRecord(
                topics.snapshots,
                symbol_key(bot_id, symbol).encode(),
                encode(snap),
                partition,
                headers,
            )
            for symbol, snap in symbols
        )
        records.extend(
            OutRecord(
                topics.snapshots,
                chunk_key(bot_id, window, number).encode(),
                None,
                partition,
                headers,
            )
            for window, number in drops
        )
    return records


def claim_record(topics: TopicsConfig, partition: int, epoch: int) -> OutRecord:
    """An owner's claim on a snapshot partition, ahead of its first snapshots there."""
    return OutRecord(
        topics.snapshots, CLAIM_KEY, str(epoch).encode(), partition, epoch_headers(epoch)
    )


DEADLETTER_MAX_BYTES = 1_000_000
"""Largest dead letter written: key + value + headers, below the 1 MiB every client and
broker allows by default (aiokafka's ``max_request_size``, Kafka's ``message.max.bytes``).

A bigger one would be refused by the worker's own producer, and a refused send is
retried like any broker error: one oversized bad record (brokers accept bigger ones
on the input topics when configured to) would stop the worker for good. What does
not fit is dropped instead, biggest part first (value, original headers or key),
and a ``riskgate.errors.<part>.dropped`` header gives the dropped size; the error
headers still say where the original record is.
"""


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
    """KIP-1034 style: original key, value and headers untouched, plus error headers.

    Untouched unless together bigger than ``DEADLETTER_MAX_BYTES`` (see there).
    """
    original = list(headers)
    errors: Headers = [
        ("riskgate.errors.topic", source_topic.encode()),
        ("riskgate.errors.partition", str(partition).encode()),
        ("riskgate.errors.offset", str(offset).encode()),
        ("riskgate.errors.exception", error_class.encode()),
        ("riskgate.errors.message", message.encode()[:4096]),
    ]
    parts = {"value": len(value or b""), "headers": _size(None, None, original)}
    parts["key"] = len(key or b"")
    while _size(key, value, original) + _size(None, None, errors) > DEADLETTER_MAX_BYTES:
        part = max(parts, key=parts.__getitem__)  # the biggest left, value first on a tie
        errors.append((f"riskgate.errors.{part}.dropped", str(parts.pop(part)).encode()))
        if part == "value":
            value = None
        elif part == "headers":
            original = []
        else:
            key = None
    # A null key stays null (b"" would be a different key).
    return OutRecord(topics.deadletter, key, value, None, [*original, *errors])


def _size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> int:
    # A header value may be null on the wire (issue 15 item 1): it costs nothing.
    return (
        len(key or b"")
        + len(value or b"")
        + sum(len(name.encode()) + len(data or b"") for name, data in headers)
    )
