"""Applying one fetched batch to the engine: decode, home check, apply, count.

Whatever goes wrong with one record is that record's dead letter, so one
record can never stop the loop and be met again by every next owner.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from aiokafka import TopicPartition

from worker.config import Config
from worker.core import Effects, Origin, RiskEngine
from worker.errors import Rejected
from worker.inbound import InputKind, decode_input
from worker.kafka.fetch import Unreadable
from worker.kafka.records import OutRecord
from worker.messages import Event, HaltEvent
from worker.metrics import Metrics
from worker.runtime.deadletter import DeadLetters
from worker.runtime.ownership import Ownership

log = structlog.get_logger("riskgate.worker")
_new_tuple = tuple.__new__
MAX_HOME_KEYS = 65_536
"""Bot ids remembered as at home per partition (``BatchApplier._at_home``)."""


def log_halts(halts: Iterable[HaltEvent], **context: object) -> None:
    """Gate changes are rare and operator-relevant: one INFO line each, with context."""
    for halt in halts:
        log.info(
            f"gate {halt.kind}",
            bot=halt.bot,
            symbol=halt.symbol,
            gate=halt.gate,
            reason=halt.reason,
            event_id=halt.event_id,
            **context,
        )


class BatchApplier:
    """Applies fetched records to the engine, turning every failure into a dead letter."""

    def __init__(
        self,
        config: Config,
        engine: RiskEngine,
        ownership: Ownership,
        metrics: Metrics,
        kinds: dict[str, InputKind],
    ) -> None:
        self._config = config
        self._engine = engine
        self._ownership = ownership
        self._metrics = metrics
        self._kinds = kinds
        self._letters = DeadLetters(config.topics, metrics)
        self._homes: dict[int, set[bytes]] = {}
        """Per input partition, the keys (bot ids) found at home there by ``check_home``."""
        self._homes_over = 0
        """The partition count ``_homes`` was found with (a home depends on it)."""

    def _at_home(self, partition: int) -> set[bytes]:
        """The keys already found at home on ``partition``: a bot's home is a function of
        its key and the partition count only, so it is checked once per bot, not per
        record. Only keys of applied records enter (bots the engine holds: refused ones,
        an unknown-bot flood, are checked every time) and a set is bounded anyway."""
        count = self._ownership.input_partitions
        if count != self._homes_over:
            self._homes.clear()
            self._homes_over = count
        keys = self._homes.get(partition)
        if keys is None or len(keys) >= MAX_HOME_KEYS:
            keys = self._homes[partition] = set()
        return keys

    def apply(
        self,
        batch: dict[TopicPartition, list[Any]],
        now: int,
        effects: Effects,
        deadletters: list[OutRecord],
    ) -> dict[TopicPartition, int]:
        """Apply every record; returns the next offset to consume per partition.

        Rejected input carries its reason; any other exception (input nobody
        foresaw, or a bug) is contained the same way under ``unprocessable`` and
        logged with its traceback.
        """
        apply = self._engine.apply
        max_bytes = self._config.worker.max_message_bytes
        ownership = self._ownership
        partition_of = ownership.partition_of
        counter = self._metrics.events
        halts = effects.halts
        offsets: dict[TopicPartition, int] = {}
        # Per partition, not per record: its kind, its source, which bots are at home there.
        for tp, records in batch.items():
            topic, partition = tp
            kind = self._kinds[topic]
            source = f"{topic}/{partition}"
            at_home = self._at_home(partition)
            applied = 0
            skipped_before = effects.skipped
            seen = len(halts)
            for record in records:
                event: Event | None = None
                key = record.key
                try:
                    event = decode_input(kind, key, record.value, max_bytes)
                    home = key in at_home  # the key is the bot's id (decode_input)
                    if not home:
                        ownership.check_home(event, tp)
                    # ``Origin(source, offset)`` without the NamedTuple's Python-level __new__.
                    origin = _new_tuple(Origin, (source, record.offset))
                    apply(event, now, origin, effects, record_ts=record.timestamp)
                except Rejected as exc:
                    seen = len(halts)
                    deadletters.append(
                        self._letters.of(
                            tp, record, reason=exc.reason, message=str(exc), event=event
                        )
                    )
                    continue
                except Exception as exc:  # contained to this record, see above
                    seen = len(halts)
                    log.exception(
                        "input record could not be processed",
                        topic=topic,
                        partition=partition,
                        offset=record.offset,
                    )
                    message = f"{type(exc).__name__}: {exc}"
                    deadletters.append(
                        self._letters.of(
                            tp, record, reason="unprocessable", message=message, event=event
                        )
                    )
                    continue
                if len(halts) != seen:
                    log_halts(halts[seen:], topic=topic, partition=partition, offset=record.offset)
                    seen = len(halts)
                if not home:  # remembered once applied: only bots the engine holds
                    at_home.add(key)
                partition_of[event.bot] = partition
                applied += 1
            skipped = effects.skipped - skipped_before
            counter.labels(topic, "applied").inc(applied - skipped)
            if skipped:
                counter.labels(topic, "skipped").inc(skipped)
            if len(records) > applied:
                counter.labels(topic, "deadletter").inc(len(records) - applied)
            offsets[tp] = records[-1].offset + 1
        return offsets

    def skip_unreadable(
        self,
        unreadable: list[Unreadable],
        offsets: dict[TopicPartition, int],
        deadletters: list[OutRecord],
    ) -> None:
        """Records the client could not decode were skipped; dead-letter where they are."""
        for bad in unreadable:
            letter = self._letters.of(
                bad.tp, None, reason="undecodable_record", message=bad.error, offset=bad.offset
            )
            deadletters.append(letter)
            self._metrics.events.labels(bad.tp.topic, "deadletter").inc()
            offsets[bad.tp] = max(offsets.get(bad.tp, 0), bad.offset + 1)
