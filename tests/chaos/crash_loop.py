"""Crash loop: SIGKILL the worker at random moments while events stream in; lose nothing.

A producer streams a long seeded mix of fills, outcomes, intents, operator
commands, re-sent duplicates and bad records for many bots. Meanwhile a
supervisor runs ``riskgate run --config FILE`` and SIGKILLs it again and again
(``--kills`` times), spread over the epochs below: alternately while records are
applied but not committed and at a seeded moment of an epoch's gap (where the
clock expires state), every other gap kill followed by one while the next run
is still starting, joining the group or restoring - and restarts it each time.
A last run (ended by SIGTERM) finishes the stream.

The breaker window, the cooldown and the reservation TTL are short
(``--expiry-secs``), so the wall clock ends trips, evicts losses and expires
reservations during the run, and the stream goes out in epochs
(:mod:`tests.support.epochs`): each epoch's data, then signed ``reset_breaker``
/ ``reset_session`` commands (bot-wide and per symbol) with a replayed, a stale
and a forged command on the control topic, then a wait until the clock has
passed every boundary the epoch set. Then:

* the state on the compacted snapshot topic (last value per key) must equal the
  reference - the same input through the contract's independent model
  (``tests/support/model.py``), epoch by epoch with one sweep after each:
  session PnL, breaker and position of every symbol, manual halts, the portfolio
  latch, and the reservations of the intents-only bots (see
  ``tests.support.compare.symbol_view`` / ``portfolio_view`` for what is compared
  and why other reservations are not); the last gate record per key must block
  as the model does;
* every halt/resume the model emitted was published at least once, under the
  model's ``event_id``, no other one was, and no ``event_id`` names two events;
  a clock-caused one is not stamped before its boundary (a cooldown never ends
  early) and otherwise matches but for its ``ts`` (the sweep's wall time);
* every intent got a decision echoing it; the intents-only bots' decisions say
  exactly what the model's say (allowed, gate); every record the model refuses
  (bad input, and the replayed, stale and forged commands) reached the
  dead-letter topic with the model's reason.

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
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.epochs import SECRET, Epoch, barrier_commands, reference, split, stamp
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
    add_place_args,
    avoid_utc_midnight,
    error_lines,
    fmt_ints,
    generate_workload,
    judge,
    report_exit,
    say,
    script_place,
    stopping,
)
from worker.config import load_config
from worker.messages import Event

DATA, BARRIER, GAP = range(3)
"""The stages of an epoch (see :mod:`tests.support.epochs`)."""


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
    epochs: int = 0
    late_epochs: list[int] = field(default_factory=list)
    """Epochs committed only after the clock could expire their state: not comparable."""
    expiry_secs: int = 0
    epoch_commit_ms: list[int] = field(default_factory=list)
    """Per epoch, first record to all committed (must stay under the expiry)."""
    barrier_commands: int = 0
    reset_events: int = 0
    """Halt events the model says the resets cause (a trip or session halt they end)."""
    exact_intents: int = 0
    """Intent ids of the intents-only bots, whose decisions are compared with the model's."""
    refused: Counter[str] = field(default_factory=Counter)
    """Records the model refuses, by reason (each must be dead-lettered with it)."""
    seconds: float = 0.0
    final_rc: int | None = None
    error_log_lines: int = 0
    verdict: Verdict = field(default_factory=Verdict)

    @property
    def mismatches(self) -> int:
        return self.verdict.mismatches + len(self.late_epochs)

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
            f"epochs:                   {self.epochs} (window = cooldown = reservation TTL"
            f" = {self.expiry_secs}s; late: {self.late_epochs or 'none'};"
            f" committed after {fmt_ints(self.epoch_commit_ms)} ms)",
            f"barrier commands:         {self.barrier_commands}"
            f" ({self.reset_events} resets ended a block)",
            f"refused records:          {dict(sorted(self.refused.items()))}",
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
    epochs: int = 3,
    expiry_secs: int = 15,
    session_timeout_ms: int = 1_000,
    sweep_interval_ms: int = 1_000,
    say: Callable[[str], None] = lambda _: None,
) -> CrashLoopReport:
    """Run the whole scenario against ``bootstrap``; never leaves the worker running.

    The stream goes out in ``epochs`` (see :mod:`tests.support.epochs`) with the
    breaker window, the cooldown and the reservation TTL all ``expiry_secs``, so
    trips end, losses leave the window and reservations expire by the wall clock
    during the run, while the kills go on regardless of epochs. Each epoch's gap
    ends two ``sweep_interval_ms`` after its last boundary, so a shorter sweep
    interval shortens every gap.

    Raises :class:`ExpiryTooShort` before the first epoch if the expiry cannot hold
    an epoch's data plus one restart of the worker (measured on its first start):
    a kill while records are in flight would make that epoch late, and a late
    epoch is not comparable.
    """
    started = time.monotonic()
    report = CrashLoopReport(seed=seed, epochs=epochs, expiry_secs=expiry_secs)
    workload = generate_workload(
        seed, events, bots=bots, window=(0, 1), expiry_secs=expiry_secs, control_secret=SECRET
    )
    config_path = workdir / "riskgate.toml"
    config_path.write_text(
        config_text(
            bootstrap,
            workload.body() + workload.worker_toml() + f"sweep_interval_ms = {sweep_interval_ms}\n",
            partitions=partitions,
            session_timeout_ms=session_timeout_ms,
        )
    )
    config = load_config(config_path, env={})
    await create_topics(config)
    report.unique_events = workload.unique_ids()
    report.duplicates = workload.duplicates
    report.bots = len(workload.bots)
    chunks = split(workload.stream, epochs)
    expiry_ms = expiry_secs * 1000
    # Each epoch's data goes out within a quarter of the expiry: the rest of it is the
    # budget for kills, restarts and catching up before the clock may expire anything.
    rate = max(200.0, max(len(c) for c in chunks) / (expiry_secs / 4))
    say(
        f"{len(workload.stream)} records for {len(workload.bots)} bots in {epochs} epochs"
        f" at ~{rate:.0f}/s; expiry {expiry_secs}s; {kills} SIGKILLs; logs in {workdir}"
    )

    produced: list[Produced] = []
    sent: list[Epoch] = []
    rng = random.Random(seed ^ 0x5EED)
    barrier_rng = random.Random(seed ^ 0xBA22)
    worker = RiskgateProcess(config_path, workdir / "worker.log")
    inputs = (config.topics.fills, config.topics.outcomes, config.topics.intents)
    watched = (*inputs, config.topics.control)
    async with (
        stopping(worker),
        Feed(config.kafka) as feed,
        OffsetWatcher(config.kafka, config.kafka.group_id, watched) as offsets,
    ):

        async def all_committed() -> bool:
            committed = await offsets.committed()
            ends: dict[tuple[str, int], int] = {}
            for p in produced:
                ends[(p.topic, p.partition)] = max(
                    ends.get((p.topic, p.partition), 0), p.offset + 1
                )
            return all(committed[tp] >= ends.get((tp.topic, tp.partition), 0) for tp in committed)

        async def send(records: list[Event], pace: float | None) -> None:
            raws = [as_raw(config, e) for e in records]
            chunk = max(1, int(rate / 20)) if pace else len(raws)  # ~20 sends a second
            for i in range(0, len(raws), chunk):
                began = time.monotonic()
                produced.extend(await feed.send(raws[i : i + chunk]))
                if pace:
                    await asyncio.sleep(max(0.0, chunk / pace - (time.monotonic() - began)))

        async def committed_all(what: str) -> None:
            await wait_until(all_committed, within=120, what=what, interval=0.1)

        where = [(0, DATA)]  # (epoch, stage) the producer is in: kills are placed by it

        async def stream() -> None:
            # A cold start (imports, first join) is not charged to the first epoch's budget.
            async def started() -> bool:
                return _restores(worker.log_path) > 0

            began = time.monotonic()
            await wait_until(started, within=120, what="a first worker run to restore")
            _check_budget(
                restart_ms=int((time.monotonic() - began) * 1000) + session_timeout_ms,
                span_ms=int(max(len(c) for c in chunks) / rate * 1000),
                expiry_ms=expiry_ms,
            )
            stamped: dict[int, Event] = {}
            for k, chunk in enumerate(chunks):
                where[0] = (k, DATA)
                epoch = Epoch(start_ms=now_ms())
                span_ms = int(len(chunk) / rate * 1000)
                epoch.events = stamp(chunk, epoch.start_ms, span_ms, SECRET, stamped)
                await send(epoch.events, rate)
                await committed_all(f"epoch {k} data to be committed")
                where[0] = (k, BARRIER)
                epoch.barrier = list(barrier_commands(barrier_rng, workload.bots, now_ms(), SECRET))
                await send(epoch.barrier, None)
                await committed_all(f"epoch {k} barrier commands to be committed")
                epoch.committed_ms = now_ms()
                report.epoch_commit_ms.append(epoch.committed_ms - epoch.start_ms)
                if epoch.late(expiry_ms):
                    report.late_epochs.append(k)
                where[0] = (k, GAP)
                # Past every boundary the epoch set, and two sweeps after that.
                sweep_ms = config.worker.sweep_interval_ms
                await asyncio.sleep(
                    (epoch.committed_ms + expiry_ms + 2 * sweep_ms - now_ms()) / 1e3
                )
                epoch.swept_ms = now_ms()
                sent.append(epoch)
            where[0] = (len(chunks), DATA)

        producer = asyncio.create_task(stream(), name="chaos-producer")

        async def reach(target: tuple[int, int]) -> None:
            async def reached() -> bool:
                return where[0] >= target or producer.done()

            await wait_until(
                reached, within=600, what=f"epoch {target[0]} stage {target[1]}", interval=0.1
            )

        async def kill(starting: bool) -> None:
            worker.check_alive()  # it must only ever die by our hand
            if producer.done():
                producer.result()  # a failed epoch fails the run now
            if starting:
                report.kills_while_starting += 1
            elif await offsets.lag() > 0:
                report.kills_mid_stream += 1
            worker.kill()
            report.kills += 1
            if report.kills % 10 == 0 or report.kills == kills:
                say(
                    f"  {report.kills}/{kills} kills; {len(sent)}/{epochs} epochs;"
                    f" {len(produced)} produced; {await offsets.committed_total()} committed"
                )

        try:
            while report.kills < kills:
                # Kills go to every epoch in turn, alternately while its records are
                # applied and in its gap, where the clock expires what it set (a run
                # started there restores, and sweeps, past the boundaries).
                n = report.kills
                target = (n * epochs // kills, GAP if n % 2 else DATA)
                restores = _restores(worker.log_path)
                worker.start()
                before = await offsets.committed_total()

                async def progressed(before: int = before, restores: int = restores) -> bool:
                    # Between epochs there is nothing to commit: a restore will do.
                    return (
                        await offsets.committed_total() > before
                        or producer.done()
                        or (await offsets.lag() == 0 and _restores(worker.log_path) > restores)
                    )

                await wait_until(
                    progressed,
                    within=60,
                    what=f"worker run {n + 1} to commit progress",
                    interval=0.1,
                    alive=worker.check_alive,
                )
                await reach(target)
                in_gap = target[1] == GAP
                if not in_gap:
                    # While records are applied but not yet committed, if it can.
                    async def uncommitted(target: tuple[int, int] = target) -> bool:
                        return await offsets.lag() > 0 or where[0] > target or producer.done()

                    await wait_until(
                        uncommitted,
                        within=120,
                        what=f"records in flight in epoch {target[0]}",
                        interval=0.05,
                        alive=worker.check_alive,
                    )
                await asyncio.sleep(rng.uniform(0.0, expiry_secs / 2 if in_gap else 0.3))
                await kill(starting=False)
                if in_gap and n // 2 % 2 == 0 and report.kills < kills:
                    # Every other gap kill is followed by one anywhere from process start
                    # through joining and restoring (in a gap: the epoch's commit budget
                    # is not charged with the restarts).
                    worker.start()
                    await asyncio.sleep(rng.uniform(0.05, 3.0))
                    await kill(starting=True)
            # The last run serves the rest of the epochs and stops cleanly. It is stopped
            # only once it has restored (so it runs its signal handlers).
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
            await producer
        finally:
            if not producer.done():
                producer.cancel()
        await committed_all("the last worker run to commit everything")
        report.final_rc = worker.terminate(grace=30)
        report.worker_runs = len(worker.runs)

    say("comparing with the reference ...")
    expected = reference(config, sent)
    report.events = len(produced)
    report.barrier_commands = sum(len(e.barrier) for e in sent)
    report.reset_events = sum(
        "/cmd-" in h.event_id and h.gate in ("session_halt", "circuit_breaker")
        for h in expected.halts
    )
    report.refused = Counter(reason for _, reason in expected.rejected)
    report.bad_records = len(expected.rejected)
    report.exact_intents = len(
        {i.intent_id for i in expected.intents if i.bot in workload.exact_bots}
    )
    topics = config.topics
    report.verdict = judge(
        expected.model,
        expected.halts,
        await latest(config.kafka, topics.snapshots),
        await read_topic(config.kafka, topics.halts, within=60),
        await read_topic(config.kafka, topics.decisions, within=60),
        await read_topic(config.kafka, topics.deadletter, within=60),
        intents=expected.intents,
        rejected_at=[produced[i] for i, _ in expected.rejected],
        rejected_reasons=[reason for _, reason in expected.rejected],
        exact_bots=workload.exact_bots,
        gates=await latest(config.kafka, topics.gates),
        clock_halts=expected.clock_halts,
    )
    report.error_log_lines = len(error_lines(worker.log_path))
    report.seconds = time.monotonic() - started
    return report


class ExpiryTooShort(ValueError):
    """The expiry cannot hold an epoch's data plus a restart: every epoch with a kill
    in flight would be late, and its comparison meaningless."""


def _check_budget(*, restart_ms: int, span_ms: int, expiry_ms: int) -> None:
    """Refuse an expiry no epoch with a kill among its records can commit within.

    An epoch is exact only if all its records are committed before its first
    boundary (first record + expiry, :mod:`tests.support.epochs`). A SIGKILL while
    they are in flight costs a restart: a new process (measured: the first run's
    start to restore) that the broker lets join only once the killed member's
    session has expired (Tansu: about one more session timeout). That is a property
    of the harness's budget, not of the worker, whose commits follow the restore
    within ``commit_interval_ms``; so a too short ``--expiry-secs`` is refused up
    front instead of ending in a late epoch and a cascade of mismatches.
    """
    if span_ms + restart_ms >= expiry_ms:
        raise ExpiryTooShort(
            f"expiry {expiry_ms} ms cannot hold an epoch's data ({span_ms} ms) plus a"
            f" restart after a kill (~{restart_ms} ms): use a longer --expiry-secs"
            " (or fewer events per epoch)"
        )


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
    parser.add_argument("--epochs", type=int, default=12, help="epochs (see tests.support.epochs)")
    parser.add_argument(
        "--expiry-secs", type=int, default=15, help="breaker window, cooldown, reservation TTL"
    )
    parser.add_argument("--session-timeout-ms", type=int, default=1_000)
    parser.add_argument(
        "--sweep-interval-ms", type=int, default=1_000, help="the worker's sweep interval"
    )
    add_place_args(parser)
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    # Roughly: restarts cost a few seconds each, plus the stream's own pace and the epochs.
    needed = args.kills * 8 + args.events / 500 + args.epochs * (args.expiry_secs + 5) + 120
    await avoid_utc_midnight(needed, say=say)
    async with script_place(args, "riskgate-chaos-") as place:
        try:
            report = await _run(args, place.bootstrap, place.workdir)
        except ExpiryTooShort as short:
            say(f"refused: {short}")
            return 2
    return report_exit(report)


async def _run(args: argparse.Namespace, bootstrap: str, workdir: Path) -> CrashLoopReport:
    return await run_crash_loop(
        bootstrap,
        workdir,
        kills=args.kills,
        events=args.events,
        seed=args.seed,
        bots=args.bots,
        partitions=args.partitions,
        epochs=args.epochs,
        expiry_secs=args.expiry_secs,
        session_timeout_ms=args.session_timeout_ms,
        sweep_interval_ms=args.sweep_interval_ms,
        say=say,
    )


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
