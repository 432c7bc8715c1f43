"""The broker's own ceiling: bare aiokafka loops with no riskgate code at all.

Every end-to-end benchmark compares riskgate with what the same client library
does on the same broker, in the same invocation, with the same client settings:

- ``loop`` — the throughput ceiling: a consumer-group member that fetches a
  batch, decodes each outcome, updates a dict, produces one record per changed
  key, waits for the acks and commits the batch's offsets. No gates, no
  dedupe, no watermarks, no snapshots.
- ``relay`` — one latency hop: a consumer assigned every partition of one
  topic (from its end) that produces each record it fetches, unchanged, to the
  same partition of another topic and waits for the acks before fetching again
  (as the worker waits for its outputs' acks). No group, no commits. Chained,
  relays give the raw cost of N broker hops. With ``--side-target``, records
  without a ``probe`` header go to that topic instead (the worker, too, writes
  halts to one topic and its other outputs to others).

Each runs as its own process (as the worker does), started and stopped by PID
through :class:`BaselineProcess`. The process side imports only aiokafka and
msgspec: ``python -m bench.baseline {loop,relay} ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

ROOT = Path(__file__).resolve().parents[1]

# The worker's consumer and producer options (worker/kafka/options.py, worker/app.py),
# repeated here so the baseline process stays free of riskgate code.
FETCH_MAX_BYTES = 32 * 1024 * 1024
MAX_PARTITION_FETCH_BYTES = 4 * 1024 * 1024
MAX_BATCH_SIZE = 1024 * 1024


class Outcome(msgspec.Struct):
    """The fields of a TradeOutcome the bare loop needs (the rest are skipped)."""

    bot: str
    symbol: str
    gross_pnl: float
    fee: float


_outcome = msgspec.json.Decoder(Outcome)
_encode = msgspec.json.Encoder().encode


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="baseline",
        acks="all",
        linger_ms=0,
        max_batch_size=MAX_BATCH_SIZE,
        enable_idempotence=False,
    )


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        print(f"assigned {time.time():.6f} {len(assigned)}", flush=True)


async def bare_loop(args: argparse.Namespace) -> None:
    """consume -> update dict -> produce -> commit, one batch at a time."""
    stop = _stop_event()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        client_id="baseline",
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    producer = _producer(args.bootstrap)
    await producer.start()
    await consumer.start()
    consumer.subscribe([args.topic], listener=_Assigned())
    pnl: dict[tuple[str, str], float] = {}
    try:
        while not stop.is_set():
            batch = await consumer.getmany(
                timeout_ms=args.poll_timeout_ms, max_records=args.max_records
            )
            if not batch:
                continue
            changed: set[tuple[str, str]] = set()
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batch.items():
                for record in records:
                    outcome = _outcome.decode(record.value)
                    key = (outcome.bot, outcome.symbol)
                    pnl[key] = pnl.get(key, 0.0) + outcome.gross_pnl - outcome.fee
                    changed.add(key)
                offsets[tp] = records[-1].offset + 1
            futures = [
                await producer.send(
                    args.out_topic,
                    _encode({"bot": bot, "symbol": symbol, "pnl": pnl[bot, symbol]}),
                    key=bot.encode(),
                )
                for bot, symbol in changed
            ]
            await asyncio.gather(*futures)
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


async def relay(args: argparse.Namespace) -> None:
    """Forward every record of ``--source`` to the same partition of ``--target``."""
    stop = _stop_event()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        client_id="baseline-relay",
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    producer = _producer(args.bootstrap)
    await producer.start()
    await consumer.start()
    try:
        tps = [TopicPartition(args.source, p) for p in range(args.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        print(f"ready {time.time():.6f} {len(tps)}", flush=True)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=args.poll_timeout_ms)
            futures = [
                await producer.send(
                    _route(args, record.headers),
                    record.value,
                    key=record.key,
                    partition=tp.partition,
                    headers=list(record.headers or ()),
                )
                for tp, records in batch.items()
                for record in records
            ]
            await asyncio.gather(*futures)
    finally:
        await consumer.stop()
        await producer.stop()


def _route(args: argparse.Namespace, headers: object) -> str:
    """``--target``, or ``--side-target`` for a record without the ``probe`` header."""
    if args.side_target is None or any(name == "probe" for name, _ in headers or ()):
        return str(args.target)
    return str(args.side_target)


# -- the benchmark side --------------------------------------------------------------


async def create_plain_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Topics for the baseline (the worker's own topics come from its config)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="baseline-admin")
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        )
    finally:
        await admin.close()


class BaselineProcess:
    """One ``python -m bench.baseline`` child, its stdout in a file, stopped by PID."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.baseline", *argv],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"baseline exited {self.proc.returncode}:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stamp(self, word: str) -> float | None:
        """Epoch seconds of the last ``<word> <epoch> ...`` line it printed."""
        stamps = [line.split()[1] for line in self.output().splitlines() if line.startswith(word)]
        return float(stamps[-1]) if stamps else None

    async def wait_for(self, word: str, within: float) -> float:
        deadline = time.monotonic() + within
        while (stamp := self.stamp(word)) is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"baseline did not print {word!r}:\n{self.output()}")
            await asyncio.sleep(0.02)
        return stamp

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def baseline_process(argv: list[str], log_path: Path) -> Iterator[BaselineProcess]:
    process = BaselineProcess(argv, log_path)
    try:
        yield process
    finally:
        process.stop()


