"""Connection options shared by every aiokafka client the worker creates.

One function builds them so the consumer, the producer and the admin client
can never disagree on TLS or SASL settings. The result holds the SASL password:
pass it to a client constructor, never to a logger.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.helpers import create_ssl_context

from worker.config import ConfigError, KafkaConfig, WorkerConfig

RETRY_BACKOFF_MAX_MS = 5_000
"""Longest sleep between two attempts of a broker operation the worker retries."""

_SASL = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_TLS = frozenset({"SSL", "SASL_SSL"})


def client_kwargs(kafka: KafkaConfig) -> dict[str, Any]:
    """Keyword arguments common to AIOKafkaConsumer, AIOKafkaProducer and the admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol in _TLS:
        if kafka.ssl_keyfile and not kafka.ssl_certfile:
            raise ConfigError("kafka.ssl_keyfile is set without kafka.ssl_certfile")
        try:
            context = create_ssl_context(
                cafile=kafka.ssl_cafile,
                certfile=kafka.ssl_certfile,
                keyfile=kafka.ssl_keyfile,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load kafka.ssl_cafile / ssl_certfile / ssl_keyfile: {exc}"
            ) from exc
        context.check_hostname = kafka.ssl_check_hostname
        kwargs["ssl_context"] = context
    if kafka.security_protocol in _SASL:
        if kafka.sasl_mechanism is None:
            raise ConfigError(
                f"kafka.sasl_mechanism is required with security_protocol {kafka.security_protocol}"
            )
        try:
            password = kafka.password()
        except OSError as exc:
            raise ConfigError(f"cannot read kafka.sasl_password_file: {exc}") from exc
        if not kafka.sasl_username or not password:  # an empty secret file is a mistake
            # Name the keys, never the values.
            raise ConfigError(
                f"kafka.sasl_username and kafka.sasl_password (or sasl_password_file) "
                f"are required with sasl_mechanism {kafka.sasl_mechanism}"
            )
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = password
    return kwargs


def reader(client: dict[str, Any], **fetch: Any) -> AIOKafkaConsumer:
    """A consumer that reads as an observer, from ``client`` (:func:`client_kwargs`).

    It joins no group, so it never takes partitions from the workers or triggers
    a rebalance; it commits nothing; a partition it is assigned without a position
    starts at the earliest offset, so it sees the topic's whole retained history.
    ``fetch`` tunes its fetches (e.g. ``fetch_max_wait_ms``).
    """
    return AIOKafkaConsumer(
        **client, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **fetch
    )


def redacted(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` safe to log: the password masked, the SSL context reduced to a flag."""
    safe = dict(kwargs)
    if "sasl_plain_password" in safe:
        safe["sasl_plain_password"] = "***"
    if "ssl_context" in safe:
        safe["ssl_context"] = "<tls>"
    return safe


def check_timeouts(kafka: KafkaConfig, worker: WorkerConfig) -> None:
    """Refuse timeouts that contradict each other, naming the keys (ConfigError).

    aiokafka checks none of these itself and then misbehaves quietly: it sends
    JoinGroup with the plain request timeout while the broker may hold that
    request for the rebalance timeout (aiokafka sets it to the session timeout),
    so ``request_timeout_ms <= session_timeout_ms`` retries the join forever and
    the worker never becomes ready. The rules are the Kafka client's own
    (kafka-python and the Java client before KIP-266): the request timeout
    exceeds the session timeout and the fetch wait; heartbeats come at least
    three times per session. ``worker.stuck_after_ms`` must outlast one broker
    request plus one retry backoff: that is the longest the loop may wait
    without ticking while the broker is away, and liveness must not fail then.
    """
    problems: list[str] = []
    if kafka.request_timeout_ms <= kafka.session_timeout_ms:
        problems.append(
            f"kafka.request_timeout_ms ({kafka.request_timeout_ms}) must be greater than "
            f"kafka.session_timeout_ms ({kafka.session_timeout_ms}): the broker may hold a "
            f"JoinGroup request that long, so the group would never be joined"
        )
    if kafka.heartbeat_interval_ms * 3 > kafka.session_timeout_ms:
        problems.append(
            f"kafka.heartbeat_interval_ms ({kafka.heartbeat_interval_ms}) must be at most a "
            f"third of kafka.session_timeout_ms ({kafka.session_timeout_ms})"
        )
    if kafka.fetch_max_wait_ms >= kafka.request_timeout_ms:
        problems.append(
            f"kafka.fetch_max_wait_ms ({kafka.fetch_max_wait_ms}) must be less than "
            f"kafka.request_timeout_ms ({kafka.request_timeout_ms})"
        )
    if kafka.session_timeout_ms > kafka.max_poll_interval_ms:
        problems.append(
            f"kafka.session_timeout_ms ({kafka.session_timeout_ms}) must not exceed "
            f"kafka.max_poll_interval_ms ({kafka.max_poll_interval_ms})"
        )
    if worker.stuck_after_ms <= kafka.request_timeout_ms + RETRY_BACKOFF_MAX_MS:
        problems.append(
            f"worker.stuck_after_ms ({worker.stuck_after_ms}) must be greater than "
            f"kafka.request_timeout_ms ({kafka.request_timeout_ms}) + {RETRY_BACKOFF_MAX_MS}: "
            f"one broker request and one retry backoff would otherwise fail liveness"
        )
    if problems:
        raise ConfigError("inconsistent timeouts: " + "; ".join(problems))


def consumer_kwargs(kafka: KafkaConfig, worker: WorkerConfig) -> dict[str, Any]:
    """The worker's group consumer options, after :func:`check_timeouts`."""
    check_timeouts(kafka, worker)
    return {
        **client_kwargs(kafka),
        "group_id": kafka.group_id,
        "group_instance_id": kafka.group_instance_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_bytes": 32 * 1024 * 1024,
        "fetch_max_wait_ms": kafka.fetch_max_wait_ms,
        # Range assignment gives one member the same partition number of every
        # input topic: all of a bot's events, whatever the topic, meet in one worker.
        "partition_assignment_strategy": (RangePartitionAssignor,),
    }
