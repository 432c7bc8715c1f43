"""``riskgate replay``: history through the engine, a report, and a sweep of limits."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from worker.config import Config, ConfigError

if TYPE_CHECKING:
    from worker.replay.inputs import InputRecord


def parse_time(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is neither epoch ms nor ISO 8601") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


@contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """First Ctrl-C asks the replay to stop where it is (a partial report follows); the
    default handler is back afterwards, so a second Ctrl-C while writing kills as usual."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} events/s" if speed else "- events/s")

    return Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


@click.command("replay")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="TOML configuration (the limits to replay; RISKGATE_* env vars override it).",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="[KIND=]PATH",
    help="JSONL/CSV/Parquet history: a `type` column per row, or one kind per file "
    "(fills=, outcomes=, intents=, control=, or a file name starting with it). Repeatable.",
)
@click.option("--from-topics", is_flag=True, help="Read the input topics (read only, no group).")
@click.option("--start", "start", default=None, help="First record time: epoch ms or ISO 8601.")
@click.option("--end", "end", default=None, help="Last record time: epoch ms or ISO 8601.")
@click.option(
    "--sweep",
    "sweeps",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="Replay every combination of these config values (dotted keys). Repeatable.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("replay-report"),
    show_default=True,
    help="Directory for report.json, report.html (and deadletters.jsonl).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=lambda: os.cpu_count() or 1,
    show_default="all cores",
    help="Processes for a sweep.",
)
def replay_command(
    *,
    config_path: Path,
    inputs: Sequence[str],
    from_topics: bool,
    start: str | None,
    end: str | None,
    sweeps: Sequence[str],
    out_dir: Path,
    workers: int,
) -> None:
    """Replay history through the engine (clock = event time) and report what the limits do."""
    from rich.console import Console

    from worker.replay import report
    from worker.replay.inputs import InputError
    from worker.replay.run import replay
    from worker.replay.sweep import load_with, parse_sweep, run_sweep

    start_ms = parse_time(start) if start else None
    end_ms = parse_time(end) if end else None
    if from_topics == bool(inputs):
        raise click.UsageError("give either --input files or --from-topics (with --start/--end)")
    if from_topics and (start_ms is None or end_ms is None):
        raise click.UsageError("--from-topics needs --start and --end")
    try:
        config = load_with(config_path, {})
        spec = parse_sweep(sweeps)
        records, sources = _read(config, inputs, from_topics, start_ms, end_ms)
    except (ConfigError, InputError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console()
    with _ctrl_c() as stop, _progress() as bar:
        task = bar.add_task("replay", total=len(records))  # a sweep sets its own total
        if spec:
            try:
                built, section, dead = run_sweep(
                    config_path,
                    records,
                    spec,
                    workers=workers,
                    with_origin=from_topics,
                    end_ms=end_ms,
                    on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                    should_stop=stop.is_set,
                )
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from exc
            built["sweep"] = section
            built["input"]["sources"] = sources
        else:
            result = replay(
                config,
                records,
                with_origin=from_topics,
                end_ms=end_ms,
                stop=stop.is_set,
                progress=lambda seen: bar.update(task, completed=seen),
            )
            built = report.build(result, config_path=str(config_path), sources=sources)
            dead = result.dead_letters()
    json_path, html_path = report.write(built, out_dir)
    if dead:
        path = out_dir / "deadletters.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in dead))
        console.print(f"{len(dead):,} bad records skipped (by reason in the report): {path}")
    console.print(report.terminal_summary(built))
    console.print(f"report: {html_path}  data: {json_path}")
    if not built["input"]["complete"]:
        console.print("[bold red]interrupted: the report covers the records replayed so far")
        sys.exit(130)


def _read(
    config: Config,
    inputs: Sequence[str],
    from_topics: bool,
    start_ms: int | None,
    end_ms: int | None,
) -> tuple[list[InputRecord], list[str]]:
    """The records to replay, in order, and the names of where they came from."""
    from worker.replay.inputs import in_time_order, parse_input_arg, read_file, read_topics

    if from_topics:
        assert start_ms is not None and end_ms is not None
        t = config.topics
        names = f"topics {t.fills}, {t.outcomes}, {t.intents}, {t.control}"
        return asyncio.run(read_topics(config, start_ms, end_ms)), [names]
    parsed = [parse_input_arg(arg) for arg in inputs]
    records = in_time_order([read_file(path, kind) for kind, path in parsed])
    if start_ms is not None or end_ms is not None:
        lo, hi = start_ms or 0, end_ms if end_ms is not None else 1 << 62
        records = [r for r in records if lo <= r.time <= hi]
    return records, [str(path) for _, path in parsed]
