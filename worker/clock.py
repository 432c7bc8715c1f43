"""The one wall clock of riskgate.

The core never reads a clock: every time it needs is an argument. The shell
(worker loop, operator tools, the gate client's helpers) reads this one, so a
test can inject a fixed or offset clock in a single place.
"""

from __future__ import annotations

import time


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), as Kafka record timestamps count."""
    return time.time_ns() // 1_000_000
