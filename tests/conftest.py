"""Shared fixtures: a Kafka-protocol broker for the whole session (SPEC §8).

Order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a testcontainers Kafka when a
Docker engine answers; else the embedded Tansu broker. Fault tests that must
freeze or kill the broker use ``embedded_broker``, a private one per test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from worker.kafka.broker import EmbeddedBroker


def _docker_answers() -> bool:
    """A quick ping; no engine on the dev machines, so this must fail fast."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of the session's broker, whichever kind is available."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_answers():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.9
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """A private embedded broker this test may pause, resume or stop."""
    with EmbeddedBroker() as broker:
        yield broker
