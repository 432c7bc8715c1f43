"""Operator tools against a real broker and worker (issue 15 items 5, 9, 14).

``riskgate halt|resume`` waits for the worker's verdict and exits non-zero on
anything but success; ``riskgate state`` shows what a restarted worker would
hold and how far that lags; ``riskgate broker`` is a foreground service that
Ctrl-C and SIGTERM stop.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.support.harness import (
    DAY_MS,
    PROJECT_ROOT,
    config_text,
    create_topics,
    default_partition,
    now_ms,
    outcome,
    produce_events,
    running_worker,
    wait_processed,
    wait_until,
)
from worker.config import Config, load_config
from worker.kafka.broker import free_port
from worker.operator import SECRET_ENV, make_command

pytestmark = pytest.mark.broker

SECRET = "operator-test-secret"
BODY = """
[defaults.session]
loss_limit = -1000.0
[bots.ops]
symbols = ["S1", "S2"]
[bots.ops.portfolio]
max_daily_loss = -10.0
"""


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        *args,
        cwd=PROJECT_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("RISKGATE")} | (env or {}),
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _setup(bootstrap: str, tmp_path: Path, *, signed: bool = True) -> tuple[Config, Path]:
    """A worker config (signed) on fresh topics, and the operator's copy of it at a path."""
    control = f'[control]\nsecret = "{SECRET}"\n' if signed else ""
    text = config_text(bootstrap, control + BODY, partitions=2)
    path = tmp_path / "riskgate.toml"
    path.write_text(text)
    config = load_config(path, env={})
    await create_topics(config)
    return config, path


def _operator_copy(path: Path) -> Path:
    """The same config without the worker's secret (an operator's laptop)."""
    copy = path.with_name("operator.toml")
    copy.write_text(path.read_text().replace(f'[control]\nsecret = "{SECRET}"\n', ""))
    return copy


async def test_halt_waits_for_the_workers_halt_event(kafka_bootstrap: str, tmp_path: Path) -> None:
    config, path = await _setup(kafka_bootstrap, tmp_path)
    async with running_worker(config, clock=now_ms):
        args = ("--config", str(path), "--bot", "ops", "--symbol", "S1", "--issued-by", "carol")
        rc, out, err = await _cli("halt", *args, "--reason", "[red]desk call")
    assert (rc, err) == (0, ""), out + err
    lines = out.splitlines()
    assert lines[0] == "halt sent for ops/S1 (signed)"
    assert lines[1].startswith("halt ops/S1: halted: halt by carol: [red]desk call (event ops/S1/")
    assert "/manual_halt/cmd-" in lines[1]


