"""Restore at scale: 100,000 symbol snapshots on the snapshot topic -> worker ready.

Writes N symbol snapshots (plus one portfolio snapshot per bot) onto the
compacted snapshot topic of a fresh embedded broker, each on its bot's input
partition as the worker writes them, then starts one worker process and times

- start -> partitions assigned (the consumer-group join; Tansu makes it slow),
- assigned -> ``/readyz`` answers 200 (reading the partitions to their end,
  decoding and applying every snapshot, then the first commit/probe),

and reports the worker's peak RSS with N symbols in state. Checks that every
snapshot was restored (``riskgate_symbols`` == N).

``--source live`` builds the N symbols with a live worker instead (outcomes
through the real worker, dedupe windows at their default bound), measures its
RSS, stops it and restores its own snapshots in a second worker. With several
``--symbols`` counts it also prints the RSS each added symbol costs between
two counts (interpreter, clients and buffers cancel out).

    .venv/bin/python -m bench.e2e_restore --symbols 10000,100000 --source both
    .venv/bin/python -m bench.e2e_restore [--symbols 100000] [--recent-ids 16]
    .venv/bin/python -m bench.e2e_restore --loop-lag   # in-process: event-loop lag
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import NamedTuple

import msgspec
from aiokafka import TopicPartition

from bench.baseline import CommitWatch
from bench.e2e_common import (
    bench_config,
    create_topics,
    fast_produce,
    log_event_time,
    now_ms,
    peak_rss_mb,
    start_profiler,
    stop_profiler,
    wait_http_ok,
    workdir,
    worker_process,
)
from worker.config import Config, load_config
from worker.core import Effects, RiskEngine
from worker.core.snapshot import encode, portfolio_key, symbol_key
from worker.kafka.broker import EmbeddedBroker
from worker.kafka.restore import SnapshotRead
from worker.messages import TradeOutcome
from worker.metrics import Metrics
from worker.runtime import home_partition
from worker.runtime.ownership import Ownership
from worker.runtime.recovery import Recovery

TARGET_BYTES_PER_SYMBOL = 2048
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
    dirty = Effects()
    for bot in BOTS:
        for i in range(recent_ids):
            gross = -3.0 if i % 4 == 0 else 2.5
            outcome = TradeOutcome(f"{bot}-o-{i:08d}", bot, "TEMPLATE", gross, 0.1, now - i)
            engine.apply(outcome, now, out=dirty)
    for persisted in engine.snapshots(dirty):
        (_, symbol), *_ = persisted.symbols
        symbols[persisted.bot] = encode(symbol)
        portfolios[persisted.bot] = encode(persisted.portfolio)
    return symbols, portfolios


class Measured(NamedTuple):
    """One worker brought up on N symbols: timings (s) and memory (MiB)."""

    symbols: float
    join: float
    """worker start -> partitions assigned (the group join)."""
    ready: float
    """assigned -> /readyz 200."""
    read: float
    """of which reading the snapshot partitions."""
    apply: float
    """of which decoding + applying the snapshots."""
    rss_peak: float
    rss_now: float


async def bring_up(
    config_path: Path, expected: int, within: float, py_spy: str | None = None
) -> Measured:
    """Start a worker on the existing topics; measure it once it holds ``expected`` symbols.

    ``py_spy``: record the worker from its start until it is ready into that file.
    """
    with worker_process(config_path) as worker:
        started = time.time()
        worker.start()
        profiler = start_profiler(py_spy, worker.pid)
        ready = await wait_http_ok(worker, "/readyz", within=within)
        stop_profiler(profiler)
        assigned = log_event_time(worker, "partitions assigned; restoring") or started
        restored_log = log_event_time(worker, "restored")
        metrics = await symbols_in_state(worker, expected, within=30)
        read = metrics.get(("riskgate_restore_seconds_sum", ()), float("nan"))
        return Measured(
            symbols=metrics.get(("riskgate_symbols", ()), 0.0),
            join=assigned - started,
            ready=ready - assigned,
            read=read,
            apply=(restored_log or ready) - assigned - read,
            rss_peak=peak_rss_mb(worker.pid),
            rss_now=current_rss_mb(worker.pid),
        )


async def symbols_in_state(worker, expected: int, within: float) -> dict:
    """The worker's metrics once ``riskgate_symbols`` reached ``expected`` (or ``within`` s).

    The gauges are refreshed at the end of the loop iteration that restored.
    """
    deadline = time.monotonic() + within
    while True:
        metrics = await worker.metrics()
        if metrics.get(("riskgate_symbols", ()), 0.0) >= expected or time.monotonic() > deadline:
            return metrics
        await asyncio.sleep(0.05)


async def from_templates(args: argparse.Namespace, n: int) -> Measured:
    """N synthetic symbol snapshots (``--recent-ids`` outcomes each) -> a restored worker."""
    async with EmbeddedBroker() as broker:
        with workdir() as tmp:
            config_path, config = bench_config(
                broker.bootstrap_servers, BODY, partitions=args.partitions, workdir=tmp
            )
            await create_topics(config)
            symbol_values, portfolio_values = templates(config, args.recent_ids)
            topic = config.topics.snapshots
            partition_of = {bot: home_partition(bot.encode(), args.partitions) for bot in BOTS}

            def records():
                for i in range(n):
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
                f"[{n:,} template] wrote {sent:,} snapshots (~{size:.0f} bytes each, "
                f"{args.recent_ids} recent outcomes) in {seconds:.1f}s"
            )
            return await bring_up(config_path, n, args.timeout, args.py_spy)


async def from_live(args: argparse.Namespace, n: int) -> tuple[Measured, Measured]:
    """N symbols built by a live worker from outcomes, then restored by a second worker.

    ``--outcomes-per-symbol`` outcomes per symbol (every fourth a loss), over 8
    bots, through the real worker with the default dedupe bound: the first
    worker's RSS once every offset is committed is the *live* figure; the
    second, started on the snapshots the first persisted at shutdown, gives the
    *restored* figure from real snapshots (id windows, chunks and all).
    """
    async with EmbeddedBroker() as broker:
        with workdir() as tmp:
            config_path, config = bench_config(
                broker.bootstrap_servers, BODY, partitions=args.partitions, workdir=tmp
            )
            await create_topics(config)
            topic = config.topics.outcomes
            partition_of = {bot: home_partition(bot.encode(), args.partitions) for bot in BOTS}
            ends = dict.fromkeys(range(args.partitions), 0)
            encode_json = msgspec.json.Encoder().encode
            start = now_ms() - 60_000

            def records():
                k = 0
                for round_ in range(args.outcomes_per_symbol):
                    for i in range(n):
                        bot = BOTS[i % len(BOTS)]
                        gross = -3.0 if round_ % 4 == 0 else 2.5
                        ts = start + k * 60_000 // (n * args.outcomes_per_symbol)
                        value = encode_json(
                            TradeOutcome(f"{bot}-{k}", bot, f"S{i:06d}", gross, 0.1, ts)
                        )
                        ends[partition_of[bot]] += 1
                        k += 1
                        yield topic, bot.encode(), value, None

            sent, seconds = await asyncio.to_thread(
                fast_produce, broker.bootstrap_servers, records()
            )
            print(f"[{n:,} live] pre-loaded {sent:,} outcomes in {seconds:.1f}s")
            tps = {p: TopicPartition(topic, p) for p in ends}
            with worker_process(config_path) as worker:
                started = time.time()
                worker.start()
                async with CommitWatch(broker.bootstrap_servers, config.kafka.group_id) as watch:
                    while True:
                        worker.check_alive()
                        committed = await watch.committed(list(tps.values()))
                        if all(committed[tps[p]] >= end for p, end in ends.items()):
                            break
                        if time.time() - started > args.timeout:
                            raise TimeoutError(f"live worker did not commit {sent:,} outcomes")
                        await asyncio.sleep(0.1)
                metrics = await symbols_in_state(worker, n, within=30)
                live = Measured(
                    symbols=metrics.get(("riskgate_symbols", ()), 0.0),
                    join=(log_event_time(worker, "partitions assigned; restoring") or started)
                    - started,
                    ready=float("nan"),
                    read=float("nan"),
                    apply=float("nan"),
                    rss_peak=peak_rss_mb(worker.pid),
                    rss_now=current_rss_mb(worker.pid),
                )
            # Leaving the block stopped it with SIGTERM: it persisted everything applied.
            # The second worker gets its own config file name, hence its own log file.
            second = config_path.with_name("restore.toml")
            second.write_text(config_path.read_text())
            return live, await bring_up(second, n, args.timeout)


async def loop_lag(args: argparse.Namespace, n: int) -> None:
    """In-process, no broker: N template records restored by ``Recovery.restore`` (one
    synchronous call) and by ``Recovery.restore_async`` (a yield every
    ``RESTORE_PART`` records, as the worker's loop calls it), while a task asks for a 1 ms sleep
    over and over: the longest wait past its 1 ms is the loop lag the restore caused."""
    config = load_config(text=BODY, env={})
    symbol_values, portfolio_values = templates(config, args.recent_ids)
    for mode in ("restore", "restore_async"):
        records: dict[str, bytes | None] = {portfolio_key(b): portfolio_values[b] for b in BOTS}
        for i in range(n):
            bot = BOTS[i % len(BOTS)]
            records[symbol_key(bot, f"S{i:06d}")] = bytes(bytearray(symbol_values[bot]))
        read = SnapshotRead(frozenset(range(args.partitions)), records, {}, n, 0.0, {})
        engine = RiskEngine(config)

        async def no_read(*_: object) -> SnapshotRead:
            raise AssertionError("no read here")

        recovery = Recovery(config, engine, Ownership(config.topics, no_read), Metrics())
        lags: list[tuple[float, float]] = []
        task = asyncio.create_task(_ticker(lags))
        await asyncio.sleep(0.01)
        started, cpu = time.perf_counter(), time.process_time()
        kwargs = {"republish": Effects(), "rewrite": Effects()}
        if mode == "restore":
            recovery.restore(read, now_ms(), Effects(), **kwargs)
        else:
            await recovery.restore_async(read, now_ms(), Effects(), **kwargs)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        await asyncio.sleep(0.01)
        task.cancel()
        print(
            f"[{n:,} in-process {mode}] {wall:.2f}s wall, {cpu:.2f}s CPU; loop lag max "
            f"{max(lag for lag, _ in lags) * 1000:,.1f} ms wall, "
            f"{max(busy for _, busy in lags) * 1000:,.1f} ms CPU, over {len(lags)} ticks; "
            f"{len(engine.symbols_of(BOTS[0])) * len(BOTS):,} symbols"
        )


async def _ticker(lags: list[tuple[float, float]]) -> None:
    """Sleep 1 ms again and again; record each wait past it, in wall time and in this
    process's CPU time (what the lag would be on an idle machine)."""
    while True:
        asked, cpu = time.perf_counter(), time.process_time()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - asked - 0.001, time.process_time() - cpu))


