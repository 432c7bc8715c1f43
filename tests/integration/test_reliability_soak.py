"""Soak, short: 25 s of a steady stream against a worker process, memory and lag bounded.

The full run is ``python -m tests.chaos.soak`` (10 minutes at 5,000 events/s
across 10,000 symbols); this one keeps the default suite's budget: 1,000
events/s across 1,000 symbols on a private embedded broker. It asserts what
the long run reports: no error-level log line, the lag stays bounded and
drains when the stream stops, memory stops growing once every symbol exists
(the second half of the run), and the worker exits cleanly on SIGTERM.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.soak import run_soak
from worker.kafka.broker import EmbeddedBroker

pytestmark = pytest.mark.broker

RATE = 1_000.0
SECONDS = 25.0
SYMBOLS = 1_000


async def test_a_short_soak_keeps_memory_and_lag_bounded_and_logs_no_error(
    embedded_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    report = await run_soak(
        embedded_broker.bootstrap_servers,
        tmp_path,
        seconds=SECONDS,
        rate=RATE,
        symbols=SYMBOLS,
        bots=10,
        partitions=4,
        sample_every=2.5,
        warmup=5.0,
        # Fewer ids per symbol than the default 64, so every ring is full (and
        # memory flat) well before mid-run at 1 event/s per symbol.
        extra_toml="[worker]\ndedupe_ids_per_bot = 8\n",
        broker_pid=embedded_broker.pid,
        max_growth_mib=24.0,
        session_timeout_ms=3_000,
    )
    print("\n" + "\n".join(report.lines()))
    assert not report.errors, "\n".join(report.errors[:10])
    assert report.final_rc == 0
    assert report.lag_at_end == 0, "the worker did not catch up after the stream stopped"
    assert report.produced >= RATE * SECONDS * 0.5, "the stream itself fell far behind"
    assert len(report.samples) >= 5
    assert report.max_lag <= RATE * 10, "lag beyond ten seconds of input"
    assert report.rss_second_half_growth <= report.max_growth_mib
