"""`riskgate demo --duration S` — the README's main command — ends by itself, exits 0,
and its feed halts something through the real pipeline."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker

STREAK = [
    ("halted", "bot1", "ETHUSDT", "circuit_breaker"),
    ("halted", "bot1", "ETHUSDT", "session_halt"),
]
"""The demo feed's first halt events (seed 7), as its "recent halt events" table lists them."""


def test_demo_runs_the_whole_pipeline_and_exits_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo", "--duration", "12"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = re.search(r"demo finished: (\d+) symbols, (\d+) halt events", done.stdout)
    assert summary is not None, done.stdout[-2000:]
    assert int(summary[1]) == 9  # 3 bots x 3 symbols, read back from risk.gates
    # The feed is seeded, so its halts come in a fixed order; how many of them a run of
    # 12 s reaches depends on the machine. The losing streak trips bot1/ETHUSDT's breaker
    # (4 losses) before its session loss reaches -50; nothing else halts that early.
    events = re.findall(r"│ (halted|resumed)\s*│ (\S+)\s*│ (\S+)\s*│ (\S+)\s*│", done.stdout)
    assert len(events) == int(summary[2]) > 0, done.stdout[-2000:]
    assert events == STREAK[: len(events)], done.stdout[-2000:]
