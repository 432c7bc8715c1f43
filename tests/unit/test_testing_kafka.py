"""The broker order of ``riskgate_kafka`` (and so of our suite): configured, Docker, embedded."""

from __future__ import annotations

from types import TracebackType

import pytest
import testcontainers.community.kafka

import worker.kafka.broker
import worker.testing.kafka as tk


class FakeKafkaContainer:
    def __enter__(self) -> FakeKafkaContainer:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        pass

    def get_bootstrap_server(self) -> str:
        return "localhost:32999"


class FakeEmbedded(FakeKafkaContainer):
    bootstrap_servers = "127.0.0.1:40001"


class NoEmbedded:
    def __init__(self) -> None:
        raise AssertionError("no broker may start here")


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tk, "docker_answers", lambda: False)


def test_configured_bootstrap_servers_win_and_start_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.setattr(tk, "docker_answers", lambda: True)
    monkeypatch.setattr(testcontainers.community.kafka, "KafkaContainer", NoEmbedded)
    monkeypatch.setattr(worker.kafka.broker, "EmbeddedBroker", NoEmbedded)
    with tk.session_kafka() as kafka:
        assert kafka == (
            "kafka.example:9092",
            "Kafka via KAFKA_BOOTSTRAP_SERVERS=kafka.example:9092",
        )
    assert tk.broker_plan() == "Kafka via KAFKA_BOOTSTRAP_SERVERS=kafka.example:9092"


def test_a_docker_engine_gets_a_testcontainers_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setattr(tk, "docker_answers", lambda: True)
    monkeypatch.setattr(testcontainers.community.kafka, "KafkaContainer", FakeKafkaContainer)
    monkeypatch.setattr(worker.kafka.broker, "EmbeddedBroker", NoEmbedded)
    with tk.session_kafka() as kafka:
        assert kafka == ("localhost:32999", "testcontainers Kafka at localhost:32999")
    assert tk.broker_plan() == "testcontainers Kafka (a Docker engine answers)"


def test_neither_gets_the_embedded_broker(monkeypatch: pytest.MonkeyPatch, no_docker: None) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setattr(testcontainers.community.kafka, "KafkaContainer", NoEmbedded)
    monkeypatch.setattr(worker.kafka.broker, "EmbeddedBroker", FakeEmbedded)
    assert tk.broker_plan() == "embedded Tansu (no KAFKA_BOOTSTRAP_SERVERS, no Docker engine)"
    with tk.session_kafka() as kafka:
        assert kafka == ("127.0.0.1:40001", "embedded Tansu at 127.0.0.1:40001")
