"""Operator tools without a broker (issue 15 items 5, 9, 10, 16, 17).

``riskgate halt|resume|reset-*`` must refuse, before anything is sent, every
command the worker would reject; sign whenever the worker verifies signatures;
and name the HaltEvent it waits for exactly as the engine does. ``riskgate
state`` must print untrusted names and reasons verbatim, uncut, under a title
that agrees with its rows.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from tests.support.builders import T0, config, control, engine, outcome
from worker.cli import main
from worker.core import Effects
from worker.messages import Command, ControlCommand
from worker.operator import (
    SECRET_ENV,
    BotState,
    Lag,
    OperatorError,
    command_event_id,
    make_command,
    operator_secret,
    render_state,
)
from worker.signing import sign

ROOT = Path(__file__).resolve().parents[2]
TOML = """
[bots.desk]
symbols = ["BTCUSDT", "ETHUSDT"]
[bots.any]
"""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(**kw: object) -> ControlCommand:
    args: dict[str, object] = {
        "bot": "desk",
        "symbol": "BTCUSDT",
        "reason": "desk call",
        "issued_by": "carol",
        "now_ms": T0,
    }
    args.update(kw)
    return make_command(config(TOML), "halt", **args)  # type: ignore[arg-type]


# -- validation before sending (item 5) --------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bot": "ghost"}, "unknown_bot"),
        ({"symbol": "DOGEUSDT"}, "unknown_symbol"),
        ({"symbol": ""}, "--symbol is empty"),
        ({"symbol": "  "}, "--symbol is empty"),
        ({"reason": "x" * 5000}, "$.reason"),
        ({"issued_by": ""}, "$.issued_by"),
        ({"bot": "any", "symbol": "BTC/USDT"}, "invalid_name"),
    ],
)
def test_halt_refuses_commands_the_worker_would_reject(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(OperatorError, match=re.escape(message)):
        _command(**change)


def test_halt_cli_validation_fails_before_contacting_kafka(tmp_path: Path) -> None:
    """Unknown symbol: exit non-zero with the reason, nothing sent (the broker is a closed port)."""
    path = tmp_path / "rg.toml"
    path.write_text(f'[kafka]\nbootstrap_servers = "127.0.0.1:{_closed_port()}"\n' + TOML)
    result = CliRunner().invoke(
        main,
        ["halt", "--config", str(path), "--bot", "desk", "--symbol", "DOGE", "--reason", "x"],
        env={SECRET_ENV: None},
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: the worker would reject this command (unknown_symbol): "
        "symbol 'DOGE' is not configured for bot 'desk'"
    ]


# -- the secret (item 5) -------------------------------------------------------------


def test_operator_secret_comes_from_the_environment_first(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("from-file\n")
    cfg = config(f"[control]\nsecret_file = '{secret}'\n")
    assert operator_secret(cfg, {SECRET_ENV: "from-env"}) == b"from-env"
    assert operator_secret(cfg, {}) == b"from-file"
    assert operator_secret(config(""), {}) is None


def test_halt_refuses_to_send_unsigned_when_the_worker_requires_signing(tmp_path: Path) -> None:
    """The worker's secret_file is not on the operator's machine and nothing is exported."""
    cfg = config(f"[control]\nsecret_file = '{tmp_path / 'absent'}'\n" + TOML)
    with pytest.raises(OperatorError, match=f"requires signed commands .* export {SECRET_ENV}"):
        operator_secret(cfg, {})
    with pytest.raises(OperatorError, match=f"requires signed commands .* export {SECRET_ENV}"):
        make_command(cfg, "halt", bot="desk", symbol=None, reason="r", issued_by="ops")


def test_empty_control_secret_in_the_environment_is_refused() -> None:
    with pytest.raises(OperatorError, match=f"{SECRET_ENV} is set but empty"):
        operator_secret(config(""), {SECRET_ENV: " "})


def test_halt_signs_with_the_exported_secret() -> None:
    cmd = _command(secret=b"k")
    assert cmd.sig == sign(cmd, b"k")


# -- the verdict's event id (item 5, decision C3) ----------------------------------------


@pytest.mark.parametrize(
    ("command", "symbol", "prepare"),
    [
        ("halt", "BTCUSDT", False),
        ("halt", None, False),
        ("resume", "BTCUSDT", True),
        ("resume", None, True),
    ],
)
def test_halt_waits_for_the_event_id_the_engine_publishes(
    command: Command, symbol: str | None, prepare: bool
) -> None:
    """The CLI must wait for exactly the id the engine gives a command's HaltEvent."""
    eng = engine(TOML)
    if prepare:
        eng.apply(control("halt", bot="desk", symbol=symbol, ts=T0 - 1), T0)
    cmd = make_command(
        eng.config, command, bot="desk", symbol=symbol, reason="r", issued_by="ops", now_ms=T0
    )
    out = eng.apply(cmd, T0, out=Effects())
    assert [h.event_id for h in out.halts] == [command_event_id(cmd)]


