"""The memory model: Python heap bytes per symbol, bot, reservation and dedupe id.

Each row builds N of one thing inside a fresh ``RiskEngine`` through its
public API and divides what tracemalloc says the heap grew by N (after a
``gc.collect()``), so an operator can size a worker:

    heap ~= bots x per-bot + symbols x per-symbol
            + outstanding reservations x per-reservation
            + bots x 2 x dedupe_ids_per_bot x per-id

- per symbol: one loss booked (session PnL, one loss time in the breaker
  window, the symbol's watermark), event-id windows off so only the symbol's
  own state counts; "with a position" adds one fill.
- per restored symbol: the same one-loss symbol, restored from its snapshot record
  (restore frees every record it read; compare with the live row).
- per bot: an empty bot (portfolio, windows allocated empty).
- per dedupe id: one bot's outcome-id window filled with N ids.
- per reservation: the 1,000 outstanding open reservations one bot may hold
  (the cap), each with its entry in the bot's intent-id window; and the
  window entry alone, from N more intents denied by the cap (every decided
  intent is remembered there).

RSS of a whole worker process, which adds the interpreter, the clients and the
allocator's slack, comes from ``bench/e2e_restore.py`` (restored and live).

    .venv/bin/python -m bench.memory_model [--n 20000]
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from collections.abc import Callable

from worker.config import load_config
from worker.core import Origin, RiskEngine
from worker.core.snapshot import encode, portfolio_key, symbol_key
from worker.messages import Fill, OrderIntent, TradeOutcome

T0 = 1_750_000_000_000
RESERVATIONS_CAP = 1_000
"""Outstanding reservations one bot may hold (the default and the hard cap)."""


def engine(dedupe: int, reservations: int = 1_000) -> RiskEngine:
    toml = (
        f"[defaults]\naccept_unknown_bots = true\n[worker]\ndedupe_ids_per_bot = {dedupe}\n"
        f"max_reservations_per_bot = {reservations}\nreservation_ttl_ms = 3600000\n"
    )
    return RiskEngine(load_config(text=toml, env={}))


def heap_growth(build: Callable[[], object]) -> int:
    """Bytes the traced heap holds after ``build`` that it did not hold before."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return after - before


def symbols(n: int, *, position: bool) -> Callable[[], object]:
    def build() -> object:
        e = engine(dedupe=0)
        for i in range(n):
            e.apply(TradeOutcome(f"o{i}", "bot", f"S{i:07d}", -1.0, 0.1, T0), T0, Origin("o/0", i))
            if position:
                fill = Fill(f"f{i}", "bot", f"S{i:07d}", "buy", 1.0, 100.0, 0.0, T0)
                e.apply(fill, T0, Origin("f/0", i))
        return e

    return build


def restored_symbols(n: int) -> Callable[[], object]:
    """The state of ``symbols(n, position=False)``, restored from its snapshot records."""
    live = engine(dedupe=0)
    out = live.apply(TradeOutcome("o", "bot", "S", -1.0, 0.1, T0), T0, Origin("o/0", 0))
    (persisted,) = live.snapshots(out)
    ((_, snap),) = persisted.symbols
    value = encode(snap)

    def build() -> object:
        e = engine(dedupe=0)
        records: dict[str, bytes | None] = {portfolio_key("bot"): encode(persisted.portfolio)}
        for i in range(n):
            records[symbol_key("bot", f"S{i:07d}")] = bytes(bytearray(value))  # one each
        e.restore(records, T0)
        return e

    return build


def bots(n: int) -> Callable[[], object]:
    def build() -> object:
        e = engine(dedupe=10_000)
        for i in range(n):
            e.bot(f"bot{i:07d}", T0)
        return e

    return build


def dedupe_ids(n: int) -> Callable[[], object]:
    def build() -> object:
        e = engine(dedupe=n)
        for i in range(n):
            outcome = TradeOutcome(f"outcome-{i:012d}", "bot", "S", 1.0, 0.1, T0)
            e.apply(outcome, T0, Origin("o/0", i))
        return e

    return build


def intents(allowed: int, denied: int = 0) -> Callable[[], object]:
    """``allowed`` opens reserve (up to the cap); then ``denied`` more meet the cap."""

    def build() -> object:
        e = engine(dedupe=allowed + denied)
        for i in range(allowed + denied):
            intent = OrderIntent(f"intent-{i:012d}", "bot", "S", "open", "buy", 1.0, 1.0, T0)
            e.apply(intent, T0, Origin("i/0", i))
        held = e.stats().reservations
        if held != allowed:
            raise SystemExit(f"{held} reservations outstanding, expected {allowed}")
        return e

    return build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="things built per row")
    n = parser.parse_args().n
    base_symbol = heap_growth(symbols(1, position=False))
    base_bot = heap_growth(bots(1))
    base_ids = heap_growth(dedupe_ids(1))
    cap = RESERVATIONS_CAP
    base_reservations = heap_growth(intents(1))
    base_denied = heap_growth(intents(cap, 1))
    rows = [
        ("symbol (one loss booked)", symbols(n, position=False), base_symbol),
        ("symbol with a position", symbols(n, position=True), base_symbol),
        ("symbol (one loss) restored from its snapshot", restored_symbols(n), base_symbol),
        ("bot (empty)", bots(n), base_bot),
        ("dedupe id (one bot's outcome window)", dedupe_ids(n), base_ids),
        ("intent id of a denied intent (window only)", intents(cap, n), base_denied),
    ]
    print(f"tracemalloc heap growth, {n:,} of each, minus the same build with 1:")
    for name, build, base in rows:
        grown = heap_growth(build) - base
        print(f"  {name:<46} {grown / (n - 1):>8,.0f} bytes each")
    grown = heap_growth(intents(cap)) - base_reservations
    name = f"reservation + its intent id ({cap:,}: the cap)"
    print(f"  {name:<46} {grown / (cap - 1):>8,.0f} bytes each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
