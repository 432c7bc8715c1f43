"""Every configuration we ship joins its consumer group on the embedded broker.

Issue 15 item 12: deploy/riskgate.toml had ``session_timeout_ms`` 30,000 over
``request_timeout_ms`` 15,000. Tansu holds a JoinGroup for about half the
session timeout, so every join was abandoned at the request timeout and the
worker never became ready. Only the address, names, security and secret
files are overridden here (what a test machine must change); every timeout is
the shipped one.
"""

from __future__ import annotations

import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.harness import running_worker
from worker.config import Config, load_config
from worker.kafka.topics import ensure_topics

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
TOPIC_FIELDS = [
    *("fills", "outcomes", "intents", "control", "snapshots"),
    *("gates", "halts", "decisions", "deadletter"),
]


def _shipped() -> dict[str, str]:
    """Every shipped worker config, by where it ships."""
    configmap = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    return {
        "deploy/riskgate.toml": (ROOT / "deploy" / "riskgate.toml").read_text(),
        "deploy/k8s/configmap.yaml": configmap["data"]["riskgate.toml"],
    }


def _local(text: str, bootstrap: str, secret_file: Path) -> Config:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    env = {
        "RISKGATE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "RISKGATE_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT",
        "RISKGATE_KAFKA__GROUP_ID": f"{prefix}.riskgate",
        "RISKGATE_TOPICS__PARTITIONS": "2",
        "RISKGATE_TOPICS__REPLICATION_FACTOR": "1",
        "RISKGATE_HTTP__HOST": "127.0.0.1",
        "RISKGATE_HTTP__PORT": "0",
        "RISKGATE_LOG__LEVEL": "WARNING",
        "RISKGATE_CONTROL__SECRET_FILE": str(secret_file),
    }
    env |= {f"RISKGATE_TOPICS__{f.upper()}": f"{prefix}.{f}" for f in TOPIC_FIELDS}
    return load_config(text=text, env=env)


@pytest.mark.parametrize("name", sorted(_shipped()))
async def test_shipped_config_joins_the_group_on_the_embedded_broker(
    name: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    text = _shipped()[name]
    shipped = tomllib.loads(text)["kafka"]
    assert shipped["request_timeout_ms"] > shipped["session_timeout_ms"], name
    secret = tmp_path / "control-secret"
    secret.write_text("test-secret\n")
    config = _local(text, kafka_bootstrap, secret)
    assert config.kafka.session_timeout_ms == shipped["session_timeout_ms"]
    assert config.kafka.request_timeout_ms == shipped["request_timeout_ms"]
    await ensure_topics(config.kafka, config.topics)
    # Ready = joined, assigned, restored. The bound is generous: a join the
    # request timeout abandons retries forever, so it can never get there.
    async with running_worker(config, ready_timeout=90.0) as running:
        assert running.worker.ready
