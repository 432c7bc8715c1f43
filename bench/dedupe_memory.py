"""Memory and snapshot bytes of one bot's event-id windows (decisions D1).

Fills both windows of a bot (outcomes and fills) to ``--keep`` ids through the
engine and measures with tracemalloc what the windows hold, then the encoded
size of the windows in the bot's portfolio snapshot.

    .venv/bin/python -m bench.dedupe_memory [--keep 10000]
"""

from __future__ import annotations

import argparse
import tracemalloc

from worker.config import load_config
from worker.core import Effects, Origin, RiskEngine
from worker.core.dedupe import IdWindow
from worker.core.idlog import IdChunk
from worker.core.snapshot import encode
from worker.messages import Fill, TradeOutcome

T0 = 1_750_000_000_000


def fill_windows(keep: int) -> tuple[IdWindow, IdWindow]:
    """Two windows filled as a bot's would be: one id per record, new offsets."""
    outcomes, fills = IdWindow(keep), IdWindow(keep)
    for n in range(keep):
        outcomes.first(f"outcome-{n:012d}", ("trading.outcomes/0", n))
        fills.first(f"fill-{n:012d}", ("trading.fills/0", n))
    return outcomes, fills


def snapshot_bytes(keep: int) -> int:
    """Encoded bytes the full windows add to the bot's persisted records.

    The windows persist as sealed id chunks plus the unsealed tail inside the
    portfolio record (:mod:`worker.core.idlog`): both count.
    """
    toml = f"[defaults]\naccept_unknown_bots = true\n[worker]\ndedupe_ids_per_bot = {keep}\n"
    engine = RiskEngine(load_config(text=toml, env={}))
    engine.bot("b", T0)
    dirty = Effects()
    dirty.dirty_bots.add("b")
    empty = persisted_bytes(engine, dirty)
    for n in range(keep):
        outcome = TradeOutcome(
            outcome_id=f"o{n}", bot="b", symbol="S", gross_pnl=1.0, fee=0.0, ts=T0
        )
        engine.apply(outcome, T0, Origin("trading.outcomes/0", n))
        fill = Fill(
            fill_id=f"f{n}", bot="b", symbol="S", side="buy", qty=1.0, price=1.0, fee=0.0, ts=T0
        )
        engine.apply(fill, T0, Origin("trading.fills/0", n))
    return persisted_bytes(engine, dirty) - empty


def persisted_bytes(engine: RiskEngine, dirty: Effects) -> int:
    """Bytes of the chunk records and the portfolio record one persist of ``dirty`` writes."""
    (persisted,) = engine.snapshots(dirty)
    chunks = sum(len(encode(IdChunk(entries=entries))) for _, _, entries in persisted.chunks)
    return chunks + len(encode(persisted.portfolio))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=int, default=10_000)
    keep = parser.parse_args().keep
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    windows = fill_windows(keep)
    after = tracemalloc.take_snapshot()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    tracemalloc.stop()
    ids = sum(len(w) for w in windows)
    print(
        f"memory: {held:,} bytes per bot for {ids:,} ids "
        f"({held / ids:.0f} bytes an id, 2 topics x {keep:,})"
    )
    print(
        f"snapshot: {snapshot_bytes(keep):,} bytes of id chunks and portfolio record (base64 JSON)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
