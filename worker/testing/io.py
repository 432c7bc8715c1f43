"""Feeding a riskgate worker and awaiting what it publishes, from a test.

Events go out as SPEC §2 says real producers send them: JSON value, key = bot
id, aiokafka's default (murmur2) partitioner, acknowledged by every replica.
Every ``produce_*`` helper gives its event a fresh id (the worker drops
re-sent ids) and stamps it with the test's clock unless told otherwise.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

import msgspec
from aiokafka import AIOKafkaProducer

from worker.clock import wall_clock_ms
from worker.config import Config
from worker.kafka.options import client_kwargs
from worker.messages import (
    AccountGateState,
    Action,
    ControlCommand,
    Fill,
    Gate,
    GateDecision,
    GateState,
    HaltEvent,
    HaltKind,
    OrderIntent,
    Side,
    TradeOutcome,
)
from worker.testing.follow import first, latest, wait_for_record

Input = Fill | TradeOutcome | OrderIntent | ControlCommand
E = TypeVar("E", Fill, TradeOutcome, OrderIntent)

ANY = "\0any"
"""``symbol=ANY`` (the default) waits for a halt of any symbol or of the whole bot;
``symbol=None`` for a bot-wide one only. Not a valid symbol, so it never clashes."""

DEFAULT_WITHIN_S = 15.0

_encode = msgspec.json.Encoder().encode
_halt = msgspec.json.Decoder(HaltEvent).decode
_decision = msgspec.json.Decoder(GateDecision).decode
_symbol_gate = msgspec.json.Decoder(GateState).decode
_account_gate = msgspec.json.Decoder(AccountGateState).decode


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def _never_dies() -> None:
    """The default liveness check: nothing of ours to watch (e.g. a container)."""


def topic_of(config: Config, event: Input) -> str:
    """The input topic ``event`` belongs on."""
    topics = config.topics
    if isinstance(event, Fill):
        return topics.fills
    if isinstance(event, TradeOutcome):
        return topics.outcomes
    if isinstance(event, OrderIntent):
        return topics.intents
    return topics.control


async def produce(config: Config, inputs: Iterable[Input]) -> None:
    """Send ``inputs`` in order; return once the broker acknowledged every one."""
    producer = AIOKafkaProducer(**client_kwargs(config.kafka), acks="all", linger_ms=0)
    await producer.start()
    try:
        for event in inputs:
            await producer.send_and_wait(
                topic_of(config, event), _encode(event), key=event.bot.encode()
            )
    finally:
        await producer.stop()


class RiskgateIO:
    """Produce inputs to, and await outputs of, the worker that runs ``config``.

    ``clock`` (epoch ms) stamps the events built here; ``alive`` raises when
    the worker under test died, so a wait fails at once instead of timing out.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        alive: Callable[[], None] = _never_dies,
    ) -> None:
        self.config = config
        self.clock = clock
        self._alive = alive

    # -- inputs ------------------------------------------------------------------------

    async def produce(self, *inputs: Input) -> None:
        """Send events to their input topics, in order."""
        self._alive()
        await produce(self.config, inputs)

    async def produce_fill(
        self,
        bot: str,
        symbol: str,
        side: Side,
        qty: float,
        price: float,
        *,
        fee: float = 0.0,
        ts: int | None = None,
        intent_id: str | None = None,
        fill_id: str | None = None,
    ) -> Fill:
        fill = Fill(
            fill_id or new_id("fill"),
            bot,
            symbol,
            side,
            qty,
            price,
            fee,
            self._stamp(ts),
            intent_id=intent_id,
        )
        return await self._send(fill)

    async def produce_outcome(
        self,
        bot: str,
        symbol: str,
        gross_pnl: float,
        *,
        fee: float = 0.0,
        ts: int | None = None,
        outcome_id: str | None = None,
    ) -> TradeOutcome:
        outcome = TradeOutcome(
            outcome_id or new_id("outcome"), bot, symbol, gross_pnl, fee, self._stamp(ts)
        )
        return await self._send(outcome)

    async def produce_intent(
        self,
        bot: str,
        symbol: str,
        side: Side,
        qty: float,
        price: float,
        *,
        action: Action = "open",
        ts: int | None = None,
        intent_id: str | None = None,
    ) -> OrderIntent:
        """An order intent (``action="close"``: a reduce-only one); await its answer
        with :meth:`wait_for_decision` (``intent.intent_id``)."""
        intent = OrderIntent(
            intent_id or new_id("intent"),
            bot,
            symbol,
            action,
            side,
            qty,
            price,
            self._stamp(ts),
        )
        return await self._send(intent)

    def _stamp(self, ts: int | None) -> int:
        """``ts``, or the test's clock: one rule for every event built here."""
        return self.clock() if ts is None else ts

    async def _send(self, event: E) -> E:
        await self.produce(event)
        return event

    # -- outputs -----------------------------------------------------------------------

    async def wait_for_halt(
        self,
        bot: str,
        *,
        symbol: str | None = ANY,
        gate: Gate | None = None,
        kind: HaltKind = "halted",
        within: float = DEFAULT_WITHIN_S,
    ) -> HaltEvent:
        """The first halt event (``kind="resumed"``: resume event) that matches."""

        def matches(event: HaltEvent) -> bool:
            return (
                event.bot == bot
                and event.kind == kind
                and symbol in (ANY, event.symbol)
                and (gate is None or event.gate == gate)
            )

        where = f"{bot}/{'*' if symbol is None else 'any symbol' if symbol == ANY else symbol}"
        return await wait_for_record(
            self.config.kafka,
            self.config.topics.halts,
            _halt,
            first(matches),
            within=within,
            what=f"{kind} {gate or 'any gate'} of {where}",
            alive=self._alive,
        )

    async def wait_for_decision(
        self, intent_id: str, *, within: float = DEFAULT_WITHIN_S
    ) -> GateDecision:
        """The worker's decision on the intent with ``intent_id``."""
        return await wait_for_record(
            self.config.kafka,
            self.config.topics.decisions,
            _decision,
            first(lambda decision: decision.intent_id == intent_id),
            within=within,
            what=f"the decision on intent {intent_id}",
            alive=self._alive,
        )

    async def wait_for_gate(
        self,
        bot: str,
        symbol: str | None = None,
        *,
        entries_allowed: bool | None = None,
        blocked_by: Gate | None = None,
        within: float = DEFAULT_WITHIN_S,
    ) -> GateState | AccountGateState:
        """The gate record of ``bot``/``symbol`` (``symbol=None``: the account record),
        once its latest version allows or denies entries as asked and, with
        ``blocked_by``, lists that gate among its blocks."""

        def matches(state: GateState | AccountGateState) -> bool:
            return (entries_allowed is None or state.entries_allowed == entries_allowed) and (
                blocked_by is None or any(b.gate == blocked_by for b in state.blocks)
            )

        key = f"{bot}/gate" if symbol is None else f"{bot}/gate/{symbol}"
        decode: Callable[[bytes], GateState | AccountGateState] = (
            _account_gate if symbol is None else _symbol_gate
        )
        wanted = " and ".join(
            part
            for part in (
                None if entries_allowed is None else f"entries_allowed={entries_allowed}",
                None if blocked_by is None else f"blocked by {blocked_by}",
            )
            if part
        )
        return await wait_for_record(
            self.config.kafka,
            self.config.topics.gates,
            decode,
            latest(matches),
            within=within,
            what=f"gate record {key}" + (f" with {wanted}" if wanted else ""),
            alive=self._alive,
            key=key.encode(),
        )
