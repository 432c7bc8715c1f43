"""The console over a real broker, at the HTTP level: the audit trail on its topic, the
command the worker applies and ``riskgate console`` as a process. ``riskgate demo``'s
console link is checked in the demo's own run (tests/integration/test_demo.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from tests.support.harness import (
    PROJECT_ROOT,
    config_text,
    create_topics,
    read_values,
    running_worker,
    wait_until,
)
from worker.config import Config, load_config
from worker.console import open_console
from worker.messages import ControlCommand
from worker.operator import OperatorError
from worker.signing import command_digest, verify

pytestmark = pytest.mark.broker

SECRET = "console-broker-secret"
OPERATOR = f"op-{uuid.uuid4().hex}"
VIEWER = f"view-{uuid.uuid4().hex}"


def text_of(bootstrap: str, prefix: str) -> str:
    def user(name: str, role: str, token: str) -> str:
        digest = hashlib.sha256(token.encode()).hexdigest()
        return f'[console.users.{name}]\nrole = "{role}"\ntoken_sha256 = "{digest}"\n'

    body = (
        f'[control]\nsecret = "{SECRET}"\n'
        '[bots.b1]\nsymbols = ["S1"]\n'
        '[console]\nhost = "127.0.0.1"\nport = 0\n'
        + user("olga", "operator", OPERATOR)
        + user("vic", "viewer", VIEWER)
    )
    return config_text(bootstrap, body, partitions=2, prefix=prefix)


def audit_env(prefix: str) -> dict[str, str]:
    return {"RISKGATE_TOPICS__AUDIT": f"{prefix}.risk.audit"}


@pytest_asyncio.fixture(scope="module")
async def config(kafka_bootstrap: str) -> Config:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    config = load_config(text=text_of(kafka_bootstrap, prefix), env=audit_env(prefix))
    await create_topics(config)
    return config


@pytest_asyncio.fixture(scope="module")
async def console_url(config: Config) -> AsyncIterator[str]:
    async with running_worker(config), open_console(config) as console:
        yield console.url


async def call(method: str, url: str, token: str, json: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=json, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_console_action_is_audited_on_the_topic_and_applied_by_the_worker(
    config: Config, console_url: str
) -> None:
    body = {"action": "halt", "bot": "b1", "symbol": "S1", "reason": "fat finger on S1"}
    status, answer = await call("POST", f"{console_url}api/actions", OPERATOR, body)
    assert status == 202, answer

    [record] = await read_values(config.kafka, config.topics.audit, dict[str, Any])
    [sent] = await read_values(config.kafka, config.topics.control, ControlCommand)
    assert verify(sent, SECRET.encode(), sent.ts, 1) is None  # signed by the console
    assert record == {
        "ts": sent.ts,
        "user": "olga",
        "role": "operator",
        "via": "bearer",
        "remote": "127.0.0.1",
        "action": "halt",
        "bot": "b1",
        "symbol": "S1",
        "reason": "fat finger on S1",
        "outcome": "issued",
        "detail": "sent to the control topic",
        "event_id": answer["event_id"],
        "command_digest": command_digest(sent),
    }

    async def applied() -> list[dict[str, Any]]:
        _, state = await call("GET", f"{console_url}api/state", VIEWER)
        return [e for e in state["timeline"] if e["event_id"] == answer["event_id"]]

    [event] = await wait_until(applied, within=15, what="the halt event on the board")
    assert (event["kind"], event["issued_by"], event["reason"]) == (
        "halted",
        "olga",
        "halt by olga: fat finger on S1",
    )


async def test_console_unauthenticated_sees_nothing_over_the_network(console_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{console_url}api/state") as response:
            assert (response.status, await response.json()) == (401, {"error": "not authenticated"})
        async with session.get(console_url) as response:
            page = await response.text()
            assert 'action="/login"' in page and "b1" not in page


async def test_console_refuses_to_start_without_the_audit_topic(config: Config) -> None:
    missing = msgspec.structs.replace(
        config, topics=msgspec.structs.replace(config.topics, audit=f"absent-{uuid.uuid4().hex}")
    )
    with pytest.raises(OperatorError, match=r"topic absent-\w+ does not exist"):
        async with open_console(missing):
            pass


async def _line(stream: asyncio.StreamReader, pattern: str, within: float) -> re.Match[str]:
    async with asyncio.timeout(within):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"the process closed its output before printing {pattern!r}"
            found = re.search(pattern, line)
            if found:
                return found


async def test_console_command_serves_until_sigterm(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "riskgate.toml"
    path.write_text(text_of(config.kafka.bootstrap_servers, config.topics.fills.split(".")[0]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    env |= audit_env(config.topics.fills.split(".")[0])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "console",
        "--config",
        str(path),
        "--port",
        "0",
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        url = (await _line(proc.stdout, r"riskgate console: (http://\S+)", 60))[1]
        status, me = await call("GET", f"{url}api/me", VIEWER)
        assert (status, me["user"], me["role"], me["actions"]) == (200, "vic", "viewer", [])
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
