"""GateView and GateClient logic without a broker: fail-closed answers and routing.

The fakes here (records, a consumer feeding batches, a producer that answers
like the worker, the transport that hands them to the client library) are
shared with ``test_bypass_clients.py`` and ``test_console_board.py``: the real
reader loops run over them, started through the public ``start()``.
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
from worker.client import Following, GateClient, GateView, IntentSender
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


def make_view(clock: Clock, feed: Feed | None = None) -> GateView:
    """A GateView whose reader follows ``feed`` (a fresh one by default) once started."""
    transport = Transport(feed or Feed())
    return GateView(KafkaConfig(), TOPICS, staleness_ms=STALE_MS, clock=clock, transport=transport)


async def started_view(clock: Clock, *, ends: Ends | None = None) -> tuple[GateView, Feed]:
    """A started GateView and its feed; ``ends``: each partition's end at start (the
    records before it are history); none: caught up at once."""
    feed = Feed(ends=ends)
    view = make_view(clock, feed)
    await view.start()
    await feed.settled()
    return view, feed


async def gate(feed: Feed, key: str, value: Any) -> None:
    """A gate record on ``risk.gates``, once the view's reader has applied it."""
    await feed.deliver(GATES_TP, key.encode(), encode(value))


async def halt(feed: Feed, event: HaltEvent) -> None:
    """A halt event on ``risk.halts``, once the view's reader has applied it."""
    await feed.deliver(HALTS_TP, event.bot.encode(), encode(event))


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
Ends = dict[TopicPartition, int]


class Feed:
    """A consumer fake: the reader loop under test fetches what the test pushes.

    Each ``getmany`` hands out the next pushed batch (raising a pushed exception);
    with none left it waits for a push. :meth:`settled` returns once the reader has
    asked for more after everything pushed, i.e. applied it all (and its batch hook
    ran), or once a pushed exception was raised to it.
    """

    def __init__(self, *batches: Batch | BaseException, ends: Ends | None = None) -> None:
        self.batches = list(batches)
        self.ends = ends or {}
        self.drained = asyncio.Event()
        self.more = asyncio.Event()
        self.positions: dict[TopicPartition, int] = {}
        self.stopped = False

    def push(self, *batches: Batch | BaseException) -> None:
        self.batches.extend(batches)
        self.drained.clear()
        self.more.set()

    async def settled(self) -> None:
        async with asyncio.timeout(5):
            await self.drained.wait()
        for _ in range(3):  # let a raising reader end and its done-callback run
            await asyncio.sleep(0)

    async def deliver(self, tp: TopicPartition, key: bytes | None, value: bytes | None) -> None:
        """One record at the partition's next offset, applied by the reader."""
        self.push({tp: [Rec(key, value, self.positions.get(tp, 0))]})
        await self.settled()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Batch:
        while not self.batches:
            self.drained.set()
            self.more.clear()
            await self.more.wait()
        item = self.batches.pop(0)
        if isinstance(item, BaseException):
            self.drained.set()
            raise item
        for tp, records in item.items():
            self.positions[tp] = records[-1].offset + 1
        return item

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def highwater(self, partition: TopicPartition) -> int | None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return {GATES_TP, HALTS_TP, DECISIONS_TP}

    def paused(self) -> set[TopicPartition]:
        return set()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    async def stop(self) -> None:
        self.stopped = True


class Transport:
    """The client library's transport over a :class:`Feed` (and a producer fake)."""

    def __init__(self, feed: Feed, producer: Producer | None = None) -> None:
        self.feed = feed
        self.producer = producer

    async def follow(self, topics: tuple[str, ...], *, from_end: bool) -> Following:
        ends = {tp: end for tp, end in self.feed.ends.items() if tp.topic in topics}
        return Following(self.feed, ends)

    async def sender(self) -> IntentSender:
        assert self.producer is not None, "a GateClient needs a producer"
        return self.producer


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


async def test_denies_until_caught_up_even_with_the_bots_record() -> None:
    view, feed = await started_view(Clock(), ends={HALTS_TP: 1})  # a halt still to replay
    await gate(feed, "a/gate", account())
    assert not view.caught_up
    assert not view.entries_allowed("a", "S1")
    await halt(feed, halt_event("resumed"))
    assert view.caught_up
    assert view.entries_allowed("a", "S1")


async def test_fails_closed_on_every_doubt() -> None:
    clock = Clock()
    view, feed = await started_view(clock)
    assert not view.entries_allowed("a", "S1")  # no account record for the bot
    await gate(feed, "a/gate", account())
    await gate(feed, "a/gate/S2", symbol(name="S2", allowed=False))
    await gate(feed, "b/gate", account("b", allowed=False))
    await gate(feed, "b/gate/S1", symbol("b"))
    assert view.entries_allowed("a", "S1")  # no symbol record: the account decides
    assert not view.entries_allowed("a", "S2")  # symbol blocked
    assert not view.entries_allowed("b", "S1")  # account blocked
    clock.now = NOW + STALE_MS
    assert view.entries_allowed("a", "S1")  # at the bound
    clock.now = NOW + STALE_MS + 1
    assert not view.entries_allowed("a", "S1")  # stale owner
    await gate(feed, "a/gate", account())  # a heartbeat (its updated_ts does not matter)
    assert view.entries_allowed("a", "S1")


