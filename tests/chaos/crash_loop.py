"""Crash loop: SIGKILL the worker at random moments while events stream in; lose nothing.

A producer streams a long seeded mix of fills, outcomes, intents, operator
commands, re-sent duplicates and bad records for many bots. Meanwhile a
supervisor runs ``riskgate run --config FILE`` and SIGKILLs it again and again
(``--kills`` times) at seeded random moments - sometimes while it is still
starting, joining the group or restoring, mostly a random instant after it
made progress - and restarts it each time. A last run (ended by SIGTERM)
finishes the stream. Then:

* the state on the compacted snapshot topic (last value per key) must equal the
  reference - the same input through the contract's independent model
  (``tests/support/model.py``), event for event: session PnL, breaker and
  position of every symbol, manual halts, the portfolio latch, and the
  reservations of the intents-only bots (see ``harness.symbol_view`` /
  ``portfolio_view`` for what is compared and why other reservations are not);
* every halt/resume the model emitted was published at least once, under the
  model's ``event_id``, no other one was, and no ``event_id`` names two events;
* every intent got a decision echoing it; the intents-only bots' decisions say
  exactly what the model's say (allowed, gate); every bad record reached the
  dead-letter topic.

Usage (from the project root)::

    .venv/bin/python -m tests.chaos.crash_loop --kills 50 --events 100000 --seed 7

Without ``--bootstrap`` it starts a private embedded broker. It prints a
report and exits 0 only with zero mismatches.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import (
    Feed,
    Produced,
    as_raw,
    config_text,
    create_topics,
    latest,
    now_ms,
    read_topic,
    wait_until,
)
from tests.support.reliability import (
    OffsetWatcher,
    RiskgateProcess,
    Verdict,
    avoid_utc_midnight,
    error_lines,
    generate_workload,
    judge,
    reference_run,
    stopping,
)
from worker.config import load_config
from worker.kafka.broker import EmbeddedBroker
from worker.messages import OrderIntent


@dataclass
class CrashLoopReport:
    seed: int
    kills: int = 0
    kills_while_starting: int = 0
    kills_mid_stream: int = 0
    """Kills that landed after the worker committed progress and before it had caught up."""
    worker_runs: int = 0
    events: int = 0
    unique_events: int = 0
    duplicates: int = 0
    bad_records: int = 0
    bots: int = 0
    exact_intents: int = 0
    """Intent ids of the intents-only bots, whose decisions are compared with the model's."""
    seconds: float = 0.0
    final_rc: int | None = None
    error_log_lines: int = 0
    verdict: Verdict = field(default_factory=Verdict)

    @property
    def mismatches(self) -> int:
        return self.verdict.mismatches

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.final_rc == 0

    def lines(self) -> list[str]:
        return [
            f"crash loop (seed {self.seed}): {'OK' if self.ok else 'FAILED'}",
            f"kills survived:           {self.kills}"
            f" ({self.kills_while_starting} while starting/restoring,"
            f" {self.kills_mid_stream} mid-stream after progress)",
            f"worker runs:              {self.worker_runs} (last one ended by SIGTERM,"
            f" exit code {self.final_rc})",
            f"events produced:          {self.events} ({self.unique_events} unique,"
            f" {self.duplicates} re-sent duplicates, {self.bad_records} bad records)"
            f" for {self.bots} bots",
            *self.verdict.lines(),
            f"mismatches:               {self.mismatches}",
            f"error-level log lines:    {self.error_log_lines} (SIGKILLs may leave some)",
            f"elapsed:                  {self.seconds:.1f}s",
        ]


