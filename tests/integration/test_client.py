"""The client library against a real broker: GateView (local gate table) and GateClient.

GateView fails closed until it has read the gate topics to their end and when
the owning worker has gone quiet for longer than ``staleness_ms``; it flips
within one sweep of a halt. GateClient runs many concurrent checks over one
consumer and fails closed when no decision arrives in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from gatekit import GateEnv, eventually, gate_env
from harness import Raw, make_config, now_ms, produce

from worker.client import GateClient, GateView
from worker.kafka.topics import TopicLayoutError, ensure_topics
from worker.messages import AccountGateState, Command, GateState, HaltEvent

pytestmark = pytest.mark.broker

SWEEP_MS = 250
HEARTBEAT_MS = 200
STALE_MS = 1_000

BODY = f"""
[worker]
sweep_interval_ms = {SWEEP_MS}
heartbeat_interval_ms = {HEARTBEAT_MS}

[defaults]
accept_unknown_bots = true
"""


@pytest_asyncio.fixture(scope="module")
async def module_env(kafka_bootstrap: str) -> AsyncIterator[GateEnv]:
    async with gate_env(make_config(kafka_bootstrap, BODY, partitions=2)) as env:
        yield env


@pytest_asyncio.fixture
async def env(module_env: GateEnv) -> GateEnv:
    """The module's environment with its worker running (a test may have stopped it)."""
    await module_env.ensure_worker()
    return module_env


async def test_gate_view_fails_closed_until_caught_up(kafka_bootstrap: str) -> None:
    """While the view replays history it denies, even for a bot whose record it holds."""
    config = make_config(kafka_bootstrap, "", partitions=1)  # unique topic names
    kafka, topics = config.kafka, config.topics
    await ensure_topics(kafka, topics)
    encode = msgspec.json.encode
    account = AccountGateState(
        bot="cv",
        entries_allowed=True,
        blocks=[],
        account_net_pnl=0.0,
        open_positions=0,
        gross_exposure=0.0,
        updated_ts=now_ms(),
        seq=1,
    )
    # cv's account record first, then more history than one poll returns (10 000).
    noise = [
        GateState("noise", f"S{n}", True, [], 0.0, 0, 0, 0.0, now_ms(), 1) for n in range(12_000)
    ]
    await produce(
        kafka,
        [
            Raw(topics.gates, b"cv/gate", encode(account)),
            *(Raw(topics.gates, f"noise/gate/{s.symbol}".encode(), encode(s)) for s in noise),
        ],
    )

    view = GateView(kafka, topics, staleness_ms=60_000)
    assert not view.entries_allowed("cv", "S1")
    # Ask the view after every record it applies while it replays the history.
    held, allowed_early = 0, 0
    apply = view._apply

    def apply_and_ask(topic: str, record: Any) -> None:
        nonlocal held, allowed_early
        apply(topic, record)
        if not view.caught_up:
            held += "cv" in view.accounts
            allowed_early += view.entries_allowed("cv", "S1")

    view._apply = apply_and_ask  # type: ignore[method-assign]
    async with view:
        async with asyncio.timeout(30):
            await view.wait_caught_up()
        assert held > 0, "never asked the view mid-replay with cv's record in it"
        assert allowed_early == 0, "allowed before the view caught up"
        assert view.entries_allowed("cv", "S1")
        assert len(view.symbols) == len(noise)
        assert not view.entries_allowed("unknown-bot", "S1")  # no account record: denied


async def test_view_and_client_refuse_topics_that_do_not_exist(kafka_bootstrap: str) -> None:
    config = make_config(kafka_bootstrap, "", partitions=1)  # topics never created
    with pytest.raises(TopicLayoutError, match=r"risk\.gates does not exist"):
        await GateView(config.kafka, config.topics).start()
    with pytest.raises(TopicLayoutError, match=r"risk\.decisions does not exist"):
        await GateClient(config.kafka, config.topics).start()