async def test_records_route_by_key_and_bad_ones_are_counted_and_skipped() -> None:
    view, feed = await started_view(Clock())
    await gate(feed, "a/gate", account())
    await gate(feed, "a/gate/S1", symbol())
    await feed.deliver(GATES_TP, b"a/gate/S1", None)  # tombstone: ignored
    await feed.deliver(GATES_TP, b"a/gate/S1", b"{not json")
    await feed.deliver(GATES_TP, b"a/gate/S1", b'{"bot": "a"}')
    assert view.ignored == {"DecodeError": 1, "ValidationError": 1}
    assert view.failure is None
    assert set(view.accounts) == {"a"}
    assert view.symbols == {("a", "S1"): symbol()}


async def test_halt_events_reach_every_subscriber_in_order() -> None:
    view, feed = await started_view(Clock())
    first: list[HaltEvent] = []
    second: list[str] = []
    view.subscribe(first.append)
    view.subscribe(lambda e: second.append(e.event_id))
    await gate(feed, "a/gate/S1", symbol(allowed=False))
    halted = halt_event("halted", n=1)
    await halt(feed, halted)
    await gate(feed, "a/gate/S1", symbol())
    resumed = halt_event("resumed", n=2)
    await halt(feed, resumed)
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


class Producer:
    """Records sends; answers each intent with ``answer(intent)`` as the worker (or a
    forger) would: on the decisions topic the client's reader follows."""

    def __init__(
        self,
        feed: Feed,
        answer: Callable[[OrderIntent], list[GateDecision]] | None,
        error: Exception | None = None,
    ) -> None:
        self.feed = feed
        self.answer = answer
        self.error = error
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, value, key))
        answers = (
            [] if self.answer is None else self.answer(msgspec.json.decode(value, type=OrderIntent))
        )
        if answers:  # published on the decisions topic the client's reader follows
            self.feed.push({DECISIONS_TP: [Rec(b"a", encode(a), n) for n, a in enumerate(answers)]})
        return asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        pass


async def client_with(
    answer: Callable[[OrderIntent], list[GateDecision]] | None,
    error: Exception | None = None,
    *,
    timeout_ms: int = 50,
) -> tuple[GateClient, Producer]:
    """A started GateClient over a fake transport; ``producer.feed`` is its decisions topic."""
    feed = Feed()
    producer = Producer(feed, answer, error)
    client = GateClient(
        KafkaConfig(),
        TOPICS,
        timeout_ms=timeout_ms,
        clock=lambda: NOW,
        transport=Transport(feed, producer),
    )
    await client.start()
    return client, producer


def worker_answer(of: OrderIntent) -> list[GateDecision]:
    return [decision(of)]


async def test_check_publishes_the_intent_keyed_by_bot_and_returns_its_decision() -> None:
    client, producer = await client_with(worker_answer)
    got = await client.check(intent("i-7"))
    assert got == decision(intent("i-7"))
    assert producer.sent == [(TOPICS.intents, encode(intent("i-7")), b"a")]
    assert client.waiting == 0
    assert client.ignored == {}


@pytest.mark.parametrize("error", [None, KafkaConnectionError()], ids=["silence", "send error"])
async def test_check_fails_closed(error: Exception | None) -> None:
    client, _ = await client_with(None, error)
    got = await client.check(intent("i-9"))
    assert got == decision(
        intent("i-9"), allowed=False, gate=None, reason=got.reason
    )  # echoes the intent, stamped by the client's clock
    assert "failing closed" in got.reason and "50 ms" in got.reason
    assert client.waiting == 0


async def test_decisions_resolve_their_own_pending_checks_only() -> None:
    client, producer = await client_with(None, timeout_ms=5_000)
    one, two = intent("i-1"), intent("i-2", qty=2.0)
    checks = [asyncio.create_task(client.check(i)) for i in (one, two)]
    await asyncio.sleep(0)  # both checks sent and waiting
    assert client.waiting == 2
    records = [
        b"{broken",
        None,  # a tombstone someone wrote to the decisions topic
        encode(decision(intent("someone-else"))),
        encode(decision(two, allowed=False)),
        encode(decision(one)),
        encode(decision(one)),  # a repeated answer changes nothing
    ]
    producer.feed.push({DECISIONS_TP: [Rec(b"a", v, n) for n, v in enumerate(records)]})
    await producer.feed.settled()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*checks)
    assert results == [decision(one), decision(two, allowed=False)]
    assert client.ignored == {"DecodeError": 1, "not_pending": 1}
    assert client.failure is None
