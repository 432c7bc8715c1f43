"""README's plugin example ("my execution service stops sending orders when riskgate
halts") runs, exactly as printed, in a pytest of its own.

The block is extracted from README.md on every run, so the README cannot drift
from what works: an edit that breaks it fails here. The inner pytest runs in a
temporary directory with no configuration of ours, so the plugin comes from
the ``pytest11`` entry point as in a user's project, and it gets our session
broker through ``KAFKA_BOOTSTRAP_SERVERS`` (the embedded one here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.broker

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- riskgate-plugin-example -->"


def readme_example(text: str) -> str:
    """The python block right after the marker; exactly one marker must exist."""
    assert text.count(MARKER) == 1, f"README.md must hold {MARKER} exactly once"
    after = text.split(MARKER, 1)[1]
    match = re.match(r"\s*```python\n(.*?)\n```", after, re.DOTALL)
    assert match, f"no ```python block right after {MARKER}"
    return match.group(1) + "\n"


def test_readme_example_is_found_after_its_marker() -> None:
    text = f"intro\n{MARKER}\n```python\nx = 1\n```\n```python\ny = 2\n```\n"
    assert readme_example(text) == "x = 1\n"
    with pytest.raises(AssertionError, match="exactly once"):
        readme_example(text + MARKER)


def test_readme_plugin_example_passes_against_the_session_broker(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    example = readme_example(README.read_text())
    (tmp_path / "test_halts.py").write_text(example)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKGATE_", "PYTEST_"))}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_halts.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"^1 passed\b", done.stdout.splitlines()[-1]), output
