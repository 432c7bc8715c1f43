"""Id windows persisted as chunk records (worker.core.idlog): small, incremental, exact."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tests.support.transport import engine_state
from worker.config import load_config
from worker.core import Effects, Origin, RiskEngine, idlog
from worker.core.snapshot import chunk_key, encode, portfolio_key
from worker.kafka.records import OutRecord, snapshot_records
from worker.messages import OrderIntent, TradeOutcome

NOW = 1_767_268_800_000  # 2026-01-01 12:00 UTC
CONFIG = """
[worker]
dedupe_ids_per_bot = {keep}
[defaults.session]
loss_limit = -1e12
[defaults.portfolio]
max_daily_loss = -1e12
max_gross_exposure = 1e12
[bots.alpha]
"""


def engine(keep: int = 10_000) -> RiskEngine:
    return RiskEngine(load_config(text=CONFIG.format(keep=keep), env={}))


def outcomes(eng: RiskEngine, first: int, count: int, out: Effects) -> None:
    for n in range(first, first + count):
        o = TradeOutcome(f"o{n}", "alpha", "BTC", 1.0, 0.0, NOW - 1_000)
        eng.apply(o, NOW, Origin("trading.outcomes/0", n), out)


def intents(eng: RiskEngine, first: int, count: int, out: Effects) -> None:
    for n in range(first, first + count):
        i = OrderIntent(f"i{n}", "alpha", "BTC", "open", "buy", 0.001, 1.0, NOW - 1_000)
        eng.apply(i, NOW, Origin("trading.intents/0", n), out)


def new_log() -> dict[str, bytes | None]:
    """An empty compacted snapshot topic (last value per key; None: a tombstone)."""
    return {}


def persist(eng: RiskEngine, out: Effects, log: dict[str, bytes | None]) -> list[OutRecord]:
    """One persist, folded into ``log`` (the compacted topic: last value per key)."""
    records = snapshot_records(eng, out, eng.config.topics, {"alpha": 0})
    for r in records:
        assert r.key is not None
        log[r.key.decode()] = r.value
    return records


def restored(log: Mapping[str, bytes | None], keep: int = 10_000) -> RiskEngine:
    eng = engine(keep)
    assert eng.restore(log, NOW) == []
    return eng


def written(records: list[OutRecord]) -> dict[str, Any]:
    return {
        "bytes": sum(len(r.key or b"") + len(r.value or b"") for r in records),
        "chunks": sum(b"/ids/" in (r.key or b"") and r.value is not None for r in records),
        "tombstones": sum(r.value is None for r in records),
    }


def test_persist_of_an_active_bot_rewrites_only_new_ids_not_the_whole_window() -> None:
    """The write amplification: every persist rewrote ~300 KB+ of unchanged ids."""
    eng, out, log = engine(), Effects(), new_log()
    outcomes(eng, 0, 10_000, out)
    first = written(persist(eng, out, log))
    assert first["chunks"] == 10_000 // 256  # 39 sealed chunks, 16 ids in the tail
    out = Effects()
    outcomes(eng, 10_000, 10, out)
    second = persist(eng, out, log)
    assert [r.key for r in second] == [portfolio_key("alpha").encode(), b"alpha/risk/BTC"]
    assert written(second)["bytes"] < 8_000  # was ~160 KB of outcome ids alone
    assert engine_state(restored(log)) == engine_state(eng)


def test_chunks_out_of_the_window_are_tombstoned_after_the_portfolio() -> None:
    eng, out, log = engine(keep=600), Effects(), new_log()
    outcomes(eng, 0, 600, out)
    assert written(persist(eng, out, log))["chunks"] == 2  # 512 sealed, 88 in the tail
    out = Effects()
    outcomes(eng, 600, 400, out)  # entries 400..999 in the window: chunks 1..2 sealed
    records = persist(eng, out, log)
    keys = [r.key for r in records]
    assert keys == [
        chunk_key("alpha", "outcomes", 2).encode(),
        portfolio_key("alpha").encode(),
        b"alpha/risk/BTC",
        chunk_key("alpha", "outcomes", 0).encode(),
    ]
    assert records[-1].value is None
    assert engine_state(restored(log, keep=600)) == engine_state(eng)


def test_snapshot_with_the_windows_inside_the_portfolio_record_still_restores() -> None:
    """Older snapshots: the whole windows in ``<bot>/portfolio``; the next persist chunks them."""
    eng, out = engine(), Effects()
    outcomes(eng, 0, 1_000, out)
    intents(eng, 0, 50, out)
    old = {portfolio_key("alpha"): encode(eng.bots["alpha"].portfolio_snapshot())}
    again = restored(old)
    expected = engine_state(eng)["alpha"]["portfolio"]
    assert engine_state(again)["alpha"]["portfolio"] == expected
    log: dict[str, bytes | None] = dict(old)
    every = Effects()
    every.dirty_bots.add("alpha")
    assert written(persist(again, every, log))["chunks"] == 1_000 // 256
    assert engine_state(restored(log))["alpha"]["portfolio"] == expected


def test_missing_chunk_keeps_the_newer_entries_and_is_reported() -> None:
    eng, out, log = engine(), Effects(), new_log()
    outcomes(eng, 0, 600, out)
    persist(eng, out, log)
    del log[chunk_key("alpha", "outcomes", 0)]
    again = engine()
    ignored = again.restore(log, NOW)
    assert ignored == [(chunk_key("alpha", "outcomes", 0), "id chunk missing: newer entries kept")]
    assert len(again.bots["alpha"].ids.outcomes) == 600 - 256


def test_renumbered_windows_are_written_afresh_and_the_old_chunks_tombstoned() -> None:
    """What a restoring owner does when a zombie's chunk records were fenced."""
    eng, out, log = engine(), Effects(), new_log()
    outcomes(eng, 0, 600, out)
    persist(eng, out, log)
    assert eng.rewrite_ids("alpha")
    assert not eng.rewrite_ids("ghost")  # a bot not held: nothing to rewrite
    every = Effects()
    every.dirty_bots.add("alpha")
    records = persist(eng, every, log)
    fresh = [r.key for r in records if r.value is not None and b"/ids/" in (r.key or b"")]
    gone = [r.key for r in records if r.value is None]
    assert fresh == [chunk_key("alpha", "outcomes", n).encode() for n in (3, 4)]
    # Every number below the new ones, written or not (a crashed persist may have left any).
    assert gone == [
        *(chunk_key("alpha", "outcomes", n).encode() for n in (0, 1, 2)),
        chunk_key("alpha", "fills", 0).encode(),
        chunk_key("alpha", "intents", 0).encode(),
    ]
    assert engine_state(restored(log)) == engine_state(eng)


