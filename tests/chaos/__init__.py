"""Reliability suite: crash loops, broker stalls, hostile input and soak runs.

The long-running scripts live here (``python -m tests.chaos.crash_loop``,
``python -m tests.chaos.soak``); the short variants that run with the default
test suite are ``tests/integration/test_reliability_*.py`` and import the same
code (as ``chaos.*``: pytest puts ``tests/`` on ``sys.path``).

The integration-test harness (``tests/integration/harness.py``) is reused, not
copied: its directory is put on ``sys.path`` here so ``import harness`` works
from the scripts too.
"""

from __future__ import annotations

import sys
from pathlib import Path

_INTEGRATION = str(Path(__file__).resolve().parents[1] / "integration")
_TESTS = str(Path(__file__).resolve().parents[1])  # for ``support`` (the reference model)
for _path in (_INTEGRATION, _TESTS):
    if _path not in sys.path:
        sys.path.append(_path)
