"""RiskgateContainer against a KafkaContainer, both in Docker.

Needs a Docker engine (to build deploy/Dockerfile and run it next to Kafka);
where none answers - as on the development machines and CI here - the test
is skipped and says so. What the container asks Docker for is unit-tested
without an engine in tests/unit/test_testing_container.py.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from worker.testing.kafka import docker_answers

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        not docker_answers(),
        reason="no Docker engine answers (docker ping failed): RiskgateContainer builds "
        "deploy/Dockerfile and runs it beside a KafkaContainer, which needs one",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[defaults.session]
loss_limit = -100.0

[bots.bot1]
symbols = ["BTCUSDT"]
"""


async def test_riskgate_container_halts_and_serves_metrics() -> None:
    from testcontainers.community.kafka import KafkaContainer

    from worker.testing.container import RiskgateContainer, build_image

    image = build_image(ROOT, tag="riskgate:testcontainers")
    with (
        KafkaContainer() as kafka,
        RiskgateContainer(kafka, str(image.tag)).with_config(CONFIG) as riskgate,
    ):
        io = riskgate.io()
        await io.produce_outcome("bot1", "BTCUSDT", -60.0)
        await io.produce_outcome("bot1", "BTCUSDT", -60.0)
        halt = await io.wait_for_halt("bot1", symbol="BTCUSDT", within=60)
        assert (halt.event_id, halt.gate) == ("bot1/BTCUSDT/session_halt/1", "session_halt")
        async with aiohttp.ClientSession() as http, http.get(riskgate.get_metrics_url()) as got:
            assert got.status == 200
            text = await got.text()
        halts = 'riskgate_halts_total{gate="session_halt",kind="halted"} 1.0'
        assert halts in text.splitlines()
