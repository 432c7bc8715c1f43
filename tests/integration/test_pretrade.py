"""Pre-trade checks over a real broker: OrderIntent in, GateDecision out (SPEC §3, §4).

Gate order, the reduce-only bypass, ``no_position``, reservations (races,
release by fill and by TTL) and what survives a worker restart. One worker
serves the module; every test uses its own bots so the tests do not interfere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import msgspec
import pytest
import pytest_asyncio

from tests.support.gate_env import GateEnv, gate_env
from tests.support.harness import MIN_MS, decoded, latest, make_config, wait_until
from worker.messages import GateDecision, HaltEvent

pytestmark = pytest.mark.broker

TTL_MS = 30_000  # the default [worker] reservation_ttl_ms
SWEEP_MS = 200

BODY = f"""
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 2
window_secs = 14400
cooldown_secs = 3600

[worker]
sweep_interval_ms = {SWEEP_MS}

[bots.order]
symbols = ["S1", "S2"]
[bots.order.portfolio]
max_daily_loss = -60.0
max_concurrent_positions = 1
max_gross_exposure = 1000.0

[bots.caps]
[bots.caps.portfolio]
max_concurrent_positions = 1
max_gross_exposure = 1000.0

[bots.exits]
symbols = ["S1", "S2", "S3"]
[bots.exits.portfolio]
max_daily_loss = -60.0

[bots.flat]

[bots.race_slot.portfolio]
max_concurrent_positions = 2

[bots.race_exposure.portfolio]
max_gross_exposure = 1000.0

[bots.fill_release.portfolio]
max_gross_exposure = 1000.0

[bots.ttl.portfolio]
max_gross_exposure = 1000.0

[bots.restart.portfolio]
max_gross_exposure = 1000.0

