"""Replay benchmark (a script, not a test): events/s on one core, and a sweep's speed-up.

    python -m bench.replay_throughput [--events 1000000] [--sweep-events 200000]
    python -m bench.replay_throughput --write history.jsonl --events 20000   # example data

1. Generates a mixed history (outcomes, fills with round trips, intents) over
   8 bots x 20 symbols, ~2.5 s apart (1M events span ~29 days of UTC rollovers),
   writes it as JSONL and times reading it (``read_file`` + ordering).
2. Times ``replay`` over the decoded records in this process: one core.
3. Times a sweep of 3 combinations (+ the base config: 4 jobs) with ``--workers 1``
   and ``--workers 2``: the speed-up of the process pool on 2 cores (ideal: 2x), beside
   a control (a bare CPU loop in the same kind of pool): on a shared or throttled
   machine the control shows what speed-up the machine allowed at all.

Target (issue 12): >= 250k events/s, the engine's own speed (bench/core.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from worker.config import Config
from worker.core import RiskEngine
from worker.errors import Rejected
from worker.replay.inputs import InputRecord, in_time_order, read_file
from worker.replay.run import replay
from worker.replay.sweep import load_with, parse_sweep, run_sweep

START_MS = 20_254 * 86_400_000 + 18 * 3_600_000  # 2025-06-15 18:00 UTC


def config_text(bots: int) -> str:
    """Limits that halt now and then on the generated history; odd bots book from fills."""
    return "\n".join(
        [
            "[defaults.session]\nloss_limit = -300.0",
            "[defaults.breaker]\nloss_limit = 5\nwindow_secs = 900\ncooldown_secs = 900",
            "[defaults.portfolio]\nmax_daily_loss = -3000.0\nmax_gross_exposure = 1e9",
            *(
                f'[bots.bot{i}]\npnl_source = "{"fills" if i % 2 else "outcomes"}"'
                for i in range(bots)
            ),
        ]
    )


def history(
    n: int, step_ms: int = 5000, bots: int = 8, symbols: int = 20, seed: int = 7
) -> list[dict[str, Any]]:
    """``n`` mixed rows with a ``type`` column, in time order, ~``step_ms / 2`` apart."""
    rng = random.Random(seed)
    bot_ids = [f"bot{i}" for i in range(bots)]
    symbol_ids = [f"S{i:02d}USDT" for i in range(symbols)]
    rows: list[dict[str, Any]] = []
    long: dict[tuple[str, str], bool] = {}
    t = START_MS
    for i in range(n):
        t += rng.randint(0, step_ms)
        b = rng.randrange(bots)
        bot, sym = bot_ids[b], rng.choice(symbol_ids)
        roll = rng.random()
        if roll < 0.1:
            rows.append(
                {
                    "type": "intent",
                    "intent_id": f"i{i}",
                    "bot": bot,
                    "symbol": sym,
                    "action": "open",
                    "side": "buy",
                    "qty": 1.0,
                    "price": 100.0,
                    "ts": t,
                }
            )
        elif b % 2:  # fills-booked bots: alternate buys and sells per symbol (round trips)
            side = "sell" if long.get((bot, sym)) else "buy"
            long[(bot, sym)] = side == "buy"
            rows.append(
                {
                    "type": "fill",
                    "fill_id": f"f{i}",
                    "bot": bot,
                    "symbol": sym,
                    "side": side,
                    "qty": 1.0,
                    "price": round(rng.uniform(95, 105), 2),
                    "fee": 0.02,
                    "ts": t,
                }
            )
        else:
            rows.append(
                {
                    "type": "outcome",
                    "outcome_id": f"o{i}",
                    "bot": bot,
                    "symbol": sym,
                    "gross_pnl": round(rng.gauss(0.3, 8.0), 2),
                    "fee": 0.1,
                    "ts": t,
                }
            )
    return rows


def write_history(
    path: Path, n: int, step_ms: int = 5000, bots: int = 8, symbols: int = 20
) -> None:
    with path.open("w") as fh:
        for row in history(n, step_ms, bots, symbols):
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")


def engine_alone(config: Config, records: list[InputRecord]) -> int:
    """The engine on the replay's clock and sweep schedule, without the replay's books."""
    engine = RiskEngine(config)
    interval = config.worker.sweep_interval_ms
    next_sweep, sweeps = -1, 0
    for rec in records:
        if rec.time >= next_sweep:
            engine.sweep(rec.time)
            next_sweep = rec.time + interval
            sweeps += 1
        if rec.event is not None:
            with contextlib.suppress(Rejected):
                engine.apply(rec.event, rec.time, record_ts=rec.time)
    return sweeps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--sweep-events", type=int, default=200_000)
    ap.add_argument(
        "--step-ms",
        type=int,
        default=5000,
        help="max gap between events (mean = half): 5000 spans ~29 days per 1M events, where "
        "the live cadence (a sweep per sweep_interval_ms = 1 s) means about one sweep per event; "
        "20 gives ~10 ms apart, bench/core.py's density",
    )
    ap.add_argument("--bots", type=int, default=8)
    ap.add_argument("--symbols", type=int, default=20, help="per bot")
    ap.add_argument("--write", type=Path, help="only write a history (and its config) and exit")
    args = ap.parse_args()
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        write_history(args.write, args.events, args.step_ms, args.bots, args.symbols)
        args.write.with_suffix(".toml").write_text(config_text(args.bots) + "\n")
        print(f"wrote {args.events:,} rows to {args.write} and {args.write.with_suffix('.toml')}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "bench.toml"
        cfg_path.write_text(config_text(args.bots))
        data = Path(tmp) / "history.jsonl"
        write_history(data, args.events, args.step_ms, args.bots, args.symbols)
        t0 = time.perf_counter()
        records = in_time_order([read_file(data)])
        read_s = time.perf_counter() - t0
        n = len(records)
        print(
            f"read     {n:>9,} rows   {read_s:6.2f} s  {n / read_s:>10,.0f} rows/s (JSONL + order)"
        )

        config = load_with(cfg_path, {}, env={})
        c0, w0 = time.process_time(), time.perf_counter()
        result = replay(config, records)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        overall = result.ledger.overall
        print(
            f"replay   {n:>9,} events {wall:6.2f} s  {n / cpu:>10,.0f} events/s cpu"
            f"  {n / wall:,.0f} wall  (halts {len(result.halts)}, "
            f"trades {overall.trades:,}, prevented {overall.blocked_trades:,})"
        )

        c0 = time.process_time()
        sweeps = engine_alone(config, records)
        base_cpu = time.process_time() - c0
        print(
            f"engine   {n:>9,} events {base_cpu:6.2f} s  {n / base_cpu:>10,.0f} events/s cpu"
            f"  (apply + {sweeps:,} sweeps on the same clock, nothing else: the replay's floor)"
        )

        sample = records[: args.sweep_events]
        spec = parse_sweep(["defaults.breaker.loss_limit=3,4,6"])  # + the base: 4 jobs
        times = {}
        for workers in (1, 2):
            c0, w0 = os.times(), time.perf_counter()
            run_sweep(cfg_path, sample, spec, workers=workers)
            times[workers] = time.perf_counter() - w0
            c1 = os.times()
            busy = c1.children_user + c1.children_system - c0.children_user - c0.children_system
            jobs = 4
            print(
                f"sweep    {jobs} jobs x {len(sample):,} events, --workers {workers}: "
                f"{times[workers]:6.2f} s  ({jobs * len(sample) / times[workers]:,.0f} events/s; "
                f"workers' CPU {busy:.2f} s: {busy / times[workers]:.2f} cores busy)"
            )
        print(f"sweep speed-up on 2 workers: {times[1] / times[2]:.2f}x")
        print(f"control: a bare CPU loop in the same kind of pool: {pool_control():.2f}x")


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def pool_control() -> float:
    """The speed-up of 2 forked workers on pure CPU work: what the machine allows a sweep."""
    ctx = mp.get_context("fork")
    walls = {}
    for workers in (1, 2):
        w0 = time.perf_counter()
        with ctx.Pool(workers) as pool:
            pool.map(_burn, [5_000_000] * 4)
        walls[workers] = time.perf_counter() - w0
    return walls[1] / walls[2]


if __name__ == "__main__":
    main()
