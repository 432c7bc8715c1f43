"""Soak: a steady event rate across many symbols against a worker process, for minutes.

The worker (``riskgate run --config FILE``, a child process) consumes a steady
stream - default 5,000 events/s across 10,000 symbols of 100 bots (outcomes,
fills and intents, stamped with the wall clock) - for ``--minutes`` (default 10).
Every few seconds the supervisor samples the worker's resident memory
(``VmRSS`` from ``/proc/PID/status``) and its consumer lag, both as the worker
reports it (``riskgate_consumer_lag`` on ``/metrics``) and as the group's
committed offsets trail the partitions' end offsets. At the end the stream
stops, the worker must catch up, and it is stopped with SIGTERM.

Reported: RSS at start (first sample after warm-up), end and max, growth over
the second half, max lag, and the number of error-level lines in the worker's
JSON log (must be 0). Exit code 0 only when there are no error lines, the
worker caught up and exited cleanly, and memory did not keep growing over the
second half (``--max-growth-mib``).

Usage (from the project root)::

    .venv/bin/python -m tests.chaos.soak --minutes 10 --rate 5000 --symbols 10000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tests.support.harness import config_text, create_topics
from tests.support.reliability import (
    OffsetWatcher,
    RiskgateProcess,
    add_place_args,
    error_lines,
    pid_rss_mib,
    report_exit,
    say,
    script_place,
    stopping,
    warning_count,
)
from worker.config import Config, load_config

_encode = msgspec.json.encode


@dataclass
class Sample:
    at: float
    """Seconds since the stream started."""
    rss_mib: float
    lag_metric: float
    lag_committed: int
    produced: int


@dataclass
class SoakReport:
    seconds: float = 0.0
    rate_target: float = 0.0
    produced: int = 0
    symbols: int = 0
    bots: int = 0
    samples: list[Sample] = field(default_factory=list)
    broker_rss_mib: tuple[float, float] | None = None
    caught_up_s: float | None = None
    lag_at_end: int | None = None
    """Records produced but not committed when the worker was stopped (0: nothing lost)."""
    final_rc: int | None = None
    errors: list[str] = field(default_factory=list)
    warnings: int = 0
    max_growth_mib: float = 64.0

    @property
    def rss_start(self) -> float:
        return self.samples[0].rss_mib if self.samples else float("nan")

    @property
    def rss_end(self) -> float:
        return self.samples[-1].rss_mib if self.samples else float("nan")

    @property
    def rss_max(self) -> float:
        return max((s.rss_mib for s in self.samples), default=float("nan"))

    @property
    def rss_second_half_growth(self) -> float:
        """RSS at the end minus RSS at mid-run: what a leak would show (warm-up excluded)."""
        if len(self.samples) < 2:
            return 0.0
        mid = self.samples[len(self.samples) // 2]
        return self.rss_end - mid.rss_mib

    @property
    def max_lag(self) -> float:
        return max((max(s.lag_metric, s.lag_committed) for s in self.samples), default=0.0)

    @property
    def rate_achieved(self) -> float:
        return self.produced / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.errors
            and self.final_rc == 0
            and self.caught_up_s is not None
            and self.rss_second_half_growth <= self.max_growth_mib
        )

    def lines(self) -> list[str]:
        out = [
            f"soak: {'OK' if self.ok else 'FAILED'}",
            f"stream:         {self.produced} events in {self.seconds:.0f}s"
            f" ({self.rate_achieved:.0f}/s, target {self.rate_target:.0f}/s)"
            f" across {self.symbols} symbols of {self.bots} bots",
            f"worker RSS:     start {self.rss_start:.1f} MiB, end {self.rss_end:.1f} MiB,"
            f" max {self.rss_max:.1f} MiB; second-half growth"
            f" {self.rss_second_half_growth:+.1f} MiB (limit {self.max_growth_mib:.0f})",
            f"max lag:        {self.max_lag:.0f} records",
            f"caught up:      {'no' if self.caught_up_s is None else f'{self.caught_up_s:.1f}s'}"
            f" after the stream stopped (lag then {self.lag_at_end}); exit code {self.final_rc}",
            f"error lines:    {len(self.errors)} (warnings {self.warnings})",
        ]
        if self.broker_rss_mib is not None:
            start, end = self.broker_rss_mib
            out.append(
                f"broker RSS:     {start:.0f} -> {end:.0f} MiB (memory-only: keeps every record)"
            )
        out.append("samples (s: RSS MiB / lag metric / lag committed / produced):")
        out.extend(
            f"  {s.at:6.1f}: {s.rss_mib:7.1f} / {s.lag_metric:7.0f}"
            f" / {s.lag_committed:7d} / {s.produced}"
            for s in self.samples
        )
        out.extend(f"  error: {line[:300]}" for line in self.errors[:10])
        return out


def soak_body(bots: int) -> str:
    """Bots with no symbol list (any symbol), outcomes-booked; default limits."""
    return "\n".join(f"[bots.sb{b:03d}]" for b in range(bots)) + "\n"


class Stream:
    """A paced producer thread (librdkafka): ``rate`` events/s until stopped."""

    def __init__(self, config: Config, *, rate: float, symbols: int, bots: int, seed: int) -> None:
        self._config = config
        self._rate = rate
        self._symbols = symbols
        self._bots = bots
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self.produced = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="soak-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _record(self, n: int, now: int) -> tuple[str, bytes, bytes]:
        rng = self._rng
        topics = self._config.topics
        idx = rng.randrange(self._symbols)
        bot = f"sb{idx % self._bots:03d}"
        symbol = f"S{idx:05d}"
        roll = rng.random()
        if roll < 0.70:
            value = {
                "outcome_id": f"so-{n}",
                "bot": bot,
                "symbol": symbol,
                "gross_pnl": round(rng.uniform(-2.0, 2.2), 2),
                "fee": 0.01,
                "ts": now,
            }
            return topics.outcomes, bot.encode(), _encode(value)
        if roll < 0.95:
            value = {
                "fill_id": f"sf-{n}",
                "bot": bot,
                "symbol": symbol,
                "side": rng.choice(("buy", "sell")),
                "qty": float(rng.randint(1, 3)),
                "price": round(rng.uniform(90.0, 110.0), 2),
                "fee": 0.02,
                "ts": now,
            }
            return topics.fills, bot.encode(), _encode(value)
        value = {
            "intent_id": f"si-{n}",
            "bot": bot,
            "symbol": symbol,
            "action": "open",
            "side": "buy",
            "qty": 1.0,
            "price": 100.0,
            "ts": now,
        }
        return topics.intents, bot.encode(), _encode(value)

    def _run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": self._config.kafka.bootstrap_servers,
                "linger.ms": 20,
                "acks": "all",
                "enable.idempotence": False,
                "partitioner": "murmur2_random",  # as Java and aiokafka place keys
                "queue.buffering.max.messages": 1_000_000,
            }
        )

        def delivered(err: object, _msg: object) -> None:
            if err is not None and len(self.errors) < 100:
                self.errors.append(str(err))

        tick = 0.05
        started = time.monotonic()
        n = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self._rate)
            now = time.time_ns() // 1_000_000
            while n < due:
                topic, key, value = self._record(n, now)
                try:
                    producer.produce(topic, value, key, on_delivery=delivered)
                except BufferError:
                    producer.poll(0.05)
                    continue
                n += 1
            self.produced = n
            producer.poll(0)
            self._stop.wait(tick)
        producer.flush(60)
        self.produced = n


async def _metric_lag(worker: RiskgateProcess) -> float:
    try:
        metrics = await worker.metrics()
    except Exception:
        return float("nan")
    return sum(v for (name, _), v in metrics.items() if name == "riskgate_consumer_lag")


async def run_soak(
    bootstrap: str,
    workdir: Path,
    *,
    seconds: float,
    rate: float,
    symbols: int,
    bots: int = 100,
    partitions: int = 8,
    sample_every: float = 5.0,
    warmup: float = 5.0,
    seed: int = 1,
    extra_toml: str = "",
    broker_pid: int | None = None,
    max_growth_mib: float = 64.0,
    session_timeout_ms: int = 10_000,
    say: Callable[[str], None] = lambda _: None,
) -> SoakReport:
    """The whole soak against ``bootstrap``; never leaves the worker running."""
    report = SoakReport(rate_target=rate, symbols=symbols, bots=bots, max_growth_mib=max_growth_mib)
    config_path = workdir / "riskgate.toml"
    config_path.write_text(
        config_text(
            bootstrap,
            soak_body(bots) + extra_toml,
            partitions=partitions,
            session_timeout_ms=session_timeout_ms,
        )
    )
    config = load_config(config_path, env={})
    await create_topics(config)
    worker = RiskgateProcess(config_path, workdir / "worker.log")
    inputs = (config.topics.fills, config.topics.outcomes, config.topics.intents)
    broker_start = pid_rss_mib(broker_pid) if broker_pid else None
    async with (
        stopping(worker),
        OffsetWatcher(config.kafka, config.kafka.group_id, inputs) as offsets,
    ):
        worker.start()
        await _wait_ready(worker)
        stream = Stream(config, rate=rate, symbols=symbols, bots=bots, seed=seed)
        stream.start()
        started = time.monotonic()
        try:
            next_sample = started + warmup
            while (elapsed := time.monotonic() - started) < seconds:
                worker.check_alive()
                if time.monotonic() >= next_sample:
                    rss = worker.rss_mib()
                    sample = Sample(
                        at=elapsed,
                        rss_mib=rss if rss is not None else float("nan"),
                        lag_metric=await _metric_lag(worker),
                        lag_committed=await offsets.lag(),
                        produced=stream.produced,
                    )
                    report.samples.append(sample)
                    say(
                        f"  {sample.at:6.1f}s rss {sample.rss_mib:6.1f} MiB"
                        f" lag {sample.lag_metric:.0f}/{sample.lag_committed}"
                        f" produced {sample.produced}"
                    )
                    next_sample += sample_every
                await asyncio.sleep(0.2)
        finally:
            await asyncio.to_thread(stream.stop)
        report.seconds = time.monotonic() - started
        report.produced = stream.produced
        report.errors.extend(f"producer: {e}" for e in stream.errors)
        stopped = time.monotonic()
        deadline = stopped + 120 + report.produced / 2_000
        while time.monotonic() < deadline:
            worker.check_alive()
            if await offsets.lag() == 0:
                report.caught_up_s = time.monotonic() - stopped
                break
            await asyncio.sleep(0.5)
        report.lag_at_end = await offsets.lag()
        report.final_rc = worker.terminate(grace=30)
    if broker_pid and broker_start is not None:
        report.broker_rss_mib = (broker_start, pid_rss_mib(broker_pid) or float("nan"))
    report.errors.extend(error_lines(worker.log_path))
    report.warnings = warning_count(worker.log_path)
    return report


async def _wait_ready(worker: RiskgateProcess, within: float = 90.0) -> None:
    """Until ``/readyz`` answers 200: assigned, restored, committing."""
    import aiohttp

    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            worker.check_alive()
            try:
                url = f"http://127.0.0.1:{worker.http_port()}/readyz"
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except (AssertionError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"the worker did not get ready:\n{worker.log_tail()}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5_000.0, help="events per second")
    parser.add_argument("--symbols", type=int, default=10_000)
    parser.add_argument("--bots", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--max-growth-mib", type=float, default=64.0)
    parser.add_argument("--seed", type=int, default=1)
    add_place_args(parser)
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    async with script_place(args, "riskgate-soak-") as place:
        say(
            f"soak: {args.minutes:g} min at {args.rate:g}/s, {args.symbols} symbols;"
            f" in {place.workdir}"
        )
        report = await run_soak(
            place.bootstrap,
            place.workdir,
            seconds=args.minutes * 60,
            rate=args.rate,
            symbols=args.symbols,
            bots=args.bots,
            partitions=args.partitions,
            sample_every=args.sample_every,
            seed=args.seed,
            broker_pid=place.broker_pid,
            max_growth_mib=args.max_growth_mib,
            say=say,
        )
    return report_exit(report)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
