"""Round-trip latency of ``GateClient.check`` at a steady, paced intent rate.

Starts an embedded broker (or uses ``--bootstrap``), creates the topics, runs
``riskgate run`` as a child process (or in this process with ``--inproc``) and
sends ``--rate`` intents per second for ``--duration`` seconds, each through
``GateClient.check``; the first ``--warmup`` seconds are not counted. Like an
execution service, the bench sends a fill carrying the intent id for every
allowed open, so reservations are released as in production (``--no-fills``:
they pile up for the TTL and every batch re-encodes them in the portfolio
snapshot). Prints the settings it used and p50/p90/p99/p99.9/max.

``[kafka] fetch_max_wait_ms`` (worker and client) matters on the embedded
broker, which does not wake a waiting fetch when records arrive: each hop costs
up to that long. 1 ms is fastest at low rates; at 1000/s it makes the worker and
the client poll the broker a thousand times a second each, which on a small
machine costs more than it saves, so the default here is 10.

In the same invocation, on the same broker, the same paced intents go through
plain relays instead (``bench/baseline.py relay``, worker fetch settings, no
riskgate code): client -> A -> relay -> B -> relay -> C -> client. It prints
riskgate's round trip next to three raw hops (the target: p99 <= 1.2x) and two
(the topics a check crosses: intents, decisions), the ratios, and p50/p99 per
window of the run (``--seconds 300`` for a 5-minute run).

    .venv/bin/python -m bench.check_latency                        # 1000/s for 10 s
    .venv/bin/python -m bench.check_latency --fetch-max-wait-ms 1 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
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
from worker.client import GateClient
from worker.clock import wall_clock_ms as now_ms
from worker.config import Config, KafkaConfig, load_config
from worker.kafka.broker import EmbeddedBroker
from worker.kafka.options import client_kwargs
from worker.kafka.topics import ensure_topics
from worker.messages import Fill, GateDecision, OrderIntent

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.2


def config_toml(args: argparse.Namespace, bootstrap: str) -> str:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    topics = "\n".join(
        f'{field} = "{prefix}.{name}"'
        for field, name in (
            ("fills", "trading.fills"),
            ("outcomes", "trading.outcomes"),
            ("intents", "trading.intents"),
            ("control", "risk.control"),
            ("snapshots", "risk.snapshots"),
            ("gates", "risk.gates"),
            ("halts", "risk.halts"),
            ("decisions", "risk.decisions"),
            ("deadletter", "risk.deadletter"),
        )
    )
    return f"""
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{prefix}.riskgate"
client_id = "{prefix}"
fetch_max_wait_ms = {args.fetch_max_wait_ms}

[topics]
{topics}
partitions = {args.partitions}

[worker]
sweep_interval_ms = 1000
heartbeat_interval_ms = 5000

[defaults]
accept_unknown_bots = true

[http]
host = "127.0.0.1"
port = 0

[log]
format = "json"
level = "WARNING"
"""


@contextlib.asynccontextmanager
async def worker_running(
    config: Config, config_path: Path, inproc: bool, log_path: Path
) -> AsyncIterator[None]:
    if inproc:
        from worker.runtime import Worker

        worker = Worker(config)
        task = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            worker.stop()
            await task
        return
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker.cli",
            "run",
            "--config",
            str(config_path),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")},
        )
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()  # SIGTERM: graceful shutdown
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class Feed:
    """Intents round-robin over bots and symbols; fills for allowed opens."""

    def __init__(self, bots: int, symbols: int) -> None:
        self.keys = [(f"bot{b}", f"SYM{s}") for b in range(bots) for s in range(symbols)]
        self.n = 0

    def intent(self) -> OrderIntent:
        bot, symbol = self.keys[self.n % len(self.keys)]
        side = "buy" if (self.n // len(self.keys)) % 2 == 0 else "sell"
        self.n += 1
        return OrderIntent(
            intent_id=uuid.uuid4().hex,
            bot=bot,
            symbol=symbol,
            action="open",
            side=side,
            qty=1.0,
            price=100.0,
            ts=now_ms(),
        )


class _Probe(msgspec.Struct):
    intent_id: str


_probe = msgspec.json.Decoder(_Probe)


async def _arrivals(
    consumer: AIOKafkaConsumer, arrived: dict[str, float], expected: int, done: asyncio.Event
) -> None:
    """perf_counter time each intent id first arrived on the consumer's topic."""
    while True:
        batch = await consumer.getmany(timeout_ms=100)
        now = time.perf_counter()
        for records in batch.values():
            for record in records:
                arrived.setdefault(_probe.decode(record.value).intent_id, now)
        if len(arrived) >= expected:
            done.set()


