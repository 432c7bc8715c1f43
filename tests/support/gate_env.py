"""Shared setup of the pre-trade, control and client tests (``test_pretrade.py`` & co).

One :class:`GateEnv` per test module: unique topics and group id (from
``tests.support.harness.make_config``), one in-process worker (a group join costs seconds on
the embedded broker, so tests share it and keep apart by using different bots),
a :class:`GateClient` for checks and a :class:`GateView` whose halt callback
records every HaltEvent. Inputs on different topics are not ordered against
each other, so a test that feeds a fill, an outcome or a command waits for its
visible effect (a gate record or a halt event) before it sends the next intent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

from tests.support import builders
from tests.support.harness import (
    InProcess,
    create_topics,
    now_ms,
    produce_events,
    wait_ready,
    wait_until,
)
from worker.client import GateClient, GateView
from worker.clock import wall_clock_ms
from worker.config import Config
from worker.messages import (
    AccountGateState,
    Action,
    Command,
    ControlCommand,
    Event,
    Fill,
    GateDecision,
    GateState,
    HaltEvent,
    OrderIntent,
    Side,
    TradeOutcome,
)
from worker.runtime import Worker
from worker.signing import signed

T = TypeVar("T")


class OffsetClock:
    """The wall clock plus an offset a test may advance (the worker's injectable clock)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset_ms


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def eventually(
    probe: Callable[[], T | None],
    *,
    within: float = 10.0,
    what: str,
    alive: Callable[[], None] | None,
) -> T:
    """Poll a synchronous ``probe`` until it returns something truthy."""

    async def call() -> T | None:
        return probe()

    return await wait_until(call, within=within, what=what, interval=0.01, alive=alive)


@dataclass
class GateEnv:
    config: Config
    clock: OffsetClock
    view: GateView
    client: GateClient
    halts: list[HaltEvent] = field(default_factory=list)
    running: InProcess | None = None

    # -- the worker ----------------------------------------------------------------

    async def start_worker(self) -> None:
        assert self.running is None
        worker = Worker(self.config, clock=self.clock)
        self.running = InProcess(worker, asyncio.create_task(worker.run(), name="gate-worker"))
        await wait_ready(self.running)

    async def stop_worker(self) -> None:
        """Graceful stop (persist, commit, leave the group); re-raises a worker crash."""
        running, self.running = self.running, None
        if running is not None:
            await running.stop()

    async def ensure_worker(self) -> None:
        if self.running is None:
            await self.start_worker()
        self.alive()

    def alive(self) -> None:
        if self.running is not None:
            self.running.check_alive()

    # -- inputs ----------------------------------------------------------------------

    @staticmethod
    def intent(
        bot: str,
        symbol: str,
        *,
        action: Action = "open",
        side: Side = "buy",
        qty: float = 1.0,
        price: float = 100.0,
    ) -> OrderIntent:
        return builders.intent(
            action, side, qty, price, ts=now_ms(), bot=bot, symbol=symbol, intent_id=uid("i")
        )

    async def check(
        self,
        bot: str,
        symbol: str,
        *,
        action: Action = "open",
        side: Side = "buy",
        qty: float = 1.0,
        price: float = 100.0,
    ) -> GateDecision:
        """One pre-trade check through the client; the decision answers this intent.

        Stamped by the worker's (possibly advanced) clock, as a producer's clock would
        agree with it: an intent older than the reservation TTL is answered ``expired``.
        """
        intent = self.intent(bot, symbol, action=action, side=side, qty=qty, price=price)
        intent = msgspec.structs.replace(intent, ts=self.clock())
        decision = await self.client.check(intent)
        assert decision.intent_id == intent.intent_id
        assert (decision.bot, decision.symbol) == (bot, symbol)
        return decision

    async def send(self, *events: Event) -> None:
        await produce_events(self.config, events)

    @staticmethod
    def fill(
        bot: str,
        symbol: str,
        side: Side,
        qty: float,
        price: float = 100.0,
        *,
        intent_id: str | None = None,
    ) -> Fill:
        return builders.fill(
            side,
            qty,
            price,
            ts=now_ms(),
            bot=bot,
            symbol=symbol,
            intent_id=intent_id,
            fill_id=uid("f"),
        )

    @staticmethod
    def outcome(bot: str, symbol: str, gross: float, *, ago_ms: int = 0) -> TradeOutcome:
        return builders.outcome(
            gross, ts=now_ms() - ago_ms, bot=bot, symbol=symbol, outcome_id=uid("o")
        )

    async def fill_and_wait(
        self,
        bot: str,
        symbol: str,
        side: Side,
        qty: float,
        price: float = 100.0,
        *,
        intent_id: str | None = None,
    ) -> GateState:
        """Send a fill; return once the worker published the symbol's new position."""
        state = self.view.symbols.get((bot, symbol))
        before = state.position_qty if state is not None else 0.0
        expected = before + (qty if side == "buy" else -qty)
        await self.send(self.fill(bot, symbol, side, qty, price, intent_id=intent_id))
        return await self.wait_symbol(bot, symbol, lambda s: s.position_qty == expected)

    def command(
        self,
        command: Command,
        bot: str,
        symbol: str | None = None,
        *,
        issued_by: str = "ops",
        reason: str | None = None,
        ts: int | None = None,
        secret: bytes | None = None,
    ) -> ControlCommand:
        """A command with a unique reason; signed with ``secret`` (default: the config's)."""
        cmd = ControlCommand(
            command=command,
            bot=bot,
            symbol=symbol,
            reason=reason or uid(command),
            issued_by=issued_by,
            ts=now_ms() if ts is None else ts,
        )
        key = secret if secret is not None else self.config.control.resolved_secret()
        return signed(cmd, key) if key is not None else cmd

    async def control(self, cmd: ControlCommand) -> HaltEvent:
        """Send a command the worker must accept; return the event it yields."""
        seen = len(self.halts)
        await self.send(cmd)
        return await self.wait_halt(
            lambda e: e.bot == cmd.bot and e.issued_by == cmd.issued_by and cmd.reason in e.reason,
            after=seen,
            what=f"event for {cmd.command} {cmd.bot}/{cmd.symbol or '*'}",
        )

    # -- outputs ---------------------------------------------------------------------

    async def wait_halt(
        self, match: Callable[[HaltEvent], bool], *, after: int = 0, what: str = "halt event"
    ) -> HaltEvent:
        def found() -> HaltEvent | None:
            return next((e for e in self.halts[after:] if match(e)), None)

        return await eventually(found, what=what, alive=self.alive)

    async def wait_symbol(
        self, bot: str, symbol: str, match: Callable[[GateState], bool]
    ) -> GateState:
        def found() -> GateState | None:
            state = self.view.symbols.get((bot, symbol))
            return state if state is not None and match(state) else None

        return await eventually(found, what=f"gate record {bot}/{symbol}", alive=self.alive)

    async def wait_account(
        self, bot: str, match: Callable[[AccountGateState], bool]
    ) -> AccountGateState:
        def found() -> AccountGateState | None:
            state = self.view.accounts.get(bot)
            return state if state is not None and match(state) else None

        return await eventually(found, what=f"account record {bot}", alive=self.alive)


@contextlib.asynccontextmanager
async def gate_env(
    config: Config, *, client_timeout_ms: int = 5_000, start: bool = True
) -> AsyncIterator[GateEnv]:
    """Topics, worker, client and view for one test module; everything stopped on exit."""
    await create_topics(config)
    env = GateEnv(
        config,
        OffsetClock(),
        GateView(config.kafka, config.topics),
        GateClient(config.kafka, config.topics, timeout_ms=client_timeout_ms),
    )
    env.view.subscribe(env.halts.append)
    try:
        await env.view.start()
        await env.client.start()
        if start:
            await env.start_worker()
        async with asyncio.timeout(10):
            await env.view.wait_caught_up()
        yield env
    finally:
        try:
            await env.stop_worker()
        finally:
            await env.client.stop()
            await env.view.stop()


def elapsed_since(started: float) -> float:
    return time.perf_counter() - started
