"""Shared plumbing of the end-to-end benchmarks (``bench/e2e_*.py``).

Each benchmark starts its own embedded broker, runs the real worker as a
subprocess (``python -m worker.cli run --config FILE``, so the numbers include
the real CLI and nothing of the benchmark's own event loop), prints numbers and
stops everything it started by PID. The worker-process helpers come from the
integration-test harness so tests and benchmarks drive the worker the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Producer

from tests.support.harness import (
    WorkerProcess,
    committed_offsets,
    config_text,
    create_topics,
    latest,
    now_ms,
    read_topic,
)
from worker.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "ROOT",
    "WorkerProcess",
    "bench_config",
    "committed_offsets",
    "cpu_seconds",
    "create_topics",
    "fast_produce",
    "latest",
    "log_event_time",
    "now_ms",
    "peak_rss_mb",
    "percentile",
    "read_topic",
    "start_profiler",
    "stop_profiler",
    "wait_http_ok",
    "workdir",
    "worker_process",
]


def bench_config(
    bootstrap: str,
    body: str,
    *,
    partitions: int = 8,
    session_timeout_ms: int = 10_000,
    kafka_extra: str = "",
    workdir: Path,
) -> tuple[Path, Config]:
    """Write a config file for the worker subprocess; return its path and the parsed config."""
    path = workdir / "riskgate.toml"
    path.write_text(
        config_text(
            bootstrap,
            body,
            partitions=partitions,
            session_timeout_ms=session_timeout_ms,
            kafka_extra=kafka_extra,
        )
    )
    return path, load_config(path, env={})


def fast_produce(
    bootstrap: str, records: Iterable[tuple[str, bytes, bytes, int | None]]
) -> tuple[int, float]:
    """Pre-load with librdkafka (batched, lingering): ``(topic, key, value, partition)``.

    Returns (records sent, seconds). Blocking; run it in a thread from async code.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "batch.num.messages": 100_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_000_000,
            "acks": "1",
            "enable.idempotence": False,
            # The producer contract: keys placed as Java/aiokafka place them (the
            # worker dead-letters a bot off its murmur2 partition).
            "partitioner": "murmur2_random",
        }
    )
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    started = time.perf_counter()
    sent = 0
    for topic, key, value, partition in records:
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining or errors:
        raise RuntimeError(f"pre-load failed: {remaining} undelivered, errors: {errors[:3]}")
    return sent, time.perf_counter() - started


@contextmanager
def worker_process(config_path: Path) -> Iterator[WorkerProcess]:
    """A worker subprocess, always stopped (SIGTERM, then SIGKILL) by PID on exit."""
    worker = WorkerProcess(config_path, config_path.with_suffix(".log"))
    try:
        yield worker
    finally:
        worker.terminate(grace=30)
        worker.kill()


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="riskgate-bench-") as name:
        yield Path(name)


def log_event_time(worker: WorkerProcess, event: str) -> float | None:
    """Wall time (epoch seconds) of the last log line with this ``event`` in the worker's log."""
    if not worker.log_path.exists():
        return None
    for line in reversed(worker.log_path.read_text().splitlines()):
        if f'"event": "{event}"' in line:
            stamp = json.loads(line)["timestamp"].replace("Z", "+00:00")
            return dt.datetime.fromisoformat(stamp).timestamp()
    return None


async def wait_http_ok(worker: WorkerProcess, path: str, within: float) -> float:
    """Poll ``http://127.0.0.1:<port><path>`` until 200; returns the wall time it answered 200."""
    import aiohttp

    deadline = time.monotonic() + within
    port: int | None = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            worker.check_alive()
            if port is None:
                try:
                    port = worker.http_port()
                except AssertionError:
                    await asyncio.sleep(0.01)
                    continue
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    if response.status == 200:
                        return time.time()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.005)
    raise TimeoutError(f"{path} did not answer 200 within {within}s:\n{worker.log_tail()}")


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def start_profiler(out: str | None, pid: int) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` on the worker (optional; py-spy must be installed)."""
    if not out:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [spy, "record", "--idle", "--pid", str(pid), "--rate", "250", "--format", "raw", "-o", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        profiler.wait(30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]
