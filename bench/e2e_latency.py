"""End-to-end halt latency at a steady input rate.

A producer feeds outcomes at a steady rate (default 1,000/s) to one worker
process; every 50 ms one of them is a probe: a -100 loss on a fresh symbol,
which halts that symbol's session at once. For every probe it measures

- end to end: probe sent -> its ``halted`` event received by a subscriber of
  the halts topic (what an execution service sees), and
- in the worker: probe sent -> the worker's producer stamped the halted record
  (its CreateTime), i.e. without the subscriber's own fetch delay.

    .venv/bin/python -m bench.e2e_latency [--seconds 60] [--rate 1000]
        [--worker-fetch-max-wait-ms 20] [--subscriber-fetch-max-wait-ms 2]

Tansu, the embedded broker, does not complete a waiting fetch when records
arrive (Kafka does): a consumer sees new records only when its fetch times out,
so on Tansu both ``fetch_max_wait_ms`` settings add directly to the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.e2e_common import (
    bench_config,
    cpu_seconds,
    create_topics,
    now_ms,
    peak_rss_mb,
    percentile,
    start_profiler,
    stop_profiler,
    wait_http_ok,
    workdir,
    worker_process,
)
from worker.kafka.broker import EmbeddedBroker
from worker.kafka.options import client_kwargs
from worker.messages import HaltEvent, TradeOutcome

TARGET_P99_MS = 10.0
BOTS = [f"bot{i}" for i in range(4)]
BODY = """
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 1000
""" + "".join(f"[bots.{bot}]\n" for bot in BOTS)

_encode = msgspec.json.Encoder().encode
_halt = msgspec.json.Decoder(HaltEvent)


async def feed(
    producer: AIOKafkaProducer,
    topic: str,
    rate: int,
    seconds: float,
    sent_at: dict[str, float],
) -> int:
    """``rate`` outcomes/s in 10 ms ticks; one probe every 50 ms (counted in the rate)."""
    per_tick = max(1, rate // 100)
    n = probes = 0
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        ts = now_ms()
        for i in range(per_tick):
            bot = BOTS[n % len(BOTS)]
            n += 1
            if i == 0 and tick % 5 == 0:
                symbol = f"P{probes:06d}"
                probes += 1
                outcome = TradeOutcome(f"{bot}-{n}", bot, symbol, -100.0, 0.0, ts)
                sent_at[f"{bot}/{symbol}"] = time.time()
            else:
                outcome = TradeOutcome(f"{bot}-{n}", bot, f"S{n % 200:03d}", 1.0, 0.01, ts)
            await producer.send(topic, _encode(outcome), key=bot.encode())
        tick += 1
        # Next tick on the 10 ms grid (no drift).
        await asyncio.sleep(max(0.0, start + tick * 0.01 - time.monotonic()))
    return n


async def subscribe(
    consumer: AIOKafkaConsumer,
    got: dict[str, tuple[float, float]],
    sent_at: dict[str, float],
    fed: asyncio.Event,
    all_in: asyncio.Event,
) -> None:
    """(received at, record CreateTime) of every halted event, by ``bot/symbol``.

    Sets ``all_in`` once feeding is over (``fed``) and every probe's halt arrived.
    """
    while not all_in.is_set():
        batch = await consumer.getmany(timeout_ms=100)
        received = time.time()
        for records in batch.values():
            for record in records:
                halt = _halt.decode(record.value)
                if halt.kind == "halted":
                    got[f"{halt.bot}/{halt.symbol}"] = (received, record.timestamp / 1000)
        if fed.is_set() and len(got) >= len(sent_at):
            all_in.set()


def histogram_line(metrics: dict, name: str) -> str:
    """Count, mean and how many observations exceeded 5/10/25 ms, from the worker's histogram."""
    count = metrics.get((f"{name}_count", ()), 0.0)
    total = metrics.get((f"{name}_sum", ()), 0.0)
    buckets = {
        float(dict(labels)["le"]): value
        for (sample, labels), value in metrics.items()
        if sample == f"{name}_bucket"
    }
    over = ", ".join(
        f">{le * 1000:g}ms: {count - buckets.get(le, count):.0f}" for le in (0.005, 0.01, 0.025)
    )
    mean = total / count * 1000 if count else float("nan")
    return f"worker {name}: n={count:.0f} mean={mean:.2f} ms; {over}"


