"""Client library for execution services: local gate table and pre-trade checks.

``GateClient.check(intent)`` asks the worker over Kafka and awaits its
decision; it fails closed (a denial) when no decision *matching the intent*
arrives in time.

``GateView`` follows the compacted ``risk.gates`` topic (and ``risk.halts``)
and answers ``entries_allowed(bot, symbol)`` from memory, with no network round
trip. It **fails closed**: it denies until it has read the topic to the end,
for a bot with no account record, for a bot whose owner has not been heard
from within ``staleness_ms`` (judged by this process's monotonic clock, never
the worker's), and for everything once its reader has stopped.

Both read in a background task that survives any record: one that does not
decode (bad UTF-8, nesting deep enough for a RecursionError, wrong types) is
skipped, counted in ``.ignored`` and logged once per kind. Should the task
end anyway, ``.failure`` says why and everything fails closed.

Both follow their topics with ``[kafka] fetch_max_wait_ms`` of the config they
are given: Kafka answers a fetch as soon as records arrive, so it only paces
idle polls; on a broker that does not wake waiting fetches (the embedded
Tansu) it adds up to that much per hop, so lower it there.

Both reach Kafka through a :class:`ClientTransport` (aiokafka by default); the
unit tests pass a fake one that feeds the real reader loops from memory.

Who may write the topics these classes trust is an ACL matter: see "Topic ACLs"
in deploy/README.md.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NamedTuple, Protocol

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from worker.clock import wall_clock_ms
from worker.config import KafkaConfig, TopicsConfig
from worker.kafka.fetch import Fetchable, fetch
from worker.kafka.options import client_kwargs, reader
from worker.kafka.topics import TopicLayoutError
from worker.messages import (
    AccountGateState,
    Block,
    Gate,
    GateDecision,
    GateState,
    HaltEvent,
    OrderIntent,
)

log = structlog.get_logger("riskgate.client")

HaltCallback = Callable[[HaltEvent], object]
TradingState = Literal["active", "reducing", "halted", "killed"]
"""NautilusTrader's trading states as a bot+symbol reads from the gate table:

- ``active``: entries allowed;
- ``reducing``: entries blocked, reducing closes still allowed (every halt but the kill);
- ``killed``: the kill switch: every intent is denied, closes included;
- ``halted``: this view cannot vouch for the bot (not caught up, no account record,
  its owner stale, or the reader stopped): send nothing on its word.
"""

_symbol_state = msgspec.json.Decoder(GateState)
_account_state = msgspec.json.Decoder(AccountGateState)
_halt = msgspec.json.Decoder(HaltEvent)
_decision = msgspec.json.Decoder(GateDecision)
_encode = msgspec.json.Encoder().encode


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class FollowerFailed(RuntimeError):
    """The background reader of a GateView or GateClient stopped: it now fails closed."""


def _partitions(consumer: AIOKafkaConsumer, *topics: str) -> list[TopicPartition]:
    """Every partition of ``topics``; TopicLayoutError if one does not exist.

    Following a missing topic would look like an empty, caught-up one: a view
    that denies forever, a client whose every check times out.
    """
    tps: list[TopicPartition] = []
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise TopicLayoutError(f"topic {topic} does not exist (run `riskgate topics`)")
        tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
    return tps


class Followed(Fetchable, Protocol):
    """The consumer calls a follower makes (a subset of ``AIOKafkaConsumer``)."""

    async def stop(self) -> None: ...


class Following(NamedTuple):
    consumer: Followed
    """Assigned every partition of the followed topics, positioned as asked."""
    ends: dict[TopicPartition, int]
    """Each partition's end when following from the beginning began (what "caught up"
    means); empty when following from the end."""


class IntentSender(Protocol):
    """The producer call GateClient makes (a subset of ``AIOKafkaProducer``)."""

    async def send(self, topic: str, value: bytes, key: bytes) -> Awaitable[Any]: ...

    async def stop(self) -> None: ...


class ClientTransport(Protocol):
    """How GateView and GateClient reach Kafka: :class:`KafkaClientTransport`, or a
    test's fake that feeds the real reader loops from memory (httpx's mock transport)."""

    async def follow(self, topics: tuple[str, ...], *, from_end: bool) -> Following:
        """Started, assigned and positioned: at the end (``from_end``) or the beginning."""
        ...

    async def sender(self) -> IntentSender:
        """A started producer (``acks=1``: a check is answered by the decision, not the ack)."""
        ...


class KafkaClientTransport:
    """aiokafka clients configured from ``kafka``."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self._kafka = kafka

    async def follow(self, topics: tuple[str, ...], *, from_end: bool) -> Following:
        consumer = reader(
            client_kwargs(self._kafka), fetch_max_wait_ms=self._kafka.fetch_max_wait_ms
        )
        await consumer.start()
        try:
            # A metadata round trip: the bootstrap metadata need not list any topic.
            await consumer.topics()
            tps = _partitions(consumer, *topics)
            consumer.assign(tps)
            ends: dict[TopicPartition, int] = {}
            if from_end:
                await consumer.seek_to_end(*tps)
                for tp in tps:  # resolve the end now, so nothing sent after start is missed
                    await consumer.position(tp)
            else:
                await consumer.seek_to_beginning(*tps)
                ends = await consumer.end_offsets(tps)
        except BaseException:
            await consumer.stop()
            raise
        return Following(consumer, ends)

    async def sender(self) -> IntentSender:
        producer = AIOKafkaProducer(**client_kwargs(self._kafka), linger_ms=0, acks=1)
        await producer.start()
        sender: IntentSender = producer
        return sender