@pytest.mark.parametrize("keep", [0, 1, 255, 256, 257])
def test_window_sizes_around_a_chunk_restore_exactly(keep: int) -> None:
    eng, log = engine(keep), new_log()
    for first in (0, 100, 400, 1_000):
        out = Effects()
        outcomes(eng, first, 300 if first < 1_000 else 5, out)
        persist(eng, out, log)
        assert engine_state(restored(log, keep)) == engine_state(eng)
    assert sum(b"/outcomes/" in k.encode() and v is not None for k, v in log.items()) <= (
        keep // idlog.CHUNK_ENTRIES + 1
    )


def test_a_fenced_chunk_makes_the_restoring_owner_write_the_windows_afresh() -> None:
    """Issue 10 core split: the recovery rewrite asked the bot for a method the split
    removed (``renumber_id_logs``): a fenced chunk key would have stopped the restore.
    It goes through ``RiskEngine.rewrite_ids`` now, and the bot's portfolio is rewritten."""
    from worker.kafka.restore import SnapshotRead
    from worker.metrics import Metrics
    from worker.runtime.ownership import Ownership
    from worker.runtime.recovery import Recovery

    live, out, log = engine(), Effects(), new_log()
    outcomes(live, 0, 600, out)
    persist(live, out, log)
    successor = engine()
    fenced = chunk_key("alpha", "outcomes", 0)
    read = SnapshotRead(frozenset({0}), dict(log), {"alpha": 0}, len(log), 0.0, {0: 1}, (fenced,))

    async def never(*_: Any) -> SnapshotRead:
        raise AssertionError("no read here")

    recovery = Recovery(
        successor.config, successor, Ownership(successor.config.topics, never), Metrics()
    )
    republish, rewrite = Effects(), Effects()
    recovery.restore(read, NOW, Effects(), republish=republish, rewrite=rewrite)
    assert rewrite.dirty_bots == {"alpha"}
    records = persist(successor, rewrite, log)
    fresh = [r.key for r in records if r.value is not None and b"/ids/" in (r.key or b"")]
    assert fresh == [chunk_key("alpha", "outcomes", n).encode() for n in (3, 4)]
