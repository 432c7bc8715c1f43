"""`riskgate kill` and `riskgate reset-state` (issue 11): built, validated and awaited like
the other operator commands; the verdict of a resume may be the kill switch's."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from tests.support.builders import T0, control, engine
from worker.cli import main
from worker.core import Effects
from worker.messages import AccountGateState, Block, Command, ControlCommand, HaltEvent
from worker.operator import (
    SECRET_ENV,
    OperatorError,
    _is_verdict,
    _settled,
    command_event_id,
    make_command,
)
from worker.signing import sign

TOML = """
[bots.desk]
symbols = ["BTCUSDT"]
"""


def build(
    command: Command, symbol: str | None = None, secret: bytes | None = None
) -> ControlCommand:
    return make_command(
        engine(TOML).config,
        command,
        bot="desk",
        symbol=symbol,
        reason="runaway",
        issued_by="ops",
        now_ms=T0,
        secret=secret,
    )


def test_kill_is_signed_like_every_command() -> None:
    cmd = build("kill", secret=b"k")
    assert cmd.command == "kill"
    assert cmd.sig == sign(msgspec.structs.replace(cmd, sig=None), b"k")


@pytest.mark.parametrize("symbol", ["BTCUSDT", None])
def test_the_worker_publishes_the_kill_under_the_id_the_cli_waits_for(symbol: str | None) -> None:
    eng = engine(TOML)
    cmd = make_command(
        eng.config, "kill", bot="desk", symbol=symbol, reason="r", issued_by="ops", now_ms=T0
    )
    out = eng.apply(cmd, T0, out=Effects())
    assert [(h.event_id, h.kind, h.cancel_open_orders) for h in out.halts] == [
        (command_event_id(cmd), "killed", True)
    ]
    assert _is_verdict(out.halts[0], cmd)


def test_a_resume_that_lifts_a_kill_is_its_verdict() -> None:
    eng = engine(TOML)
    eng.apply(control("kill", bot="desk", symbol=None, ts=T0 - 1), T0)
    cmd = make_command(
        eng.config, "resume", bot="desk", symbol=None, reason="r", issued_by="ops", now_ms=T0
    )
    (event,) = eng.apply(cmd, T0, out=Effects()).halts
    assert (event.kind, event.gate) == ("resumed", "kill_switch")
    assert event.event_id != command_event_id(cmd)  # that one names manual_halt
    assert _is_verdict(event, cmd)
    other = msgspec.structs.replace(event, event_id=event.event_id.replace("desk/", "ghost/"))
    assert not _is_verdict(other, cmd)


def test_reset_state_addresses_a_whole_bot() -> None:
    with pytest.raises(OperatorError, match=r"invalid_message.*symbol must be null"):
        build("reset_state", symbol="BTCUSDT")
    assert build("reset_state").command == "reset_state"


def _account(*gates: str) -> bytes:
    blocks = [msgspec.convert({"gate": g, "reason": "r"}, Block) for g in gates]
    state = AccountGateState(
        bot="desk",
        entries_allowed=not blocks,
        blocks=blocks,
        account_net_pnl=0.0,
        open_positions=0,
        gross_exposure=0.0,
        updated_ts=T0,
        seq=1,
    )
    return msgspec.json.encode(state)


def test_without_a_verdict_the_gate_records_decide_for_kill_and_resume() -> None:
    kill, resume = build("kill"), build("resume")
    killed = {"desk/gate": _account("kill_switch")}
    assert _settled(kill, killed, 1.0).ok is True
    assert _settled(resume, killed, 1.0).ok is False
    assert _settled(resume, {"desk/gate": _account()}, 1.0).ok is True


def test_kill_and_reset_state_are_cli_commands(tmp_path: Path) -> None:
    path = tmp_path / "rg.toml"
    path.write_text(TOML)
    for name in ("kill", "reset-state"):
        result = CliRunner().invoke(main, [name, "--help"], env={SECRET_ENV: None})
        assert result.exit_code == 0, result.output
        assert f"Send a `{name.replace('-', '_')}` command" in result.output


def test_halt_event_of_an_old_worker_decodes_without_cancel_open_orders() -> None:
    old = b'{"event_id":"a/*/manual_halt/1","bot":"a","symbol":null,"kind":"halted",'
    old += b'"gate":"manual_halt","reason":"r","ts":1749978000000}'
    assert msgspec.json.decode(old, type=HaltEvent).cancel_open_orders is False
