"""End-to-end halt latency at a steady input rate.

A producer feeds outcomes at a steady rate (default 1,000/s) to one worker
process; every 50 ms one of them is a probe: a -100 loss on a fresh symbol,
which halts that symbol's session at once. For every probe it measures

- end to end: probe sent -> its ``halted`` event received by a subscriber of
  the halts topic (what an execution service sees), and
- in the worker: probe sent -> the worker's producer stamped the halted record
  (its CreateTime), i.e. without the subscriber's own fetch delay.

In the same invocation, on the same broker, the same feed goes through two
raw hops instead (``bench/baseline.py relay``: a plain aiokafka consumer ->
producer with the worker's fetch settings, no riskgate code) to a subscriber
with the same settings; the bench prints both and riskgate's ratio to the raw
hops (target p99 <= 1.2x), plus p50/p99 in ``--windows`` windows of the run
so growth over a long run (``--seconds 300``) shows, for both paths.

    .venv/bin/python -m bench.e2e_latency [--seconds 10] [--rate 1000]
        [--worker-fetch-max-wait-ms 20] [--subscriber-fetch-max-wait-ms 2]
        [--order raw-first|riskgate-first]

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
from collections.abc import Callable
from typing import NamedTuple

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.baseline import (
    baseline_process,
    create_plain_topics,
    nearest_rank,
    ratio_line,
    relay_argv,
    stats_line,
    windows_line,
)
from bench.e2e_common import (
    bench_config,
    cpu_seconds,
    create_topics,
    now_ms,
    peak_rss_mb,
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
TARGET_RATIO = 1.2
PARTITIONS = 4
PREFIX_RAW = "bench.raw"
PROBE_HEADERS = [("probe", b"1")]
BOTS = [f"bot{i}" for i in range(4)]
BODY = """
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 1000
""" + "".join(f"[bots.{bot}]\n" for bot in BOTS)

_encode = msgspec.json.Encoder().encode
_halt = msgspec.json.Decoder(HaltEvent)
_outcome = msgspec.json.Decoder(TradeOutcome)


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
            headers = None
            if i == 0 and tick % 5 == 0:
                symbol = f"P{probes:06d}"
                probes += 1
                outcome = TradeOutcome(f"{bot}-{n}", bot, symbol, -100.0, 0.0, ts)
                sent_at[f"{bot}/{symbol}"] = time.time()
                headers = PROBE_HEADERS  # the raw relay routes on it; riskgate ignores it
            else:
                outcome = TradeOutcome(f"{bot}-{n}", bot, f"S{n % 200:03d}", 1.0, 0.01, ts)
            await producer.send(topic, _encode(outcome), key=bot.encode(), headers=headers)
        tick += 1
        # Next tick on the 10 ms grid (no drift).
        await asyncio.sleep(max(0.0, start + tick * 0.01 - time.monotonic()))
    return n


async def subscribe(
    consumer: AIOKafkaConsumer,
    probe_of: Callable[[bytes], str | None],
    got: dict[str, tuple[float, float]],
    sent_at: dict[str, float],
    fed: asyncio.Event,
    all_in: asyncio.Event,
) -> None:
    """(received at, record CreateTime) of every probe's arrival, by ``bot/symbol``.

    ``probe_of`` names the probe a record answers (None: not a probe's). Sets
    ``all_in`` once feeding is over (``fed``) and every probe arrived.
    """
    while not all_in.is_set():
        batch = await consumer.getmany(timeout_ms=100)
        received = time.time()
        for records in batch.values():
            for record in records:
                probe = probe_of(record.value)
                if probe is not None:
                    got[probe] = (received, record.timestamp / 1000)
        if fed.is_set() and len(got) >= len(sent_at):
            all_in.set()


def halted_probe(value: bytes) -> str | None:
    halt = _halt.decode(value)
    return f"{halt.bot}/{halt.symbol}" if halt.kind == "halted" else None


def relayed_probe(value: bytes) -> str | None:
    outcome = _outcome.decode(value)
    return f"{outcome.bot}/{outcome.symbol}" if outcome.symbol.startswith("P") else None


class Run(NamedTuple):
    """One measured path: what was fed and when every probe arrived."""

    fed: int
    sent_at: dict[str, float]
    got: dict[str, tuple[float, float]]

    def end_to_end(self) -> list[tuple[float, float]]:
        """(sent at, ms) per probe that arrived."""
        return [(t, (self.got[k][0] - t) * 1000) for k, t in self.sent_at.items() if k in self.got]

    def stamped(self) -> list[tuple[float, float]]:
        """(sent at, ms until the last hop's producer stamped the record)."""
        return [(t, (self.got[k][1] - t) * 1000) for k, t in self.sent_at.items() if k in self.got]

    def missing(self) -> int:
        return len(set(self.sent_at) - set(self.got))


async def measure(
    args: argparse.Namespace,
    producer: AIOKafkaProducer,
    kwargs: dict,
    source: str,
    sink: str,
    probe_of: Callable[[bytes], str | None],
) -> Run:
    """Feed ``source`` at the steady rate for ``--seconds``; wait for the probes on ``sink``."""
    consumer = AIOKafkaConsumer(
        **kwargs,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=args.subscriber_fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(sink, p) for p in range(PARTITIONS)])
        sent_at: dict[str, float] = {}
        got: dict[str, tuple[float, float]] = {}
        fed, all_in = asyncio.Event(), asyncio.Event()
        listener = asyncio.create_task(subscribe(consumer, probe_of, got, sent_at, fed, all_in))
        sent = await feed(producer, source, args.rate, args.seconds, sent_at)
        fed.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 10)
        all_in.set()
        await listener
        return Run(sent, sent_at, got)
    finally:
        await consumer.stop()