def summary(name: str, values_ms: list[float]) -> str:
    values_ms.sort()
    return (
        f"{name}: n={len(values_ms)} p50={percentile(values_ms, 50):.2f} ms "
        f"p99={percentile(values_ms, 99):.2f} ms max={values_ms[-1]:.2f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    async with EmbeddedBroker() as broker:
        with workdir() as tmp:
            config_path, config = bench_config(
                broker.bootstrap_servers,
                BODY,
                partitions=4,
                workdir=tmp,
                kafka_extra=f"fetch_max_wait_ms = {args.worker_fetch_max_wait_ms}\n",
            )
            await create_topics(config)
            kwargs = client_kwargs(config.kafka)
            consumer = AIOKafkaConsumer(
                **kwargs,
                group_id=None,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=args.subscriber_fetch_max_wait_ms,
            )
            producer = AIOKafkaProducer(**kwargs, acks=1, linger_ms=0)
            await consumer.start()
            await producer.start()
            try:
                consumer.assign([TopicPartition(config.topics.halts, p) for p in range(4)])
                with worker_process(config_path) as worker:
                    worker.start()
                    await wait_http_ok(worker, "/readyz", within=60)
                    profiler = start_profiler(args.py_spy, worker.pid)
                    cpu_before = (
                        cpu_seconds(broker.pid),
                        cpu_seconds(worker.pid),
                        time.monotonic(),
                    )
                    sent_at: dict[str, float] = {}
                    got: dict[str, tuple[float, float]] = {}
                    fed, all_in = asyncio.Event(), asyncio.Event()
                    listener = asyncio.create_task(subscribe(consumer, got, sent_at, fed, all_in))
                    sent = await feed(
                        producer, config.topics.outcomes, args.rate, args.seconds, sent_at
                    )
                    fed.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(all_in.wait(), 10)
                    all_in.set()
                    await listener
                    stop_profiler(profiler)
                    elapsed = time.monotonic() - cpu_before[2]
                    broker_cpu = (cpu_seconds(broker.pid) - cpu_before[0]) / elapsed
                    worker_cpu = (cpu_seconds(worker.pid) - cpu_before[1]) / elapsed
                    rss = peak_rss_mb(worker.pid)
                    metrics = await worker.metrics()
            finally:
                await producer.stop()
                await consumer.stop()

    missing = set(sent_at) - set(got)
    end_to_end = [(got[k][0] - sent_at[k]) * 1000 for k in sent_at if k in got]
    in_worker = [(got[k][1] - sent_at[k]) * 1000 for k in sent_at if k in got]
    print(
        f"fed {sent:,} outcomes in {args.seconds:.0f}s ({sent / args.seconds:,.0f}/s), "
        f"{len(sent_at)} probes; worker fetch_max_wait_ms={args.worker_fetch_max_wait_ms}, "
        f"subscriber fetch_max_wait_ms={args.subscriber_fetch_max_wait_ms}"
    )
    print(summary("probe sent -> halted received (end to end)", end_to_end))
    print(summary("probe sent -> halted record stamped by the worker", in_worker))
    print(
        f"CPU while feeding: broker {broker_cpu:.0%} of a core, worker {worker_cpu:.0%}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(f"worker peak RSS: {rss:.0f} MiB")
    for name in ("batch", "output_send", "snapshot_send", "commit"):
        print(histogram_line(metrics, f"riskgate_{name}_seconds"))
    if missing:
        raise SystemExit(f"{len(missing)} probes never produced a halted event")
    p99 = percentile(sorted(end_to_end), 99)
    print("PASS" if p99 <= TARGET_P99_MS else f"BELOW TARGET (p99 > {TARGET_P99_MS} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=1_000, help="outcomes per second")
    parser.add_argument("--worker-fetch-max-wait-ms", type=int, default=20)
    parser.add_argument("--subscriber-fetch-max-wait-ms", type=int, default=2)
    parser.add_argument("--py-spy", metavar="OUT", help="profile the worker into OUT (raw)")
    asyncio.run(main(parser.parse_args()))