[bots.restart_bot]
"""


class _Size(TypedDict):
    qty: float
    price: float


BIG: _Size = {"qty": 10.0, "price": 500.0}  # notional 5000: over every exposure cap here


@pytest_asyncio.fixture(scope="module")
async def env(kafka_bootstrap: str) -> AsyncIterator[GateEnv]:
    config = make_config(kafka_bootstrap, BODY, partitions=2)
    # The restart test restarts the worker as a static member (as a rolling restart
    # would): the embedded broker ignores LeaveGroup, so a dynamic member's rejoin
    # waits out the old session, a static one takes its assignment back at once.
    kafka = msgspec.structs.replace(
        config.kafka, group_instance_id=f"{config.kafka.group_id}-0", session_timeout_ms=6000
    )
    async with gate_env(msgspec.structs.replace(config, kafka=kafka)) as env:
        yield env


def denied(decision: GateDecision, gate: str) -> GateDecision:
    assert (decision.allowed, decision.gate) == (False, gate), decision
    assert decision.reason and decision.reservation_expires_ts is None, decision
    return decision


def allowed(decision: GateDecision) -> GateDecision:
    assert (decision.allowed, decision.gate) == (True, None), decision
    return decision


async def test_gate_order_manual_session_breaker_then_daily_loss(env: GateEnv) -> None:
    """Every gate blocks S1 at once; lifting them one by one shows the order of SPEC §4."""
    # S2 holds the only position slot, so concurrency blocks an S1 entry; 5000 > exposure cap.
    await env.fill_and_wait("order", "S2", "buy", 1.0)
    seen = len(env.halts)
    # Two losses: net -80 halts the session (-50), trips the breaker (2 losses) and
    # latches the portfolio daily loss (-60).
    await env.send(
        env.outcome("order", "S1", -40.0, ago_ms=2 * MIN_MS),
        env.outcome("order", "S1", -40.0, ago_ms=MIN_MS),
    )
    for symbol, gate in (
        ("S1", "session_halt"),
        ("S1", "circuit_breaker"),
        (None, "portfolio_daily_loss"),
    ):

        def halted(e: HaltEvent, s: str | None = symbol, g: str = gate) -> bool:
            return (e.bot, e.symbol, e.gate, e.kind) == ("order", s, g, "halted")

        event = await env.wait_halt(halted, after=seen, what=f"{gate} halt")
        assert event.reason and event.issued_by is None
    halt = env.command("halt", "order", "S1", issued_by="alice", reason="fat finger on S1")
    await env.control(halt)

    decision = denied(await env.check("order", "S1", **BIG), "manual_halt")
    assert decision.reason == "halted by alice: fat finger on S1"

    await env.control(env.command("resume", "order", "S1"))
    decision = denied(await env.check("order", "S1", **BIG), "session_halt")
    assert decision.reason == "session net PnL -80.00 reached loss limit -50"

    await env.control(env.command("reset_session", "order", "S1"))
    decision = denied(await env.check("order", "S1", **BIG), "circuit_breaker")
    assert decision.reason == "2 losses within 14400s; cooling down for 3600s"

    await env.control(env.command("reset_breaker", "order", "S1"))
    # The session reset brought the account back to 0, but the daily loss is latched;
    # it still answers before concurrency (S2 holds the slot) and exposure (5000 > 1000).
    decision = denied(await env.check("order", "S1", **BIG), "portfolio_daily_loss")
    assert decision.reason == "account reached max daily loss -60"


async def test_gate_order_concurrency_then_exposure(env: GateEnv) -> None:
    await env.fill_and_wait("caps", "S2", "buy", 1.0, 100.0)  # the only slot; exposure 100

    decision = denied(await env.check("caps", "S1", **BIG), "max_concurrent_positions")
    assert decision.reason == "1 positions already open or reserved"
    # S2 is open already, so an entry there takes no new slot and exposure answers.
    decision = denied(await env.check("caps", "S2", **BIG), "gross_exposure")
    assert decision.reason == "notional 5000 would exceed 1000"

    decision = allowed(await env.check("caps", "S2", qty=8.0, price=100.0))  # 100 + 800
    assert decision.reason == "entries allowed"
    assert decision.reservation_expires_ts == decision.ts + TTL_MS
    # The 800 reserved counts: 100 + 800 + 200 > 1000.
    denied(await env.check("caps", "S2", qty=2.0, price=100.0), "gross_exposure")


async def test_close_of_an_open_position_bypasses_every_gate(env: GateEnv) -> None:
    await env.fill_and_wait("exits", "S1", "buy", 2.0)
    await env.fill_and_wait("exits", "S2", "sell", 3.0)
    seen = len(env.halts)
    await env.send(
        env.outcome("exits", "S1", -40.0, ago_ms=2 * MIN_MS),
        env.outcome("exits", "S1", -40.0, ago_ms=MIN_MS),
    )
    await env.wait_halt(lambda e: (e.bot, e.gate) == ("exits", "portfolio_daily_loss"), after=seen)
    await env.wait_halt(lambda e: (e.bot, e.gate) == ("exits", "circuit_breaker"), after=seen)
    await env.control(env.command("halt", "exits", "S1"))
    await env.control(env.command("halt", "exits", None))
    # Every gate blocks entries now.
    denied(await env.check("exits", "S1"), "manual_halt")
    denied(await env.check("exits", "S2"), "manual_halt")

    long_exit = allowed(await env.check("exits", "S1", action="close", side="sell", qty=2.0))
    assert long_exit.reason == "reduce-only exit: bypasses entry gates"
    # A close reserves the quantity it reduces (decisions R1) ...
    assert long_exit.reservation_expires_ts == long_exit.ts + TTL_MS
    short_exit = allowed(await env.check("exits", "S2", action="close", side="buy", qty=3.0))
    assert short_exit.reservation_expires_ts == short_exit.ts + TTL_MS
    # ... so a second close of the same position is beyond what is left to close.
    denied(
        await env.check("exits", "S1", action="close", side="sell", qty=2.0),
        "reduce_only_exceeds_position",
    )

    # A "close" that would add to the position is no exit; one on a flat symbol neither.
    decision = denied(await env.check("exits", "S1", action="close", side="buy"), "no_position")
    assert decision.reason == "a buy does not reduce the open position"
    decision = denied(await env.check("exits", "S3", action="close", side="sell"), "no_position")
    assert decision.reason == "no open S3 position to close"


async def test_close_against_a_flat_position_is_denied_no_position(env: GateEnv) -> None:
    decision = denied(await env.check("flat", "S1", action="close", side="sell"), "no_position")
    assert decision.reason == "no open S1 position to close"
    allowed(await env.check("flat", "S1"))  # nothing else blocks this bot

    await env.fill_and_wait("flat", "S1", "buy", 1.0)
    allowed(await env.check("flat", "S1", action="close", side="sell"))
    await env.fill_and_wait("flat", "S1", "sell", 1.0)  # flat again
    denied(await env.check("flat", "S1", action="close", side="sell"), "no_position")


async def test_race_for_the_last_slot_allows_exactly_one(env: GateEnv) -> None:
    await env.fill_and_wait("race_slot", "S0", "buy", 1.0)  # one of two slots taken
    intents = [env.intent("race_slot", symbol) for symbol in ("S1", "S2")]
    decisions = await asyncio.gather(*(env.client.check(i) for i in intents))
    assert [d.intent_id for d in decisions] == [i.intent_id for i in intents]
    winners = [d for d in decisions if d.allowed]
    assert len(winners) == 1, decisions
    [loser] = [d for d in decisions if not d.allowed]
    denied(loser, "max_concurrent_positions")
    # The winner's reservation holds the slot: a third symbol is denied, the winner's is not.
    denied(await env.check("race_slot", "S3"), "max_concurrent_positions")
    allowed(await env.check("race_slot", winners[0].symbol))


async def test_race_for_the_last_exposure_allows_exactly_one(env: GateEnv) -> None:
    await env.fill_and_wait("race_exposure", "S0", "buy", 1.0, 100.0)  # 900 left under 1000
    intents = [env.intent("race_exposure", f"S{n}", qty=6.0) for n in range(1, 6)]  # 600 each
    decisions = await asyncio.gather(*(env.client.check(i) for i in intents))
    assert [d.intent_id for d in decisions] == [i.intent_id for i in intents]
    assert sum(d.allowed for d in decisions) == 1, decisions
    for d in decisions:
        if not d.allowed:
            denied(d, "gross_exposure")


async def test_reservation_released_by_a_fill_with_its_intent_id(env: GateEnv) -> None:
    first = allowed(await env.check("fill_release", "S1", qty=6.0))  # reserves 600 of 1000
    denied(await env.check("fill_release", "S2", qty=6.0), "gross_exposure")
    # The order fills 1 @ 100: a 100 position, and only that much is released (issue 9
    # item 6): the other 500 stay reserved until filled or expired.
    await env.fill_and_wait("fill_release", "S1", "buy", 1.0, intent_id=first.intent_id)
    denied(await env.check("fill_release", "S2", qty=5.0), "gross_exposure")  # 100+500+500
    # The rest fills: 600 open, nothing reserved.
    await env.fill_and_wait("fill_release", "S1", "buy", 5.0, intent_id=first.intent_id)
    allowed(await env.check("fill_release", "S2", qty=4.0))  # 600 + 400 <= 1000
    assert first.reservation_expires_ts == first.ts + TTL_MS
    assert env.clock() < first.reservation_expires_ts, "released by the fill, not by the TTL"


async def test_reservation_released_when_its_ttl_expires(env: GateEnv) -> None:
    first = allowed(await env.check("ttl", "S1", qty=6.0))
    assert first.reservation_expires_ts == first.ts + TTL_MS
    denied(await env.check("ttl", "S2", qty=6.0), "gross_exposure")

    env.clock.offset_ms += TTL_MS + 1_000  # the worker's wall clock passes the expiry

    async def retry() -> GateDecision | None:
        decision = await env.check("ttl", "S2", qty=6.0)
        if decision.allowed:
            return decision
        denied(decision, "gross_exposure")
        return None

    # The next sweep (every SWEEP_MS) drops the reservation.
    decision = await wait_until(retry, within=5.0, what="reservation expired", alive=env.alive)
    assert decision.ts >= first.reservation_expires_ts


async def test_reservations_and_manual_halts_survive_a_restart(env: GateEnv) -> None:
    reserved = allowed(await env.check("restart", "S1", qty=6.0))  # 600 of 1000
    await env.control(env.command("halt", "restart", "S2", reason="symbol halt"))
    await env.control(env.command("halt", "restart_bot", None, reason="bot halt"))

    async def persisted() -> dict[str, Any] | None:
        snaps = decoded(await latest(env.config.kafka, env.config.topics.snapshots))
        portfolio = snaps.get("restart/portfolio", {})
        ok = (
            reserved.intent_id in portfolio.get("reservations", {})
            and (snaps.get("restart/risk/S2") or {}).get("manual_halt") is not None
            and (snaps.get("restart_bot/portfolio") or {}).get("manual_halt") is not None
        )
        return snaps if ok else None

    snaps = await wait_until(persisted, within=10.0, what="reservation and halts persisted")
    reservation = snaps["restart/portfolio"]["reservations"][reserved.intent_id]
    assert reservation == {
        "symbol": "S1",
        "notional": 600.0,
        "expires_ts": reserved.reservation_expires_ts,
        "qty": 6.0,
    }

    await env.stop_worker()
    await env.start_worker()

    # The restored reservation still counts (600 + 600 > 1000) and the halts still block.
    denied(await env.check("restart", "S3", qty=6.0), "gross_exposure")
    decision = denied(await env.check("restart", "S2"), "manual_halt")
    assert decision.reason == "halted by ops: symbol halt"
    denied(await env.check("restart_bot", "S1"), "manual_halt")

    # The restored reservation is released by its fills like any other, partly first.
    await env.fill_and_wait("restart", "S1", "buy", 1.0, intent_id=reserved.intent_id)
    denied(await env.check("restart", "S3", qty=5.0), "gross_exposure")  # 100 + 500 + 500
    allowed(await env.check("restart", "S3", qty=4.0))  # 100 + 500 + 400
    await env.control(env.command("resume", "restart_bot", None))
    allowed(await env.check("restart_bot", "S1"))
