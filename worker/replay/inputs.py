"""Replay inputs: history files (JSONL, CSV, Parquet) or the input topics, as one ordered stream.

Every input becomes :class:`InputRecord`\\ s carrying the *arrival time* that drives
the replay's wall clock: the Kafka record timestamp for topics, else a file's
``record_ts`` column when it has one, else the event's own ``ts``. The wire
shapes are the contract's (SPEC §3); a file either holds one kind (named by
``KIND=PATH`` or by its file name: ``fills*``, ``outcomes*``, ``intents*``,
``control*``) or says it per row in a ``type`` column.

Bad rows never stop a replay: they become records whose ``error`` says why
(the reasons of SPEC §8) and keep their original bytes, for the dead-letter
file and the report's counts.
"""

from __future__ import annotations

import csv
import heapq
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from worker.config import Config
from worker.errors import Rejected
from worker.inbound import InputKind, decode_input, input_kinds
from worker.messages import ControlCommand, Event, Fill, OrderIntent, TradeOutcome

KINDS: dict[str, InputKind] = {
    "fill": "fill",
    "fills": "fill",
    "outcome": "outcome",
    "outcomes": "outcome",
    "intent": "intent",
    "intents": "intent",
    "control": "control",
    "command": "control",
    "commands": "control",
}
"""Accepted spellings of a row's ``type`` (and of a file's kind)."""
_TYPES: dict[InputKind, type[Fill | TradeOutcome | OrderIntent | ControlCommand]] = {
    "fill": Fill,
    "outcome": TradeOutcome,
    "intent": OrderIntent,
    "control": ControlCommand,
}
_NOT_FIELDS = ("type", "record_ts")
"""Columns that describe a row, not the message (a Struct ignores them in JSON anyway)."""


class InputError(Exception):
    """An input that cannot be read at all (missing file, unknown format or kind)."""


class InputRecord(NamedTuple):
    """One input record in replay order: the event, or why it is bad input."""

    time: int
    """Arrival time (epoch ms): drives the wall clock and is the record time of validation."""
    event: Event | None
    source: str
    """``path`` of a file, or ``topic/partition``: with ``position`` it names the record."""
    position: int
    """Line/row number in a file (0-based), or the offset in a partition."""
    error: Rejected | None = None
    raw: bytes | None = None
    """The original bytes of a bad record (None for good ones, which need no copy)."""


class _Head(msgspec.Struct):
    """The two columns read before the message itself: decoded in C, skipping the rest."""

    type: str | None = None
    record_ts: int | None = None
    ts: int | None = None


_head = msgspec.json.Decoder(_Head)


def kind_of_name(name: str) -> InputKind | None:
    """A file's kind from its name (``fills-june.jsonl`` → fill), or None."""
    stem = name.lower()
    for prefix in sorted(KINDS, key=len, reverse=True):
        if stem.startswith(prefix):
            return KINDS[prefix]
    return None


def parse_input_arg(arg: str) -> tuple[InputKind | None, Path]:
    """``PATH`` or ``KIND=PATH`` (``--input fills=june.csv``)."""
    kind_text, sep, path_text = arg.partition("=")
    if sep and kind_text.lower() in KINDS:
        return KINDS[kind_text.lower()], Path(path_text)
    return None, Path(arg)


def read_file(path: Path, kind: InputKind | None = None) -> list[InputRecord]:
    """Every row of ``path`` (format from its suffix), in file order."""
    if not path.is_file():
        raise InputError(f"input {path} is not a file")
    kind = kind or kind_of_name(path.name)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".jsonl", ".ndjson", ".json")):
        return list(_jsonl(path, kind))
    if suffixes.endswith(".csv"):
        return list(_rows(path, _csv_rows(path), kind))
    if suffixes.endswith(".parquet"):
        return list(_rows(path, _parquet_rows(path), kind))
    raise InputError(f"input {path}: unknown format (use .jsonl, .csv or .parquet)")


def _jsonl(path: Path, kind: InputKind | None) -> Iterator[InputRecord]:
    source = str(path)
    with path.open("rb") as fh:
        for n, text in enumerate(fh):
            line = text.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                head = _head.decode(line)
            except msgspec.DecodeError as exc:
                error = Rejected("malformed_json", f"line is not valid JSON: {exc}")
                yield InputRecord(0, None, source, n, error, line)
                continue
            except msgspec.ValidationError:
                head = _Head()  # the full decode below names what is wrong
            row_kind = KINDS.get(head.type.lower()) if head.type else kind
            time = head.record_ts if head.record_ts is not None else head.ts
            if row_kind is None:
                error = Rejected("invalid_message", f"row has no known type: {head.type!r}")
                yield InputRecord(time or 0, None, source, n, error, line)
                continue
            try:
                # key = the bot itself: a file has no Kafka key to disagree with it
                event = _decode_keyless(row_kind, line)
            except Rejected as exc:
                yield InputRecord(time or 0, None, source, n, exc, line)
                continue
            yield InputRecord(event.ts if time is None else time, event, source, n)


_DECODERS = {k: msgspec.json.Decoder(t) for k, t in _TYPES.items()}


