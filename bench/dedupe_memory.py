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
from worker.engine import Origin, RiskEngine
from worker.messages import Fill, TradeOutcome
from worker.risk.dedupe import IdWindow
from worker.snapshot import encode

T0 = 1_750_000_000_000


def fill_windows(keep: int) -> tuple[IdWindow, IdWindow]:
    """Two windows filled as a bot's would be: one id per record, new offsets."""
    outcomes, fills = IdWindow(keep), IdWindow(keep)
    for n in range(keep):
        outcomes.first(f"outcome-{n:012d}", ("trading.outcomes/0", n))
        fills.first(f"fill-{n:012d}", ("trading.fills/0", n))
    return outcomes, fills


def snapshot_bytes(keep: int) -> int:
    """Encoded bytes the full windows add to the portfolio snapshot."""
    toml = f"[defaults]\naccept_unknown_bots = true\n[worker]\ndedupe_ids_per_bot = {keep}\n"
    engine = RiskEngine(load_config(text=toml, env={}))
    empty = len(encode(engine.bot("b", T0).portfolio_snapshot()))
    for n in range(keep):
        outcome = TradeOutcome(
            outcome_id=f"o{n}", bot="b", symbol="S", gross_pnl=1.0, fee=0.0, ts=T0
        )
        engine.apply(outcome, T0, Origin("trading.outcomes/0", n))
        fill = Fill(
            fill_id=f"f{n}", bot="b", symbol="S", side="buy", qty=1.0, price=1.0, fee=0.0, ts=T0
        )
        engine.apply(fill, T0, Origin("trading.fills/0", n))
    return len(encode(engine.bots["b"].portfolio_snapshot())) - empty


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
    print(f"snapshot: {snapshot_bytes(keep):,} bytes of the portfolio record (base64 JSON)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
