"""``riskgate`` command line: run, demo, topics, state, halt, resume."""

from __future__ import annotations

import asyncio
import getpass
import sys
import time
from pathlib import Path

import click

from worker.config import Config, ConfigError, load_config
from worker.messages import Command


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
    from worker.kafka.topics import TopicLayoutError
    from worker.service import serve

    config = _load(config_path)
    try:
        asyncio.run(serve(config))
    except (ConfigError, TopicLayoutError) as exc:
        raise click.ClickException(str(exc)) from exc


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


@main.command()
@config_option
@click.option("--bot", required=True, help="Bot id.")
def state(config_path: Path, bot: str) -> None:
    """Show a bot's state from the compacted snapshot topic."""
    from rich.console import Console

    from worker.operator import load_bot, state_table

    config = _load(config_path)
    now = time.time_ns() // 1_000_000
    risk = asyncio.run(load_bot(config, bot, now))
    if risk is None:
        raise click.ClickException(f"no state for bot {bot!r} on {config.topics.snapshots}")
    Console().print(state_table(risk, now))


def _control(command: Command) -> click.Command:
    @config_option
    @click.option("--bot", required=True, help="Bot id.")
    @click.option("--symbol", default=None, help="One symbol; omit for the whole bot.")
    @click.option("--reason", required=True, help="Why (published with the event).")
    @click.option(
        "--issued-by", default=getpass.getuser, show_default="$USER", help="Operator name."
    )
    def send(config_path: Path, bot: str, symbol: str | None, reason: str, issued_by: str) -> None:
        from worker.operator import make_command, send_command

        config = _load(config_path)
        cmd = make_command(
            config, command, bot=bot, symbol=symbol, reason=reason, issued_by=issued_by
        )
        asyncio.run(send_command(config, cmd))
        signed = " (signed)" if cmd.sig else ""
        click.echo(f"{command} sent for {bot}/{symbol or '*'}{signed}")

    send.__doc__ = f"Send a `{command}` control command (signed when a secret is configured)."
    return click.command(command)(send)


for _command in ("halt", "resume", "reset_breaker", "reset_session"):
    main.add_command(_control(_command), _command.replace("_", "-"))


if __name__ == "__main__":  # pragma: no cover
    main()
