"""The dead letter of one input record: its original bytes and why it was refused.

Bad input never stops the loop: the record goes to the dead-letter topic with
its key, value and headers unchanged plus ``riskgate.errors.*`` headers, is
counted by reason and logged once.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiokafka import TopicPartition

from worker.config import TopicsConfig
from worker.kafka.records import OutRecord, deadletter_record
from worker.messages import Event
from worker.metrics import Metrics
from worker.runtime.publish import printable

log = structlog.get_logger("riskgate.worker")


class DeadLetters:
    """Builds the dead letters of one worker's input, counting them by reason."""

    def __init__(self, topics: TopicsConfig, metrics: Metrics) -> None:
        self._topics = topics
        self._metrics = metrics

    def of(
        self,
        tp: TopicPartition,
        record: Any | None,
        *,
        reason: str,
        message: str,
        event: Event | None = None,
        offset: int | None = None,
    ) -> OutRecord:
        """The dead letter of ``record`` (None: undecodable, only its ``offset`` is known).

        Never raises: a record is dead-lettered because it is unusual, so its
        dead letter must not depend on it being usual.
        """
        self._metrics.deadletters.labels(reason).inc()
        key: bytes | None = record.key if record is not None else None
        where = record.offset if record is not None else offset
        log.warning(
            "dead-lettered input",
            # What is known of the event: decoded fields, else the key (the bot id
            # by contract), shortened - it is untrusted input.
            bot=event.bot if event is not None else printable(key),
            symbol=event.symbol if event is not None else None,
            topic=tp.topic,
            partition=tp.partition,
            offset=where,
            reason=reason,
            error=message[:1024],
        )
        fields: dict[str, Any] = {
            "source_topic": tp.topic,
            "partition": tp.partition,
            "offset": where if where is not None else -1,
            "error_class": reason,
            "message": message,
        }
        try:
            letter = deadletter_record(
                self._topics,
                key=key,
                value=record.value if record is not None else None,
                headers=list(record.headers or ()) if record is not None else [],
                **fields,
            )
        except Exception as exc:  # keep the error headers, drop the original
            fields["message"] = f"{message}; original record dropped: {exc!r}"
            letter = deadletter_record(self._topics, key=None, value=None, headers=[], **fields)
        if letter.key is None and letter.value is None:
            # Producers refuse a record with neither (aiokafka asserts): the retry
            # would stop the loop. An empty value, and a header saying it was null.
            headers = [*(letter.headers or ()), ("riskgate.errors.value.null", b"true")]
            letter = letter._replace(value=b"", headers=headers)
        return letter