class _Follower:
    """A background task reading assigned partitions that no single record can stop.

    Subclasses apply one record in :meth:`_record`; whatever it raises skips
    that record (counted in :attr:`ignored`, logged once per kind), and so is
    a record aiokafka itself cannot decode (``ignored["unreadable"]``, see
    :mod:`worker.kafka.fetch`). A reader that stops anyway (a KafkaError such
    as a revoked Read ACL) sets :attr:`failure`, and every answer from then on
    is a denial that quotes it.
    """

    _poll_ms = 100

    def __init__(
        self, kafka: KafkaConfig, topics: TopicsConfig | None, transport: ClientTransport | None
    ) -> None:
        self._transport = transport or KafkaClientTransport(kafka)
        self._topics = topics or TopicsConfig()
        self._consumer: Followed | None = None
        self._task: asyncio.Task[None] | None = None
        self.failure: str | None = None
        """Why this object fails closed for good (None while its reader runs)."""
        self.ignored: Counter[str] = Counter()
        """Records and callbacks skipped, by kind (e.g. ``UnicodeDecodeError``)."""

    def _launch(self, consumer: Followed) -> None:
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name=type(self).__name__)
        self._task.add_done_callback(self._ended)

    async def _stop_following(self) -> None:
        if self.failure is None:
            self.failure = f"{type(self).__name__} stopped: failing closed"
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self.failure is not None:  # stopped on purpose
            return
        exc = None if task.cancelled() else task.exception()
        cause = "cancelled" if exc is None else f"{type(exc).__name__}: {exc}"
        self.failure = f"{type(self).__name__} reader stopped ({cause}): failing closed"
        log.error("reader stopped; failing closed", component=type(self).__name__, cause=cause)
        self._failed()

    def _failed(self) -> None:
        """Hook: the reader has just stopped for good."""

    def _note(self, kind: str, level: str = "warning", **context: Any) -> None:
        """Count a skipped record or callback; log the first of each kind only.

        A producer repeating one bad record must not flood the log; the counts
        stay in :attr:`ignored` for whoever wants the totals.
        """
        self.ignored[kind] += 1
        if self.ignored[kind] == 1:
            getattr(log, level)(
                "ignoring (logged once per kind; see .ignored)",
                component=type(self).__name__,
                kind=kind,
                **context,
            )

    async def _follow(self, consumer: Followed) -> None:
        while True:
            batch, unreadable = await fetch(consumer, self._poll_ms, 10_000)
            for bad in unreadable:  # the client itself could not decode it (a header key...)
                self._note(
                    "unreadable",
                    topic=bad.tp.topic,
                    partition=bad.tp.partition,
                    offset=bad.offset,
                    error=bad.error[:200],
                )
            for tp, records in batch.items():
                for record in records:
                    try:
                        self._record(tp, record)
                    except Exception as exc:  # any decode failure: RecursionError included
                        self._note(
                            type(exc).__name__,
                            topic=tp.topic,
                            partition=tp.partition,
                            offset=record.offset,
                            error=str(exc)[:200],
                        )
            await self._batch_done(consumer)

    def _record(self, tp: TopicPartition, record: Any) -> None:
        raise NotImplementedError

    async def _batch_done(self, consumer: Followed) -> None:
        """Hook: called after every fetch (empty or not)."""