def report(kind: str, n: int, m: Measured) -> None:
    print(
        f"[{n:,} {kind}] symbols in state {m.symbols:,.0f}; join {m.join:.2f}s; "
        f"assigned -> ready {m.ready:.2f}s (reading {m.read:.2f}s, decoding + applying "
        f"{m.apply:.2f}s); RSS now {m.rss_now:.0f} MiB (peak {m.rss_peak:.0f}), "
        f"{m.rss_now * 2**20 / n:,.0f} bytes a symbol"
    )
    if m.symbols != n:
        raise SystemExit(f"expected {n:,} symbols in state, found {m.symbols:,.0f}")


def marginal(kind: str, runs: list[tuple[int, Measured]]) -> None:
    """RSS per symbol between two sizes: the interpreter and clients cancel out."""
    for (n0, m0), (n1, m1) in itertools.pairwise(runs):
        per = (m1.rss_now - m0.rss_now) * 2**20 / (n1 - n0)
        print(
            f"{kind}: {n0:,} -> {n1:,} symbols adds {m1.rss_now - m0.rss_now:.0f} MiB: "
            f"{per:,.0f} bytes a symbol (target <= {TARGET_BYTES_PER_SYMBOL:,})"
        )


async def main(args: argparse.Namespace) -> None:
    counts = [int(c) for c in args.symbols.split(",")]
    if args.loop_lag:
        for n in counts:
            await loop_lag(args, n)
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        return
    results: dict[str, list[tuple[int, Measured]]] = {}
    for n in counts:
        if args.source in ("template", "both"):
            results.setdefault("restored (template)", []).append((n, await from_templates(args, n)))
        if args.source in ("live", "both"):
            live, restored = await from_live(args, n)
            results.setdefault("live", []).append((n, live))
            results.setdefault("restored (from live)", []).append((n, restored))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for kind, runs in results.items():
        for n, measured in runs:
            report(kind, n, measured)
    for kind, runs in results.items():
        marginal(kind, runs)


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc status")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--symbols", default="100000", help="comma-separated symbol counts, e.g. 10000,100000"
    )
    parser.add_argument(
        "--source",
        choices=("template", "live", "both"),
        default="template",
        help="synthetic snapshots, or symbols a live worker built (then restored), or both",
    )
    parser.add_argument("--outcomes-per-symbol", type=int, default=4, help="live: outcomes each")
    parser.add_argument(
        "--py-spy", metavar="OUT", help="profile the template restore (start -> ready) into OUT"
    )
    parser.add_argument("--recent-ids", type=int, default=16, help="event ids per snapshot (1..64)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--loop-lag",
        action="store_true",
        help="in-process only: restore time and event-loop lag, sync vs restore_async",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    arguments = parser.parse_args()
    if not 1 <= arguments.recent_ids <= 64:
        parser.error("--recent-ids must be between 1 and 64 (dedupe_ids_per_symbol)")
    asyncio.run(main(arguments))
