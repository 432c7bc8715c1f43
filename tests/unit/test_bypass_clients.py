"""Regression tests for issue 15 items 2, 3, 4 and 11: bypasses in the client library.

Each test is named after the defect it pins. Pure: the reader loops run for
real over fake consumers (``Feed``); clocks are injected.
"""

from __future__ import annotations

import asyncio
import functools

import msgspec
import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from tests.unit.test_client_unit import (
    DECISIONS_TP,
    GATES_TP,
    HALTS_TP,
    NOW,
    STALE_MS,
    Clock,
    LogRecorder,
    Producer,
    Rec,
    account,
    client_with,
    decision,
    encode,
    gate,
    halt,
    halt_event,
    intent,
    record_logs,
    started_view,
    symbol,
    worker_answer,
)
from worker.client import FollowerFailed
from worker.messages import Block, GateDecision, HaltEvent, OrderIntent

MINUTE_MS = 60_000

# -- item 2: GateClient accepts a decision from another bot, or a forged one -----------

MISMATCHES = {
    "other_bot": {"bot": "b"},
    "other_symbol": {"symbol": "S2"},
    "other_action": {"action": "close"},
    "other_side": {"side": "sell"},
    "other_qty": {"qty": 1000.0},
    "other_price": {"price": 1.0},
}


