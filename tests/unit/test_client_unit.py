"""GateView and GateClient logic without a broker: fail-closed answers and routing.

The fakes here (records, a consumer feeding batches, a producer that answers
like the worker) are shared with ``test_bypass_clients.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from worker import client as client_module
from worker.client import GateClient, GateView
from worker.config import KafkaConfig, TopicsConfig
from worker.messages import AccountGateState, Block, GateDecision, GateState, HaltEvent, OrderIntent

TOPICS = TopicsConfig()
NOW = 1_800_000_000_000
STALE_MS = 1_000
HALT = Block("manual_halt", "halted by ops: test", None)
GATES_TP = TopicPartition(TOPICS.gates, 0)
HALTS_TP = TopicPartition(TOPICS.halts, 0)
DECISIONS_TP = TopicPartition(TOPICS.decisions, 0)
encode = msgspec.json.encode


class Rec(NamedTuple):
    key: bytes | None
    value: bytes | None
    offset: int = 0


def account(
    bot: str = "a",
    *,
    allowed: bool = True,
    updated_ts: int = NOW,
    blocks: list[Block] | None = None,
) -> AccountGateState:
    return AccountGateState(
        bot=bot,
        entries_allowed=allowed and not blocks,
        blocks=blocks if blocks is not None else ([] if allowed else [HALT]),
        account_net_pnl=0.0,
        open_positions=0,
        gross_exposure=0.0,
        updated_ts=updated_ts,
        seq=1,
    )


def symbol(
    bot: str = "a", name: str = "S1", *, allowed: bool = True, blocks: list[Block] | None = None
) -> GateState:
    return GateState(
        bot=bot,
        symbol=name,
        entries_allowed=allowed and not blocks,
        blocks=blocks if blocks is not None else ([] if allowed else [HALT]),
        net_pnl=0.0,
        trades=0,
        recent_losses=0,
        position_qty=0.0,
        updated_ts=NOW,
        seq=1,
    )


class Clock:
    """An injected clock (monotonic for GateView) that a test moves by hand."""

    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def make_view(clock: Clock) -> GateView:
    return GateView(KafkaConfig(), TOPICS, staleness_ms=STALE_MS, clock=clock)


def gate(view: GateView, key: str, value: Any, *, live: bool = True) -> None:
    view._apply(TOPICS.gates, Rec(key.encode(), encode(value)), live=live)


def halt(view: GateView, event: HaltEvent) -> None:
    view._apply(TOPICS.halts, Rec(event.bot.encode(), encode(event)), live=True)


def caught_up(view: GateView) -> GateView:
    view._caught_up.set()
    return view


def halt_event(
    kind: str = "halted", *, symbol: str | None = "S1", gate: str = "manual_halt", n: int = 1
) -> HaltEvent:
    return msgspec.convert(
        {
            "event_id": f"a/{symbol or '*'}/{gate}/{n}",
            "bot": "a",
            "symbol": symbol,
            "kind": kind,
            "gate": gate,
            "reason": "r",
            "ts": NOW,
            "issued_by": "ops",
        },
        HaltEvent,
    )


Batch = dict[TopicPartition, list[Rec]]


class Feed:
    """A consumer fake: hands out its batches (raising any exception among them), then idles.

    ``drained`` is set once every batch before the idle point (or the raise)
    has been fully processed by the reader.
    """

    def __init__(self, *batches: Batch | BaseException, highwater: int | None = None) -> None:
        self.batches = list(batches)
        self.drained = asyncio.Event()
        self.positions: dict[TopicPartition, int] = {}
        self._highwater = highwater

    async def getmany(self, timeout_ms: int, max_records: int) -> Batch:
        if not self.batches:
            self.drained.set()
            await asyncio.Event().wait()
        item = self.batches.pop(0)
        if isinstance(item, BaseException):
            self.drained.set()
            raise item
        for tp, records in item.items():
            self.positions[tp] = records[-1].offset + 1
        return item

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater

    async def stop(self) -> None:
        pass


async def follow(reader: GateView | GateClient, feed: Feed) -> None:
    """Run the real reader loop of ``reader`` over ``feed`` until the feed is drained."""
    reader._launch(feed)
    async with asyncio.timeout(5):
        await feed.drained.wait()
    for _ in range(3):  # let a raising reader end and its done-callback run
        await asyncio.sleep(0)


class LogRecorder:
    """Stands in for the module's structlog logger: records (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def emit(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))

        return emit

    def kinds(self) -> list[str]:
        return [fields.get("kind", fields.get("cause", "")) for _, _, fields in self.lines]


