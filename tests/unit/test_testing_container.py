"""What RiskgateContainer asks Docker for, checked without a Docker engine.

The container object is built with a fixed Docker API version, so docker-py
does not ask an engine for one; ``_configure()`` is what ``start()`` runs just
before creating the container. The run against Docker itself is in
tests/integration/test_plugin_container.py (skipped where no engine answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from testcontainers.core.wait_strategies import HttpWaitStrategy

from worker.testing.container import CONFIG_PATH, HTTP_PORT, IMAGE, RiskgateContainer, command

NO_ENGINE: dict[str, Any] = {"docker_client_kw": {"version": "1.44"}}

CONFIG = '[bots.bot1]\nsymbols = ["BTCUSDT"]\n'


class FakeDockerClient:
    def bridge_ip(self, container_id: str) -> str:
        assert container_id == "kafka-id"
        return "172.17.0.5"


class FakeWrapped:
    id = "kafka-id"


class FakeKafka:
    """The parts of a started KafkaContainer that RiskgateContainer uses."""

    def __init__(self, network: Any = None) -> None:
        self._network = network

    def get_wrapped_container(self) -> FakeWrapped:
        return FakeWrapped()

    def get_docker_client(self) -> FakeDockerClient:
        return FakeDockerClient()

    def get_bootstrap_server(self) -> str:
        return "localhost:32800"


def configured(container: RiskgateContainer) -> RiskgateContainer:
    container._configure()
    return container


def test_container_runs_topics_then_the_worker_through_sh() -> None:
    container = RiskgateContainer(FakeKafka(), **NO_ENGINE)
    assert container.image == IMAGE
    assert IMAGE.startswith("riskgate:")
    assert container._kwargs == {"entrypoint": ["sh", "-c"]}
    assert container._command == [
        f"riskgate topics --config {CONFIG_PATH} && exec riskgate run --config {CONFIG_PATH}"
    ]
    assert command(create_topics=False) == [f"exec riskgate run --config {CONFIG_PATH}"]
    bare = RiskgateContainer(FakeKafka(), create_topics=False, **NO_ENGINE)
    assert bare._command == command(create_topics=False)


def test_container_points_the_worker_at_kafka_and_serves_http_on_9464() -> None:
    container = configured(RiskgateContainer(FakeKafka(), **NO_ENGINE))
    assert container.env == {
        "RISKGATE_HTTP__HOST": "0.0.0.0",
        "RISKGATE_HTTP__PORT": "9464",
        "RISKGATE_KAFKA__BOOTSTRAP_SERVERS": "172.17.0.5:9092",
    }
    assert container.ports == {str(HTTP_PORT): None}
    assert container._network is None
    assert container._transferable_specs == []  # no with_config: the image's own file


def test_with_config_copies_the_toml_over_the_images_file(tmp_path: Path) -> None:
    container = configured(RiskgateContainer(FakeKafka(), **NO_ENGINE).with_config(CONFIG))
    assert container._transferable_specs == [(CONFIG.encode(), CONFIG_PATH, 0o644)]
    path = tmp_path / "riskgate.toml"
    path.write_text(CONFIG)
    from_file = RiskgateContainer(FakeKafka(), **NO_ENGINE).with_config(path)
    assert from_file.config_text == CONFIG


def test_container_joins_the_network_of_its_kafka() -> None:
    network = object()
    container = configured(RiskgateContainer(FakeKafka(network), **NO_ENGINE))
    assert container._network is network


def test_container_waits_for_readyz_200() -> None:
    container = RiskgateContainer(FakeKafka(), startup_timeout=90, **NO_ENGINE)
    wait = container._wait_strategy
    assert isinstance(wait, HttpWaitStrategy)
    assert (wait._port, wait._path, wait._status_codes) == (9464, "/readyz", {200})
    assert wait._startup_timeout == 90


def test_metrics_url_is_the_host_mapped_9464(monkeypatch: pytest.MonkeyPatch) -> None:
    container = RiskgateContainer(FakeKafka(), **NO_ENGINE)
    monkeypatch.setattr(container, "get_container_host_ip", lambda: "localhost")
    monkeypatch.setattr(container, "get_exposed_port", {HTTP_PORT: 32768}.__getitem__)
    assert container.get_metrics_url() == "http://localhost:32768/metrics"


def test_io_talks_to_the_host_side_of_kafka_on_the_configs_topics() -> None:
    text = '[topics]\nhalts = "desk.halts"\n' + CONFIG
    io = RiskgateContainer(FakeKafka(), **NO_ENGINE).with_config(text).io()
    assert io.config.kafka.bootstrap_servers == "localhost:32800"
    assert (io.config.topics.halts, io.config.topics.fills) == ("desk.halts", "trading.fills")