@pytest.mark.parametrize("change", MISMATCHES.values(), ids=MISMATCHES.keys())
async def test_gate_client_accepted_a_decision_for_another_intent_with_the_same_id(
    change: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = record_logs(monkeypatch)
    """Forged/foreign answers (same intent_id, other content) are skipped; the real one wins."""
    mine = intent("i-1")

    def forger_then_worker(of: OrderIntent) -> list[GateDecision]:
        forged = decision(of, allowed=True, reason="forged", **change)
        return [forged, forged, decision(of, allowed=False)]

    client, _ = await client_with(forger_then_worker, timeout_ms=5_000)
    got = await client.check(mine)
    assert got == decision(mine, allowed=False)
    assert client.ignored == {"mismatched_decision": 2}
    assert [(level, kind) for level, _, kind in _kinds(logs)] == [
        ("warning", "mismatched_decision")
    ]  # counted twice, logged once


@pytest.mark.parametrize("change", MISMATCHES.values(), ids=MISMATCHES.keys())
async def test_gate_client_fails_closed_when_only_mismatched_decisions_arrive(
    change: dict[str, object],
) -> None:
    client, _ = await client_with(lambda of: [decision(of, allowed=True, **change)], timeout_ms=50)
    got = await client.check(intent("i-2"))
    assert (got.intent_id, got.allowed, got.gate) == ("i-2", False, None)
    assert got.reason == "no matching decision within 50 ms (TimeoutError): failing closed"
    assert client.ignored == {"mismatched_decision": 1}
    assert client.waiting == 0


async def test_gate_client_two_checks_sharing_an_intent_id_get_their_own_decisions() -> None:
    """The worker denies a reused id with other content; each check gets its own echo."""
    first, reused = intent("i-3"), intent("i-3", qty=5.0)

    def answer(of: OrderIntent) -> list[GateDecision]:
        if of == first:
            return []  # answered below, after both are pending
        return [decision(reused, allowed=False, gate="duplicate_intent_id"), decision(first)]

    client, producer = await client_with(answer, timeout_ms=5_000)
    results = await asyncio.gather(client.check(first), client.check(reused))
    assert list(results) == [
        decision(first),
        decision(reused, allowed=False, gate="duplicate_intent_id"),
    ]
    assert len(producer.sent) == 2
    assert client.ignored == {}
    assert client.waiting == 0


# -- item 3: GateView judged staleness by the worker's clock ------------------------------


async def test_gate_view_staleness_followed_a_fast_worker_clock() -> None:
    """A worker 10 min fast that dies reads stale staleness_ms after its last record."""
    clock = Clock(5_000)  # monotonic: unrelated to epoch time
    view, feed = await started_view(clock)
    await gate(feed, "a/gate", account(updated_ts=NOW + 10 * MINUTE_MS))
    clock.now += STALE_MS
    assert view.entries_allowed("a", "S1")
    clock.now += 1
    assert not view.entries_allowed("a", "S1")


async def test_gate_view_staleness_denied_a_slow_worker_forever() -> None:
    """A worker 20 s slow stays allowed as long as its heartbeats keep arriving."""
    clock = Clock(5_000)
    view, feed = await started_view(clock)
    for beat in range(5):
        await gate(feed, "a/gate", account(updated_ts=NOW - 20_000 + beat * STALE_MS))
        assert view.entries_allowed("a", "S1")
        clock.now += STALE_MS
        assert view.entries_allowed("a", "S1")


async def test_gate_view_history_record_counted_as_a_live_heartbeat() -> None:
    """Records replayed from before start prove nothing about the owner being alive now."""
    view, feed = await started_view(Clock(), ends={GATES_TP: 2})
    history = [Rec(b"a/gate", encode(account()), 0), Rec(b"b/gate", encode(account("b")), 1)]
    live = [Rec(b"a/gate", encode(account()), 2)]
    feed.push({GATES_TP: history}, {GATES_TP: live})
    await feed.settled()
    assert view.caught_up
    assert set(view.accounts) == {"a", "b"}
    assert view.entries_allowed("a", "S1")  # heard after its history
    assert not view.entries_allowed("b", "S1")  # only replayed: wait for a heartbeat


# -- item 4: one undecodable record kills the reader -------------------------------------

POISON = {
    "invalid_utf8": b'{"bot": "\xff\xfe"}',
    "deep_nesting": b'{"x":' * 100_000,
    "wrong_types": b'{"bot": 1, "entries_allowed": "yes"}',
    "not_json": b"\x00garbage",
    "truncated": b'{"bot": "a", ',
}
POISON_KINDS = {
    "invalid_utf8": "UnicodeDecodeError",
    "deep_nesting": "RecursionError",
    "wrong_types": "ValidationError",
    "not_json": "DecodeError",
    "truncated": "DecodeError",
}


@pytest.mark.parametrize("poison", POISON.values(), ids=POISON.keys())
async def test_gate_view_reader_killed_by_an_undecodable_record(
    poison: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = record_logs(monkeypatch)
    view, feed = await started_view(Clock())
    bad = [Rec(b"a/gate", poison, 0), Rec(b"a/gate/S1", poison, 1), Rec(b"a", poison, 2)]
    feed.push(
        {GATES_TP: bad[:2], HALTS_TP: bad[2:]},
        {GATES_TP: [Rec(b"a/gate", encode(account()), 3)]},
    )
    await feed.settled()
    assert view.failure is None
    assert view.accounts == {"a": account()}  # kept following past the poison
    assert view.entries_allowed("a", "S1")
    kind = POISON_KINDS[next(k for k, v in POISON.items() if v == poison)]
    assert view.ignored == {kind: 3}
    assert _kinds(logs) == [("warning", "ignoring (logged once per kind; see .ignored)", kind)]


@pytest.mark.parametrize("poison", POISON.values(), ids=POISON.keys())
async def test_gate_client_reader_killed_by_an_undecodable_record(poison: bytes) -> None:
    client, producer = await client_with(None, timeout_ms=5_000)
    mine = intent("i-4")
    check = asyncio.create_task(client.check(mine))
    await asyncio.sleep(0)
    producer.feed.push({DECISIONS_TP: [Rec(b"a", poison, 0), Rec(b"a", encode(decision(mine)), 1)]})
    await producer.feed.settled()
    async with asyncio.timeout(5):
        assert await check == decision(mine)
    kind = POISON_KINDS[next(k for k, v in POISON.items() if v == poison)]
    assert client.ignored == {kind: 1}
    assert client.failure is None


async def test_gate_view_kept_allowing_after_its_reader_died(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader that stops anyway (a broker error: the Read ACL revoked) turns into 'deny all'."""
    logs = record_logs(monkeypatch)
    view, feed = await started_view(Clock())
    feed.push(
        {GATES_TP: [Rec(b"a/gate", encode(account()), 0)]},
        TopicAuthorizationFailedError("risk.gates"),
    )
    await feed.settled()
    assert view.caught_up
    assert view.accounts == {"a": account()}
    assert not view.entries_allowed("a", "S1")
    assert view.failure == (
        "GateView reader stopped (TopicAuthorizationFailedError: [Error 29] "
        "TopicAuthorizationFailedError: risk.gates): failing closed"
    )
    assert [line[0] for line in logs.lines] == ["error"]
    with pytest.raises(FollowerFailed, match="GateView reader stopped"):
        await view.wait_caught_up()


async def test_gate_view_wait_caught_up_hung_when_its_reader_died() -> None:
    view, feed = await started_view(Clock(), ends={GATES_TP: 10})
    feed.push(KafkaConnectionError("broker gone"))
    await feed.settled()
    async with asyncio.timeout(5):
        with pytest.raises(
            FollowerFailed, match=r"\(KafkaConnectionError: KafkaConnectionError: broker gone\)"
        ):
            await view.wait_caught_up()
    assert not view.caught_up


async def test_gate_client_waited_for_a_timeout_after_its_reader_died() -> None:
    """Pending checks fail closed at once; later checks fail closed without sending."""
    client, producer = await client_with(None, timeout_ms=60_000)
    pending = asyncio.create_task(client.check(intent("i-5")))
    await asyncio.sleep(0)
    producer.feed.push(KafkaConnectionError("broker gone"))
    await producer.feed.settled()
    reason = (
        "GateClient reader stopped (KafkaConnectionError: KafkaConnectionError: broker gone): "
        "failing closed"
    )
    async with asyncio.timeout(5):
        got = await pending
    assert got == decision(intent("i-5"), allowed=False, gate=None, reason=reason)
    later = await client.check(intent("i-6"))
    assert later == decision(intent("i-6"), allowed=False, gate=None, reason=reason)
    assert [i.intent_id for i in _sent(producer)] == ["i-5"]
    assert client.failure == reason


async def test_gate_view_and_client_fail_closed_after_stop() -> None:
    view, feed = await started_view(Clock())
    await gate(feed, "a/gate", account())
    assert view.entries_allowed("a", "S1")
    await view.stop()
    assert feed.stopped
    assert not view.entries_allowed("a", "S1")
    assert view.failure == "GateView stopped: failing closed"
    client, producer = await client_with(worker_answer)
    await client.stop()
    got = await client.check(intent("i-7"))
    assert (got.allowed, got.reason) == (False, "GateClient stopped: failing closed")
    assert producer.sent == []


# -- item 11: halt callbacks before the table reflects them; async callbacks never run ---


async def test_halt_callback_fired_before_the_gate_table_reflected_it() -> None:
    """The halt arrives before its gate record: the callback waits for the record."""
    view, feed = await started_view(Clock())
    await gate(feed, "a/gate", account())
    await gate(feed, "a/gate/S1", symbol())
    seen: list[tuple[str, str | None, bool]] = []
    view.subscribe(lambda e: seen.append((e.kind, e.symbol, view.entries_allowed("a", "S1"))))

    await halt(feed, halt_event("halted", n=1))
    assert seen == []  # the table still allows S1
    await gate(feed, "a/gate/S1", symbol(allowed=False))
    assert seen == [("halted", "S1", False)]

    await halt(feed, halt_event("halted", symbol=None, gate="portfolio_daily_loss", n=1))
    await gate(feed, "a/gate/S2", symbol(name="S2"))  # another key's record releases nothing
    assert len(seen) == 1
    loss = Block("portfolio_daily_loss", "loss", None)
    await gate(feed, "a/gate", account(blocks=[loss]))
    assert seen[1:] == [("halted", None, False)]

    # The gate record first, then the event: delivered as soon as it arrives.
    await gate(feed, "a/gate", account())
    await halt(feed, halt_event("resumed", symbol=None, gate="portfolio_daily_loss", n=2))
    assert seen[2:] == [("resumed", None, False)]  # S1 itself is still halted


async def test_halt_callback_for_a_state_never_shown_was_held_forever() -> None:
    """Halted and resumed within one worker batch: no record ever shows the halt."""
    view, feed = await started_view(Clock())
    await gate(feed, "a/gate/S1", symbol())
    seen: list[str] = []
    view.subscribe(lambda e: seen.append(e.event_id))
    await halt(feed, halt_event("halted", gate="circuit_breaker", n=1))
    await halt(feed, halt_event("resumed", gate="circuit_breaker", n=2))
    assert seen == ["a/S1/circuit_breaker/1", "a/S1/circuit_breaker/2"]
    # Other gates of the same key wait on their own.
    await halt(feed, halt_event("halted", gate="session_halt", n=1))
    assert seen[2:] == []


class AsyncCallable:
    async def __call__(self, event: HaltEvent) -> None:
        pass


async def _on_halt(event: HaltEvent) -> None:
    pass


@pytest.mark.parametrize(
    "callback",
    [_on_halt, functools.partial(_on_halt), AsyncCallable()],
    ids=["async def", "partial", "async __call__"],
)
async def test_async_halt_callback_was_silently_never_awaited(callback: object) -> None:
    view, feed = await started_view(Clock())
    with pytest.raises(TypeError, match="coroutine function: GateView calls halt callbacks"):
        view.subscribe(callback)  # type: ignore[arg-type]
    # Not subscribed either: a delivered halt calls nothing (a call would be counted as
    # ``callback_returned_coroutine``).
    await gate(feed, "a/gate/S1", symbol(allowed=False))
    await halt(feed, halt_event("halted", n=1))
    assert view.ignored == {}


async def test_halt_callback_returning_a_coroutine_is_closed_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logs = record_logs(monkeypatch)
    view, feed = await started_view(Clock())
    await gate(feed, "a/gate/S1", symbol(allowed=False))
    started: list[str] = []

    async def on_halt(event: HaltEvent) -> None:
        started.append(event.event_id)

    def relay(event: HaltEvent) -> object:  # a plain function: subscribe cannot tell
        return on_halt(event)

    view.subscribe(relay)
    await halt(feed, halt_event("halted", n=1))
    await halt(feed, halt_event("halted", n=2))
    assert started == []  # closed, never run half-way
    assert view.ignored == {"callback_returned_coroutine": 2}
    assert _kinds(logs) == [
        ("warning", "ignoring (logged once per kind; see .ignored)", "callback_returned_coroutine")
    ]


async def test_raising_halt_callback_killed_the_reader() -> None:
    view, feed = await started_view(Clock())
    seen: list[str] = []

    def broken(_: HaltEvent) -> None:
        raise asyncio.CancelledError  # even this one: raised by the callback, not the task

    view.subscribe(broken)
    view.subscribe(lambda e: seen.append(e.event_id))
    event = halt_event("halted", symbol=None)
    feed.push(
        {GATES_TP: [Rec(b"a/gate", encode(account(allowed=False)), 0)]},
        {HALTS_TP: [Rec(b"a", encode(event), 0)]},
        {GATES_TP: [Rec(b"a/gate", encode(account()), 1)]},
    )
    await feed.settled()
    assert seen == ["a/*/manual_halt/1"]
    assert view.ignored == {"callback_error": 1}
    assert view.failure is None
    assert view.accounts == {"a": account()}  # the table kept updating after the callback


# -- helpers -------------------------------------------------------------------------------


def _kinds(logs: LogRecorder) -> list[tuple[str, str, str]]:
    return [(level, event, str(fields.get("kind"))) for level, event, fields in logs.lines]


def _sent(producer: Producer) -> list[OrderIntent]:
    return [msgspec.json.decode(v, type=OrderIntent) for _, v, _ in producer.sent]
