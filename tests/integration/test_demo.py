"""`riskgate demo --duration S` — the README's main command — ends by itself, exits 0,
and its feed halts something through the real pipeline; while it runs, the console
link it prints logs the operator in and shows the demo's bots.

One demo run serves both: each start costs an embedded broker, a worker and a
feed (about 15 s of the suite), and the scenario is the same.
"""

from __future__ import annotations

import asyncio
import re
import sys

import pytest

from tests.integration.test_console_broker import call
from tests.support.harness import PROJECT_ROOT, wait_until

pytestmark = pytest.mark.broker

STREAK = [
    ("halted", "bot1", "ETHUSDT", "circuit_breaker"),
    ("halted", "bot1", "ETHUSDT", "session_halt"),
]
"""The demo feed's first halt events (seed 7), as its "recent halt events" table lists them."""


async def test_demo_runs_the_whole_pipeline_and_exits_zero() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "demo",
        "--duration",
        "12",
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        errors = asyncio.create_task(proc.stderr.read())
        head: list[str] = []
        link = re.compile(r"console \(operator demo\): (http://\S+/)#token=(\S+)")
        async with asyncio.timeout(60):
            while not (found := link.search(head[-1] if head else "")):
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo closed its output before printing the console link"
                head.append(line)
        url, token = found[1], found[2]
        # Keep reading its output (the live table) so a full pipe never blocks the demo.
        rest = asyncio.create_task(proc.stdout.read())
        status, me = await call("GET", f"{url}api/me", token)
        assert (status, me["user"], me["role"]) == (200, "demo", "operator")

        async def bots() -> list[str]:
            _, state = await call("GET", f"{url}api/state", token)
            return [b["bot"] for b in state["bots"]]

        assert await wait_until(bots, within=15, what="the demo bots") == ["bot1", "bot2", "bot3"]
        async with asyncio.timeout(60):
            returncode = await proc.wait()
        stdout = "".join(head) + (await rest).decode()
        assert returncode == 0, (await errors).decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    summary = re.search(r"demo finished: (\d+) symbols, (\d+) halt events", stdout)
    assert summary is not None, stdout[-2000:]
    assert int(summary[1]) == 9  # 3 bots x 3 symbols, read back from risk.gates
    # The feed is seeded, so its halts come in a fixed order; how many of them a run of
    # 12 s reaches depends on the machine. The losing streak trips bot1/ETHUSDT's breaker
    # (4 losses) before its session loss reaches -50; nothing else halts that early.
    events = re.findall(r"│ (halted|resumed)\s*│ (\S+)\s*│ (\S+)\s*│ (\S+)\s*│", stdout)
    assert len(events) == int(summary[2]) > 0, stdout[-2000:]
    assert events == STREAK[: len(events)], stdout[-2000:]
