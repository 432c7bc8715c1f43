"""The pytest plugin's fixtures against the session broker (worker.testing).

Our own suite loads the plugin exactly as a user's does (the ``pytest11``
entry point of the editable install), and our ``kafka_bootstrap`` is its
``riskgate_kafka``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import aiohttp
import pytest

import worker.testing.plugin
from worker.kafka.topics import topic_partitions, topic_policies
from worker.messages import Block, ControlCommand
from worker.testing import RiskgateWorker, WorkerDied
from worker.testing.plugin import StartWorker

pytestmark = pytest.mark.broker

CONFIG = """
[defaults.session]
loss_limit = -100.0

[bots.bot1]
symbols = ["BTCUSDT", "ETHUSDT"]
"""


def test_plugin_is_loaded_from_its_pytest11_entry_point(request: pytest.FixtureRequest) -> None:
    """pytest registers an entry-point plugin under the entry point's name."""
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {"riskgate": "worker.testing.plugin"}
    assert request.config.pluginmanager.get_plugin("riskgate") is worker.testing.plugin


def test_kafka_bootstrap_is_the_plugins_riskgate_kafka(
    kafka_bootstrap: str, riskgate_kafka: str
) -> None:
    assert kafka_bootstrap == riskgate_kafka


async def test_worker_decides_halts_and_publishes_gate_state(riskgate_worker: StartWorker) -> None:
    rg: RiskgateWorker = riskgate_worker(CONFIG)
    intent = await rg.produce_intent("bot1", "BTCUSDT", "buy", 2.0, 50.0)
    decision = await rg.wait_for_decision(intent.intent_id)
    assert (decision.allowed, decision.gate, decision.qty, decision.price) == (
        True,
        None,
        2.0,
        50.0,
    )

    await rg.produce_outcome("bot1", "BTCUSDT", -60.0)
    await rg.produce_outcome("bot1", "BTCUSDT", -60.0)
    halt = await rg.wait_for_halt("bot1", symbol="BTCUSDT")
    assert (halt.event_id, halt.gate, halt.kind) == (
        "bot1/BTCUSDT/session_halt/1",
        "session_halt",
        "halted",
    )
    state = await rg.wait_for_gate("bot1", "BTCUSDT", entries_allowed=False)
    assert state.blocks == [Block("session_halt", halt.reason, halt.until_ts)]
    assert (state.net_pnl, state.trades) == (-120.0, 2)

    denied = await rg.produce_intent("bot1", "BTCUSDT", "buy", 1.0, 50.0)
    decision = await rg.wait_for_decision(denied.intent_id)
    assert (decision.allowed, decision.gate) == (False, "session_halt")
    account = await rg.wait_for_gate("bot1", entries_allowed=True)
    assert account.blocks == []  # a session halt blocks its symbol, not the account
    async with aiohttp.ClientSession() as http, http.get(rg.metrics_url) as got:
        text = await got.text()
    assert 'riskgate_halts_total{gate="session_halt",kind="halted"} 1.0' in text.splitlines()


async def test_worker_has_topics_of_its_own_deleted_when_it_stops(
    riskgate_worker: StartWorker,
) -> None:
    rg: RiskgateWorker = riskgate_worker(CONFIG)
    names = set(topic_policies(rg.config.topics))
    prefix = rg.config.topics.fills.split(".")[0]
    assert {name.split(".")[0] for name in names} == {prefix}
    assert rg.config.kafka.group_id == f"{prefix}.riskgate"
    assert names <= set(await topic_partitions(rg.config.kafka))

    rg.stop()
    assert names.isdisjoint(await topic_partitions(rg.config.kafka))


async def test_wait_times_out_quoting_what_it_read(riskgate_worker: StartWorker) -> None:
    rg: RiskgateWorker = riskgate_worker(CONFIG)
    await rg.produce_outcome("bot1", "ETHUSDT", -150.0)
    await rg.wait_for_halt("bot1", symbol="ETHUSDT")
    with pytest.raises(AssertionError) as info:
        await rg.wait_for_halt("bot1", gate="circuit_breaker", within=1)
    message = str(info.value)
    assert message.startswith(
        "timed out after 1 s waiting for halted circuit_breaker of bot1/any symbol on "
        f"{rg.config.topics.halts}; last records read: [HaltEvent(event_id='bot1/ETHUSDT/"
    )


def test_worker_that_dies_at_start_fails_with_its_error(riskgate_worker: StartWorker) -> None:
    with pytest.raises(WorkerDied, match=r"cannot read control\.secret_file"):
        riskgate_worker('[control]\nsecret_file = "/nonexistent/riskgate-secret"\n')


async def test_fill_moves_the_position_in_the_gate_record(riskgate_worker: StartWorker) -> None:
    rg: RiskgateWorker = riskgate_worker(CONFIG)
    fill = await rg.produce_fill("bot1", "ETHUSDT", "buy", 3.0, 20.0, fee=0.5)
    assert (fill.bot, fill.symbol, fill.side, fill.qty, fill.price, fill.fee) == (
        "bot1",
        "ETHUSDT",
        "buy",
        3.0,
        20.0,
        0.5,
    )
    state = await rg.wait_for_gate("bot1", "ETHUSDT")
    assert (state.position_qty, state.entries_allowed) == (3.0, True)


async def test_an_operator_halt_is_a_bot_wide_halt_event(riskgate_worker: StartWorker) -> None:
    rg: RiskgateWorker = riskgate_worker(CONFIG)
    command = ControlCommand("halt", "bot1", None, "desk closed", "tester", rg.clock())
    await rg.produce(command)
    halt = await rg.wait_for_halt("bot1", symbol=None)
    assert (halt.symbol, halt.gate, halt.reason, halt.issued_by) == (
        None,
        "manual_halt",
        "halt by tester: desk closed",
        "tester",
    )
    account = await rg.wait_for_gate("bot1", blocked_by="manual_halt")
    assert account.entries_allowed is False


NOON_MS = 1_749_988_800_000
"""12:00 UTC on 2025-06-15."""


async def test_a_given_clock_stamps_events_and_drives_the_worker(
    riskgate_worker: StartWorker,
) -> None:
    rg: RiskgateWorker = riskgate_worker(CONFIG, clock=lambda: NOON_MS)
    intent = await rg.produce_intent("bot1", "BTCUSDT", "sell", 1.0, 10.0)
    decision = await rg.wait_for_decision(intent.intent_id)
    ttl = rg.config.worker.reservation_ttl_ms
    assert (intent.ts, decision.ts, decision.reservation_expires_ts) == (
        NOON_MS,
        NOON_MS,
        NOON_MS + ttl,
    )
