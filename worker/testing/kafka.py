"""Which Kafka-protocol broker a test session uses, and starting it.

One order everywhere (our own suite and users' suites through the plugin):
``KAFKA_BOOTSTRAP_SERVERS`` if set; else a testcontainers Kafka when a Docker
engine answers; else the embedded Tansu broker (``riskgate[embedded]``), which
needs neither Docker nor network. Imports of Docker, testcontainers and the
broker launcher happen only when a broker is actually wanted, so merely having
the plugin installed costs a test run nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import NamedTuple

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"


class SessionKafka(NamedTuple):
    """A running broker: where to connect, and a line saying what it is."""

    bootstrap_servers: str
    description: str


@functools.cache
def docker_answers() -> bool:
    """A quick ping of the Docker engine; must fail fast where there is none."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def broker_plan() -> str:
    """Which broker :func:`session_kafka` starts, in the order it tries them."""
    configured = os.environ.get(BOOTSTRAP_ENV)
    if configured:
        return f"Kafka via {BOOTSTRAP_ENV}={configured}"
    if docker_answers():
        return "testcontainers Kafka (a Docker engine answers)"
    return f"embedded Tansu (no {BOOTSTRAP_ENV}, no Docker engine)"


@contextlib.contextmanager
def session_kafka() -> Iterator[SessionKafka]:
    """The broker of :func:`broker_plan`, started for the ``with`` block and stopped after."""
    configured = os.environ.get(BOOTSTRAP_ENV)
    if configured:
        yield SessionKafka(configured, broker_plan())
        return
    if docker_answers():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.9
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            bootstrap = container.get_bootstrap_server()
            yield SessionKafka(bootstrap, f"testcontainers Kafka at {bootstrap}")
        return
    from worker.kafka.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        yield SessionKafka(bootstrap, f"embedded Tansu at {bootstrap}")
