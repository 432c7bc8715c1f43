"""Health that means something, against a broker that freezes or is not there yet.

A real ``riskgate run`` process with small bounds (``stuck_after_ms``,
``ready_commit_max_age_ms``, request and session timeouts):

- the broker is frozen (SIGSTOP) longer than the bounds: ``/readyz`` turns
  503 while ``/healthz`` stays 200 (a missing broker is not a stuck loop, and
  restarting would not bring it back - issue 15 item 8); it thaws (SIGCONT):
  ready again in the *same* process, and an event produced afterwards is
  processed;
- the broker is absent at start: the worker retries with backoff (and says
  so), and starts working once a broker appears on that address.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.harness import (
    MIN_MS,
    WorkerProcess,
    config_text,
    create_topics,
    decoded,
    latest,
    now_ms,
    outcome,
    produce_events,
    wait_processed,
    wait_until,
)
from tests.support.ops import http_get, http_status, logged
from worker.config import Config, load_config
from worker.kafka.broker import EmbeddedBroker, free_port

pytestmark = pytest.mark.broker

BOUND_MS = 3_000
STUCK_AFTER_MS = 8_000
"""Over one request timeout (2.5 s) plus the longest retry backoff (5 s): the config check."""
BODY = f"""
[defaults.breaker]
loss_limit = 3
window_secs = 14400
cooldown_secs = 7200

[worker]
stuck_after_ms = {STUCK_AFTER_MS}
ready_commit_max_age_ms = {BOUND_MS}
sweep_interval_ms = 500
heartbeat_interval_ms = 1000

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]
"""
KAFKA = "request_timeout_ms = 2500\n"  # over the session timeout, or the join never completes


def write_config(tmp_path: Path, bootstrap: str) -> tuple[Path, Config]:
    path = tmp_path / "riskgate.toml"
    path.write_text(
        config_text(bootstrap, BODY, partitions=2, session_timeout_ms=2_000, kafka_extra=KAFKA)
    )
    return path, load_config(path, env={})


async def probes(worker: WorkerProcess) -> tuple[int | None, int | None]:
    port = worker.http_port()
    return await http_status(port, "/healthz"), await http_status(port, "/readyz")


async def wait_probes(
    worker: WorkerProcess, want: tuple[int, int], within: float, what: str
) -> None:
    async def reached() -> bool:
        return await probes(worker) == want

    await wait_until(reached, within=within, what=what, interval=0.2, alive=worker.check_alive)


async def trades(config: Config, bot: str, symbol: str) -> int:
    snapshots = decoded(await latest(config.kafka, config.topics.snapshots))
    state = snapshots.get(f"{bot}/risk/{symbol}")
    return 0 if state is None else int(state["session_pnl"]["trades"])


async def test_frozen_broker_fails_readiness_not_liveness_then_recovers_in_the_same_process(
    embedded_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    config_path, config = write_config(tmp_path, embedded_broker.bootstrap_servers)
    await create_topics(config)
    worker = WorkerProcess(config_path, tmp_path / "worker.log")
    try:
        worker.start()

        async def listening() -> bool:
            return bool(logged(worker.log_path, "http listening"))

        await wait_until(listening, within=30, what="http listening", alive=worker.check_alive)
        await wait_probes(worker, (200, 200), 60, "healthy and ready")
        t = now_ms() - MIN_MS
        before = await produce_events(config, [outcome("alpha", "BTCUSDT", 1.0, ts=t)])
        await wait_processed(config, before, alive=worker.check_alive, within=30)

        embedded_broker.pause()
        try:
            await wait_probes(worker, (200, 503), 30, "/readyz 503 while frozen, /healthz 200")
            # Stay frozen well past the session timeout (the group forgets the member)
            # and past stuck_after_ms: the loop keeps ticking, so liveness holds.
            for _ in range(10):
                await asyncio.sleep(1)
                assert await probes(worker) == (200, 503)
        finally:
            embedded_broker.resume()

        await wait_probes(worker, (200, 200), 90, "healthy and ready again after the thaw")
        assert len(worker.runs) == 1, "recovered without a restart"
        after = await produce_events(config, [outcome("alpha", "ETHUSDT", 2.0, ts=now_ms() - 1000)])
        await wait_processed(config, after, alive=worker.check_alive, within=60)

        async def applied() -> bool:
            return await trades(config, "alpha", "ETHUSDT") == 1

        await wait_until(applied, within=30, what="post-thaw outcome in the snapshot")
        assert await trades(config, "alpha", "BTCUSDT") == 1
        worker.check_alive()
        assert len(worker.runs) == 1
        assert await asyncio.to_thread(worker.terminate) == 0, worker.log_tail()
    finally:
        await asyncio.to_thread(worker.kill)


async def test_startup_state_until_the_broker_appears_then_ready(tmp_path: Path) -> None:
    """Issue 15 item 8: broker absent at boot -> starting (alive, not ready), retried
    with backoff; the broker arrives -> ready, in the same process."""
    port = free_port()
    config_path, config = write_config(tmp_path, f"127.0.0.1:{port}")
    worker = WorkerProcess(config_path, tmp_path / "worker.log")
    broker = EmbeddedBroker(port=port)
    try:
        worker.start()

        # The backoff grows (0.5 s, 1 s, 2 s, 4 s, then 5 s each); once the worker
        # has gone to sleep for 5 s, the broker and its topics appear within it.
        async def backing_off() -> list[int]:
            retries = logged(worker.log_path, "broker not reachable; retrying")
            return [int(r["attempt"]) for r in retries if int(r["attempt"]) >= 5]

        await wait_until(
            backing_off, within=60, what="5 connection attempts", alive=worker.check_alive
        )
        retries = logged(worker.log_path, "broker not reachable; retrying")
        assert [r["attempt"] for r in retries] == list(range(1, len(retries) + 1))
        assert all(r["level"] == "warning" and r["bootstrap_servers"] for r in retries)
        http = worker.http_port()
        assert await http_get(http, "/healthz") == (200, "starting\n")
        assert await http_get(http, "/readyz") == (503, "starting\n")
        assert (await worker.metrics())[("riskgate_started", ())] == 0
        worker.check_alive()

        await broker.start_async()
        await create_topics(config)

        await wait_probes(worker, (200, 200), 60, "healthy and ready once the broker is up")
        assert await http_get(http, "/healthz") == (200, "ok\n")
        assert (await worker.metrics())[("riskgate_started", ())] == 1
        assert len(worker.runs) == 1
        produced = await produce_events(
            config, [outcome("alpha", "BTCUSDT", -1.0, ts=now_ms() - 1000)]
        )
        await wait_processed(config, produced, alive=worker.check_alive, within=30)
        assert await trades(config, "alpha", "BTCUSDT") == 1
        assert logged(worker.log_path, "worker started")
        assert await asyncio.to_thread(worker.terminate) == 0, worker.log_tail()
    finally:
        await asyncio.to_thread(worker.kill)
        await broker.stop_async()
