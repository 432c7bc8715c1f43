"""A restore applied in parts (issue 16): values freed as applied, the event loop free.

``Recovery.restore_async`` yields to the event loop after every part of
``RESTORE_PART`` records, so a 100k-symbol restore no longer holds health probes
and the group's heartbeats for its whole second of CPU. Bad records are handled
exactly as in one go, whichever part they fall in.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterable
from typing import Any

import pytest

from tests.support.builders import T0, apply_all, engine, outcome
from worker.core import Effects, RiskEngine
from worker.core.restore import Restore
from worker.core.snapshot import encode, portfolio_key, symbol_key
from worker.kafka.restore import SnapshotRead
from worker.metrics import Metrics
from worker.runtime import recovery as recovery_module
from worker.runtime.ownership import Ownership
from worker.runtime.recovery import Recovery

SYMBOLS = 7
HALT = """
[defaults]
accept_unknown_bots = true
[worker]
on_unreadable_state = "halt"
"""


def _records() -> dict[str, bytes | None]:
    """One bot, SYMBOLS symbols, the portfolio first; then a corrupt record and an
    unknown version of two more symbols, last (they fall in the last part)."""
    live = engine(HALT)
    dirty = apply_all(live, [outcome(-1.0, symbol=f"S{i}", ts=T0 + i) for i in range(SYMBOLS)])
    records: dict[str, bytes | None] = {}
    for persisted in live.snapshots(dirty):
        records[portfolio_key(persisted.bot)] = encode(persisted.portfolio)
        for symbol, snap in persisted.symbols:
            records[symbol_key(persisted.bot, symbol)] = encode(snap)
    records[symbol_key("alpha", "BAD")] = b"{not json"
    records[symbol_key("alpha", "NEW")] = b'{"version": 99}'
    return records


def _recovery(eng: RiskEngine) -> tuple[Recovery, Metrics]:
    async def never(*_: Any) -> SnapshotRead:
        raise AssertionError("no read here")

    metrics = Metrics()
    return Recovery(eng.config, eng, Ownership(eng.config.topics, never), metrics), metrics


def _read(records: dict[str, bytes | None]) -> SnapshotRead:
    return SnapshotRead(frozenset({0}), records, {"alpha": 0}, len(records), 0.0, {0: 1})


def _state(eng: RiskEngine) -> tuple[object, ...]:
    bot = eng.bots["alpha"]
    return (
        bot.portfolio_snapshot(),
        bot.signature(),
        bot.deadline,
        [(name, sym.snapshot()) for name, sym in bot.symbols.items()],
    )


def _count(metrics: Metrics, label: str) -> float | None:
    return metrics.registry.get_sample_value("riskgate_restore_records_total", {"result": label})


@pytest.mark.parametrize("part", [1, 2, 3, 1_000])
def test_restore_in_parts_equals_restore_in_one_go_bad_records_included(
    monkeypatch: pytest.MonkeyPatch, part: int
) -> None:
    records = _records()
    one_go = engine(HALT)
    one_go_out = Effects()
    assert [key for key, _ in one_go.restore(dict(records), T0 + 60_000, one_go_out)] == [
        symbol_key("alpha", "BAD"),
        symbol_key("alpha", "NEW"),
    ]
    monkeypatch.setattr(recovery_module, "RESTORE_PART", part)
    parts = engine(HALT)
    recovery, metrics = _recovery(parts)
    out = Effects()
    recovery.restore(_read(records), T0 + 60_000, out, republish=Effects(), rewrite=Effects())
    assert _state(parts) == _state(one_go)
    assert parts.bots["alpha"].controls.unreadable is True
    assert [h.event_id for h in out.halts] == [h.event_id for h in one_go_out.halts]
    assert (_count(metrics, "restored"), _count(metrics, "ignored")) == (SYMBOLS + 1, 2)


def test_restore_empties_the_read_so_its_values_are_freed() -> None:
    records = _records()
    recovery, _ = _recovery(engine(HALT))
    recovery.restore(_read(records), T0, Effects(), republish=Effects(), rewrite=Effects())
    assert records == {}


def test_restore_runs_without_collections_then_trims_and_freezes_the_heap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    eng = engine(HALT)
    feed = Restore.feed

    def watched(job: Restore, records: Iterable[tuple[str, bytes | None]]) -> None:
        calls.append(f"feed, collections {'on' if gc.isenabled() else 'off'}")
        feed(job, records)

    monkeypatch.setattr(Restore, "feed", watched)
    monkeypatch.setattr(recovery_module, "RESTORE_PART", 5)
    monkeypatch.setattr(recovery_module, "_malloc_trim", lambda pad: calls.append(f"trim {pad}"))
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    recovery, _ = _recovery(eng)
    assert gc.isenabled()
    recovery.restore(_read(_records()), T0, Effects(), republish=Effects(), rewrite=Effects())
    assert gc.isenabled()
    assert calls == ["feed, collections off", "feed, collections off", "trim 0", "freeze"]


def test_forgotten_bots_hold_no_reference_cycles() -> None:
    """Frozen restored state is freed by reference counts alone: no cycles in a bot."""
    eng = engine(HALT)
    eng.restore(_records(), T0)
    gc.collect()
    gc.disable()
    try:
        eng.forget(["alpha"])
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_restore_async_lets_the_event_loop_run_between_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the whole restore ran in one synchronous call, the loop held throughout."""
    monkeypatch.setattr(recovery_module, "RESTORE_PART", 3)
    eng = engine(HALT)
    recovery, _ = _recovery(eng)
    seen: list[int] = []

    async def probe() -> None:
        while True:
            seen.append(len(eng.bots["alpha"].symbols) if "alpha" in eng.bots else 0)
            await asyncio.sleep(0)

    async def main() -> None:
        ticker = asyncio.create_task(probe())
        await asyncio.sleep(0)
        await recovery.restore_async(
            _read(_records()), T0, Effects(), republish=Effects(), rewrite=Effects()
        )
        ticker.cancel()

    asyncio.run(main())
    # 10 records in parts of 3 (portfolio + S0 S1 | S2..S4 | S5 S6 BAD | NEW), then the
    # one bot's sweep: the probe ran before the restore and after each of those five.
    assert seen == [0, 2, 5, 7, 7, 7]
