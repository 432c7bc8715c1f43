"""Operator controls over a real broker: signed commands, their events, the CLI (SPEC §3, §7).

The worker runs with a control secret, so every command must carry a valid
HMAC-SHA256 signature and a fresh ``ts``; anything else is dead-lettered and
changes nothing. One worker serves the module; each test uses its own bot.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from tests.support.gate_env import GateEnv, eventually, gate_env
from tests.support.harness import (
    PROJECT_ROOT,
    config_text,
    decoded,
    latest,
    now_ms,
    read_topic,
    wait_until,
)
from worker.config import load_config
from worker.messages import ControlCommand, GateDecision, HaltEvent
from worker.signing import command_digest

pytestmark = pytest.mark.broker

SECRET = "test-control-secret"
REPLAY_WINDOW_MS = 60_000

BODY = f"""
[control]
secret = "{SECRET}"
replay_window_ms = {REPLAY_WINDOW_MS}

[defaults.session]
loss_limit = -10.0
[defaults.breaker]
loss_limit = 1

[bots.ctl]
[bots.ctlbot]
[bots.resets]
[bots.bad]
[bots.cli]
"""


@pytest.fixture(scope="module")
def config_path(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("control") / "riskgate.toml"
    path.write_text(config_text(kafka_bootstrap, BODY, partitions=2))
    return path


@pytest_asyncio.fixture(scope="module")
async def env(config_path: Path) -> AsyncIterator[GateEnv]:
    async with gate_env(load_config(config_path, env={})) as env:
        yield env


def denied(decision: GateDecision, gate: str) -> GateDecision:
    assert (decision.allowed, decision.gate) == (False, gate), decision
    return decision


def allowed(decision: GateDecision) -> GateDecision:
    assert (decision.allowed, decision.gate) == (True, None), decision
    return decision


async def test_signed_symbol_halt_blocks_entries_not_exits_until_resume(env: GateEnv) -> None:
    await env.fill_and_wait("ctl", "S1", "buy", 1.0)
    halt = env.command("halt", "ctl", "S1", issued_by="alice", reason="exchange incident")
    assert halt.sig is not None and re.fullmatch(r"[0-9a-f]{64}", halt.sig)

    event = await env.control(halt)
    assert (event.kind, event.gate, event.symbol, event.issued_by) == (
        "halted",
        "manual_halt",
        "S1",
        "alice",
    )
    assert event.reason == "halt by alice: exchange incident"
    assert event.event_id == f"ctl/S1/manual_halt/cmd-{command_digest(halt)}"

    decision = denied(await env.check("ctl", "S1"), "manual_halt")
    assert decision.reason == "halted by alice: exchange incident"
    allowed(await env.check("ctl", "S2"))  # only S1 is halted
    allowed(await env.check("ctl", "S1", action="close", side="sell"))  # exits never blocked
    await eventually(
        lambda: not env.view.entries_allowed("ctl", "S1"), what="view denies S1", alive=env.alive
    )
    assert env.view.entries_allowed("ctl", "S2")

    event = await env.control(env.command("resume", "ctl", "S1", issued_by="bob", reason="clear"))
    assert (event.kind, event.gate, event.symbol, event.issued_by) == (
        "resumed",
        "manual_halt",
        "S1",
        "bob",
    )
    assert event.reason == "resume by bob: clear"
    allowed(await env.check("ctl", "S1"))


async def test_signed_bot_halt_blocks_every_symbol_until_resume(env: GateEnv) -> None:
    await env.fill_and_wait("ctlbot", "S1", "buy", 1.0)
    halt = env.command("halt", "ctlbot", None, reason="risk review")
    event = await env.control(halt)
    assert (event.kind, event.gate, event.symbol) == ("halted", "manual_halt", None)
    assert event.event_id == f"ctlbot/*/manual_halt/cmd-{command_digest(halt)}"

    for symbol in ("S1", "S9"):
        denied(await env.check("ctlbot", symbol), "manual_halt")
    allowed(await env.check("ctlbot", "S1", action="close", side="sell"))
    await eventually(
        lambda: not env.view.entries_allowed("ctlbot", "S9"),
        what="view denies the bot",
        alive=env.alive,
    )

    event = await env.control(env.command("resume", "ctlbot", None, reason="review done"))
    assert (event.kind, event.gate, event.symbol) == ("resumed", "manual_halt", None)
    allowed(await env.check("ctlbot", "S9"))


async def test_signed_resets_clear_the_session_halt_and_the_breaker(env: GateEnv) -> None:
    seen = len(env.halts)
    # -20 net: the session halts (limit -10) and the breaker trips (1 loss).
    await env.send(env.outcome("resets", "S1", -20.0))
    for gate in ("session_halt", "circuit_breaker"):

        def halted(e: HaltEvent, g: str = gate) -> bool:
            return (e.bot, e.gate, e.kind) == ("resets", g, "halted")

        await env.wait_halt(halted, after=seen)
    denied(await env.check("resets", "S1"), "session_halt")

    event = await env.control(env.command("reset_session", "resets", "S1", reason="new day"))
    assert (event.kind, event.gate, event.symbol) == ("resumed", "session_halt", "S1")
    assert event.reason == "reset_session by ops: new day"
    denied(await env.check("resets", "S1"), "circuit_breaker")

    event = await env.control(env.command("reset_breaker", "resets", "S1", reason="checked"))
    assert (event.kind, event.gate, event.symbol) == ("resumed", "circuit_breaker", "S1")
    allowed(await env.check("resets", "S1"))

    # Bot-wide: one command resets every symbol of the bot.
    seen = len(env.halts)
    await env.send(env.outcome("resets", "S2", -5.0))  # trips only the breaker
    await env.wait_halt(
        lambda e: (e.bot, e.symbol, e.gate) == ("resets", "S2", "circuit_breaker"), after=seen
    )
    denied(await env.check("resets", "S2"), "circuit_breaker")
    event = await env.control(env.command("reset_breaker", "resets", None, reason="all"))
    assert (event.kind, event.gate, event.symbol) == ("resumed", "circuit_breaker", None)
    allowed(await env.check("resets", "S2"))


async def test_unsigned_forged_and_stale_commands_are_dead_lettered(env: GateEnv) -> None:
    await env.fill_and_wait("bad", "S1", "buy", 1.0)
    allowed(await env.check("bad", "S1"))

    unsigned = ControlCommand(
        command="halt", bot="bad", symbol="S1", reason="unsigned", issued_by="mallory", ts=now_ms()
    )
    rejected = {
        "unsigned": unsigned,
        "unsigned, whole bot": msgspec.structs.replace(unsigned, symbol=None),
        "wrong secret": env.command("halt", "bad", "S1", issued_by="mallory", secret=b"guess"),
        # A valid signature for S1, replayed against the whole bot.
        "tampered": msgspec.structs.replace(
            env.command("halt", "bad", "S1", issued_by="mallory"), symbol=None
        ),
        "stale": env.command(
            "halt", "bad", "S1", issued_by="mallory", ts=now_ms() - 2 * REPLAY_WINDOW_MS
        ),
    }
    await env.send(*rejected.values())
    # A valid command after them on the same partition: once its event is out, the
    # worker has been through every rejected one.
    marker = await env.control(env.command("halt", "bad", "S2", issued_by="marker"))

    assert [e for e in env.halts if e.bot == "bad"] == [marker]
    allowed(await env.check("bad", "S1"))
    allowed(await env.check("bad", "S3"))  # no bot-wide halt either

    topics = env.config.topics

    async def dead_letters() -> list[Any]:
        records = await read_topic(env.config.kafka, topics.deadletter)
        mine = [r for r in records if r.key == b"bad"]
        return mine if len(mine) == len(rejected) else []

    records = await wait_until(dead_letters, within=10.0, what="dead letters")
    values = [msgspec.json.decode(r.value, type=ControlCommand) for r in records]
    assert sorted(values, key=repr) == sorted(rejected.values(), key=repr)
    messages = []
    for record in records:
        headers = dict(record.headers)
        assert headers["riskgate.errors.topic"] == topics.control.encode()
        assert headers["riskgate.errors.exception"] == b"bad_signature"
        messages.append(headers["riskgate.errors.message"].decode())
    assert sorted(messages) == sorted(
        [
            "unsigned control command",
            "unsigned control command",
            "control command signature does not match",
            "control command signature does not match",
            f"control command ts is outside the {REPLAY_WINDOW_MS} ms replay window",
        ]
    )

    async def persisted() -> dict[str, Any] | None:
        # Snapshots follow the commit interval, not the fill's gate record: wait for S1's.
        snaps = decoded(await latest(env.config.kafka, topics.snapshots))
        return snaps if "bad/risk/S1" in snaps else None

    snaps = await wait_until(persisted, within=10.0, what="bad/risk/S1 persisted")
    assert snaps["bad/risk/S1"]["manual_halt"] is None
    assert snaps.get("bad/portfolio", {}).get("manual_halt") is None


async def _cli(*args: str) -> tuple[int, str]:
    riskgate = Path(sys.executable).with_name("riskgate")
    command = [str(riskgate)] if riskgate.exists() else [sys.executable, "-m", "worker.cli"]
    proc = await asyncio.create_subprocess_exec(
        *command,
        *args,
        cwd=PROJECT_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
        | {"COLUMNS": "200"},
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_halt_state_and_resume(env: GateEnv, config_path: Path) -> None:
    await env.fill_and_wait("cli", "S1", "buy", 2.0)
    seen = len(env.halts)
    common = ("--config", str(config_path), "--bot", "cli", "--symbol", "S1")
    rc, out = await _cli("halt", *common, "--reason", "maintenance window", "--issued-by", "carol")
    assert rc == 0, out
    assert "halt sent for cli/S1 (signed)" in out, out

    event = await env.wait_halt(lambda e: e.bot == "cli" and e.kind == "halted", after=seen)
    assert (event.symbol, event.issued_by) == ("S1", "carol")
    assert event.reason == "halt by carol: maintenance window"
    decision = denied(await env.check("cli", "S1"), "manual_halt")
    assert decision.reason == "halted by carol: maintenance window"

    async def halt_persisted() -> bool:
        snaps = decoded(await latest(env.config.kafka, env.config.topics.snapshots))
        return (snaps.get("cli/risk/S1") or {}).get("manual_halt") is not None

    await wait_until(halt_persisted, within=10.0, what="halt persisted")
    rc, out = await _cli("state", "--config", str(config_path), "--bot", "cli")
    assert rc == 0, out
    [row] = [line for line in out.splitlines() if " S1 " in line]
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    # symbol, net PnL, trades, W/L/BE, breaker losses, cooldown left, position, gates
    assert cells == [
        "S1",
        "0.00",
        "0",
        "0/0/0",
        "0",
        "-",
        "2",
        "manual_halt: halted by carol: maintenance window",
    ], out

    rc, out = await _cli("resume", *common, "--reason", "done", "--issued-by", "carol")
    assert rc == 0, out
    event = await env.wait_halt(lambda e: e.bot == "cli" and e.kind == "resumed", after=seen)
    assert (event.symbol, event.issued_by, event.reason) == ("S1", "carol", "resume by carol: done")
    allowed(await env.check("cli", "S1"))
