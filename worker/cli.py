"""``riskgate`` command line: run, demo, console, broker, topics, state and the commands."""

from __future__ import annotations

import os
import sys

from worker import stop_signals

if sys.argv[1:2] == ["run"] and os.path.basename(sys.argv[0]) in ("riskgate", "cli.py"):
    # The process is ``riskgate run`` (the console script or ``python -m worker.cli``):
    # from here on a stop signal ends it cleanly, however early (findings E1-3), not
    # only once the imports below (~0.4 s) are done. A program merely importing this
    # module keeps its own signal handling.
    stop_signals.catch_early()

import asyncio
import getpass
import logging
import signal
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from worker.config import Config, ConfigError, load_config
from worker.messages import Command
from worker.operator import SECRET_ENV, OperatorError
from worker.replay.command import replay_command

T = TypeVar("T")


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
    from worker.runtime import PublishRefused
    from worker.service import serve

    config = _load(config_path)
    try:
        asyncio.run(serve(config))
    except (ConfigError, TopicLayoutError, PublishRefused) as exc:
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
@click.option("--host", default=None, help="Address to listen on (default: [console] host).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Default: [console] port."
)
def console(config_path: Path, host: str | None, port: int | None) -> None:
    """Serve the operators' web console (live gates, halt timeline, signed actions)."""
    from worker.console import serve

    _operate(serve(_load(config_path), host=host, port=port))


def _operate(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operator coroutine; any failure is one line and a non-zero exit.

    The Kafka client's own logging is silenced: its connection errors would
    print lines before ours, and ours already names the broker and the error.
    """
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coro)
    except (OperatorError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@config_option
def topics(config_path: Path) -> None:
    """Create every topic with its cleanup policy (idempotent)."""
    from worker.kafka.topics import ensure_topics
    from worker.operator import kafka_session

    config = _load(config_path)

    async def create() -> list[str]:
        async with kafka_session(config):
            return await ensure_topics(config.kafka, config.topics)

    created = _operate(create())
    click.echo(f"created: {', '.join(created)}" if created else "all topics already exist")


@main.command()
@config_option
@click.option("--bot", required=True, help="Bot id.")
def state(config_path: Path, bot: str) -> None:
    """Show a bot as a worker restarted now would hold it, and how far that lags."""
    from worker.clock import wall_clock_ms
    from worker.operator import load_state, print_wide, render_state

    config = _load(config_path)
    print_wide(render_state(_operate(load_state(config, bot, wall_clock_ms())), bot))


def _control(command: Command) -> click.Command:
    @config_option
    @click.option("--bot", required=True, help="Bot id.")
    @click.option("--symbol", default=None, help="One symbol; omit for the whole bot.")
    @click.option("--reason", required=True, help="Why (published with the event).")
    @click.option(
        "--issued-by", default=getpass.getuser, show_default="$USER", help="Operator name."
    )
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=15.0,
        show_default=True,
        help="Seconds to wait for the worker's verdict.",
    )
    @click.option("--no-wait", is_flag=True, help="Send and exit without waiting for a verdict.")
    def send(
        *,
        config_path: Path,
        bot: str,
        symbol: str | None,
        reason: str,
        issued_by: str,
        timeout: float,
        no_wait: bool,
    ) -> None:
        from worker.operator import make_command, operator_secret, send_and_wait, send_command

        config = _load(config_path)
        try:
            cmd = make_command(
                config,
                command,
                bot=bot,
                symbol=symbol,
                reason=reason,
                issued_by=issued_by,
                secret=operator_secret(config, os.environ),
            )
        except OperatorError as exc:
            raise click.ClickException(str(exc)) from exc
        target = f"{bot}/{symbol or '*'}{' (signed)' if cmd.sig else ' (unsigned)'}"
        if no_wait:
            _operate(send_command(config, cmd))
            click.echo(f"{command} sent for {target}; not waiting for the worker's verdict")
            return
        verdict = _operate(send_and_wait(config, cmd, timeout))
        click.echo(f"{command} sent for {target}")
        if not verdict.ok:
            raise click.ClickException(f"{command} {bot}/{symbol or '*'}: {verdict.message}")
        click.echo(f"{command} {bot}/{symbol or '*'}: {verdict.message}")

    send.__doc__ = (
        f"Send a `{command}` command and wait for the worker's verdict (the halt event "
        f"or a dead letter). Signed with {SECRET_ENV} or the config's control secret."
    )
    return click.command(command)(send)


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=9092, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def broker(port: int, host: str) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in memory) until Ctrl-C/SIGTERM.

    For local use only: no TLS, no auth, and every topic is lost when it stops.
    """
    from worker.kafka.broker import EmbeddedBroker, EmbeddedBrokerError

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    embedded = EmbeddedBroker(host=host, port=port)
    try:
        embedded.start()
    except EmbeddedBrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"broker listening on {embedded.bootstrap_servers} (pid {embedded.pid}, in memory); "
        "Ctrl-C or SIGTERM stops it",
        err=True,
    )
    try:
        while not stop.wait(0.5):
            if not embedded.running:
                tail = embedded.log_tail()
                raise click.ClickException(f"the broker exited:\n{tail}")
    finally:
        embedded.stop()
    click.echo("broker stopped", err=True)


for _command in ("halt", "resume", "reset_breaker", "reset_session", "kill", "reset_state"):
    main.add_command(_control(_command), _command.replace("_", "-"))
main.add_command(replay_command)


if __name__ == "__main__":  # pragma: no cover
    main()
