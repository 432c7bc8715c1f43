"""``riskgate`` command line: run, demo, topics, state, halt, resume."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from worker.config import Config, ConfigError, load_config


def _load(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="TOML configuration file (RISKGATE_* env vars override it).",
)


@click.group()
@click.version_option(package_name="riskgate")
def main() -> None:
    """riskgate: trading-risk state and pre-trade gates over Kafka."""


@main.command()
@config_option
def run(config_path: Path) -> None:
    """Run the worker until SIGTERM/SIGINT."""
    from worker.service import serve

    config = _load(config_path)
    asyncio.run(serve(config))


@main.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--bots", type=int, default=3, show_default=True, help="Synthetic bots in the feed.")
def demo(duration: float | None, bots: int) -> None:
    """Embedded broker + worker + synthetic feed, with a live table of gates."""
    from worker.demo import run_demo

    sys.exit(asyncio.run(run_demo(duration=duration, bots=bots)))


@main.command()
@config_option
def topics(config_path: Path) -> None:
    """Create every topic with its cleanup policy (idempotent)."""
    from worker.kafka.topics import ensure_topics

    config = _load(config_path)
    created = asyncio.run(ensure_topics(config.kafka, config.topics))
    click.echo(f"created: {', '.join(created)}" if created else "all topics already exist")


if __name__ == "__main__":  # pragma: no cover
    main()
