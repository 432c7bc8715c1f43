"""TLS and SASL for real: the worker and every client kind through a secured listener.

Tansu cannot serve TLS (its ``--cert``/``--key`` flags are mutually exclusive
in the shipped build) nor authenticate without users only an authenticated
client can create, so a private Tansu advertises the port of
:class:`tests.support.ops.Gateway`, which terminates TLS (optionally requiring a client
certificate) and/or requires SASL (PLAIN, SCRAM-SHA-256/512) in front of it.
Nothing reaches the broker but through the gateway. Certificates come from a
throwaway CA made with the ``openssl`` CLI.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from tests.support.harness import (
    MIN_MS,
    clock,
    config_text,
    create_topics,
    expected_snapshots,
    latest,
    outcome,
    persisted_snapshots,
    produce_events,
    read_topic,
    reference,
    running_worker,
    wait_processed,
    wait_until,
)
from tests.support.ops import Gateway, Pki, behind_gateway, make_pki, openssl_available
from worker.client import GateClient, GateView
from worker.config import Config, load_config
from worker.kafka.topics import ensure_topics
from worker.messages import OrderIntent
from worker.operator import load_bot, make_command, send_command
from worker.runtime import Worker

pytestmark = [
    pytest.mark.broker,
    pytest.mark.security,
    pytest.mark.skipif(not openssl_available(), reason="needs the openssl CLI for certificates"),
]

USER = "svc-riskgate"
BODY = """
[defaults.breaker]
loss_limit = 3
window_secs = 14400
cooldown_secs = 7200

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]
[bots.beta]
symbols = ["BTCUSDT", "ETHUSDT"]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def secured_config(gateway: Gateway, kafka: dict[str, object], tmp_path: Path) -> Config:
    lines = "".join(
        f"{key} = {str(value).lower() if isinstance(value, bool) else repr(str(value))}\n"
        for key, value in kafka.items()
    ).replace("'", '"')
    text = config_text(gateway.bootstrap_servers, BODY, partitions=2, kafka_extra=lines)
    path = tmp_path / f"riskgate-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text)
    return load_config(path, env={})


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / f"pw-{uuid.uuid4().hex[:6]}"
    path.write_text(password + "\n")
    return path


def streak(ts: int) -> list:  # type: ignore[type-arg]
    return [
        outcome("alpha", "BTCUSDT", -2.0, 0.1, ts=ts + i * MIN_MS, outcome_id=f"a-{i}")
        for i in range(3)
    ] + [outcome("beta", "ETHUSDT", 5.0, 0.1, ts=ts, outcome_id="b-0")]


async def run_worker_end_to_end(config: Config) -> None:
    """Topics, a worker, an outcome stream; the persisted state equals the reference."""
    await create_topics(config)
    events = streak(clock() - 30 * MIN_MS)
    async with running_worker(config, ready_timeout=60) as running:
        produced = await produce_events(config, events)
        await wait_processed(config, produced, alive=running.check_alive, within=60)
    stored = await latest(config.kafka, config.topics.snapshots)
    assert persisted_snapshots(stored) == expected_snapshots(reference(config, events, clock()))
    halts = await read_topic(config.kafka, config.topics.halts)
    assert [r.key for r in halts] == [b"alpha"]


async def test_worker_and_every_client_over_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    async with behind_gateway(ssl_context=pki.server_context(require_client_cert=True)) as gw:
        config = secured_config(
            gw,
            {
                "security_protocol": "SSL",
                "ssl_cafile": pki.ca,
                "ssl_certfile": pki.client_cert,
                "ssl_keyfile": pki.client_key,
            },
            tmp_path,
        )
        # Worker: admin (topic check), consumer, producer, restore consumer.
        await run_worker_end_to_end(config)

        # The operator and client library, over the same TLS settings.
        async with running_worker(config, ready_timeout=60) as running:
            bot = await load_bot(config, "alpha", clock())
            assert bot is not None and bot.symbols["BTCUSDT"].cooldown_until_secs is not None
            await send_command(
                config,
                make_command(
                    config,
                    "halt",
                    bot="beta",
                    symbol=None,
                    reason="tls test",
                    issued_by="ops",
                    now_ms=clock(),
                ),
            )
            async with GateView(config.kafka, config.topics, clock=clock) as view:

                async def beta_halted() -> bool:
                    account = view.accounts.get("beta")
                    return account is not None and not account.entries_allowed

                await wait_until(
                    beta_halted, within=30, what="manual halt seen", alive=running.check_alive
                )
                assert not view.entries_allowed("alpha", "BTCUSDT")
            async with GateClient(config.kafka, config.topics, timeout_ms=20_000) as gates:
                decision = await gates.check(
                    OrderIntent(
                        intent_id="tls-1",
                        bot="alpha",
                        symbol="BTCUSDT",
                        action="open",
                        side="buy",
                        qty=1.0,
                        price=100.0,
                        ts=clock(),
                    )
                )
            assert (decision.allowed, decision.gate) == (False, "circuit_breaker")

        stats = gw.stats
        # How many connections the clients opened is theirs to choose; each of them is a
        # TLS session that presented the worker's certificate (and the decision above
        # came through the gateway, the only address the clients know).
        assert not stats.tls_failures, stats.tls_failures
        assert stats.connections == stats.tls_sessions == len(stats.client_subjects)
        assert set(stats.client_subjects) == {"riskgate-worker"}

        # The listener is TLS-only: a plaintext client gets nowhere.
        plain = AIOKafkaProducer(bootstrap_servers=gw.bootstrap_servers, request_timeout_ms=5000)
        with pytest.raises(KafkaConnectionError):
            async with asyncio.timeout(30):
                await plain.start()
        await plain.stop()