async def test_halt_unsigned_to_a_worker_that_requires_signing_exits_non_zero(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Issue 15 item 5: the operator's shell had no secret, the CLI said "sent", exit 0."""
    config, path = await _setup(kafka_bootstrap, tmp_path)
    laptop = _operator_copy(path)
    args = ("--config", str(laptop), "--bot", "ops", "--reason", "incident")
    async with running_worker(config, clock=now_ms):
        rc, out, err = await _cli("halt", *args)
        assert rc == 1, out + err
        assert out == "halt sent for ops/* (unsigned)\n"
        assert err == (
            "Error: halt ops/*: rejected by the worker: bad_signature: unsigned control command\n"
        )
        rc, out, err = await _cli("halt", *args, env={SECRET_ENV: SECRET})
    assert (rc, err) == (0, ""), out + err
    assert out.startswith("halt sent for ops/* (signed)\nhalt ops/*: halted: ")


async def test_resume_of_what_is_not_halted_reports_no_change(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Decision C2: a resume that changes nothing publishes nothing; the gate record decides."""
    config, path = await _setup(kafka_bootstrap, tmp_path)
    async with running_worker(config, clock=now_ms):
        produced = await produce_events(config, [outcome("ops", "S1", 1.0, ts=now_ms())])
        await wait_processed(config, produced)
        rc, out, err = await _cli(
            "resume", "--config", str(path), "--bot", "ops", "--symbol", "S1",
            "--reason", "r", "--timeout", "3",
        )  # fmt: skip
    assert (rc, err) == (0, ""), out + err
    assert out.splitlines()[1] == (
        "resume ops/S1: no change: ops/S1 already has no manual_halt "
        "(the worker publishes no event when there is nothing to change)"
    )


async def test_halt_with_no_worker_running_exits_non_zero(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    _, path = await _setup(kafka_bootstrap, tmp_path)
    rc, out, err = await _cli(
        "halt", "--config", str(path), "--bot", "ops", "--reason", "r", "--timeout", "2"
    )
    assert rc == 1, out + err
    assert err == (
        "Error: halt ops/*: no verdict within 2s and no gate record 'ops/gate': "
        "is a worker running and caught up?\n"
    )


async def test_state_sweeps_yesterdays_latch_and_shows_the_lag(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Issue 15 item 9: `state` restored yesterday's daily-loss latch and showed it BLOCKED."""
    config, path = await _setup(kafka_bootstrap, tmp_path, signed=False)

    def yesterday() -> int:
        return now_ms() - DAY_MS

    async with running_worker(config, clock=yesterday):
        halt = make_command(
            config, "halt", bot="ops", symbol="S2", reason="r", issued_by="o", now_ms=yesterday()
        )
        loss = outcome("ops", "S1", -50.0, ts=yesterday())  # latches the portfolio for the day
        await wait_processed(config, await produce_events(config, [loss, halt]))
    for _ in range(2):  # one batch each: Tansu's end offset is the last batch's base + 1
        await produce_events(config, [outcome("ops", "S1", 1.0, ts=now_ms())])

    rc, out, err = await _cli("state", "--config", str(path), "--bot", "ops")
    assert (rc, err) == (0, ""), out + err
    title = out.splitlines()[0].strip()
    assert title.endswith("; entries BLOCKED on S2; allowed on the rest"), out
    [s1] = [line for line in out.splitlines() if " S1 " in line]
    assert s1.split("│")[2].strip() == "0.00", "yesterday's session rolled over"
    partition = default_partition(b"ops", config.topics.partitions)
    assert (
        f"2 input records on partition {partition} are not committed yet "
        f"({config.topics.fills} 0, {config.topics.outcomes} 2, "
        f"{config.topics.intents} 0, {config.topics.control} 0)" in " ".join(out.split())
    ), out
    assert "live worker's last heartbeat" in out


# -- riskgate broker (issue 15 item 14) -------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_riskgate_broker_serves_until_sigterm_or_ctrl_c(stop: signal.Signals) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", "broker", "--port", str(port),
        cwd=PROJECT_ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(60):
            first = (await proc.stderr.readline()).decode()
        assert first.startswith(f"broker listening on 127.0.0.1:{port} (pid "), first
        bootstrap = f"127.0.0.1:{port}"
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait("hello", b"world", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            "hello", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            async with asyncio.timeout(30):
                record = await consumer.getone()
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"k", b"world")

        proc.send_signal(stop)
        async with asyncio.timeout(30):
            rest = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0
        assert rest.splitlines()[-1] == "broker stopped"
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- README "Producing to riskgate" (issue 15 item 15) ------------------------------------

README_BODY = """
[defaults.session]
loss_limit = -50.0
[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]
"""


def _readme_python(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), re.S)
    [block] = [str(b) for b in blocks if marker in b]
    return block


@pytest.mark.parametrize("marker", ["from aiokafka import", "from confluent_kafka import"])
async def test_readme_producer_examples_reach_the_worker(
    marker: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The README's producer code, run as printed (only the address and topic names
    changed), is accepted by the worker: right fields, units, key and partitioner."""
    path = tmp_path / "riskgate.toml"
    path.write_text(config_text(kafka_bootstrap, README_BODY, partitions=4))
    config = load_config(path, env={})
    await create_topics(config)
    code = _readme_python(marker).replace("127.0.0.1:9092", kafka_bootstrap)
    code = code.replace('"trading.outcomes"', f'"{config.topics.outcomes}"')
    code = code.replace('"trading.fills"', f'"{config.topics.fills}"')
    async with running_worker(config, clock=now_ms) as running:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=tmp_path)
        async with asyncio.timeout(60):
            assert await proc.wait() == 0

        def symbol(name: str) -> Any:
            bot = running.worker.engine.bots.get("alpha")
            return bot.symbols.get(name) if bot is not None else None

        async def applied() -> bool:
            if marker.startswith("from aiokafka"):
                eth = symbol("ETHUSDT")
                return eth is not None and eth.session.trades == 3
            btc = symbol("BTCUSDT")
            return btc is not None and btc.position.qty != 0

        await wait_until(applied, within=30, what="the example's records applied")
        deadletters = [
            s.value
            for m in running.worker.metrics.deadletters.collect()
            for s in m.samples
            if s.name.endswith("_total")
        ]
    if marker.startswith("from aiokafka"):
        eth = symbol("ETHUSDT")
        assert round(eth.session.net_pnl, 2) == -54.5
        assert [b.gate for b in eth.blocks()] == ["session_halt"]
    else:
        assert symbol("BTCUSDT").position.qty == 0.01
    assert sum(deadletters) == 0


@pytest.mark.parametrize(
    ("args", "topic"),
    [
        (["state", "--bot", "ops"], "risk.snapshots"),
        (["halt", "--bot", "ops", "--reason", "r"], "risk.control"),
        (["resume", "--bot", "ops", "--reason", "r", "--no-wait"], "risk.control"),
    ],
)
async def test_cli_before_riskgate_topics_says_so(
    args: list[str], topic: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Issue 15 item 16: missing topics raised an AssertionError traceback from aiokafka."""
    path = tmp_path / "riskgate.toml"
    path.write_text(config_text(kafka_bootstrap, BODY, partitions=2))
    prefix = load_config(path, env={}).topics.snapshots.split(".")[0]
    rc, out, err = await _cli(args[0], "--config", str(path), *args[1:])
    assert (rc, out) == (1, "")
    missing = f"{prefix}.{topic} does not exist on {kafka_bootstrap}"
    assert err == f"Error: topic {missing}: run `riskgate topics`\n"
