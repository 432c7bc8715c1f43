"""The client library against a real broker: GateView (local gate table) and GateClient.

GateView fails closed until it has read the gate topics to their end and when
the owning worker has gone quiet for longer than ``staleness_ms``; it flips
within one sweep of a halt. GateClient runs many concurrent checks over one
consumer and fails closed when no decision arrives in time.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from aiokafka import TopicPartition

from tests.support.gate_env import GateEnv, eventually, gate_env
from tests.support.harness import Raw, make_config, now_ms, produce
from worker.client import Followed, Following, GateClient, GateView, KafkaClientTransport
from worker.config import KafkaConfig
from worker.kafka.topics import TopicLayoutError, ensure_topics
from worker.messages import (
    AccountGateState,
    Command,
    GateDecision,
    GateState,
    HaltEvent,
    OrderIntent,
)

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


class AskingConsumer:
    """Calls ``ask`` before each fetch, then fetches as the consumer it wraps."""

    def __init__(self, consumer: Followed, ask: Callable[[], None]) -> None:
        self.consumer = consumer
        self.ask = ask

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        self.ask()
        return await self.consumer.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )

    async def position(self, tp: TopicPartition) -> int:
        return await self.consumer.position(tp)

    def assignment(self) -> set[TopicPartition]:
        return self.consumer.assignment()

    def paused(self) -> set[TopicPartition]:
        return self.consumer.paused()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.consumer.seek(partition, offset)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.consumer.highwater(partition)

    async def stop(self) -> None:
        await self.consumer.stop()


class Asking(KafkaClientTransport):
    """The Kafka transport, its followers wrapped in :class:`AskingConsumer`."""

    def __init__(self, kafka: KafkaConfig, ask: Callable[[], None]) -> None:
        super().__init__(kafka)
        self.ask = ask

    async def follow(self, topics: tuple[str, ...], *, from_end: bool) -> Following:
        consumer, ends = await super().follow(topics, from_end=from_end)
        return Following(AskingConsumer(consumer, self.ask), ends)


async def test_gate_view_fails_closed_until_caught_up(kafka_bootstrap: str) -> None:
    """While the view replays history it denies, even for a bot whose record it holds.

    After catch-up too: a replayed record proves nothing about its owner being
    alive now (issue 15 item 3), so the bot waits for a record sent live.
    """
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

    # Ask the view before every fetch (after every batch applied) while it replays.
    held, allowed_early = 0, 0

    def ask() -> None:
        nonlocal held, allowed_early
        if not view.caught_up:
            held += "cv" in view.accounts
            allowed_early += view.entries_allowed("cv", "S1")

    view = GateView(kafka, topics, staleness_ms=60_000, transport=Asking(kafka, ask))
    assert not view.entries_allowed("cv", "S1")
    async with view:
        async with asyncio.timeout(30):
            await view.wait_caught_up()
        assert held > 0, "never asked the view mid-replay with cv's record in it"
        assert allowed_early == 0, "allowed before the view caught up"
        assert len(view.symbols) == len(noise)
        assert not view.entries_allowed("unknown-bot", "S1")  # no account record: denied
        assert not view.entries_allowed("cv", "S1")  # replayed: not a heartbeat
        await produce(kafka, [Raw(topics.gates, b"cv/gate", encode(account))])
        await eventually(lambda: view.entries_allowed("cv", "S1"), what="live record", alive=None)


async def test_view_and_client_refuse_topics_that_do_not_exist(kafka_bootstrap: str) -> None:
    config = make_config(kafka_bootstrap, "", partitions=1)  # topics never created
    with pytest.raises(TopicLayoutError, match=r"risk\.gates does not exist"):
        await GateView(config.kafka, config.topics).start()
    with pytest.raises(TopicLayoutError, match=r"risk\.decisions does not exist"):
        await GateClient(config.kafka, config.topics).start()


async def introduce(env: GateEnv, bot: str) -> None:
    """Make the worker publish an allowing account record for ``bot``: halt, then resume.

    (A resume alone changes nothing for a bot that is not halted, so it
    publishes no event to wait for.)
    """
    await env.control(env.command("halt", bot, None))
    await env.control(env.command("resume", bot, None))


async def test_gate_view_flips_within_one_sweep_of_a_halt(env: GateEnv) -> None:
    view = env.view
    await introduce(env, "flip")
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


WORKER_CLOCKS = {"in_sync": 0, "fast_10min": 10 * 60_000, "slow_20s": -20_000}


@pytest.mark.parametrize("offset_ms", WORKER_CLOCKS.values(), ids=WORKER_CLOCKS.keys())
async def test_gate_view_judged_staleness_by_the_worker_clock(env: GateEnv, offset_ms: int) -> None:
    """Issue 15 item 3: a skewed worker clock neither keeps a dead bot fresh nor a live one stale.

    The view times records by its own monotonic clock when it receives them;
    the worker's ``updated_ts`` (10 min ahead or 20 s behind here) is ignored.
    Then, the worker stopped, checks fail closed.
    """
    bot = f"stale{offset_ms}"
    await env.stop_worker()
    env.clock.offset_ms = offset_ms
    try:
        await env.ensure_worker()
        fill = env.fill(bot, "S1", "buy", 1.0)
        await env.send(msgspec.structs.replace(fill, ts=min(now_ms(), env.clock())))
        await env.wait_symbol(bot, "S1", lambda s: s.position_qty == 1.0)
        async with GateView(env.config.kafka, env.config.topics, staleness_ms=STALE_MS) as view:
            async with asyncio.timeout(10):
                await view.wait_caught_up()
            await eventually(lambda: view.entries_allowed(bot, "S1"), what="allowed", alive=None)
            # Heartbeats keep a quiet bot fresh for longer than the staleness bound.
            first = view.accounts[bot].updated_ts
            deadline = time.monotonic() + 10
            while view.accounts[bot].updated_ts <= first + STALE_MS:
                assert view.entries_allowed(bot, "S1"), "went stale while the worker runs"
                assert time.monotonic() < deadline, "no heartbeat"
                await asyncio.sleep(0.01)

            await env.stop_worker()
            started = time.perf_counter()
            await eventually(
                lambda: not view.entries_allowed(bot, "S1"),
                within=(STALE_MS + HEARTBEAT_MS) / 1000 + 1.0,
                what="view to go stale",
                alive=None,
            )
            print(f"stale after {1000 * (time.perf_counter() - started):.0f} ms")
            assert view.accounts[bot].entries_allowed  # the record allows: staleness denies
    finally:
        env.clock.offset_ms = 0

    intent = env.intent(bot, "S1")
    decision = await env.client.check(intent, timeout_ms=300)
    assert (decision.intent_id, decision.allowed, decision.gate) == (intent.intent_id, False, None)
    assert decision.reason == "no matching decision within 300 ms (TimeoutError): failing closed"


async def test_gate_client_accepted_a_forged_decision_on_the_broker(kafka_bootstrap: str) -> None:
    """Issue 15 item 2: any writer of risk.decisions could answer "allowed" for an intent.

    No worker runs here: a forger writes decisions under the intent's id for
    another bot and for 1000x the quantity, then the genuine (denying) echo
    follows. Only the echo answers; with forgeries only, the check fails closed.
    """
    config = make_config(kafka_bootstrap, "", partitions=2)  # unique topics, no worker
    kafka, topics = config.kafka, config.topics
    await ensure_topics(kafka, topics)
    encode = msgspec.json.encode

    def answer(intent: OrderIntent, allowed: bool, **forged: Any) -> Raw:
        decision = GateDecision(
            intent_id=intent.intent_id,
            bot=intent.bot,
            symbol=intent.symbol,
            allowed=allowed,
            gate=None if allowed else "manual_halt",
            reason="forged" if forged else "genuine",
            ts=now_ms(),
            action=intent.action,
            side=intent.side,
            qty=intent.qty,
            price=intent.price,
        )
        forgery = msgspec.structs.replace(decision, **forged)
        return Raw(topics.decisions, forgery.bot.encode(), encode(forgery))

    async with GateClient(kafka, topics, timeout_ms=20_000) as client:
        mine = GateEnv.intent("desk", "BTCUSDT", qty=0.01)
        check = asyncio.create_task(client.check(mine))
        await eventually(lambda: client.waiting == 1, what="pending", alive=None)
        other = GateEnv.intent("desk", "BTCUSDT")
        await produce(
            kafka,
            [
                answer(mine, True, bot="other-bot"),
                answer(mine, True, qty=10.0),
                answer(other, True),  # someone else's intent
                answer(mine, False),
            ],
        )
        async with asyncio.timeout(20):
            got = await check
        assert (got.allowed, got.gate, got.reason, got.qty) == (
            False,
            "manual_halt",
            "genuine",
            0.01,
        )
        assert client.ignored == {"mismatched_decision": 2, "not_pending": 1}

        lone = GateEnv.intent("desk", "BTCUSDT")
        check = asyncio.create_task(client.check(lone, timeout_ms=2_000))
        await eventually(lambda: client.waiting == 1, what="pending", alive=None)
        await produce(kafka, [answer(lone, True, symbol="ETHUSDT")])
        got = await check
        assert (got.intent_id, got.allowed, got.gate) == (lone.intent_id, False, None)
        assert got.reason == "no matching decision within 2000 ms (TimeoutError): failing closed"
        assert client.ignored["mismatched_decision"] == 3
        assert client.failure is None


POISON = [
    b'{"bot": "\xff\xfe"}',  # invalid UTF-8
    b'{"x":' * 100_000,  # RecursionError while decoding
    b'{"bot": 1, "entries_allowed": "yes"}',  # wrong types
]


async def test_gate_reader_killed_by_an_undecodable_record_on_the_broker(env: GateEnv) -> None:
    """Issue 15 item 4: poison on risk.gates, risk.halts and risk.decisions stops nobody.

    The running view and client skip and count it, and a view started after the
    poison sits in the (compacted) gate topic still catches up and follows.
    """
    topics = env.config.topics
    view, client = env.view, env.client
    before = (dict(view.ignored), dict(client.ignored))
    await introduce(env, "poison")
    await env.send(env.fill("poison", "S1", "buy", 1.0))
    poison = [
        Raw(topic, key, value)
        for value in POISON
        for topic, key in (
            (topics.gates, b"poison/gate"),
            (topics.gates, b"poison/gate/S1"),
            (topics.halts, b"poison"),
            (topics.decisions, b"poison"),
        )
    ]
    await produce(env.config.kafka, poison)

    # Both keep following: a halt flips the view, a check gets its decision.
    await env.control(env.command("halt", "poison", "S1"))
    await eventually(
        lambda: not view.entries_allowed("poison", "S1"), what="halt seen", alive=env.alive
    )
    decision = await env.check("poison", "S2")
    assert decision.allowed
    kinds = {"UnicodeDecodeError": 3, "RecursionError": 3, "ValidationError": 3}
    # The halt is seen on risk.gates; the poison on risk.halts may be read a moment
    # later (another partition): wait until as many were skipped, then compare kinds.
    await eventually(
        lambda: sum(_added(before[0], view.ignored).values()) >= sum(kinds.values()),
        what="every poison record skipped by the view",
        alive=env.alive,
    )
    assert _added(before[0], view.ignored) == kinds  # gates x2 and halts, per kind
    added = _added(before[1], client.ignored)
    added.pop("not_pending", None)  # answers to checks that timed out in earlier tests
    assert added == {
        "UnicodeDecodeError": 1,
        "RecursionError": 1,
        "ValidationError": 1,
    }
    assert (view.failure, client.failure) == (None, None)

    async with GateView(env.config.kafka, topics, staleness_ms=60_000) as late:
        async with asyncio.timeout(30):
            await late.wait_caught_up()
        await eventually(
            lambda: late.entries_allowed("poison", "S2"), what="late view allows", alive=env.alive
        )
        assert not late.entries_allowed("poison", "S1")
        # The poison in the compacted gate topic and the halt topic, still skipped.
        assert dict(late.ignored) == kinds
        assert late.failure is None


_BAD_HEADER_PRODUCER = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

class NotUtf8(str):  # the pure-Python record builder writes whatever encode() returns
    def encode(self, *args, **kwargs):
        return b"\\xff\\xfe"

async def main(bootstrap, topic, key):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        sent = await producer.send(topic, b"{}", key=key.encode(), headers=[(NotUtf8("h"), b"v")])
        await sent
    finally:
        await producer.stop()

asyncio.run(main(*sys.argv[1:]))
"""


