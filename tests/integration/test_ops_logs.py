"""Logs of a real ``riskgate run``: JSON lines with event context, quiet per event, no secrets.

The worker runs as a subprocess with ``[log] format = "json"`` and SASL/PLAIN
credentials (from a password file), talking to a private broker through a
SASL-terminating gateway (Tansu itself cannot authenticate, see tests.support.ops), so the
run exercises the code paths that handle the password. Its stderr is the log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.harness import (
    MIN_MS,
    Raw,
    WorkerProcess,
    as_raw,
    config_text,
    create_topics,
    outcome,
    produce,
    same_day_window,
    wait_processed,
    wait_until,
)
from tests.support.ops import Gateway, behind_gateway, http_status, json_lines, logged
from worker.config import Config, load_config

pytestmark = pytest.mark.broker

USER = "svc-riskgate"
GOOD_EVENTS = 400
BODY = """
[defaults.session]
loss_limit = -10000.0
[defaults.breaker]
loss_limit = 3
window_secs = 14400
cooldown_secs = 7200

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]
[bots.beta]
symbols = ["BTCUSDT", "ETHUSDT"]
"""


@pytest.fixture
async def sasl_broker() -> AsyncIterator[tuple[Gateway, str]]:
    """A private broker reachable only through a gateway that requires SASL/PLAIN."""
    password = f"pw-{uuid.uuid4().hex}"
    async with behind_gateway(users={USER: password}, mechanisms=("PLAIN",)) as gateway:
        yield gateway, password


def sasl_config(tmp_path: Path, gateway: Gateway, password: str) -> tuple[Path, Config]:
    secret = tmp_path / "kafka-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    path = tmp_path / "riskgate.toml"
    path.write_text(
        config_text(
            gateway.bootstrap_servers,
            BODY,
            partitions=2,
            session_timeout_ms=3_000,  # no rebalance if the machine is busy (logs stay exact)
            kafka_extra=(
                'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
                f'sasl_username = "{USER}"\nsasl_password_file = "{secret}"\n'
            ),
        )
    )
    return path, load_config(path, env={})


async def test_json_logs_carry_event_context_and_never_the_password(
    sasl_broker: tuple[Gateway, str], tmp_path: Path
) -> None:
    gateway, password = sasl_broker
    config_path, config = sasl_config(tmp_path, gateway, password)
    await create_topics(config)
    topics = config.topics

    start, _ = same_day_window(30 * MIN_MS)
    pairs = [(b, s) for b in ("alpha", "beta") for s in ("BTCUSDT", "ETHUSDT")]
    good = [
        outcome(*pairs[i % len(pairs)], 1.0, 0.1, ts=start + i, outcome_id=f"win-{i}")
        for i in range(GOOD_EVENTS)
    ]
    streak = [
        outcome("alpha", "ETHUSDT", -2.0, 0.1, ts=start + MIN_MS * (i + 1), outcome_id=f"loss-{i}")
        for i in range(3)
    ]
    malformed = Raw(topics.outcomes, b"beta", b"{definitely not json")
    unknown_symbol = as_raw(config, outcome("alpha", "DOGEUSDT", 1.0, ts=start))

    worker = WorkerProcess(config_path, tmp_path / "worker.log")
    try:
        worker.start()

        async def ready() -> bool:
            if not logged(worker.log_path, "http listening"):
                return False
            return await http_status(worker.http_port(), "/readyz") == 200

        await wait_until(ready, within=60, what="worker ready", alive=worker.check_alive)
        produced = await produce(config.kafka, [as_raw(config, e) for e in good])
        bad_at = await produce(config.kafka, [malformed, unknown_symbol])
        streak_at = await produce(config.kafka, [as_raw(config, e) for e in streak])
        await wait_processed(
            config, [*produced, *bad_at, *streak_at], alive=worker.check_alive, within=60
        )
        assert await asyncio.to_thread(worker.terminate) == 0, worker.log_tail()
    finally:
        await asyncio.to_thread(worker.kill)

    text = worker.log_path.read_text()
    entries = json_lines(worker.log_path)  # every line, aiokafka's included, is JSON
    for entry in entries:
        assert {"event", "level", "timestamp"} <= entry.keys(), entry

    # The password never appears, in any form the worker or aiokafka could print.
    assert password not in text
    assert password.encode().hex() not in text
    assert gateway.stats.authenticated, "the worker authenticated with SASL/PLAIN"
    assert {user for user, _ in gateway.stats.authenticated} == {USER}
    assert not gateway.stats.auth_failures
    started = logged(worker.log_path, "worker started")
    assert started and started[0]["security_protocol"] == "SASL_PLAINTEXT"
    assert started[0]["sasl_mechanism"] == "PLAIN"
    # Third-party (stdlib) lines are rendered as JSON too, with their logger's name.
    clear = [e for e in entries if "in the clear" in e["event"]]
    assert clear and clear[0]["logger"].startswith("aiokafka"), clear

    # Dead letters: one WARNING line each, with where the record was and why.
    dead = {e["offset"]: e for e in entries if e["event"] == "dead-lettered input"}
    assert len(dead) == 2, dead
    for produced_at, reason, bot, symbol in (
        (bad_at[0], "malformed_json", "beta", None),
        (bad_at[1], "unknown_symbol", "alpha", "DOGEUSDT"),
    ):
        entry = dead[produced_at.offset]
        assert entry["level"] == "warning"
        assert (entry["topic"], entry["partition"]) == (produced_at.topic, produced_at.partition)
        assert (entry["reason"], entry["bot"], entry["symbol"]) == (reason, bot, symbol)
        assert entry["error"]

    # The halt: an INFO line with the bot, symbol and the record that tripped it (the
    # same line again only if a rebalance replayed the record: outputs are at-least-once).
    halts = [e for e in entries if e["event"] == "gate halted"]
    assert halts
    halt, tripping = halts[0], streak_at[-1]
    assert (halt["bot"], halt["symbol"], halt["gate"]) == ("alpha", "ETHUSDT", "circuit_breaker")
    assert (halt["topic"], halt["partition"], halt["offset"]) == tuple(tripping)
    assert all(e["event_id"] == halt["event_id"] for e in halts)

    # No line per applied event: a few hundred events, a handful of lines.
    events = GOOD_EVENTS + len(streak) + 2
    info = [e for e in entries if e["level"] == "info"]
    assert len(info) < 30, [e["event"] for e in info]
    assert len(entries) < events // 4, [e["event"] for e in entries]
    assert all(e["event"] == "gate halted" for e in info if "offset" in e)
    ours = [e for e in entries if "logger" not in e]  # aiokafka's lines name their logger
    assert not [e for e in ours if e["level"] in {"error", "critical"}], ours
