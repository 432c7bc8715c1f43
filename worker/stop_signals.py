"""Stop signals of ``riskgate run``, caught from the CLI's first lines to the process exit.

A SIGTERM while ``riskgate run`` was still importing (~0.4 s) or starting took
the default action: exit -15 and no log line (findings E1-3). Now the CLI
catches the stop signals (:func:`catch_early`) before it imports anything heavy.
Until the service hands them to its event loop, a signal is only remembered;
the service then stops at once, logging it (:func:`take_early`). When the loop
ends, the service gives them back here, so a signal during the teardown is
ignored: the worker is stopping already.

What no code of ours can cover: the interpreter's own start-up (~30 ms, before
the first line of ``worker/cli.py`` runs), where a SIGTERM still ends the
process with -15 before it has read or written anything.

Deliberately cheap to import (``signal`` only): it runs before everything else.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[signal.Signals] = []
"""Stop signals caught by :func:`catch_early` and not taken yet, oldest first."""


def _remember(signum: int, _frame: FrameType | None) -> None:
    _received.append(signal.Signals(signum))


def catch_early() -> None:
    """Remember stop signals instead of dying on them, until the service takes them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)


def take_early() -> signal.Signals | None:
    """The first stop signal caught so far, None if none; the record is then cleared."""
    first = _received[0] if _received else None
    _received.clear()
    return first