async def test_wrong_ca_or_missing_client_cert_cannot_connect(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="aiokafka")
    async with behind_gateway(ssl_context=pki.server_context(require_client_cert=True)) as gw:
        client = {"ssl_certfile": pki.client_cert, "ssl_keyfile": pki.client_key}
        wrong_ca = secured_config(
            gw, {"security_protocol": "SSL", "ssl_cafile": pki.other_ca, **client}, tmp_path
        )
        with pytest.raises(KafkaConnectionError):
            async with asyncio.timeout(30):
                await ensure_topics(wrong_ca.kafka, wrong_ca.topics)
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        assert gw.stats.connections == 1  # one bootstrap attempt, refused by the client
        assert gw.stats.tls_sessions == 0
        assert gw.stats.forwarded_bytes == 0

        no_cert = secured_config(gw, {"security_protocol": "SSL", "ssl_cafile": pki.ca}, tmp_path)
        with pytest.raises(KafkaConnectionError):
            async with asyncio.timeout(30):
                await ensure_topics(no_cert.kafka, no_cert.topics)

        async def refused() -> list[str]:
            return [f for f in gw.stats.tls_failures if "CERTIFICATE" in f.upper()]

        await wait_until(refused, within=10, what="the gateway refusing a certless client")
        assert gw.stats.forwarded_bytes == 0

        # A worker with the wrong CA never starts, keeps retrying, and stops on request.
        worker = Worker(wrong_ca, clock=clock)
        task = asyncio.create_task(worker.run())
        try:
            attempts = gw.stats.connections

            async def retried() -> bool:
                return gw.stats.connections >= attempts + 2

            await wait_until(retried, within=30, what="the worker retrying")
            assert not task.done() and not worker.started.is_set() and not worker.ready
            assert gw.stats.tls_sessions == 0
        finally:
            worker.stop()
            async with asyncio.timeout(30):
                await task


async def test_worker_over_sasl_ssl_scram(pki: Pki, tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    async with behind_gateway(
        ssl_context=pki.server_context(require_client_cert=False),
        users={USER: password},
        mechanisms=("SCRAM-SHA-256", "SCRAM-SHA-512"),
    ) as gw:
        config = secured_config(
            gw,
            {
                "security_protocol": "SASL_SSL",
                "ssl_cafile": pki.ca,
                "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_username": USER,
                "sasl_password_file": password_file(tmp_path, password),
            },
            tmp_path,
        )
        await run_worker_end_to_end(config)
        stats = gw.stats
        assert not stats.auth_failures, stats.auth_failures
        assert len(stats.authenticated) == stats.tls_sessions == stats.connections
        assert set(stats.authenticated) == {(USER, "SCRAM-SHA-256")}


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_PLAINTEXT", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-512"), ("SASL_SSL", "PLAIN")],
)
async def test_sasl_credentials_are_checked(
    protocol: str, mechanism: str, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Admin, producer and consumer authenticate; a wrong password gets nothing through."""
    caplog.set_level(logging.ERROR, logger="aiokafka")
    password = f"pw-{uuid.uuid4().hex}"
    tls = protocol == "SASL_SSL"
    async with behind_gateway(
        ssl_context=pki.server_context(require_client_cert=False) if tls else None,
        users={USER: password},
        mechanisms=(mechanism,),
    ) as gw:
        settings: dict[str, object] = {
            "security_protocol": protocol,
            "sasl_mechanism": mechanism,
            "sasl_username": USER,
            **({"ssl_cafile": pki.ca} if tls else {}),
        }
        good = secured_config(
            gw, {**settings, "sasl_password_file": password_file(tmp_path, password)}, tmp_path
        )
        await create_topics(good)
        events = streak(clock())
        produced = await produce_events(good, events)
        assert len(await read_topic(good.kafka, good.topics.outcomes)) == len(produced)
        assert {m for _, m in gw.stats.authenticated} == {mechanism}
        assert not gw.stats.auth_failures

        forwarded = gw.stats.forwarded_bytes
        bad = secured_config(gw, {**settings, "sasl_password": "not-the-password"}, tmp_path)
        with pytest.raises(KafkaConnectionError):
            async with asyncio.timeout(30):
                await ensure_topics(bad.kafka, bad.topics)
        # One bootstrap attempt, refused; every other connection authenticated.
        refusal = (
            f"PLAIN: invalid credentials for user {USER}"
            if mechanism == "PLAIN"
            else f"{mechanism}: authentication failed"
        )
        assert gw.stats.auth_failures == [refusal]
        assert gw.stats.connections == len(gw.stats.authenticated) + 1
        assert "SaslAuthenticationFailed" in caplog.text or "Authentication" in caplog.text
        assert "not-the-password" not in caplog.text
        assert password not in caplog.text
        assert gw.stats.forwarded_bytes == forwarded
