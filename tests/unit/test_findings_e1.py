"""Regression tests of the findings E1-1, E1-2 and E1-3 (/work/notes/findings.md).

E1-1: a ``reset_session`` of a winning symbol took the account past the daily
loss without latching; once the account recovered the same day, entries were
allowed again (SPEC §4.4: "checked live and latched").
E1-2: restore metrics counted snapshot records the epoch fence dropped as restored.
E1-3: a SIGTERM while ``riskgate run`` was starting ended it with -15 and no log line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.builders import DAY_MS, MIN_MS, T0, config, control, intent, outcome
from tests.support.transport import Shell, Stored, broker_for
from tests.unit.test_bypass_persist import CONFIG, NOW, produce, run
from tests.unit.test_bypass_persist import config as persist_config
from tests.unit.test_bypass_persist import intent as persist_intent
from tests.unit.test_bypass_persist import outcome as persist_outcome
from worker import signing
from worker.core import Effects, Origin, RiskEngine
from worker.kafka.restore import epoch_headers, fold_snapshot_records
from worker.messages import ControlCommand, Event, HaltEvent

E1_CONFIG = """
[defaults.session]
loss_limit = -1000.0
[bots.alpha]
[bots.alpha.portfolio]
max_daily_loss = -50.0
"""
CONTROL = "risk.control/0"
OUTCOMES = "trading.outcomes/0"


def e1_engine(max_daily_loss: float = -50.0) -> RiskEngine:
    engine = RiskEngine(config(E1_CONFIG.replace("-50.0", str(max_daily_loss))))
    engine.sweep(T0)
    return engine


def winner_and_loser(engine: RiskEngine, out: Effects) -> None:
    """BTC +30, ETH -70: account -40, above the -50 limit."""
    engine.apply(outcome(30.0, symbol="BTC"), T0, Origin(OUTCOMES, 1), out)
    engine.apply(outcome(-70.0, symbol="ETH"), T0, Origin(OUTCOMES, 2), out)


def latch_event(reset: ControlCommand) -> HaltEvent:
    """The event the reset must publish: named after the command, at its ts (C3)."""
    return HaltEvent(
        event_id=f"alpha/*/portfolio_daily_loss/cmd-{signing.command_digest(reset)}",
        bot="alpha",
        symbol=None,
        kind="halted",
        gate="portfolio_daily_loss",
        reason="account net PnL reached max daily loss -50",
        ts=reset.ts,
        until_ts=(T0 // DAY_MS + 1) * DAY_MS,
        issued_by="alice",
    )


def test_e1_1_a_reset_session_of_a_winner_that_breaches_the_daily_loss_latches_for_the_day() -> (
    None
):
    engine = e1_engine()
    winner_and_loser(engine, Effects())
    reset = control("reset_session", symbol="BTC", ts=T0 + MIN_MS)
    out = engine.apply(reset, T0 + MIN_MS, Origin(CONTROL, 1))
    assert out.halts == [latch_event(reset)]
    assert engine.bots["alpha"].portfolio.halted is True
    engine.sweep(T0 + 2 * MIN_MS, out)
    # ETH wins back 25: account -45, above the limit; the latch holds for the day.
    engine.apply(outcome(25.0, symbol="ETH", ts=T0 + 3 * MIN_MS), T0 + 3 * MIN_MS, None, out)
    engine.sweep(T0 + 3 * MIN_MS, out)
    asked = intent(symbol="SOL", ts=T0 + 4 * MIN_MS)
    engine.apply(asked, T0 + 4 * MIN_MS, None, out)
    assert [(d.allowed, d.gate) for d in out.decisions] == [(False, "portfolio_daily_loss")]
    assert out.halts == [latch_event(reset)]


def test_e1_1_a_reset_that_leaves_the_account_above_the_limit_latches_nothing() -> None:
    engine = e1_engine()
    winner_and_loser(engine, Effects())
    out = engine.apply(control("reset_session", symbol="ETH", ts=T0 + MIN_MS), T0 + MIN_MS)
    assert engine.bots["alpha"].portfolio.halted is False
    assert out.halts == []  # ETH was not halted: no spurious resumed either (C2)


def test_e1_1_a_bot_wide_reset_session_zeroes_the_account_so_it_never_latches() -> None:
    """Why only a symbol's reset is judged: a bot-wide one leaves today's account at 0."""
    engine = e1_engine()
    winner_and_loser(engine, Effects())
    out = engine.apply(control("reset_session", symbol=None, ts=T0 + MIN_MS), T0 + MIN_MS)
    bot = engine.bots["alpha"]
    assert bot.account.account_net(bot.day) == 0.0
    assert bot.portfolio.halted is False
    assert out.halts == []


def test_e1_1_a_replayed_latching_reset_neither_relatches_nor_publishes_again() -> None:
    """D3: a crash persisted the portfolio (latched, its watermark past the reset) but
    not BTC. The replayed reset must reset BTC (its own watermark) and nothing else."""
    live = e1_engine()
    winner_and_loser(live, Effects())
    symbols_then = {
        f"alpha/risk/{name}": msgspec.json.encode(sym.snapshot())
        for name, sym in live.bots["alpha"].symbols.items()
    }
    reset = control("reset_session", symbol="BTC", ts=T0 + MIN_MS)
    first = live.apply(reset, T0 + MIN_MS, Origin(CONTROL, 1))
    assert first.halts == [latch_event(reset)]
    assert first.dirty_bots == {"alpha"}  # the portfolio record goes first (D3)
    portfolio_now = live.bots["alpha"].portfolio_snapshot()

    restarted = RiskEngine(live.config)
    restarted.restore(
        {**symbols_then, "alpha/portfolio": msgspec.json.encode(portfolio_now)}, T0 + MIN_MS
    )
    assert restarted.bots["alpha"].portfolio.halted is True
    replay = restarted.apply(reset, T0 + MIN_MS, Origin(CONTROL, 1))
    assert replay.halts == []  # BTC was never halted; the latch event was published
    assert restarted.bots["alpha"].portfolio_snapshot() == portfolio_now
    assert restarted.bots["alpha"].symbols["BTC"].snapshot() == (
        live.bots["alpha"].symbols["BTC"].snapshot()
    )


RESET_LATCH_STREAM: list[Event] = [
    persist_outcome(1, "BTC", +300.0),
    persist_outcome(2, "ETH", -700.0),  # account -400: above the -500 limit
    ControlCommand("reset_session", "alpha", "BTC", "winner", "ops", NOW - 2 * 60_000),
    persist_outcome(3, "ETH", +400.0),  # account -300: the latch holds for the day
    persist_intent(4, "SOL", 1.0),
]


async def test_e1_1_crash_at_every_record_boundary_keeps_the_latch_of_a_reset_exactly() -> None:
    """D2/D3 through the shell: whatever prefix of a persist a crash leaves, restore and
    replay rebuild the state of the uninterrupted run, latch included."""
    cfg = persist_config()
    reference, sent = await run(cfg, RESET_LATCH_STREAM, None, max_records=1)
    assert reference["alpha"]["portfolio"]["halted"] is True
    assert reference["alpha"]["symbols"]["BTC"]["session_pnl"]["realised"] == 0.0
    for crash in range(sent):
        state, _ = await run(cfg, RESET_LATCH_STREAM, crash, max_records=1)
        assert state == reference, f"crash after {crash} of {sent} writes"


# -- E1-2: fenced records are not "restored" -------------------------------------------


def _stored(offset: int, key: str, value: bytes, epoch: int) -> Stored:
    return Stored(
        "risk.snapshots", 0, offset, NOW, key.encode(), value, tuple(epoch_headers(epoch)), 0
    )


def test_e1_2_the_fold_counts_the_records_the_epoch_fence_left_out() -> None:
    """Two zombie records dropped (X has the owner's value); Y's zombie value is used
    (nothing else left) and rewritten, so it is not counted as dropped."""
    read = fold_snapshot_records(
        frozenset({0}),
        {
            0: [
                _stored(0, "a/risk/X", b"owner", 2),
                _stored(1, "a/risk/X", b"zombie-1", 1),
                _stored(2, "a/risk/X", b"zombie-2", 1),
                _stored(3, "a/risk/Y", b"zombie", 1),
            ]
        },
    )
    assert read.records == {"a/risk/X": b"owner", "a/risk/Y": b"zombie"}
    assert read.fenced == ("a/risk/X", "a/risk/Y")
    assert read.fenced_records == 2


def _restore_counts(registry: object) -> dict[str, float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "riskgate_restore_records"
        for s in family.samples
        if s.name == "riskgate_restore_records_total"
    }


async def test_e1_2_snapshot_records_dropped_by_the_epoch_fence_are_not_counted_as_restored() -> (
    None
):
    """As found: the owner's records, then records of an older epoch after them. Zombie
    copies of the owner's keys are "fenced"; a garbage key with nothing else (its value
    used, then refused) is "ignored"; a tombstone restores nothing. Each key counts once."""
    cfg = persist_config(CONFIG)
    broker = broker_for(cfg, timestamp_ms=NOW)
    produce(broker, cfg, [persist_outcome(1, "BTC", -10.0)])
    partitions = range(cfg.topics.partitions)
    with Shell(cfg, broker, NOW) as owner:
        owner.start(partitions)
        assert await owner.idle()
        assert await owner.stop()
    snapshots = cfg.topics.snapshots
    home = broker.last_per_key(snapshots)[b"alpha/portfolio"].partition
    for key, value in (
        (b"alpha/risk/BTC", b"zombie"),
        (b"alpha/portfolio", b"zombie"),
        (b"alpha/risk/ETH", b'{"version":1,"session_pnl":{"realis'),
        (b"alpha/risk/SOL", None),
    ):
        broker.append(snapshots, key, value, partition=home)  # no epoch header: epoch 0
    with Shell(cfg, broker, NOW) as successor:
        successor.start(partitions)
        assert await successor.idle()
        assert successor.worker is not None
        counts = _restore_counts(successor.worker.metrics.registry)
        assert await successor.stop()
    assert counts == {"restored": 2.0, "ignored": 1.0, "fenced": 2.0}


def test_e1_1_a_replayed_reset_never_judges_the_latch_on_a_partly_restored_account() -> None:
    """D3: the crash left the portfolio and ETH (-600) of the last persist, and SOL of the
    one before (+300, before the reset): a prefix (portfolio, ETH, SOL). Replayed, the
    reset zeroes SOL: ETH -600 + SOL 0 is an account that never was, and only the
    portfolio's own watermark (past the reset) keeps it from latching."""
    live = e1_engine(-500.0)
    live.apply(outcome(-100.0, symbol="ETH"), T0, Origin(OUTCOMES, 1))
    live.apply(outcome(+300.0, symbol="SOL"), T0, Origin(OUTCOMES, 2))
    sol_then = msgspec.json.encode(live.bots["alpha"].symbols["SOL"].snapshot())
    tail: list[tuple[Event, Origin]] = [
        (control("reset_session", symbol="SOL", ts=T0 + MIN_MS), Origin(CONTROL, 1)),
        (outcome(+400.0, symbol="SOL", ts=T0 + MIN_MS), Origin(OUTCOMES, 3)),
        (outcome(-500.0, symbol="ETH", ts=T0 + MIN_MS), Origin(OUTCOMES, 4)),
    ]
    for event, at in tail:
        live.apply(event, T0 + MIN_MS, at)
    bot = live.bots["alpha"]
    assert bot.account.account_net(bot.day) == -200.0
    assert bot.portfolio.halted is False
    restarted = RiskEngine(live.config)
    restarted.restore(
        {
            "alpha/portfolio": msgspec.json.encode(bot.portfolio_snapshot()),
            "alpha/risk/ETH": msgspec.json.encode(bot.symbols["ETH"].snapshot()),
            "alpha/risk/SOL": sol_then,
        },
        T0 + MIN_MS,
    )
    replay = Effects()
    for event, at in tail:
        restarted.apply(event, T0 + MIN_MS, at, replay)
    assert replay.halts == []
    again = restarted.bots["alpha"]
    assert again.portfolio_snapshot() == bot.portfolio_snapshot()
    assert again.symbols["SOL"].snapshot() == bot.symbols["SOL"].snapshot()