async def raw_hops(args: argparse.Namespace, bootstrap: str, workdir: Path) -> RawRun:
    """The same paced intents through plain relays: client -> A -> relay -> B -> relay -> C.

    Each relay is its own process (``bench/baseline.py relay``) with the worker's
    fetch settings; the producer is the client's (acks=1, linger 0) and the
    readers of B (two hops) and C (three hops) use the client's fetch settings.
    """
    prefix = f"bench.raw.{uuid.uuid4().hex[:8]}"
    a, b, c = (f"{prefix}.{name}" for name in "abc")
    await create_plain_topics(bootstrap, [a, b, c], args.partitions)
    kafka = KafkaConfig(bootstrap_servers=bootstrap, fetch_max_wait_ms=args.fetch_max_wait_ms)
    kwargs = client_kwargs(kafka)
    producer = AIOKafkaProducer(**kwargs, acks=1, linger_ms=0)
    readers = {
        topic: AIOKafkaConsumer(
            **kwargs,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=args.fetch_max_wait_ms,
        )
        for topic in (b, c)
    }
    arrived: dict[str, dict[str, float]] = {b: {}, c: {}}
    sent: list[tuple[str, float]] = []
    hops = [
        relay_argv(
            bootstrap,
            src,
            dst,
            partitions=args.partitions,
            fetch_max_wait_ms=args.fetch_max_wait_ms,
        )
        for src, dst in ((a, b), (b, c))
    ]
    feed = Feed(args.bots, args.symbols)
    total = int(args.rate * (args.warmup + args.duration))
    warmup = int(args.rate * args.warmup)
    done = {b: asyncio.Event(), c: asyncio.Event()}
    with (
        baseline_process(hops[0], workdir / "relay1.log") as first,
        baseline_process(hops[1], workdir / "relay2.log") as second,
    ):
        await producer.start()
        tasks = []
        try:
            for topic, reader in readers.items():
                await reader.start()
                reader.assign([TopicPartition(topic, p) for p in range(args.partitions)])
                tasks.append(
                    asyncio.create_task(_arrivals(reader, arrived[topic], total, done[topic]))
                )
            await first.wait_for("ready", within=60)
            await second.wait_for("ready", within=60)
            t0 = time.perf_counter()
            for i in range(total):
                delay = t0 + i / args.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                intent = feed.intent()
                if i >= warmup:
                    sent.append((intent.intent_id, time.perf_counter()))
                await producer.send(a, msgspec.json.encode(intent), key=intent.bot.encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(done[b].wait(), done[c].wait()), 10)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for reader in readers.values():
                await reader.stop()
            await producer.stop()
    return RawRun(
        two=[(t, (arrived[b][i] - t) * 1000) for i, t in sent if i in arrived[b]],
        three=[(t, (arrived[c][i] - t) * 1000) for i, t in sent if i in arrived[c]],
        lost=sum(1 for i, _ in sent if i not in arrived[c]),
    )


class RawRun(NamedTuple):
    two: list[tuple[float, float]]
    """(sent at, ms) per intent read from B: two raw hops."""
    three: list[tuple[float, float]]
    """(sent at, ms) per intent read from C: three raw hops."""
    lost: int


