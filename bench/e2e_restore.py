"""Restore at scale: 100,000 symbol snapshots on the snapshot topic -> worker ready.

Writes N symbol snapshots (plus one portfolio snapshot per bot) onto the
compacted snapshot topic of a fresh embedded broker, each on its bot's input
partition as the worker writes them, then starts one worker process and times

- start -> partitions assigned (the consumer-group join; Tansu makes it slow),
- assigned -> ``/readyz`` answers 200 (reading the partitions to their end,
  decoding and applying every snapshot, then the first commit/probe),

and reports the worker's peak RSS with N symbols in state. Checks that every
snapshot was restored (``riskgate_symbols`` == N).

    .venv/bin/python -m bench.e2e_restore [--symbols 100000] [--recent-ids 16]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from bench.e2e_common import (
    bench_config,
    create_topics,
    fast_produce,
    log_event_time,
    now_ms,
    peak_rss_mb,
    wait_http_ok,
    workdir,
    worker_process,
)
from worker.config import Config
from worker.engine import RiskEngine
from worker.kafka.broker import EmbeddedBroker
from worker.messages import TradeOutcome
from worker.snapshot import encode, portfolio_key, symbol_key

BOTS = [f"bot{i}" for i in range(8)]
BODY = "".join(f"[bots.{bot}]\n" for bot in BOTS)


def templates(config: Config, recent_ids: int) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """One realistic symbol snapshot and one portfolio snapshot per bot.

    A symbol that saw ``recent_ids`` outcomes: totals, a few recent losses in
    the breaker window, ``recent_ids`` remembered event ids.
    """
    engine = RiskEngine(config)
    now = now_ms()
    symbols: dict[str, bytes] = {}
    portfolios: dict[str, bytes] = {}
    for bot in BOTS:
        for i in range(recent_ids):
            gross = -3.0 if i % 4 == 0 else 2.5
            outcome = TradeOutcome(f"{bot}-o-{i:08d}", bot, "TEMPLATE", gross, 0.1, now - i)
            engine.apply(outcome, now)
        state = engine.bots[bot]
        symbols[bot] = encode(state.symbols["TEMPLATE"].snapshot())
        portfolios[bot] = encode(state.portfolio_snapshot())
    return symbols, portfolios


async def main(args: argparse.Namespace) -> None:
    async with EmbeddedBroker() as broker:
        with workdir() as tmp:
            config_path, config = bench_config(
                broker.bootstrap_servers, BODY, partitions=args.partitions, workdir=tmp
            )
            await create_topics(config)
            symbol_values, portfolio_values = templates(config, args.recent_ids)
            topic = config.topics.snapshots
            partition_of = {bot: partition_for(bot.encode(), args.partitions) for bot in BOTS}

            def records():
                for i in range(args.symbols):
                    bot = BOTS[i % len(BOTS)]
                    key = symbol_key(bot, f"S{i:06d}").encode()
                    yield topic, key, symbol_values[bot], partition_of[bot]
                for bot in BOTS:
                    yield (
                        topic,
                        portfolio_key(bot).encode(),
                        portfolio_values[bot],
                        partition_of[bot],
                    )

            sent, seconds = await asyncio.to_thread(
                fast_produce, broker.bootstrap_servers, records()
            )
            size = sum(len(v) for v in symbol_values.values()) / len(symbol_values)
            print(
                f"wrote {sent:,} snapshots (~{size:.0f} bytes each, "
                f"{args.recent_ids} recent ids) in {seconds:.1f}s"
            )

            with worker_process(config_path) as worker:
                started = time.time()
                worker.start()
                ready = await wait_http_ok(worker, "/readyz", within=args.timeout)
                assigned = log_event_time(worker, "partitions assigned; restoring") or started
                restored_log = log_event_time(worker, "restored")
                # The gauges are refreshed at the end of the loop iteration that restored.
                deadline = time.monotonic() + 30
                while True:
                    metrics = await worker.metrics()
                    symbols = metrics.get(("riskgate_symbols", ()), 0.0)
                    if symbols >= args.symbols or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                rss = peak_rss_mb(worker.pid)
                rss_now = current_rss_mb(worker.pid)

    restored = metrics.get(("riskgate_restore_records_total", (("result", "restored"),)), 0.0)
    read_seconds = metrics.get(("riskgate_restore_seconds_sum", ()), float("nan"))
    print(f"worker start -> partitions assigned (group join): {assigned - started:.2f}s")
    print(
        f"assigned -> ready: {ready - assigned:.2f}s "
        f"(reading the partitions: {read_seconds:.2f}s, "
        f"decoding + applying: {(restored_log or ready) - assigned - read_seconds:.2f}s)"
    )
    print(f"worker start -> ready: {ready - started:.2f}s")
    print(f"restored records: {restored:,.0f}; symbols in state: {symbols:,.0f}")
    print(
        f"worker RSS with {symbols:,.0f} symbols: peak {rss:.0f} MiB, "
        f"after restore {rss_now:.0f} MiB"
    )
    if symbols != args.symbols:
        raise SystemExit(f"expected {args.symbols:,} symbols in state, found {symbols:,.0f}")


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc status")


def partition_for(key: bytes, partitions: int) -> int:
    from aiokafka.partitioner import DefaultPartitioner

    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100_000)
    parser.add_argument("--recent-ids", type=int, default=16, help="event ids per snapshot (1..64)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0)
    arguments = parser.parse_args()
    if not 1 <= arguments.recent_ids <= 64:
        parser.error("--recent-ids must be between 1 and 64 (dedupe_ids_per_symbol)")
    asyncio.run(main(arguments))
