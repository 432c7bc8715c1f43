"""Client library for execution services: local gate table and pre-trade checks.

``GateClient.check(intent)`` asks the worker over Kafka and awaits its
decision; it fails closed (a denial) when no decision arrives in time.

``GateView`` follows the compacted ``risk.gates`` topic (and ``risk.halts``)
and answers ``entries_allowed(bot, symbol)`` from memory, with no network round
trip. It **fails closed**: it denies until it has read the topic to the end,
for a bot with no account record, and for a bot whose owner has published
neither an update nor a heartbeat within ``staleness_ms``.

Both follow their topics with ``[kafka] fetch_max_wait_ms`` of the config they
are given: Kafka answers a fetch as soon as records arrive, so it only paces
idle polls; on a broker that does not wake waiting fetches (the embedded
Tansu) it adds up to that much per hop, so lower it there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from worker.config import KafkaConfig, TopicsConfig
from worker.kafka.options import client_kwargs
from worker.kafka.topics import TopicLayoutError
from worker.messages import AccountGateState, GateDecision, GateState, HaltEvent, OrderIntent

log = structlog.get_logger("riskgate.client")

HaltCallback = Callable[[HaltEvent], None]

_symbol_state = msgspec.json.Decoder(GateState)
_account_state = msgspec.json.Decoder(AccountGateState)
_halt = msgspec.json.Decoder(HaltEvent)
_decision = msgspec.json.Decoder(GateDecision)
_encode = msgspec.json.Encoder().encode


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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


class GateView:
    """A local, continuously updated copy of every bot's gates."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig | None = None,
        *,
        staleness_ms: int = 15_000,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._kafka = kafka
        self._topics = topics or TopicsConfig()
        self.staleness_ms = staleness_ms
        self._clock = clock
        self.symbols: dict[tuple[str, str], GateState] = {}
        self.accounts: dict[str, AccountGateState] = {}
        self._callbacks: list[HaltCallback] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self._ends: dict[TopicPartition, int] = {}

    # -- queries (no I/O) --------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def entries_allowed(self, bot: str, symbol: str) -> bool:
        """May ``bot`` open new risk on ``symbol``? Denies on any doubt."""
        if not self._caught_up.is_set():
            return False
        account = self.accounts.get(bot)
        if account is None or not account.entries_allowed:
            return False
        # The owner re-publishes the account record at least every heartbeat.
        if self._clock() - account.updated_ts > self.staleness_ms:
            return False
        state = self.symbols.get((bot, symbol))
        return state is None or state.entries_allowed

    def subscribe(self, callback: HaltCallback) -> None:
        """Call ``callback`` for every halt/resume event the view reads.

        Subscribe before :meth:`start` to get the topic's history as well; a
        callback added later sees only the events read after it was added.
        """
        self._callbacks.append(callback)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_kwargs(self._kafka),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._kafka.fetch_max_wait_ms,
        )
        await consumer.start()
        topics = self._topics
        try:
            # A metadata round trip: the bootstrap metadata need not list any topic.
            await consumer.topics()
            tps = _partitions(consumer, topics.gates, topics.halts)
        except BaseException:
            await consumer.stop()
            raise
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._ends = await consumer.end_offsets(tps)
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow())

    async def wait_caught_up(self) -> None:
        """Wait until the gate topic has been read to its end (wrap in ``asyncio.timeout``)."""
        await self._caught_up.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def __aenter__(self) -> GateView:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        pending = {tp for tp, end in self._ends.items() if end > 0}
        if not pending:
            self._caught_up.set()
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    self._apply(tp.topic, record)
            if pending:
                for tp in list(pending):
                    # Some brokers (Tansu) list the end as the last batch's base offset
                    # + 1; the fetch high watermark is exact, so no batch is cut short.
                    end = max(self._ends[tp], consumer.highwater(tp) or 0)
                    if await consumer.position(tp) >= end:
                        pending.discard(tp)
                if not pending:
                    self._caught_up.set()

    def _apply(self, topic: str, record: Any) -> None:
        if record.value is None:
            return
        try:
            if topic == self._topics.halts:
                event = _halt.decode(record.value)
                for callback in self._callbacks:
                    try:
                        callback(event)
                    except Exception:
                        # A subscriber's bug must not stop the gate table from updating.
                        log.exception("halt callback failed", event_id=event.event_id)
            elif record.key is not None and record.key.count(b"/") == 1:
                account = _account_state.decode(record.value)
                self.accounts[account.bot] = account
            else:
                state = _symbol_state.decode(record.value)
                self.symbols[(state.bot, state.symbol)] = state
        except msgspec.DecodeError as exc:
            log.warning(
                "ignoring undecodable record", topic=topic, offset=record.offset, error=str(exc)
            )


class GateClient:
    """Pre-trade checks over Kafka: publish an intent, await the worker's decision.

    Many concurrent ``check`` calls share one producer and one decisions
    consumer. A decision that does not arrive within the timeout is a denial
    (fail closed), never an exception the caller might treat as "go".
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig | None = None,
        *,
        timeout_ms: int = 250,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._kafka = kafka
        self._topics = topics or TopicsConfig()
        self.timeout_ms = timeout_ms
        self._clock = clock
        self._pending: dict[str, asyncio.Future[GateDecision]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        kwargs = client_kwargs(self._kafka)
        producer = AIOKafkaProducer(**kwargs, linger_ms=0, acks=1)
        consumer = AIOKafkaConsumer(
            **kwargs,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=self._kafka.fetch_max_wait_ms,
        )
        await producer.start()
        await consumer.start()
        try:
            await consumer.topics()
            tps = _partitions(consumer, self._topics.decisions)
        except BaseException:
            await consumer.stop()
            await producer.stop()
            raise
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end now, so no decision sent after start() is missed
            await consumer.position(tp)
        self._producer, self._consumer = producer, consumer
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()

    async def __aenter__(self) -> GateClient:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def check(self, intent: OrderIntent, timeout_ms: int | None = None) -> GateDecision:
        """The worker's decision on ``intent``, or a denial when none arrives in time."""
        producer = self._producer
        assert producer is not None, "GateClient.start() first"
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        future = self._pending.setdefault(
            intent.intent_id, asyncio.get_running_loop().create_future()
        )
        try:
            async with asyncio.timeout(timeout / 1000):
                await producer.send(self._topics.intents, _encode(intent), key=intent.bot.encode())
                return await asyncio.shield(future)
        except (TimeoutError, KafkaError) as exc:
            return GateDecision(
                intent_id=intent.intent_id,
                bot=intent.bot,
                symbol=intent.symbol,
                allowed=False,
                gate=None,
                reason=f"no decision within {timeout} ms ({type(exc).__name__}): failing closed",
                ts=self._clock(),
            )
        finally:
            self._pending.pop(intent.intent_id, None)

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue  # a tombstone: would kill this loop (TypeError)
                    try:
                        decision = _decision.decode(record.value)
                    except msgspec.DecodeError:
                        continue
                    future = self._pending.get(decision.intent_id)
                    if future is not None and not future.done():
                        future.set_result(decision)