async def run(args: argparse.Namespace, bootstrap: str, workdir: Path) -> None:
    config_path = workdir / "bench.toml"
    config_path.write_text(config_toml(args, bootstrap))
    config = load_config(config_path, env={})
    await ensure_topics(config.kafka, config.topics)
    feed = Feed(args.bots, args.symbols)
    fills = AIOKafkaProducer(**client_kwargs(config.kafka), acks=1, linger_ms=2)
    await fills.start()
    client = GateClient(config.kafka, config.topics, timeout_ms=args.timeout_ms)
    await client.start()
    encode = msgspec.json.encode
    raw = await raw_hops(args, bootstrap, workdir) if args.order == "raw-first" else None
    timed: list[tuple[float, float]] = []
    try:
        async with worker_running(config, config_path, args.inproc, workdir / "worker.log"):
            # Ready when a check is answered (group join + restore take a few seconds).
            started = time.perf_counter()
            while True:
                decision = await client.check(feed.intent(), timeout_ms=1000)
                if decision.gate is not None or decision.allowed:
                    break
                if time.perf_counter() - started > 60:
                    raise SystemExit("worker did not answer within 60 s")
            print(f"worker answering after {time.perf_counter() - started:.1f} s")

            latencies: list[float] = []
            timeouts = 0
            denied = 0

            async def one(intent: OrderIntent, counted: bool) -> None:
                nonlocal timeouts, denied
                sent = time.perf_counter()
                decision: GateDecision = await client.check(intent)
                elapsed = time.perf_counter() - sent
                if decision.allowed and args.fills:
                    fill = Fill(
                        fill_id=uuid.uuid4().hex,
                        bot=intent.bot,
                        symbol=intent.symbol,
                        side=intent.side,
                        qty=intent.qty,
                        price=intent.price,
                        fee=0.0,
                        ts=now_ms(),
                        intent_id=intent.intent_id,
                    )
                    await fills.send(config.topics.fills, encode(fill), key=fill.bot.encode())
                if not counted:
                    return
                if decision.gate is None and not decision.allowed:
                    timeouts += 1  # failed closed: counted at the timeout in the percentiles
                    latencies.append(args.timeout_ms / 1000)
                    timed.append((sent, float(args.timeout_ms)))
                    return
                denied += not decision.allowed
                latencies.append(elapsed)
                timed.append((sent, elapsed * 1000))

            total = int(args.rate * (args.warmup + args.duration))
            warmup = int(args.rate * args.warmup)
            tasks: set[asyncio.Task[None]] = set()
            lag_max = 0.0
            t0 = time.perf_counter()
            for i in range(total):
                due = t0 + i / args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    lag_max = max(lag_max, -delay)
                task = asyncio.create_task(one(feed.intent(), counted=i >= warmup))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent_for = time.perf_counter() - t0
            await asyncio.gather(*tasks)
    finally:
        await client.stop()
        await fills.stop()
    if raw is None:
        raw = await raw_hops(args, bootstrap, workdir)

    measured = len(latencies)
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    print(
        f"sent {total} intents in {sent_for:.2f} s ({total / sent_for:.0f}/s), "
        f"pacing lag max {lag_max * 1000:.1f} ms; measured {measured} after {args.warmup:g} s"
        f" warm-up"
    )
    print(
        f"decisions: {measured - timeouts} ({denied} denied), "
        f"timeouts (fail-closed, counted as {args.timeout_ms} ms): {timeouts}"
    )
    if ms:
        print(
            "round trip ms: "
            f"p50 {percentile(ms, 0.50):.2f}  p90 {percentile(ms, 0.90):.2f}  "
            f"p99 {percentile(ms, 0.99):.2f}  p99.9 {percentile(ms, 0.999):.2f}  "
            f"max {ms[-1]:.2f}  mean {statistics.fmean(ms):.2f}"
        )
        verdict = "meets" if percentile(ms, 0.99) <= 5.0 else "MISSES"
        print(f"target p99 <= 5 ms: {verdict}")
    three = [x for _, x in raw.three]
    print(stats_line("riskgate check round trip", ms))
    print(stats_line("3 raw hops (client -> relay -> relay -> client)", three))
    print(stats_line("2 raw hops (client -> relay -> client)", [x for _, x in raw.two]))
    if raw.lost:
        print(f"raw hops lost {raw.lost} intents")
    if ms and three:
        print(ratio_line(ms, three, 3))
        print(ratio_line(ms, [x for _, x in raw.two], 2))
        print(windows_line("riskgate", timed, args.windows))
        print(windows_line("3 raw hops", raw.three, args.windows))
        ok = percentile(ms, 0.99) <= TARGET_RATIO * nearest_rank(sorted(three), 99)
        print(f"p99 <= {TARGET_RATIO}x three raw hops: {'PASS' if ok else 'BELOW TARGET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="intents per second")
    parser.add_argument(
        "--duration", "--seconds", type=float, default=10.0, help="measured seconds (each path)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds first")
    parser.add_argument(
        "--fetch-max-wait-ms", type=int, default=10, help="[kafka] fetch_max_wait_ms"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bots", type=int, default=8)
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--timeout-ms", type=int, default=1000, help="GateClient timeout")
    parser.add_argument("--no-fills", dest="fills", action="store_false", help="send no fills")
    parser.add_argument("--inproc", action="store_true", help="run the worker in this process")
    parser.add_argument("--bootstrap", help="an existing broker instead of the embedded one")
    parser.add_argument("--order", choices=("raw-first", "riskgate-first"), default="raw-first")
    parser.add_argument("--windows", type=int, default=5, help="p50/p99 of this many windows")
    args = parser.parse_args()

    print(
        f"settings: rate={args.rate:g}/s duration={args.duration:g}s warmup={args.warmup:g}s "
        f"[kafka] fetch_max_wait_ms={args.fetch_max_wait_ms} (worker and client) "
        f"partitions={args.partitions} bots={args.bots} symbols/bot={args.symbols} "
        f"fills={'on' if args.fills else 'off'} "
        f"worker={'in-process' if args.inproc else 'child process'} "
        f"client timeout={args.timeout_ms} ms; producers: worker acks=all linger=0, "
        f"client acks=1 linger=0; broker={args.bootstrap or 'embedded Tansu'}; "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="riskgate-bench-") as tmp:
        if args.bootstrap:
            asyncio.run(run(args, args.bootstrap, Path(tmp)))
        else:
            with EmbeddedBroker() as broker:
                asyncio.run(run(args, broker.bootstrap_servers, Path(tmp)))


if __name__ == "__main__":
    main()