# -- E1-3: SIGTERM while ``riskgate run`` starts -----------------------------------------

ROOT = Path(__file__).resolve().parents[2]

LAUNCHER = """
import asyncio, importlib.abc, os, runpy, signal, sys

MODULE, THEN, CONFIG = sys.argv[1:]

class SigtermAt(importlib.abc.MetaPathFinder):
    '''SIGTERM to this process as MODULE is first imported: inside the start-up.'''
    def find_spec(self, name, path, target=None):
        if name == MODULE:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
        return None

if THEN == "again-at-loop-close":
    close = asyncio.unix_events._UnixSelectorEventLoop.close
    def close_then_sigterm(loop):
        close(loop)
        os.kill(os.getpid(), signal.SIGTERM)
    asyncio.unix_events._UnixSelectorEventLoop.close = close_then_sigterm

sys.meta_path.insert(0, SigtermAt())
sys.argv = ["riskgate", "run", "--config", CONFIG]
runpy.run_module("worker.cli", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("module", "then"),
    [
        ("click", "once"),  # the CLI's own imports: no command parsed yet
        ("worker.service", "once"),  # ``run`` importing the service
        ("aiohttp", "once"),  # deep in the service's imports
        ("click", "again-at-loop-close"),  # and a second one while the loop closes
    ],
)
def test_e1_3_sigterm_while_riskgate_run_starts_exits_0_with_a_log_line(
    tmp_path: Path, module: str, then: str
) -> None:
    """Before, SIGTERM took the default action until ``serve`` installed its handlers:
    exit -15, no log line. The signal is sent by the child itself as ``module`` is
    first imported, so it lands inside the start-up deterministically."""
    path = tmp_path / "rg.toml"
    path.write_text(
        f'[kafka]\nbootstrap_servers = "127.0.0.1:{_free_port()}"\n'
        '[http]\nhost = "127.0.0.1"\nport = 0\n[log]\nformat = "json"\n[bots.desk]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE")}
    child = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, module, then, str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    stops = [line for line in lines if line["event"] == "stopping"]
    assert [line["signal"] for line in stops] == ["SIGTERM"], stderr
