"""riskgate as a testcontainers module: the image of ``deploy/Dockerfile`` against a Kafka.

::

    from testcontainers.community.kafka import KafkaContainer
    from worker.testing.container import RiskgateContainer

    with KafkaContainer() as kafka, RiskgateContainer(kafka).with_config(CONFIG) as riskgate:
        requests.get(riskgate.get_metrics_url())
        await riskgate.io().produce_outcome("bot1", "BTCUSDT", -60.0)

The container reaches the broker on the ``KafkaContainer``'s in-network
listener (port 9092, advertised as the Kafka container's address), joins that
container's network when it has one, creates the topics (``riskgate topics``)
and runs ``riskgate run``; ``start()`` returns once ``/readyz`` answers 200.
Your TOML is copied over the image's ``/etc/riskgate/riskgate.toml``; the
broker address and the HTTP listener come from ``RISKGATE_*`` overrides, so
the file needs no Docker-specific values.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path
from typing import Any, Self

from testcontainers.core.container import DockerContainer
from testcontainers.core.image import DockerImage
from testcontainers.core.wait_strategies import HttpWaitStrategy

from worker.testing.config import config_text, worker_config
from worker.testing.io import RiskgateIO

IMAGE = f"riskgate:{version('riskgate')}"
"""The tag ``docker build -f deploy/Dockerfile -t riskgate:<version> .`` gives the image."""
HTTP_PORT = 9464
CONFIG_PATH = "/etc/riskgate/riskgate.toml"
KAFKA_NETWORK_PORT = 9092
"""``KafkaContainer``'s listener for other containers (``BROKER://<its address>:9092``)."""


def build_image(context: str | os.PathLike[str], tag: str = IMAGE) -> DockerImage:
    """Build ``deploy/Dockerfile`` of a riskgate source tree (``context``) as ``tag``.

    The image is kept after the build (``clean_up=False``) so later runs reuse it.
    """
    image = DockerImage(
        path=Path(context), tag=tag, dockerfile_path="deploy/Dockerfile", clean_up=False
    )
    return image.build()


def command(*, create_topics: bool) -> list[str]:
    """The shell script the container runs (its entry point is ``sh -c``)."""
    run = f"exec riskgate run --config {CONFIG_PATH}"
    if not create_topics:
        return [run]
    return [f"riskgate topics --config {CONFIG_PATH} && {run}"]


class RiskgateContainer(DockerContainer):
    """The riskgate worker in Docker, against ``kafka`` (a started ``KafkaContainer``).

    ``create_topics=False`` leaves the topics to you. ``startup_timeout`` bounds
    the wait for ``/readyz`` (seconds). Other keyword arguments go to
    ``DockerContainer``.
    """

    def __init__(
        self,
        kafka: Any,
        image: str = IMAGE,
        *,
        create_topics: bool = True,
        startup_timeout: int = 120,
        **kwargs: Any,
    ) -> None:
        super().__init__(image, **kwargs)
        self.kafka = kafka
        self.config_text: str | None = None
        """The TOML given to :meth:`with_config` (None: the image's default file)."""
        self.with_exposed_ports(HTTP_PORT)
        self.with_env("RISKGATE_HTTP__HOST", "0.0.0.0")
        self.with_env("RISKGATE_HTTP__PORT", str(HTTP_PORT))
        self.with_kwargs(**{**self._kwargs, "entrypoint": ["sh", "-c"]})
        self.with_command(command(create_topics=create_topics))
        self.waiting_for(
            HttpWaitStrategy(HTTP_PORT, "/readyz")
            .for_status_code(200)
            .with_startup_timeout(startup_timeout)
        )

    def with_config(self, config: str | os.PathLike[str]) -> Self:
        """Run with this TOML (text, or a path) instead of the image's default."""
        self.config_text = config_text(config)
        return self

    def kafka_bootstrap(self) -> str:
        """The broker's address as this container sees it (the Kafka container's IP)."""
        kafka = self.kafka
        container_id = kafka.get_wrapped_container().id
        return f"{kafka.get_docker_client().bridge_ip(container_id)}:{KAFKA_NETWORK_PORT}"

    def _configure(self) -> None:
        """Called by ``start()`` before the container is created (Kafka is running)."""
        if self.kafka._network is not None:
            self.with_network(self.kafka._network)
        self.with_env("RISKGATE_KAFKA__BOOTSTRAP_SERVERS", self.kafka_bootstrap())
        if self.config_text is not None:
            self.with_copy_into_container(self.config_text.encode(), CONFIG_PATH)

    def get_metrics_url(self) -> str:
        """``/metrics`` from the host (``/healthz`` and ``/readyz`` are beside it)."""
        port = self.get_exposed_port(HTTP_PORT)
        return f"http://{self.get_container_host_ip()}:{port}/metrics"

    def io(self) -> RiskgateIO:
        """Produce to and await this worker from the host (its topics, the host's
        address of the broker)."""
        config = worker_config(self.config_text or "", self.kafka.get_bootstrap_server())
        return RiskgateIO(config)