def record_logs(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    """Replace the client module's logger for one test."""
    recorder = LogRecorder()
    monkeypatch.setattr(client_module, "log", recorder)
    return recorder


# -- GateView ------------------------------------------------------------------------


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
    gate(view, "a/gate", account())  # a heartbeat (its updated_ts does not matter)
    assert view.entries_allowed("a", "S1")


def test_records_route_by_key_and_bad_ones_raise_to_the_reader() -> None:
    view = caught_up(make_view(Clock()))
    gate(view, "a/gate", account())
    gate(view, "a/gate/S1", symbol())
    view._apply(TOPICS.gates, Rec(b"a/gate/S1", None), live=True)  # tombstone: ignored
    with pytest.raises(msgspec.DecodeError):  # the reader loop counts and skips it
        view._apply(TOPICS.gates, Rec(b"a/gate/S1", b"{not json"), live=True)
    with pytest.raises(msgspec.ValidationError):
        view._apply(TOPICS.gates, Rec(b"a/gate/S1", b'{"bot": "a"}'), live=True)
    assert set(view.accounts) == {"a"}
    assert view.symbols == {("a", "S1"): symbol()}


def test_halt_events_reach_every_subscriber_in_order() -> None:
    view = make_view(Clock())
    first: list[HaltEvent] = []
    second: list[str] = []
    view.subscribe(first.append)
    view.subscribe(lambda e: second.append(e.event_id))
    gate(view, "a/gate/S1", symbol(allowed=False))
    halted = halt_event("halted", n=1)
    halt(view, halted)
    gate(view, "a/gate/S1", symbol())
    resumed = halt_event("resumed", n=2)
    halt(view, resumed)
    assert first == [halted, resumed]
    assert second == ["a/S1/manual_halt/1", "a/S1/manual_halt/2"]
    assert not view.accounts  # halts never touch the gate table
    assert view.symbols == {("a", "S1"): symbol()}


async def test_view_start_requires_a_started_view_to_wait() -> None:
    with pytest.raises(AssertionError, match="start"):
        await make_view(Clock()).wait_caught_up()


# -- GateClient ----------------------------------------------------------------------


def intent(intent_id: str = "i-1", **changes: Any) -> OrderIntent:
    base = OrderIntent(intent_id, "a", "S1", "open", "buy", 1.0, 100.0, NOW)
    return msgspec.structs.replace(base, **changes)


def decision(of: OrderIntent, *, allowed: bool = True, **changes: Any) -> GateDecision:
    """The decision the worker would publish for ``of`` (echo fields copied), then ``changes``."""
    answer = GateDecision(
        intent_id=of.intent_id,
        bot=of.bot,
        symbol=of.symbol,
        allowed=allowed,
        gate=None if allowed else "manual_halt",
        reason="r",
        ts=NOW,
        action=of.action,
        side=of.side,
        qty=of.qty,
        price=of.price,
    )
    return msgspec.structs.replace(answer, **changes)


def deliver(client: GateClient, *answers: GateDecision) -> None:
    """Hand decisions to the client's reader as if fetched from the decisions topic."""
    for n, answer in enumerate(answers):
        client._record(DECISIONS_TP, Rec(b"a", encode(answer), n))


class Producer:
    """Records sends; answers each intent with ``answer(intent)`` as the worker (or a forger)."""

    def __init__(
        self,
        client: GateClient,
        answer: Callable[[OrderIntent], list[GateDecision]] | None,
        error: Exception | None = None,
    ) -> None:
        self.client = client
        self.answer = answer
        self.error = error
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, value, key))
        if self.answer is not None:
            got = msgspec.json.decode(value, type=OrderIntent)
            loop = asyncio.get_running_loop()
            loop.call_soon(deliver, self.client, *self.answer(got))
        return asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        pass


def client_with(
    answer: Callable[[OrderIntent], list[GateDecision]] | None,
    error: Exception | None = None,
    *,
    timeout_ms: int = 50,
) -> tuple[GateClient, Producer]:
    client = GateClient(KafkaConfig(), TOPICS, timeout_ms=timeout_ms, clock=lambda: NOW)
    producer = Producer(client, answer, error)
    client._producer = producer
    return client, producer


def worker_answer(of: OrderIntent) -> list[GateDecision]:
    return [decision(of)]


async def test_check_publishes_the_intent_keyed_by_bot_and_returns_its_decision() -> None:
    client, producer = client_with(worker_answer)
    got = await client.check(intent("i-7"))
    assert got == decision(intent("i-7"))
    assert producer.sent == [(TOPICS.intents, encode(intent("i-7")), b"a")]
    assert not client._pending
    assert client.ignored == {}


@pytest.mark.parametrize("error", [None, KafkaConnectionError()], ids=["silence", "send error"])
async def test_check_fails_closed(error: Exception | None) -> None:
    client, _ = client_with(None, error)
    got = await client.check(intent("i-9"))
    assert got == decision(
        intent("i-9"), allowed=False, gate=None, reason=got.reason
    )  # echoes the intent, stamped by the client's clock
    assert "failing closed" in got.reason and "50 ms" in got.reason
    assert not client._pending


async def test_decisions_resolve_their_own_pending_checks_only() -> None:
    client, _ = client_with(None, timeout_ms=5_000)
    one, two = intent("i-1"), intent("i-2", qty=2.0)
    checks = [asyncio.create_task(client.check(i)) for i in (one, two)]
    await asyncio.sleep(0)  # both checks sent and waiting
    records = [
        b"{broken",
        None,  # a tombstone someone wrote to the decisions topic
        encode(decision(intent("someone-else"))),
        encode(decision(two, allowed=False)),
        encode(decision(one)),
        encode(decision(one)),  # a repeated answer changes nothing
    ]
    await follow(client, Feed({DECISIONS_TP: [Rec(b"a", v, n) for n, v in enumerate(records)]}))
    async with asyncio.timeout(5):
        results = await asyncio.gather(*checks)
    assert results == [decision(one), decision(two, allowed=False)]
    assert client.ignored == {"DecodeError": 1, "not_pending": 1}
    assert client.failure is None