async def test_gate_view_flips_within_one_sweep_of_a_halt(env: GateEnv) -> None:
    view = env.view
    await env.control(env.command("resume", "flip", None))  # the bot's account record appears
    await eventually(lambda: view.entries_allowed("flip", "S1"), what="flip allowed", alive=None)
    bound = SWEEP_MS / 1000 + 0.5
    received: list[HaltEvent] = []
    view.subscribe(lambda e: received.append(e) if e.bot == "flip" else None)

    async def flips(command: Command, symbol: str | None, probe: str, expect: bool) -> None:
        cmd = env.command(command, "flip", symbol, issued_by="dana")
        await env.send(cmd)  # acknowledged: the command is on the broker
        started = time.perf_counter()
        await eventually(
            lambda: view.entries_allowed("flip", probe) is expect,
            within=bound,
            what=f"view to flip after {command} {symbol or '*'}",
            alive=env.alive,
        )
        print(
            f"{command} {symbol or '*'}: flipped in {1000 * (time.perf_counter() - started):.1f} ms"
        )

    await flips("halt", "S1", "S1", expect=False)
    assert view.entries_allowed("flip", "S2")  # only S1 is halted
    await flips("halt", None, "S2", expect=False)
    await flips("resume", None, "S2", expect=True)
    assert not view.entries_allowed("flip", "S1")
    await flips("resume", "S1", "S1", expect=True)

    await eventually(lambda: len(received) >= 4, what="4 halt callbacks", alive=env.alive)
    assert [(e.kind, e.symbol, e.issued_by) for e in received] == [
        ("halted", "S1", "dana"),
        ("halted", None, "dana"),
        ("resumed", None, "dana"),
        ("resumed", "S1", "dana"),
    ]


async def test_gate_client_runs_many_concurrent_checks(env: GateEnv) -> None:
    intents = [
        env.intent(f"many{n % 3}", f"S{n % 10}", action="open" if n % 2 == 0 else "close")
        for n in range(300)
    ]
    decisions = await asyncio.gather(*(env.client.check(i) for i in intents))
    for intent, decision in zip(intents, decisions, strict=True):
        assert decision.intent_id == intent.intent_id
        if intent.action == "open":
            assert decision.allowed, decision
        else:  # every symbol is flat
            assert (decision.allowed, decision.gate) == (False, "no_position"), decision


async def test_stopped_worker_goes_stale_in_the_view_and_checks_fail_closed(
    env: GateEnv,
) -> None:
    await env.fill_and_wait("stale", "S1", "buy", 1.0)
    async with GateView(env.config.kafka, env.config.topics, staleness_ms=STALE_MS) as view:
        async with asyncio.timeout(10):
            await view.wait_caught_up()
        await eventually(lambda: view.entries_allowed("stale", "S1"), what="allowed", alive=None)
        # Heartbeats keep a quiet bot fresh for longer than the staleness bound.
        first = view.accounts["stale"].updated_ts
        deadline = time.monotonic() + 10
        while view.accounts["stale"].updated_ts <= first + STALE_MS:
            assert view.entries_allowed("stale", "S1"), "went stale while the worker runs"
            assert time.monotonic() < deadline, "no heartbeat"
            await asyncio.sleep(0.01)

        await env.stop_worker()
        started = time.perf_counter()
        await eventually(
            lambda: not view.entries_allowed("stale", "S1"),
            within=(STALE_MS + HEARTBEAT_MS) / 1000 + 1.0,
            what="view to go stale",
            alive=None,
        )
        print(f"stale after {1000 * (time.perf_counter() - started):.0f} ms")
        assert view.accounts["stale"].entries_allowed  # the record allows: staleness denies

    intent = env.intent("stale", "S1")
    started = time.perf_counter()
    decision = await env.client.check(intent, timeout_ms=300)
    waited = time.perf_counter() - started
    assert (decision.intent_id, decision.allowed, decision.gate) == (intent.intent_id, False, None)
    assert "failing closed" in decision.reason
    assert 0.3 <= waited < 2.0, waited
