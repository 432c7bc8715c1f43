"""Cost of one batch's account gate record as the bot's symbol count grows.

Every batch that touches a bot publishes its account gate record
(``RiskEngine.gate_states``): entries allowed, blocks, account net PnL, open
positions, gross exposure. This times that record for one bot holding N
symbols (a third with a position), so a cost that grows with N shows: on the
halt path it is paid per batch per touched bot, and a worker holds every
symbol of its bots.

    .venv/bin/python -m bench.gate_state_cost [--symbols 100,1000,10000,100000]
"""

from __future__ import annotations

import argparse
import time

from worker.config import load_config
from worker.core import Effects, Origin, RiskEngine
from worker.messages import Fill, TradeOutcome

T0 = 1_750_000_000_000
CONFIG = """
[defaults]
accept_unknown_bots = true
[defaults.portfolio]
max_daily_loss = -1000000.0
max_gross_exposure = 1e12
"""


def engine_with(symbols: int) -> RiskEngine:
    engine = RiskEngine(load_config(text=CONFIG, env={}))
    for i in range(symbols):
        name = f"S{i:07d}"
        engine.apply(TradeOutcome(f"o{i}", "bot", name, 1.5, 0.1, T0), T0, Origin("o/0", i))
        if i % 3 == 0:
            fill = Fill(f"f{i}", "bot", name, "buy", 1.0, 100.0, 0.0, T0)
            engine.apply(fill, T0, Origin("f/0", i))
    return engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", default="100,1000,10000,100000")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    dirty = Effects()
    dirty.dirty_bots.add("bot")
    for n in (int(x) for x in args.symbols.split(",")):
        engine = engine_with(n)
        engine.gate_states(dirty, T0)
        started = time.process_time()
        for _ in range(args.calls):
            engine.gate_states(dirty, T0)
        per = (time.process_time() - started) / args.calls
        print(f"{n:>8,} symbols: {per * 1e6:>10,.1f} us CPU per account gate record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
