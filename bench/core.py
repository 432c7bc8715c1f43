"""Core benchmark: msgspec decode + RiskEngine.apply, no broker.

Pre-generates 1,000,000 encoded TradeOutcome payloads and 1,000,000 Fill payloads
over 8 bots x 50 symbols, then times decode + apply in batches (one Effects per
batch, with Origin offsets per input partition, and one ``sweep`` after each
batch at the batch's clock, as the Kafka shell does).

    python -m bench.core [--events N] [--batch N]

Targets on one core: >= 300k outcomes/s, >= 200k fills/s.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable

import msgspec

from worker.config import load_config
from worker.core import Effects, Origin, RiskEngine
from worker.messages import Fill, TradeOutcome

BOTS = [f"bot{i}" for i in range(8)]
SYMBOLS = [f"SYM{i:02d}USDT" for i in range(50)]
PARTITIONS = 8
START_MS = 1_750_000_000_000  # 2025-06-15T15:06:40Z
STEP_MS = 10  # timestamps advance ~10 ms per event: 1M events span ~2.8 hours

CONFIG = "\n".join(
    [
        "[defaults.session]",
        "loss_limit = -500.0",
        "[defaults.breaker]",
        "loss_limit = 4",
        "window_secs = 14400",
        "cooldown_secs = 3600",
        *(
            f'[bots.{bot}]\npnl_source = "{"fills" if i % 2 else "outcomes"}"\n'
            f"[bots.{bot}.portfolio]\nmax_daily_loss = -20000.0\n"
            "max_concurrent_positions = 40\nmax_gross_exposure = 1e9"
            for i, bot in enumerate(BOTS)
        ),
    ]
)


def partition_of(bot: str) -> int:
    return BOTS.index(bot) % PARTITIONS


Payloads = list[tuple[int, bytes, int]]
"""(input partition, encoded message, event ts)"""


def gen_outcomes(n: int, rng: random.Random) -> Payloads:
    """Outcomes for the outcome-booked bots: ~52% wins, small fees, advancing ts."""
    encode = msgspec.json.Encoder().encode
    bots = BOTS[0::2]
    out: Payloads = []
    ts = START_MS
    for i in range(n):
        ts += rng.randint(0, 2 * STEP_MS)
        bot = rng.choice(bots)
        win = rng.random() < 0.52
        gross = round(rng.uniform(0.5, 25.0) * (1 if win else -1), 4)
        msg = TradeOutcome(
            outcome_id=f"o{i}",
            bot=bot,
            symbol=rng.choice(SYMBOLS),
            gross_pnl=gross,
            fee=round(rng.uniform(0.01, 0.6), 4),
            ts=ts,
        )
        out.append((partition_of(bot), encode(msg), ts))
    return out


def gen_fills(n: int, rng: random.Random) -> Payloads:
    """Fills for all bots: positions open, add, reduce, close and flip on a price walk."""
    encode = msgspec.json.Encoder().encode
    price = {(b, s): 100.0 for b in BOTS for s in SYMBOLS}
    pos = {(b, s): 0.0 for b in BOTS for s in SYMBOLS}
    out: Payloads = []
    ts = START_MS
    for i in range(n):
        ts += rng.randint(0, 2 * STEP_MS)
        bot = rng.choice(BOTS)
        sym = rng.choice(SYMBOLS)
        key = (bot, sym)
        p = price[key] = max(1.0, price[key] * (1.0 + rng.gauss(0.0, 0.002)))
        held = pos[key]
        qty = float(rng.randint(1, 10))
        if held != 0.0 and rng.random() < 0.55:
            side = "sell" if held > 0 else "buy"  # reduce / close / flip
            if rng.random() < 0.5:
                qty = abs(held)
        else:
            side = "buy" if rng.random() < 0.5 else "sell"
        pos[key] = held + (qty if side == "buy" else -qty)
        msg = Fill(
            fill_id=f"f{i}",
            bot=bot,
            symbol=sym,
            side=side,  # type: ignore[arg-type]
            qty=qty,
            price=round(p, 4),
            fee=round(qty * p * 0.0004, 6),
            ts=ts,
        )
        out.append((partition_of(bot), encode(msg), ts))
    return out


def run(
    name: str,
    payloads: Payloads,
    decode: Callable[[bytes], TradeOutcome | Fill],
    topic: str,
    batch: int,
) -> None:
    engine = RiskEngine(load_config(text=CONFIG, env={}))
    sources = [f"{topic}/{p}" for p in range(PARTITIONS)]
    offsets = [0] * PARTITIONS
    # The shell reads the wall clock once per batch; here it is the batch's last event time.
    batches = [
        (payloads[i : i + batch], payloads[min(i + batch, len(payloads)) - 1][2])
        for i in range(0, len(payloads), batch)
    ]
    apply = engine.apply
    sweep = engine.sweep
    halts = decisions = dirty = 0
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    c0 = time.process_time()
    for chunk, now in batches:
        out = Effects()
        for partition, raw, _ in chunk:
            offset = offsets[partition]
            offsets[partition] = offset + 1
            apply(decode(raw), now, Origin(sources[partition], offset), out)
        # Once per batch after applying it, as the worker does: cooldowns and the
        # daily-loss latch end only by the wall clock (decisions T1), so without a
        # sweep a tripped breaker never resumes and the halt count means nothing.
        sweep(now, out)
        halts += len(out.halts)
        decisions += len(out.decisions)
        dirty += len(out.dirty_symbols)
    cpu = time.process_time() - c0
    wall = time.perf_counter() - t0
    gc.enable()
    n = len(payloads)
    # CPU time of this process: what one core sustains, whatever else runs on the machine.
    print(
        f"{name:<9} {n:>9} events  cpu {cpu:6.3f} s {n / cpu:>10,.0f} events/s "
        f"{cpu / n * 1e6:5.2f} us/event  | wall {wall:6.3f} s {n / wall:>10,.0f} events/s  "
        f"(halts {halts}, dirty keys {dirty})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    t0 = time.perf_counter()
    outcomes = gen_outcomes(args.events, rng)
    fills = gen_fills(args.events, rng)
    print(f"generated {len(outcomes) + len(fills):,} payloads in {time.perf_counter() - t0:.1f} s")

    run(
        "outcomes",
        outcomes,
        msgspec.json.Decoder(TradeOutcome).decode,
        "trading.outcomes",
        args.batch,
    )
    run("fills", fills, msgspec.json.Decoder(Fill).decode, "trading.fills", args.batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