class _HaltRelay:
    """Holds each halt event until the gate table shows it, then calls the subscribers.

    ``risk.halts`` and ``risk.gates`` are separate topics read in no fixed order,
    so a callback that asked the view right away could be told the opposite of
    the event it was handed. Events wait per (bot, symbol, gate) and are all
    delivered, in topic order, once the gate record of their (bot, symbol) —
    the account record for ``symbol=None`` — agrees with the latest of them
    (blocked by that gate after ``halted``, not after ``resumed``). Earlier
    events of the group are delivered then too: the worker may never publish
    a record showing a state it left within one batch.
    """

    def __init__(
        self,
        blocks: Callable[[str, str | None], list[Block] | None],
        note: Callable[..., None],
    ) -> None:
        self._blocks = blocks
        self._note = note
        self.callbacks: list[HaltCallback] = []
        self._held: dict[tuple[str, str | None], dict[Gate, list[HaltEvent]]] = {}

    def add(self, event: HaltEvent) -> None:
        key = (event.bot, event.symbol)
        self._held.setdefault(key, {}).setdefault(event.gate, []).append(event)
        self.table_changed(*key)

    def table_changed(self, bot: str, symbol: str | None) -> None:
        held = self._held.get((bot, symbol))
        if held is None:
            return
        blocks = self._blocks(bot, symbol)
        if blocks is None:
            return
        for gate, events in list(held.items()):
            if any(b.gate == gate for b in blocks) == (events[-1].kind != "resumed"):
                del held[gate]
                for event in events:
                    self._deliver(event)
        if not held:
            del self._held[(bot, symbol)]

    def _deliver(self, event: HaltEvent) -> None:
        for callback in self.callbacks:
            try:
                result = callback(event)
            except (Exception, asyncio.CancelledError) as exc:
                # A subscriber's bug must not stop the gate table from updating.
                self._note("callback_error", event_id=event.event_id, error=repr(exc))
                continue
            if inspect.iscoroutine(result):  # e.g. a lambda calling an async def
                result.close()
                self._note("callback_returned_coroutine", event_id=event.event_id)


def _is_async(callback: object) -> bool:
    call = getattr(callback, "__call__", None)  # noqa: B004 - async __call__ methods too
    return inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(call)