def _decode_keyless(kind: InputKind, value: bytes) -> Event:
    """The topic decoder's checks minus the key: size, JSON, types and ranges (SPEC §8)."""
    try:
        return _DECODERS[kind].decode(value)
    except msgspec.ValidationError as exc:
        raise Rejected("invalid_message", f"invalid {kind}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise Rejected("malformed_json", f"{kind} is not valid JSON: {exc}") from None


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            yield {k: v for k, v in row.items() if k is not None and v not in ("", None)}


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(
            f"input {path}: Parquet needs pyarrow (pip install 'riskgate[parquet]')"
        ) from exc
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        for row in batch.to_pylist():
            yield {k: v for k, v in row.items() if v is not None}


def _rows(
    path: Path, rows: Iterable[dict[str, Any]], kind: InputKind | None
) -> Iterator[InputRecord]:
    """Column rows (CSV strings or Parquet values) → records; strings convert like env values."""
    source = str(path)
    for n, row in enumerate(rows):
        type_text = row.get("type")
        row_kind = KINDS.get(str(type_text).lower()) if type_text is not None else kind
        time = _int_or_none(row.get("record_ts", row.get("ts")))
        fields = {k: v for k, v in row.items() if k not in _NOT_FIELDS}
        raw = json.dumps(row, default=str, separators=(",", ":")).encode()
        if row_kind is None:
            error = Rejected("invalid_message", f"row has no known type: {type_text!r}")
            yield InputRecord(time or 0, None, source, n, error, raw)
            continue
        if row_kind == "control":
            fields.setdefault("symbol", None)  # an empty cell: the whole bot (JSON's null)
        try:
            event: Event = msgspec.convert(fields, _TYPES[row_kind], strict=False)
        except msgspec.ValidationError as exc:
            error = Rejected("invalid_message", f"invalid {row_kind}: {exc}")
            yield InputRecord(time or 0, None, source, n, error, raw)
            continue
        yield InputRecord(event.ts if time is None else time, event, source, n)


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def in_time_order(files: Sequence[list[InputRecord]]) -> list[InputRecord]:
    """All files' records by arrival time; equal times keep file order, then row order.

    A stable sort, not a merge: a history file may be out of order (late
    events), and the replay applies them when they *arrived*.
    """
    merged = [r for records in files for r in records]
    merged.sort(key=_time)
    return merged


def _time(record: InputRecord) -> int:
    return record.time


def merge_partitions(partitions: Sequence[list[InputRecord]]) -> list[InputRecord]:
    """Interleave partitions by record time, each kept in offset order, as a consumer reads them.

    Within a partition the offset order is the order the live worker applied
    (record times there need not be monotonic); across partitions there is
    no order but time, so ties go to the earlier-listed partition.
    """
    return list(heapq.merge(*partitions, key=_time))


def decode_record(
    kind: InputKind,
    *,
    source: str,
    offset: int,
    timestamp: int,
    key: bytes | None,
    value: bytes | None,
    max_bytes: int,
) -> InputRecord:
    """A topic record through the worker's own decoder (size, JSON, types, key = bot)."""
    try:
        event = decode_input(kind, key, value, max_bytes)
    except Rejected as exc:
        return InputRecord(timestamp, None, source, offset, exc, value or b"")
    return InputRecord(timestamp, event, source, offset)


async def read_topics(config: Config, start_ms: int, end_ms: int) -> list[InputRecord]:
    """The input topics' records whose record time is in ``[start_ms, end_ms]``, read-only,
    outside any group, each partition in offset order (as the worker consumed it).

    Each partition is read from the first offset at or after ``start_ms``
    (``offsets_for_times``) to its end offset when the read began; the end is
    judged by each record's timestamp, not looked up, because a partition's
    timestamps need not grow with offsets (and some brokers, e.g. Tansu, answer
    the time lookup only approximately). A record off its bot's home partition
    is the dead letter the worker made of it (``bot_partition_mismatch``).
    """
    from aiokafka import TopicPartition

    from worker.kafka.options import client_kwargs, reader
    from worker.runtime import home_partition

    kinds = input_kinds(config.topics)
    max_bytes = config.worker.max_message_bytes
    consumer = reader(
        client_kwargs(config.kafka),
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in kinds
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            raise InputError(f"none of the input topics exists: {', '.join(kinds)}")
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, start_ms))
        counts = {t: len(consumer.partitions_for_topic(t) or ()) for t in kinds}
        per_tp: dict[TopicPartition, list[InputRecord]] = {tp: [] for tp in tps}
        bounds: dict[TopicPartition, tuple[int, int]] = {}
        for tp in tps:
            first = starts[tp].offset if starts[tp] is not None else ends[tp]
            if ends[tp] > first:
                bounds[tp] = (first, ends[tp])
        consumer.assign(list(bounds))
        for tp, (first, _) in bounds.items():
            consumer.seek(tp, first)
        pending = set(bounds)
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batch.items():
                stop = bounds[tp][1]
                source = f"{tp.topic}/{tp.partition}"
                out = per_tp[tp]
                for r in records:
                    if r.offset >= stop:
                        break
                    if not start_ms <= r.timestamp <= end_ms:
                        continue
                    rec = decode_record(
                        kinds[tp.topic],
                        source=source,
                        offset=r.offset,
                        timestamp=r.timestamp,
                        key=r.key,
                        value=r.value,
                        max_bytes=max_bytes,
                    )
                    if rec.event is not None and tp.partition != home_partition(
                        rec.event.bot.encode(), counts[tp.topic]
                    ):
                        error = Rejected(
                            "bot_partition_mismatch",
                            f"bot {rec.event.bot!r} is not at home on partition {tp.partition}",
                        )
                        rec = InputRecord(r.timestamp, None, source, r.offset, error, r.value)
                    out.append(rec)
            for tp in list(pending):
                if await consumer.position(tp) >= bounds[tp][1]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return merge_partitions([per_tp[tp] for tp in tps])
