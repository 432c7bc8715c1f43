"""`riskgate demo --duration S` — the README's main command — ends by itself, exits 0,
and its feed halts something through the real pipeline."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker


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
    assert int(summary[2]) >= 1, "the losing streak should halt bot1/ETHUSDT through Kafka"
