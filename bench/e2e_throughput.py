"""End-to-end throughput: a pre-loaded backlog of outcomes through one worker process.

Pre-loads N outcomes (8 bots x 50 symbols) into the outcomes topic of a fresh
embedded broker, starts one worker (``python -m worker.cli run``) and times
until the group's committed offset reached the end of every input partition -
which, by the commit protocol, also means every snapshot and output of those
events was acknowledged. Then checks the persisted snapshots add up to N trades.

In the same invocation, on the same broker and backlog, the client's ceiling:
a bare aiokafka loop (``bench/baseline.py loop``: consume -> update a dict ->
produce one record per changed key -> wait for acks -> commit; no gates, no
dedupe, no watermarks, no snapshots) reads the same topic under another group.
Both rates are *steady* rates: records committed per second between 10% and
90% of the backlog, so the group join, restore and the tail do not count.
The ratio riskgate / bare loop is the number to watch (target >= 0.90).

    .venv/bin/python -m bench.e2e_throughput [--events 1000000] [--order bare-first]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import msgspec
from aiokafka import TopicPartition

from bench.baseline import (
    CommitWatch,
    baseline_process,
    create_plain_topics,
    loop_argv,
    steady_rate,
)
from bench.e2e_common import (
    bench_config,
    create_topics,
    fast_produce,
    log_event_time,
    now_ms,
    peak_rss_mb,
    read_topic,
    start_profiler,
    stop_profiler,
    workdir,
    worker_process,
)
from tests.support.harness import last_per_key
from worker.kafka.broker import EmbeddedBroker
from worker.messages import TradeOutcome

TARGET_EVENTS_PER_SEC = 100_000
TARGET_RATIO = 0.90


def body(bots: list[str], symbols: list[str]) -> str:
    listed = ", ".join(f'"{s}"' for s in symbols)
    return "".join(f"[bots.{bot}]\nsymbols = [{listed}]\n" for bot in bots)


def outcomes(n: int, bots: list[str], symbols: list[str], topic: str):
    """(topic, key, value, None) records; timestamps spread over the last minute."""
    rng = random.Random(1)
    encode = msgspec.json.Encoder().encode
    start = now_ms() - 60_000
    for i in range(n):
        bot = bots[i % len(bots)]
        symbol = symbols[rng.randrange(len(symbols))]
        gross = round(rng.uniform(-10.0, 10.0), 2)
        value = encode(TradeOutcome(f"{bot}-{i}", bot, symbol, gross, 0.1, start + i * 60_000 // n))
        yield topic, bot.encode(), value, None


async def main(args: argparse.Namespace) -> None:
    bots = [f"bot{i}" for i in range(args.bots)]
    symbols = [f"SYM{i:03d}USDT" for i in range(args.symbols)]
    async with EmbeddedBroker() as broker:
        with workdir() as tmp:
            config_path, config = bench_config(
                broker.bootstrap_servers,
                body(bots, symbols),
                partitions=args.partitions,
                workdir=tmp,
                kafka_extra=args.kafka_extra,
            )
            await create_topics(config)
            topic = config.topics.outcomes
            sent, seconds = await asyncio.to_thread(
                fast_produce,
                broker.bootstrap_servers,
                outcomes(args.events, bots, symbols, topic),
            )
            print(f"pre-loaded {sent:,} outcomes in {seconds:.1f}s ({sent / seconds:,.0f}/s)")
            # Exact ends from the data itself (Tansu's ListOffsets answers the last batch's
            # base offset + 1): count the records per partition once.
            tps = [TopicPartition(topic, p) for p in range(args.partitions)]
            ends = await exact_ends(config, tps)
            assert sum(ends.values()) == sent, (ends, sent)

            async def progress(group: str, alive) -> tuple[list[tuple[float, int]], float]:
                """(time, records committed) samples until the group committed every end."""
                samples: list[tuple[float, int]] = []
                started = time.time()
                async with CommitWatch(broker.bootstrap_servers, group) as watch:
                    while True:
                        alive()
                        committed = await watch.committed(tps)
                        done = sum(min(committed[tp], ends[tp]) for tp in tps)
                        samples.append((time.time(), done))
                        if done >= sent:
                            return samples, samples[-1][0]
                        if time.time() - started > args.timeout:
                            raise TimeoutError(f"{group}: only {done:,} of {sent:,} committed")
                        await asyncio.sleep(0.05)

            async def bare() -> float:
                out_topic = f"{topic}.bare-out"
                await create_plain_topics(broker.bootstrap_servers, [out_topic], args.partitions)
                argv = loop_argv(
                    broker.bootstrap_servers,
                    topic,
                    out_topic,
                    f"{config.kafka.group_id}.bare",
                    fetch_max_wait_ms=config.kafka.fetch_max_wait_ms,
                    poll_timeout_ms=config.worker.poll_timeout_ms,
                    max_records=config.worker.max_batch_records,
                )
                with baseline_process(argv, tmp / "bare.log") as loop:
                    samples, _ = await progress(f"{config.kafka.group_id}.bare", loop.check_alive)
                return steady_rate(samples, sent)

            bare_rate = await bare() if args.order == "bare-first" else None
            with worker_process(config_path) as worker:
                started = time.time()
                worker.start()
                profiler = start_profiler(args.py_spy, worker.pid)
                samples, finished = await progress(config.kafka.group_id, worker.check_alive)
                stop_profiler(profiler)
                assigned = log_event_time(worker, "partitions assigned; restoring") or started
                rss = peak_rss_mb(worker.pid)
                metrics = await worker.metrics()

            log = await read_topic(config.kafka, config.topics.snapshots)
            snapshots = last_per_key(log)
            written = snapshot_bytes(log)
            trades = sum(
                msgspec.json.decode(r.value)["session_pnl"]["trades"]
                for k, r in snapshots.items()
                if "/risk/" in k and r.value is not None
            )
            symbol_keys = sum(1 for k in snapshots if "/risk/" in k)
            if bare_rate is None:
                bare_rate = await bare()

    steady = steady_rate(samples, sent)
    processing = finished - assigned
    rate = sent / processing
    batches = metrics.get(("riskgate_batch_records_count", ()), 0.0)
    writes = metrics.get(("riskgate_snapshot_writes_total", ()), 0.0)
    print(f"worker start -> partitions assigned (group join): {assigned - started:.2f}s")
    print(f"assigned -> every offset committed: {processing:.2f}s")
    print(f"throughput: {rate:,.0f} events/s (target >= {TARGET_EVENTS_PER_SEC:,})")
    print(
        f"start -> all committed, including the join: {sent / (finished - started):,.0f} events/s"
    )
    average = sent / max(batches, 1)
    print(f"batches: {batches:,.0f} (avg {average:,.0f} records), snapshot writes: {writes:,.0f}")
    phases = {
        name: metrics.get((f"riskgate_{name}_seconds_sum", ()), 0.0)
        for name in ("batch", "output_send", "snapshot_send", "commit")
    }
    print(
        "time in batches {batch:.2f}s, of which waiting for output acks {output_send:.2f}s, "
        "snapshot acks {snapshot_send:.2f}s, commits {commit:.2f}s".format(**phases)
    )
    print(
        "snapshot bytes written: {total:,} ({per_write:,.0f} a record); portfolio records "
        "{portfolio:,} ({per_portfolio:,.0f} each), symbol {symbol:,}, id chunks {ids:,}".format(
            **written
        )
    )
    print(f"worker peak RSS: {rss:.0f} MiB")
    print(f"snapshots: {symbol_keys} symbol keys, {trades:,} trades (expected {sent:,})")
    if symbol_keys != len(bots) * len(symbols) or trades != sent:
        raise SystemExit("persisted snapshots do not add up")
    print("PASS" if rate >= TARGET_EVENTS_PER_SEC else "BELOW TARGET")
    ratio = steady / bare_rate
    print(
        f"steady rate (10%..90% committed): riskgate {steady:,.0f} events/s, "
        f"bare aiokafka loop {bare_rate:,.0f} events/s ({args.order}); "
        f"ratio {ratio:.2f} (target >= {TARGET_RATIO:.2f}): "
        f"{'PASS' if ratio >= TARGET_RATIO else 'BELOW TARGET'}"
    )


def snapshot_bytes(log: list) -> dict[str, float]:
    """Key + value bytes written to the snapshots topic, by record kind (the write volume)."""
    sizes = {"portfolio": 0, "symbol": 0, "ids": 0, "other": 0}
    portfolios = 0
    for r in log:
        key = (r.key or b"").decode()
        kind = key.split("/")[1] if key.count("/") >= 1 and not key.startswith("/") else "other"
        kind = {"portfolio": "portfolio", "risk": "symbol", "ids": "ids"}.get(kind, "other")
        sizes[kind] += len(r.key or b"") + len(r.value or b"")
        portfolios += kind == "portfolio"
    total = sum(sizes.values())
    return {
        **sizes,
        "total": total,
        "per_write": total / max(len(log), 1),
        "per_portfolio": sizes["portfolio"] / max(portfolios, 1),
    }


async def exact_ends(config, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    from aiokafka import AIOKafkaConsumer

    from worker.kafka.options import client_kwargs

    consumer = AIOKafkaConsumer(**client_kwargs(config.kafka), group_id=None)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        listed = {tp: await consumer.position(tp) for tp in tps}
        ends = {}
        for tp in tps:
            # The last batch starts below the listed end: fetch from there to learn its end.
            if listed[tp] == 0:
                ends[tp] = 0
                continue
            consumer.seek(tp, listed[tp] - 1)
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500)
                if not batch.get(tp):
                    break
            ends[tp] = await consumer.position(tp)
        return ends
    finally:
        await consumer.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--bots", type=int, default=8)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--py-spy", metavar="OUT", help="profile the worker into OUT (raw)")
    parser.add_argument(
        "--order",
        choices=("bare-first", "riskgate-first"),
        default="bare-first",
        help="which of the two consumes the backlog first",
    )
    parser.add_argument(
        "--kafka-extra", default="", help='extra [kafka] lines, e.g. "fetch_max_wait_ms = 5"'
    )
    asyncio.run(main(parser.parse_args()))