class GateView(_Follower):
    """A local, continuously updated copy of every bot's gates.

    ``clock`` returns *monotonic* milliseconds (only differences are used);
    inject one in tests. A bot is fresh while an account record of it was
    received within ``staleness_ms`` on this clock. Records read while
    replaying the topic's history prove nothing about the worker being alive
    now, so a bot stays denied after :meth:`wait_caught_up` until its owner's
    next heartbeat (``[worker] heartbeat_interval_ms``) arrives.
    """

    _poll_ms = 200

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig | None = None,
        *,
        staleness_ms: int = 15_000,
        clock: Callable[[], int] = _monotonic_ms,
        transport: ClientTransport | None = None,
    ) -> None:
        super().__init__(kafka, topics, transport)
        self.staleness_ms = staleness_ms
        self._clock = clock
        self.symbols: dict[tuple[str, str], GateState] = {}
        self.accounts: dict[str, AccountGateState] = {}
        self._heard: dict[str, int] = {}
        """Bot -> local monotonic ms its account record was last received live."""
        self._relay = _HaltRelay(self._blocks, self._note)
        self._caught_up = asyncio.Event()
        self._replaying: dict[TopicPartition, int] = {}
        """Partitions not yet read to their end at start, with that end."""

    # -- queries (no I/O) --------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def entries_allowed(self, bot: str, symbol: str) -> bool:
        """May ``bot`` open new risk on ``symbol``? Denies on any doubt.

        A record listing any block denies even if its ``entries_allowed`` says
        otherwise: every gate, present or future, blocks entries.
        """
        return self.state(bot, symbol) == "active"

    def state(self, bot: str, symbol: str) -> TradingState:
        """``bot``'s trading state on ``symbol`` (see :data:`TradingState`)."""
        if self.failure is not None or not self._caught_up.is_set():
            return "halted"
        account = self.accounts.get(bot)
        if account is None or self.stale(bot):
            return "halted"
        record = self.symbols.get((bot, symbol))
        blocks = [*account.blocks, *(record.blocks if record is not None else ())]
        if any(b.gate == "kill_switch" for b in blocks):
            return "killed"
        symbol_allows = record is None or record.entries_allowed
        if blocks or not (account.entries_allowed and symbol_allows):
            return "reducing"
        return "active"

    def stale(self, bot: str) -> bool:
        """Has ``bot``'s owner gone quiet? True until an account record of it is received live.

        The owner re-publishes the account record at least every heartbeat, so
        one not received within ``staleness_ms`` (this process's clock) means no
        live worker vouches for the bot's gates (the console shows it blocked).
        """
        heard = self._heard.get(bot)
        return heard is None or self._clock() - heard > self.staleness_ms

    def subscribe(self, callback: HaltCallback) -> None:
        """Call ``callback(event)`` for every halt/resume event, once the table shows it.

        When it runs, :meth:`entries_allowed` already answers as of that event
        (see :class:`_HaltRelay`); events of one (bot, symbol, gate) arrive in
        topic order. Subscribe before :meth:`start` to get the topic's history
        as well. Callbacks run synchronously in the reader task, so ``async
        def`` callbacks are refused with TypeError (awaiting them there would
        stall the gate table); schedule your coroutine from a plain function
        instead: ``view.subscribe(lambda e: loop.create_task(on_halt(e)))``.
        A callback that raises is counted in ``.ignored["callback_error"]``.
        """
        if _is_async(callback):
            raise TypeError(
                f"{callback!r} is a coroutine function: GateView calls halt callbacks "
                "synchronously; subscribe `lambda e: loop.create_task(callback(e))` instead"
            )
        self._relay.callbacks.append(callback)

    def on_kill(self, callback: HaltCallback) -> None:
        """Call ``callback(event)`` for every ``killed`` event (``cancel_open_orders``):
        cancel the target's working orders. Same delivery rules as :meth:`subscribe`:
        when it runs, :meth:`state` already answers ``killed``."""
        if _is_async(callback):
            raise TypeError(
                f"{callback!r} is a coroutine function: schedule it from a plain function"
            )

        def killed(event: HaltEvent) -> object:
            return callback(event) if event.kind == "killed" else None

        self._relay.callbacks.append(killed)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        topics = (self._topics.gates, self._topics.halts)
        consumer, ends = await self._transport.follow(topics, from_end=False)
        self._replaying = {tp: end for tp, end in ends.items() if end > 0}
        if not self._replaying:
            self._caught_up.set()
        self._launch(consumer)

    async def wait_caught_up(self) -> None:
        """Wait until the topics have been read to their end (wrap in ``asyncio.timeout``).

        Raises FollowerFailed if the reader stops first.
        """
        task = self._task
        assert task is not None, "GateView.start() first"
        waiter = asyncio.ensure_future(self._caught_up.wait())
        try:
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._caught_up.is_set() or self.failure is not None:
            raise FollowerFailed(self.failure or "GateView reader stopped")

    async def stop(self) -> None:
        await self._stop_following()

    async def __aenter__(self) -> GateView:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # -- reading -------------------------------------------------------------------

    async def _batch_done(self, consumer: Followed) -> None:
        if not self._replaying:
            return
        for tp, end in list(self._replaying.items()):
            # Some brokers (Tansu) list the end as the last batch's base offset
            # + 1; the fetch high watermark is exact, so no batch is cut short.
            if await consumer.position(tp) >= max(end, consumer.highwater(tp) or 0):
                del self._replaying[tp]
        if not self._replaying:
            self._caught_up.set()

    def _record(self, tp: TopicPartition, record: Any) -> None:
        self._apply(tp.topic, record, live=tp not in self._replaying)

    def _apply(self, topic: str, record: Any, *, live: bool) -> None:
        """Apply one record; ``live`` when read after its partition's history."""
        if record.value is None:
            return
        if topic == self._topics.halts:
            self._relay.add(_halt.decode(record.value))
        elif record.key is not None and record.key.count(b"/") == 1:
            account = _account_state.decode(record.value)
            self.accounts[account.bot] = account
            if live:
                self._heard[account.bot] = self._clock()
            self._relay.table_changed(account.bot, None)
        else:
            state = _symbol_state.decode(record.value)
            self.symbols[(state.bot, state.symbol)] = state
            self._relay.table_changed(state.bot, state.symbol)

    def _blocks(self, bot: str, symbol: str | None) -> list[Block] | None:
        record = self.accounts.get(bot) if symbol is None else self.symbols.get((bot, symbol))
        return None if record is None else record.blocks