async def produce_bad_header_key(bootstrap: str, topic: str, key: str) -> None:
    """A record whose header key is not UTF-8: aiokafka's own fetch raises on it.

    aiokafka's C record builder refuses such a key, so a subprocess with its
    pure-Python builder (``AIOKAFKA_NO_EXTENSIONS``) writes it.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BAD_HEADER_PRODUCER,
        bootstrap,
        topic,
        key,
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
    )
    async with asyncio.timeout(60):
        assert await proc.wait() == 0


async def test_gate_reader_killed_by_an_unfetchable_record_on_the_broker(
    kafka_bootstrap: str,
) -> None:
    """Issue 15 item 4: a record aiokafka cannot decode (header key not UTF-8) stops nobody.

    Without containment ``getmany`` raises on it forever: the view would fail
    closed for good and every check would time out. No worker here.
    """
    config = make_config(kafka_bootstrap, "", partitions=1)
    kafka, topics = config.kafka, config.topics
    await ensure_topics(kafka, topics)
    encode = msgspec.json.encode
    account = AccountGateState("y", True, [], 0.0, 0, 0.0, now_ms(), 1)
    await produce_bad_header_key(kafka_bootstrap, topics.gates, "x/gate")
    await produce(kafka, [Raw(topics.gates, b"y/gate", encode(account))])

    async with (
        GateView(kafka, topics, staleness_ms=60_000) as view,
        GateClient(kafka, topics, timeout_ms=30_000) as client,
    ):
        async with asyncio.timeout(30):
            await view.wait_caught_up()
        assert set(view.accounts) == {"y"}
        assert view.ignored == {"unreadable": 1}

        mine = GateEnv.intent("y", "S1")
        check = asyncio.create_task(client.check(mine))
        await eventually(lambda: client.waiting == 1, what="pending", alive=None)
        await produce_bad_header_key(kafka_bootstrap, topics.decisions, "y")
        genuine = GateDecision(
            intent_id=mine.intent_id,
            bot="y",
            symbol="S1",
            allowed=False,
            gate="manual_halt",
            reason="genuine",
            ts=now_ms(),
            action=mine.action,
            side=mine.side,
            qty=mine.qty,
            price=mine.price,
        )
        await produce(kafka, [Raw(topics.decisions, b"y", encode(genuine))])
        async with asyncio.timeout(30):
            assert await check == genuine
        assert client.ignored == {"unreadable": 1}

        await produce(kafka, [Raw(topics.gates, b"y/gate", encode(account))])  # live heartbeat
        await eventually(lambda: view.entries_allowed("y", "S1"), what="allowed", alive=None)
        assert (view.failure, client.failure) == (None, None)


def _added(before: dict[str, int], after: Counter[str]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


STEPS: list[tuple[Command, str | None]] = [
    ("halt", "S1"),
    ("halt", None),
    ("resume", None),
    ("resume", "S1"),
]


async def test_halt_callback_fired_before_the_gate_table_reflected_it_on_the_broker(
    env: GateEnv,
) -> None:
    """Issue 15 item 11: inside every halt callback the view already answers as of the event."""
    bot = "order"
    await introduce(env, bot)
    seen: list[tuple[str, str | None, bool]] = []
    recording = False  # from the first command on (the history is not under test)

    def on_halt(event: HaltEvent) -> None:
        if recording and event.bot == bot:
            probe = event.symbol or "S2"
            seen.append((event.kind, event.symbol, view.entries_allowed(bot, probe)))

    async with GateView(env.config.kafka, env.config.topics, staleness_ms=60_000) as view:
        view.subscribe(on_halt)
        async with asyncio.timeout(10):
            await view.wait_caught_up()
        await eventually(lambda: view.entries_allowed(bot, "S1"), what="allowed", alive=env.alive)
        recording, rounds = True, 5
        for _ in range(rounds):
            for command, symbol in (
                ("halt", "S1"),
                ("halt", None),
                ("resume", None),
                ("resume", "S1"),
            ):
                await env.control(env.command(command, bot, symbol))  # type: ignore[arg-type]
        await eventually(lambda: len(seen) == 4 * rounds, what="every callback", alive=env.alive)
    assert seen == rounds * [
        ("halted", "S1", False),
        ("halted", None, False),
        ("resumed", None, True),
        ("resumed", "S1", True),
    ]