def loop_argv(
    bootstrap: str,
    topic: str,
    out_topic: str,
    group: str,
    *,
    fetch_max_wait_ms: int,
    poll_timeout_ms: int,
    max_records: int,
) -> list[str]:
    return [
        "loop",
        f"--bootstrap={bootstrap}",
        f"--topic={topic}",
        f"--out-topic={out_topic}",
        f"--group={group}",
        f"--fetch-max-wait-ms={fetch_max_wait_ms}",
        f"--poll-timeout-ms={poll_timeout_ms}",
        f"--max-records={max_records}",
    ]


def relay_argv(
    bootstrap: str,
    source: str,
    target: str,
    *,
    partitions: int,
    fetch_max_wait_ms: int,
    side_target: str | None = None,
) -> list[str]:
    argv = [
        "relay",
        f"--bootstrap={bootstrap}",
        f"--source={source}",
        f"--target={target}",
        f"--partitions={partitions}",
        f"--fetch-max-wait-ms={fetch_max_wait_ms}",
    ]
    return [*argv, f"--side-target={side_target}"] if side_target else argv


class CommitWatch:
    """A group's committed offsets, polled through one open consumer that never joins.

    One consumer for the whole run: starting a client per poll costs more than
    the poll, on the machine being measured.
    """

    def __init__(self, bootstrap: str, group: str) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="baseline-watch",
            group_id=group,
            enable_auto_commit=False,
        )

    async def __aenter__(self) -> CommitWatch:
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Committed offset of each partition (0 where nothing is committed)."""
        offsets = await asyncio.gather(*(self._consumer.committed(tp) for tp in tps))
        return {tp: offset or 0 for tp, offset in zip(tps, offsets, strict=True)}


def steady_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Records/s between 10% and 90% of ``total`` done (start-up and tail excluded).

    ``samples`` are (wall time, records done) pairs taken while polling progress.
    """
    low = next((s for s in samples if s[1] >= 0.1 * total), None)
    high = next((s for s in samples if s[1] >= 0.9 * total), None)
    if low is None or high is None or high[0] <= low[0]:
        return float("nan")
    return (high[1] - low[1]) / (high[0] - low[0])


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def stats_line(name: str, values_ms: list[float]) -> str:
    ordered = sorted(values_ms)
    if not ordered:
        return f"{name}: no samples"
    return (
        f"{name}: n={len(ordered)} p50={nearest_rank(ordered, 50):.2f} ms "
        f"p99={nearest_rank(ordered, 99):.2f} ms max={ordered[-1]:.2f} ms"
    )


def ratio_line(ours_ms: list[float], base_ms: list[float], hops: int) -> str:
    """riskgate / raw hops at p50, p99 and max."""
    ours, base = sorted(ours_ms), sorted(base_ms)
    parts = [
        f"{label} {nearest_rank(ours, q) / nearest_rank(base, q):.2f}x"
        for label, q in (("p50", 50), ("p99", 99))
    ]
    parts.append(f"max {ours[-1] / base[-1]:.2f}x")
    return f"ratio riskgate / {hops} raw hops: " + ", ".join(parts)


def windows_line(name: str, timed: list[tuple[float, float]], count: int) -> str:
    """p50/p99 in ``count`` equal windows of the run (by send time): growth shows here.

    ``timed`` holds (sent at, latency ms) pairs.
    """
    if not timed:
        return f"{name}: no samples"
    start = min(t for t, _ in timed)
    span = max(t for t, _ in timed) - start or 1.0
    buckets: list[list[float]] = [[] for _ in range(count)]
    for sent, latency in timed:
        buckets[min(count - 1, int((sent - start) / span * count))].append(latency)
    cells = []
    for bucket in buckets:
        bucket.sort()
        cells.append(f"{nearest_rank(bucket, 50):.1f}/{nearest_rank(bucket, 99):.1f}")
    return f"{name} p50/p99 ms by {span / count:.0f} s window: " + "  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    loop = sub.add_parser("loop", help="bare consume -> dict -> produce -> commit loop")
    loop.add_argument("--topic", required=True)
    loop.add_argument("--out-topic", required=True)
    loop.add_argument("--group", required=True)
    loop.add_argument("--max-records", type=int, default=5_000)
    hop = sub.add_parser("relay", help="one raw hop: consume -> produce, unchanged")
    hop.add_argument("--source", required=True)
    hop.add_argument("--target", required=True)
    hop.add_argument("--partitions", type=int, required=True)
    hop.add_argument(
        "--side-target", help="records without a 'probe' header go here instead of --target"
    )
    for each in (loop, hop):
        each.add_argument("--bootstrap", required=True)
        each.add_argument("--fetch-max-wait-ms", type=int, default=20)
        each.add_argument("--poll-timeout-ms", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(bare_loop(args) if args.command == "loop" else relay(args))


if __name__ == "__main__":
    main()