def _answers(decision: GateDecision, intent: OrderIntent) -> bool:
    """Does ``decision`` echo ``intent``? Its id alone is not enough (issue 15 item 2).

    Floats compare exactly: the worker copies them from the decoded intent and
    JSON round-trips a float exactly.
    """
    return (
        decision.intent_id == intent.intent_id
        and decision.bot == intent.bot
        and decision.symbol == intent.symbol
        and decision.action == intent.action
        and decision.side == intent.side
        and decision.qty == intent.qty
        and decision.price == intent.price
    )


class GateClient(_Follower):
    """Pre-trade checks over Kafka: publish an intent, await the worker's decision.

    Many concurrent ``check`` calls share one producer and one decisions
    consumer. Only a decision that echoes the intent (id, bot, symbol,
    action, side, qty, price) answers it: any other is skipped and counted
    (``ignored["mismatched_decision"]``) while the check keeps waiting. A
    decision that does not arrive within the timeout is a denial (fail
    closed), never an exception the caller might treat as "go".
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig | None = None,
        *,
        timeout_ms: int = 250,
        clock: Callable[[], int] = wall_clock_ms,
        transport: ClientTransport | None = None,
    ) -> None:
        super().__init__(kafka, topics, transport)
        self.timeout_ms = timeout_ms
        self._clock = clock
        """Wall clock (epoch ms) stamped on the client's own denials."""
        self._pending: dict[str, list[tuple[OrderIntent, asyncio.Future[GateDecision]]]] = {}
        self._producer: IntentSender | None = None

    @property
    def waiting(self) -> int:
        """Checks waiting for their decision now (0 once every check has returned)."""
        return sum(len(waiters) for waiters in self._pending.values())

    async def start(self) -> None:
        producer = await self._transport.sender()
        try:
            consumer, _ = await self._transport.follow((self._topics.decisions,), from_end=True)
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        self._launch(consumer)

    async def stop(self) -> None:
        await self._stop_following()
        if self._producer is not None:
            await self._producer.stop()

    async def __aenter__(self) -> GateClient:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def check(self, intent: OrderIntent, timeout_ms: int | None = None) -> GateDecision:
        """The worker's decision on ``intent``, or a denial when none arrives in time.

        With a stopped reader nothing is sent (the worker would reserve
        notional for an order this client cannot be told about).
        """
        producer = self._producer
        assert producer is not None, "GateClient.start() first"
        if self.failure is not None:
            return self._denial(intent, self.failure)
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        future: asyncio.Future[GateDecision] = asyncio.get_running_loop().create_future()
        waiter = (intent, future)
        waiters = self._pending.setdefault(intent.intent_id, [])
        waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout / 1000):
                await producer.send(self._topics.intents, _encode(intent), key=intent.bot.encode())
                return await future
        except (TimeoutError, KafkaError) as exc:
            reason = f"no matching decision within {timeout} ms ({type(exc).__name__})"
            return self._denial(intent, f"{reason}: failing closed")
        except FollowerFailed as exc:
            return self._denial(intent, str(exc))
        finally:
            waiters.remove(waiter)
            if not waiters:
                del self._pending[intent.intent_id]

    def _denial(self, intent: OrderIntent, reason: str) -> GateDecision:
        return GateDecision(
            intent_id=intent.intent_id,
            bot=intent.bot,
            symbol=intent.symbol,
            allowed=False,
            gate=None,
            reason=reason,
            ts=self._clock(),
            action=intent.action,
            side=intent.side,
            qty=intent.qty,
            price=intent.price,
        )

    def _record(self, tp: TopicPartition, record: Any) -> None:
        if record.value is None:
            return  # a tombstone someone wrote to the decisions topic
        decision = _decision.decode(record.value)
        waiters = self._pending.get(decision.intent_id)
        if not waiters:
            # Another client's intent, or ours after its check timed out.
            self._note("not_pending", level="info", topic=tp.topic)
            return
        matched = [future for intent, future in waiters if _answers(decision, intent)]
        if not matched:
            self._note(
                "mismatched_decision",
                intent_id=decision.intent_id,
                bot=decision.bot,
                symbol=decision.symbol,
                offset=record.offset,
            )
        for future in matched:
            if not future.done():
                future.set_result(decision)

    def _failed(self) -> None:
        for waiters in self._pending.values():
            for _, future in waiters:
                if not future.done():
                    future.set_exception(FollowerFailed(self.failure))
