"""What the page shows, read the way an execution service reads it.

A :class:`~worker.client.GateView` follows ``risk.gates`` and ``risk.halts``
outside any consumer group (it never joins the worker's group, so opening a
console can never trigger a rebalance). :class:`Board` turns the view into one
JSON document — every bot and symbol with its state, the halt/resume timeline
and each bot's PnL curve of the day — and pushes it to the pages (server-sent
events) whenever it changes.

The board fails closed exactly like ``GateView.entries_allowed``: until the
view has read the topics to their end, for a bot whose worker has gone quiet
(stale) and after the reader stopped, every row is blocked. Stale bots are
counted as blocked.

States, as NautilusTrader names them: ``active`` (entries allowed),
``reducing`` (a gate blocks new risk; reduce-only closes still pass: every gate
riskgate has today), ``stale`` (no live worker vouches for the row: blocked).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Literal

import msgspec

from worker.client import GateView
from worker.messages import AccountGateState, Block, GateState, HaltEvent

RowState = Literal["active", "reducing", "stale"]
DAY_MS = 86_400_000
SPARK_GAP_MS = 30_000
"""Sparkline resolution: a new point replaces the last one when closer than this."""
SPARK_POINTS = DAY_MS // SPARK_GAP_MS


class SymbolRow(msgspec.Struct, frozen=True):
    symbol: str
    state: RowState
    entries_allowed: bool
    blocks: list[Block]
    """The symbol's own blocks; the bot's are on its row and block every symbol."""
    net_pnl: float
    trades: int
    recent_losses: int
    position_qty: float


class BotRow(msgspec.Struct, frozen=True):
    """No ``updated_ts``: heartbeats would change the document (and every page) each
    time; ``stale`` says what they mean, the PnL points carry the worker's times."""

    bot: str
    state: RowState
    stale: bool
    entries_allowed: bool
    blocks: list[Block]
    account_net_pnl: float | None
    open_positions: int | None
    gross_exposure: float | None
    symbols: list[SymbolRow]
    pnl: list[tuple[int, float]]
    """The day's account net PnL as ``(worker ts, value)`` points, oldest first."""


class Counts(msgspec.Struct, frozen=True):
    bots: int
    symbols: int
    blocked_bots: int
    blocked_symbols: int
    stale_bots: int


class BoardState(msgspec.Struct, frozen=True):
    caught_up: bool
    failure: str | None
    staleness_ms: int
    counts: Counts
    bots: list[BotRow]
    timeline: list[HaltEvent]
    """Latest first."""


def _state(allowed: bool, stale: bool) -> RowState:
    if stale:
        return "stale"
    return "active" if allowed else "reducing"


class _Spark:
    """One bot's account net PnL through its UTC day (the worker's ``updated_ts``)."""

    def __init__(self) -> None:
        self.points: deque[tuple[int, float]] = deque(maxlen=SPARK_POINTS)

    def add(self, ts: int, value: float) -> None:
        points = self.points
        if points:
            last_ts, last_value = points[-1]
            if ts < last_ts:
                return  # an older record (history replayed after a newer one)
            if ts // DAY_MS != last_ts // DAY_MS:
                points.clear()  # the worker's day rolled over: a new curve
            elif value == last_value:
                return  # a heartbeat: nothing new to draw
            elif len(points) > 1 and ts - points[-2][0] < SPARK_GAP_MS:
                points[-1] = (ts, value)  # keep points about SPARK_GAP_MS apart
                return
        points.append((ts, value))


class Board:
    """The console's live state over a GateView (started and stopped by the caller).

    Call :meth:`refresh` periodically (:meth:`run` does): it samples the PnL
    curves and, when the document changed, bumps :attr:`version` and wakes
    every :meth:`wait_change`. Staleness moves with time alone, so the document
    is rebuilt on every tick, not only on records.
    """

    def __init__(self, view: GateView, *, timeline_size: int, tick_s: float = 0.25) -> None:
        self.view = view
        self.tick_s = tick_s
        self._timeline: deque[HaltEvent] = deque(maxlen=timeline_size)
        view.subscribe(self._timeline.append)
        self._sparks: dict[str, _Spark] = {}
        self._seen: dict[str, int] = {}
        """Bot -> seq of the account record last sampled."""
        self.version = 0
        self.document = b""
        self._changed = asyncio.Event()
        self.refresh()

    # -- building ----------------------------------------------------------------

    def state(self) -> BoardState:
        view = self.view
        vouched = view.caught_up and view.failure is None
        names = sorted(set(view.accounts) | {bot for bot, _ in view.symbols})
        by_bot: dict[str, list[GateState]] = {name: [] for name in names}
        for (bot, _), record in sorted(view.symbols.items()):
            by_bot[bot].append(record)
        bots = [self._bot_row(name, by_bot[name], vouched) for name in names]
        symbols = [s for b in bots for s in b.symbols]
        counts = Counts(
            bots=len(bots),
            symbols=len(symbols),
            blocked_bots=sum(not b.entries_allowed for b in bots),
            blocked_symbols=sum(not s.entries_allowed for s in symbols),
            stale_bots=sum(b.stale for b in bots),
        )
        timeline = sorted(self._timeline, key=lambda e: e.ts, reverse=True)
        return BoardState(
            caught_up=view.caught_up,
            failure=view.failure,
            staleness_ms=view.staleness_ms,
            counts=counts,
            bots=bots,
            timeline=timeline,
        )

    def _bot_row(self, bot: str, records: list[GateState], vouched: bool) -> BotRow:
        view = self.view
        account: AccountGateState | None = view.accounts.get(bot)
        stale = not vouched or view.stale(bot)
        allowed = account is not None and account.entries_allowed and not stale
        rows = [
            SymbolRow(
                symbol=r.symbol,
                state=_state(view.entries_allowed(bot, r.symbol), stale),
                entries_allowed=view.entries_allowed(bot, r.symbol),
                blocks=r.blocks,
                net_pnl=r.net_pnl,
                trades=r.trades,
                recent_losses=r.recent_losses,
                position_qty=r.position_qty,
            )
            for r in records
        ]
        spark = self._sparks.get(bot)
        return BotRow(
            bot=bot,
            state=_state(allowed, stale),
            stale=stale,
            entries_allowed=allowed,
            blocks=account.blocks if account is not None else [],
            account_net_pnl=account.account_net_pnl if account is not None else None,
            open_positions=account.open_positions if account is not None else None,
            gross_exposure=account.gross_exposure if account is not None else None,
            symbols=rows,
            pnl=list(spark.points) if spark is not None else [],
        )

    # -- ticking -----------------------------------------------------------------

    def refresh(self) -> bool:
        """Sample the PnL curves and rebuild the document; True when it changed."""
        for bot, account in self.view.accounts.items():
            if self._seen.get(bot) != account.seq:
                self._seen[bot] = account.seq
                spark = self._sparks.setdefault(bot, _Spark())
                spark.add(account.updated_ts, account.account_net_pnl)
        document = msgspec.json.encode(self.state())
        if document == self.document:
            return False
        self.document = document
        self.version += 1
        self.wake()
        return True

    def wake(self) -> None:
        """Wake every :meth:`wait_change` now (the server is stopping)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_change(self, version: int, timeout_s: float) -> bool:
        """Wait until :attr:`version` passes ``version``; False on timeout."""
        if self.version != version:
            return True
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await changed.wait()
        return self.version != version

    async def run(self) -> None:
        """Refresh every ``tick_s`` until cancelled."""
        while True:
            self.refresh()
            await asyncio.sleep(self.tick_s)