async def run_crash_loop(
    bootstrap: str,
    workdir: Path,
    *,
    kills: int,
    events: int,
    seed: int,
    bots: int = 16,
    partitions: int = 4,
    rate: float | None = None,
    session_timeout_ms: int = 1_000,
    startup_kill_share: float = 0.3,
    say: Callable[[str], None] = lambda _: None,
) -> CrashLoopReport:
    """Run the whole scenario against ``bootstrap``; never leaves the worker running."""
    started = time.monotonic()
    report = CrashLoopReport(seed=seed)
    workload = generate_workload(seed, events, bots=bots)
    config_path = workdir / "riskgate.toml"
    config_path.write_text(
        config_text(
            bootstrap,
            workload.body() + workload.worker_toml(),
            partitions=partitions,
            session_timeout_ms=session_timeout_ms,
        )
    )
    config = load_config(config_path, env={})
    await create_topics(config)
    records = [as_raw(config, e) for e in workload.stream]
    report.events = len(records)
    report.unique_events = workload.unique_ids()
    report.duplicates = workload.duplicates
    report.bad_records = len(workload.invalid)
    report.bots = len(workload.bots)
    report.exact_intents = len(
        {
            e.intent_id
            for e in workload.valid
            if isinstance(e, OrderIntent) and e.bot in workload.exact_bots
        }
    )
    # Spread the stream over the kill phase (about 2.5 s per cycle) unless told otherwise.
    rate = rate or max(200.0, len(records) / max(1.0, kills * 2.5))
    say(
        f"{len(records)} records for {len(workload.bots)} bots at ~{rate:.0f}/s;"
        f" {kills} SIGKILLs; logs in {workdir}"
    )

    produced: list[Produced] = []
    rng = random.Random(seed ^ 0x5EED)
    worker = RiskgateProcess(config_path, workdir / "worker.log")
    inputs = (config.topics.fills, config.topics.outcomes, config.topics.intents)
    async with (
        stopping(worker),
        Feed(config.kafka) as feed,
        OffsetWatcher(config.kafka, config.kafka.group_id, inputs) as offsets,
    ):

        async def stream() -> None:
            chunk = max(1, int(rate / 20))  # ~20 sends a second
            for i in range(0, len(records), chunk):
                began = time.monotonic()
                produced.extend(await feed.send(records[i : i + chunk]))
                await asyncio.sleep(max(0.0, chunk / rate - (time.monotonic() - began)))

        producer = asyncio.create_task(stream(), name="chaos-producer")
        try:
            for n in range(kills):
                worker.start()
                before = await offsets.committed_total()
                if rng.random() < startup_kill_share:
                    # Anywhere from process start through joining and restoring.
                    await asyncio.sleep(rng.uniform(0.05, 3.0))
                    report.kills_while_starting += 1
                else:
                    delay = rng.uniform(0.0, 1.5)

                    async def progressed(before: int = before) -> bool:
                        return await offsets.committed_total() > before or producer.done()

                    await wait_until(
                        progressed,
                        within=60,
                        what=f"worker run {n + 1} to commit progress",
                        interval=0.1,
                        alive=worker.check_alive,
                    )
                    await asyncio.sleep(delay)
                    if not producer.done() or await offsets.lag() > 0:
                        report.kills_mid_stream += 1
                worker.check_alive()  # it must only ever die by our hand
                worker.kill()
                report.kills += 1
                if (n + 1) % 10 == 0 or n + 1 == kills:
                    say(
                        f"  {n + 1}/{kills} kills; {len(produced)}/{len(records)} produced;"
                        f" {await offsets.committed_total()} committed"
                    )
            await producer
        finally:
            if not producer.done():
                producer.cancel()
        # The last run finishes the stream and stops cleanly. It is stopped only once
        # it has restored (so it runs its signal handlers): when the killed runs had
        # already committed everything, "caught up" holds the moment it starts, and a
        # SIGTERM that lands while the interpreter is still importing ends it as -15.
        restores = _restores(worker.log_path)
        worker.start()

        async def restored() -> bool:
            return _restores(worker.log_path) > restores

        await wait_until(
            restored,
            within=60,
            what="the last worker run to restore",
            interval=0.1,
            alive=worker.check_alive,
        )

        async def caught_up() -> bool:
            committed = await offsets.committed()
            ends: dict[tuple[str, int], int] = {}
            for p in produced:
                ends[(p.topic, p.partition)] = max(
                    ends.get((p.topic, p.partition), 0), p.offset + 1
                )
            return all(committed[tp] >= ends.get((tp.topic, tp.partition), 0) for tp in committed)

        await wait_until(
            caught_up,
            within=120 + len(records) / 200,
            what="the last worker run to commit everything",
            interval=0.25,
            alive=worker.check_alive,
        )
        report.final_rc = worker.terminate(grace=30)
        report.worker_runs = len(worker.runs)

    say("comparing with the reference ...")
    expected, effects = reference_run(config, workload.stream, now_ms())
    topics = config.topics
    report.verdict = judge(
        expected,
        effects,
        await latest(config.kafka, topics.snapshots),
        await read_topic(config.kafka, topics.halts, within=60),
        await read_topic(config.kafka, topics.decisions, within=60),
        await read_topic(config.kafka, topics.deadletter, within=60),
        intents=[e for e in workload.valid if isinstance(e, OrderIntent)],
        rejected_at=[produced[i] for i in sorted(workload.invalid)],
        exact_bots=workload.exact_bots,
        gates=await latest(config.kafka, topics.gates),
    )
    report.error_log_lines = len(error_lines(worker.log_path))
    report.seconds = time.monotonic() - started
    return report


def _restores(log_path: Path) -> int:
    """Restores the worker logged so far (every run appends to one log)."""
    if not log_path.exists():
        return 0
    return log_path.read_text(errors="replace").count('"event": "restored"')


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.crash_loop", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs (default 50)")
    parser.add_argument("--events", type=int, default=100_000, help="records to stream")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--bots", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate", type=float, default=None, help="records/s (default: spread)")
    parser.add_argument("--session-timeout-ms", type=int, default=1_000)
    parser.add_argument("--bootstrap", default=None, help="use this broker, not an embedded one")
    parser.add_argument("--workdir", type=Path, default=None, help="keep config and logs here")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        print(text, flush=True)

    # Roughly: restarts cost a few seconds each, plus the stream's own pace.
    await avoid_utc_midnight(args.kills * 8 + args.events / 500 + 120, say=say)
    with tempfile.TemporaryDirectory(prefix="riskgate-chaos-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.bootstrap:
            bootstrap, broker = args.bootstrap, None
        else:
            broker = await EmbeddedBroker(log_dir=workdir / "broker").start_async()
            bootstrap = broker.bootstrap_servers
        try:
            report = await run_crash_loop(
                bootstrap,
                workdir,
                kills=args.kills,
                events=args.events,
                seed=args.seed,
                bots=args.bots,
                partitions=args.partitions,
                rate=args.rate,
                session_timeout_ms=args.session_timeout_ms,
                say=say,
            )
        finally:
            if broker is not None:
                await broker.stop_async()
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