# -- state rendering (items 10, 17) ---------------------------------------------------


def _render(state: BotState, bot: str, width: int = 400) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_state(state, bot))
    return console.export_text()


def _lag() -> Lag:
    return Lag(
        partition=3, uncommitted={"trading.fills": 0, "trading.outcomes": 2}, heartbeat_ts=None
    )


def test_state_escapes_rich_markup_in_names_and_reasons() -> None:
    eng = engine()
    eng.apply(outcome(-1.0, bot="[red]FAKE", symbol="[bold]X"), T0)
    eng.apply(control("halt", bot="[red]FAKE", symbol="[bold]X", reason="[/red] oops [/]"), T0)
    text = _render(BotState(eng.bot_view("[red]FAKE", T0), _lag(), T0), "[red]FAKE")
    assert "[red]FAKE: account net" in text
    assert "[bold]X" in text
    assert "[/red] oops [/]" in text


def test_state_title_agrees_with_blocked_rows() -> None:
    eng = engine(TOML)
    eng.apply(outcome(-1.0, bot="desk", symbol="ETHUSDT"), T0)
    eng.apply(control("halt", bot="desk", symbol="BTCUSDT", reason="r"), T0)
    text = _render(BotState(eng.bot_view("desk", T0), _lag(), T0), "desk")
    title = text.splitlines()[0].strip()
    assert title.endswith("entries BLOCKED on BTCUSDT; allowed on the rest"), text
    eng.apply(control("halt", bot="desk", symbol=None, reason="all"), T0)
    text = _render(BotState(eng.bot_view("desk", T0), _lag(), T0), "desk")
    assert "entries BLOCKED for every symbol (manual_halt: " in text
    [eth] = [line for line in text.splitlines() if "ETHUSDT" in line]
    assert "blocked (account)" in eth


def test_state_is_not_cut_at_80_columns() -> None:
    """Piped output (no terminal) is as wide as the content, not 80 columns."""
    reason = "R" * 200 + "-END"
    script = (
        "from tests.support.builders import T0, control, engine, outcome\n"
        "from worker.operator import BotState, Lag, print_wide, render_state\n"
        "eng = engine()\n"
        "eng.apply(outcome(-1.0, bot='b', symbol='S'), T0)\n"
        f"eng.apply(control('halt', bot='b', symbol='S', reason={reason!r}), T0)\n"
        "print_wide(render_state(BotState(eng.bot_view('b', T0), Lag(0, {}, None), T0), 'b'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert reason in out, out


def test_state_for_a_bot_without_snapshots_says_so() -> None:
    text = _render(BotState(None, _lag(), T0), "desk")
    assert "desk: configured, no snapshot yet" in text
    assert "2 input records on partition 3 are not committed yet" in text


# -- unreachable broker and unconfigured bot (item 16) ---------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["state", "--bot", "desk"],
        ["topics"],
        ["halt", "--bot", "desk", "--reason", "r"],
        ["halt", "--bot", "desk", "--reason", "r", "--no-wait"],
    ],
)
def test_cli_with_an_unreachable_broker_prints_one_line(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "rg.toml"
    path.write_text(
        f'[kafka]\nbootstrap_servers = "127.0.0.1:{_closed_port()}"\nrequest_timeout_ms = 2000\n'
        + TOML
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE")}
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", args[0], "--config", str(path), *args[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: Kafka at 127.0.0.1:"), proc.stderr
    assert "KafkaConnectionError" in lines[0]


def test_state_for_an_unconfigured_bot_says_so(tmp_path: Path) -> None:
    path = tmp_path / "rg.toml"
    path.write_text(f'[kafka]\nbootstrap_servers = "127.0.0.1:{_closed_port()}"\n' + TOML)
    result = CliRunner().invoke(main, ["state", "--config", str(path), "--bot", "ghost"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: bot 'ghost' is not configured ([bots] in the config, accept_unknown_bots = false)\n"
    )