async def raw_hops(
    args: argparse.Namespace, broker: EmbeddedBroker, producer: AIOKafkaProducer, kwargs: dict, tmp
) -> Run:
    """The same feed through one plain relay: producer -> topic -> relay -> topic -> subscriber.

    The relay forwards every record: probes to the topic the subscriber reads,
    the rest to a side topic, as the worker writes halts to one topic and gate
    records to another (so both subscribers read the same volume).
    """
    prefix = f"{PREFIX_RAW}.{os.getpid()}"
    source, sink, side = f"{prefix}.in", f"{prefix}.out", f"{prefix}.side"
    await create_plain_topics(broker.bootstrap_servers, [source, sink, side], PARTITIONS)
    argv = relay_argv(
        broker.bootstrap_servers,
        source,
        sink,
        partitions=PARTITIONS,
        fetch_max_wait_ms=args.worker_fetch_max_wait_ms,
        side_target=side,
    )
    with baseline_process(argv, tmp / "relay.log") as relay:
        await relay.wait_for("ready", within=60)
        return await measure(args, producer, kwargs, source, sink, relayed_probe)


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


async def main(args: argparse.Namespace) -> None:
    async with EmbeddedBroker() as broker:
        with workdir() as tmp:
            config_path, config = bench_config(
                broker.bootstrap_servers,
                BODY,
                partitions=PARTITIONS,
                workdir=tmp,
                kafka_extra=f"fetch_max_wait_ms = {args.worker_fetch_max_wait_ms}\n",
            )
            await create_topics(config)
            kwargs = client_kwargs(config.kafka)
            producer = AIOKafkaProducer(**kwargs, acks=1, linger_ms=0)
            await producer.start()
            try:
                if args.order == "raw-first":
                    raw = await raw_hops(args, broker, producer, kwargs, tmp)
                with worker_process(config_path) as worker:
                    worker.start()
                    await wait_http_ok(worker, "/readyz", within=60)
                    profiler = start_profiler(args.py_spy, worker.pid)
                    cpu_before = (
                        cpu_seconds(broker.pid),
                        cpu_seconds(worker.pid),
                        time.monotonic(),
                    )
                    ours = await measure(
                        args,
                        producer,
                        kwargs,
                        config.topics.outcomes,
                        config.topics.halts,
                        halted_probe,
                    )
                    stop_profiler(profiler)
                    elapsed = time.monotonic() - cpu_before[2]
                    broker_cpu = (cpu_seconds(broker.pid) - cpu_before[0]) / elapsed
                    worker_cpu = (cpu_seconds(worker.pid) - cpu_before[1]) / elapsed
                    rss = peak_rss_mb(worker.pid)
                    metrics = await worker.metrics()
                if args.order == "riskgate-first":
                    raw = await raw_hops(args, broker, producer, kwargs, tmp)
            finally:
                await producer.stop()

    print(
        f"fed {ours.fed:,} outcomes in {args.seconds:.0f}s ({ours.fed / args.seconds:,.0f}/s), "
        f"{len(ours.sent_at)} probes; worker and relay fetch_max_wait_ms="
        f"{args.worker_fetch_max_wait_ms}, subscriber fetch_max_wait_ms="
        f"{args.subscriber_fetch_max_wait_ms}; {args.order}"
    )
    end_to_end = [ms for _, ms in ours.end_to_end()]
    raw_end_to_end = [ms for _, ms in raw.end_to_end()]
    print(stats_line("riskgate: probe sent -> halted received (end to end)", end_to_end))
    print(stats_line("2 raw hops: probe sent -> relayed probe received", raw_end_to_end))
    print(ratio_line(end_to_end, raw_end_to_end, 2))
    print(
        stats_line(
            "riskgate: probe sent -> halted record stamped by the worker",
            [ms for _, ms in ours.stamped()],
        )
    )
    print(
        stats_line(
            "raw: probe sent -> relayed record stamped by the relay",
            [ms for _, ms in raw.stamped()],
        )
    )
    print(windows_line("riskgate", ours.end_to_end(), args.windows))
    print(windows_line("2 raw hops", raw.end_to_end(), args.windows))
    print(
        f"CPU while feeding riskgate: broker {broker_cpu:.0%} of a core, worker "
        f"{worker_cpu:.0%}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(f"worker peak RSS: {rss:.0f} MiB")
    for name in ("batch", "output_send", "snapshot_send", "commit"):
        print(histogram_line(metrics, f"riskgate_{name}_seconds"))
    if ours.missing() or raw.missing():
        raise SystemExit(f"probes lost: riskgate {ours.missing()}, raw hops {raw.missing()}")
    p99 = nearest_rank(sorted(end_to_end), 99)
    p99_raw = nearest_rank(sorted(raw_end_to_end), 99)
    print("PASS" if p99 <= TARGET_P99_MS else f"BELOW TARGET (p99 > {TARGET_P99_MS} ms)")
    verdict = "PASS" if p99 <= TARGET_RATIO * p99_raw else "BELOW TARGET"
    print(f"p99 <= {TARGET_RATIO}x two raw hops: {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="feeding time of each path")
    parser.add_argument("--rate", type=int, default=1_000, help="outcomes per second")
    parser.add_argument("--worker-fetch-max-wait-ms", type=int, default=20)
    parser.add_argument("--subscriber-fetch-max-wait-ms", type=int, default=2)
    parser.add_argument("--py-spy", metavar="OUT", help="profile the worker into OUT (raw)")
    parser.add_argument("--order", choices=("raw-first", "riskgate-first"), default="raw-first")
    parser.add_argument("--windows", type=int, default=5, help="p50/p99 of this many windows")
    asyncio.run(main(parser.parse_args()))
