"""GateView and GateClient logic without a broker: fail-closed answers and routing."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import msgspec
import pytest
from aiokafka.errors import KafkaConnectionError

from worker.client import GateClient, GateView
from worker.config import KafkaConfig, TopicsConfig
from worker.messages import AccountGateState, Block, GateDecision, GateState, HaltEvent, OrderIntent

TOPICS = TopicsConfig()
NOW = 1_800_000_000_000
STALE_MS = 1_000
HALT = Block("manual_halt", "halted by ops: test", None)
encode = msgspec.json.encode


class Rec(NamedTuple):
    key: bytes | None
    value: bytes | None
    offset: int = 0


def account(bot: str = "a", *, allowed: bool = True, updated_ts: int = NOW) -> AccountGateState:
    return AccountGateState(
        bot=bot,
        entries_allowed=allowed,
        blocks=[] if allowed else [HALT],
        account_net_pnl=0.0,
        open_positions=0,
        gross_exposure=0.0,
        updated_ts=updated_ts,
        seq=1,
    )


def symbol(bot: str = "a", name: str = "S1", *, allowed: bool = True) -> GateState:
    return GateState(
        bot=bot,
        symbol=name,
        entries_allowed=allowed,
        blocks=[] if allowed else [HALT],
        net_pnl=0.0,
        trades=0,
        recent_losses=0,
        position_qty=0.0,
        updated_ts=NOW,
        seq=1,
    )


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def make_view(clock: Clock) -> GateView:
    return GateView(KafkaConfig(), TOPICS, staleness_ms=STALE_MS, clock=clock)


def gate(view: GateView, key: str, value: Any) -> None:
    view._apply(TOPICS.gates, Rec(key.encode(), encode(value)))


def caught_up(view: GateView) -> GateView:
    view._caught_up.set()
    return view


def test_denies_until_caught_up_even_with_the_bots_record() -> None:
    view = make_view(Clock())
    gate(view, "a/gate", account())
    assert not view.entries_allowed("a", "S1")
    caught_up(view)
    assert view.entries_allowed("a", "S1")


def test_fails_closed_on_every_doubt() -> None:
    clock = Clock()
    view = caught_up(make_view(clock))
    assert not view.entries_allowed("a", "S1")  # no account record for the bot
    gate(view, "a/gate", account())
    gate(view, "a/gate/S2", symbol(name="S2", allowed=False))
    gate(view, "b/gate", account("b", allowed=False))
    gate(view, "b/gate/S1", symbol("b"))
    assert view.entries_allowed("a", "S1")  # no symbol record: the account decides
    assert not view.entries_allowed("a", "S2")  # symbol blocked
    assert not view.entries_allowed("b", "S1")  # account blocked
    clock.now = NOW + STALE_MS
    assert view.entries_allowed("a", "S1")  # at the bound
    clock.now = NOW + STALE_MS + 1
    assert not view.entries_allowed("a", "S1")  # stale owner
    gate(view, "a/gate", account(updated_ts=clock.now))  # a heartbeat
    assert view.entries_allowed("a", "S1")


def test_records_route_by_key_and_bad_ones_are_ignored() -> None:
    view = caught_up(make_view(Clock()))
    gate(view, "a/gate", account())
    gate(view, "a/gate/S1", symbol())
    view._apply(TOPICS.gates, Rec(b"a/gate/S1", None))  # tombstone: ignored
    view._apply(TOPICS.gates, Rec(b"a/gate/S1", b"{not json"))  # logged, ignored
    view._apply(TOPICS.gates, Rec(b"a/gate/S1", b'{"bot": "a"}'))  # wrong shape, ignored
    assert set(view.accounts) == {"a"}
    assert view.symbols == {("a", "S1"): symbol()}


def test_halt_events_reach_every_subscriber_in_order() -> None:
    view = make_view(Clock())
    first: list[HaltEvent] = []
    second: list[str] = []
    view.subscribe(first.append)
    view.subscribe(lambda e: second.append(e.event_id))
    events = [
        HaltEvent(f"a/S1/manual_halt/{n}", "a", "S1", kind, "manual_halt", "r", NOW, None, "ops")
        for n, kind in enumerate(("halted", "resumed"), start=1)
    ]
    for event in events:
        view._apply(TOPICS.halts, Rec(b"a", encode(event)))
    view._apply(TOPICS.halts, Rec(b"a", b"garbage"))
    assert first == events
    assert second == ["a/S1/manual_halt/1", "a/S1/manual_halt/2"]
    assert not view.accounts and not view.symbols  # halts never touch the gate table


def test_a_failing_callback_does_not_stop_the_view() -> None:
    view = caught_up(make_view(Clock()))
    seen: list[str] = []

    def broken(_: HaltEvent) -> None:
        raise RuntimeError("subscriber bug")

    view.subscribe(broken)
    view.subscribe(lambda e: seen.append(e.event_id))
    event = HaltEvent("a/*/manual_halt/1", "a", None, "halted", "manual_halt", "r", NOW)
    view._apply(TOPICS.halts, Rec(b"a", encode(event)))  # must not raise into the follow loop
    gate(view, "a/gate", account())
    assert seen == ["a/*/manual_halt/1"]
    assert view.entries_allowed("a", "S1")


def intent(intent_id: str = "i-1") -> OrderIntent:
    return OrderIntent(intent_id, "a", "S1", "open", "buy", 1.0, 100.0, NOW)


def decision(intent_id: str, *, allowed: bool = True) -> GateDecision:
    return GateDecision(intent_id, "a", "S1", allowed, None if allowed else "manual_halt", "r", NOW)


class Producer:
    """Records sends; optionally answers through the client like the worker would."""

    def __init__(self, client: GateClient, *, answer: bool, error: Exception | None = None) -> None:
        self.client = client
        self.answer = answer
        self.error = error
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, value, key))
        if self.answer:
            got = msgspec.json.decode(value, type=OrderIntent)
            future = self.client._pending[got.intent_id]
            asyncio.get_running_loop().call_soon(future.set_result, decision(got.intent_id))
        return asyncio.get_running_loop().create_future()


def client_with(answer: bool, error: Exception | None = None) -> tuple[GateClient, Producer]:
    client = GateClient(KafkaConfig(), TOPICS, timeout_ms=50, clock=lambda: NOW)
    producer = Producer(client, answer=answer, error=error)
    client._producer = producer  # type: ignore[assignment]
    return client, producer


async def test_check_publishes_the_intent_keyed_by_bot_and_returns_its_decision() -> None:
    client, producer = client_with(answer=True)
    got = await client.check(intent("i-7"))
    assert got == decision("i-7")
    assert producer.sent == [(TOPICS.intents, encode(intent("i-7")), b"a")]
    assert not client._pending


@pytest.mark.parametrize("error", [None, KafkaConnectionError()], ids=["silence", "send error"])
async def test_check_fails_closed(error: Exception | None) -> None:
    client, _ = client_with(answer=False, error=error)
    got = await client.check(intent("i-9"))
    assert (got.intent_id, got.allowed, got.gate, got.ts) == ("i-9", False, None, NOW)
    assert "failing closed" in got.reason and "50 ms" in got.reason
    assert not client._pending


class Consumer:
    def __init__(self, batches: list[list[Rec]]) -> None:
        self.batches = batches

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[str, list[Rec]]:
        if not self.batches:
            await asyncio.sleep(3600)
        return {"tp": self.batches.pop(0)}


async def test_decisions_resolve_their_own_pending_checks_only() -> None:
    client = GateClient(KafkaConfig(), TOPICS)
    loop = asyncio.get_running_loop()
    waiting = {i: loop.create_future() for i in ("i-1", "i-2")}
    client._pending.update(waiting)
    client._consumer = Consumer(  # type: ignore[assignment]
        [
            [
                Rec(b"a", b"{broken"),
                Rec(b"a", None),  # a tombstone someone wrote to the decisions topic
                Rec(b"a", encode(decision("someone-else"))),
                Rec(b"a", encode(decision("i-2", allowed=False))),
            ],
            [Rec(b"a", encode(decision("i-1"))), Rec(b"a", encode(decision("i-1")))],
        ]
    )
    task = asyncio.create_task(client._follow())
    try:
        async with asyncio.timeout(5):
            results = await asyncio.gather(waiting["i-1"], waiting["i-2"])
    finally:
        task.cancel()
    assert results == [decision("i-1"), decision("i-2", allowed=False)]
