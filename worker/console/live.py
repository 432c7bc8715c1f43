"""What the page shows, read the way an execution service reads it.

A :class:`~worker.client.GateView` follows ``risk.gates`` and ``risk.halts``
outside any consumer group (it never joins the worker's group, so opening a
console can never trigger a rebalance). :class:`Board` turns the view into one
JSON document — every bot and symbol with its state, the halt/resume timeline
and each bot's PnL curve of the day — and pushes it to the pages (server-sent
events) whenever it changes.

Every row's state is ``GateView.state`` — NautilusTrader's names: ``active``
(entries allowed), ``reducing`` (a gate blocks new risk, reduce-only closes
pass), ``killed`` (the kill switch: nothing passes) and ``halted`` (the view
cannot vouch for the bot). So the board fails closed exactly like the view:
until it has read the topics to their end, for a bot whose worker has gone
quiet (``stale``) and after the reader stopped, every row is ``halted`` and
counted as blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import msgspec
import structlog

from worker.client import GateView, TradingState
from worker.messages import AccountGateState, Block, GateState, HaltEvent

log = structlog.get_logger("riskgate.console")

DAY_MS = 86_400_000
SPARK_MIN_GAP_MS = 1_000
SPARK_POINTS = 240


class SymbolRow(msgspec.Struct, frozen=True):
    symbol: str
    state: TradingState
    entries_allowed: bool
    blocks: list[Block]
    """The symbol's own blocks; the bot's are on its row and block every symbol."""
    net_pnl: float
    unrealised_pnl: float | None
    """None from workers without marks."""
    trades: int
    recent_losses: int
    position_qty: float


class BotRow(msgspec.Struct, frozen=True):
    """No ``updated_ts``: heartbeats would change the document (and every page) each
    time; ``stale`` says what they mean, the PnL points carry the worker's times."""

    bot: str
    state: TradingState
    """The bot-level state (its own gates); each symbol row has its own."""
    stale: bool
    """Not vouched for: its worker is quiet, or the view is not caught up / stopped."""
    entries_allowed: bool
    blocks: list[Block]
    account_net_pnl: float | None
    unrealised_pnl: float | None
    equity: float | None
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


class Rows(msgspec.Struct, frozen=True):
    """The table: pushed as ``event: rows`` whenever any of it changes."""

    caught_up: bool
    failure: str | None
    staleness_ms: int
    counts: Counts
    bots: list[BotRow]


class BoardState(Rows, frozen=True):
    """Everything (``GET /api/state``)."""

    timeline: list[HaltEvent]
    """Latest first; pushed on its own (``event: timeline``), only when an event arrives."""


class _Spark:
    """One bot's account net PnL through its UTC day (the worker's ``updated_ts``).

    At most ``SPARK_POINTS`` points, whatever the day's length: the whole board
    goes to every page on every change, so a curve must stay a few KiB. Points
    start ``SPARK_MIN_GAP_MS`` apart; each time the curve fills up, every
    other point is dropped and the gap doubles (fine early in the day, a day
    at about 6-minute resolution).
    """

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []
        self.gap_ms = SPARK_MIN_GAP_MS

    def add(self, ts: int, value: float) -> None:
        points = self.points
        if points:
            last_ts, last_value = points[-1]
            if ts < last_ts:
                return  # an older record (history replayed after a newer one)
            if ts // DAY_MS != last_ts // DAY_MS:
                points.clear()  # the worker's day rolled over: a new curve
                self.gap_ms = SPARK_MIN_GAP_MS
            elif value == last_value:
                return  # a heartbeat: nothing new to draw
            elif len(points) > 1 and ts - points[-2][0] < self.gap_ms:
                points[-1] = (ts, value)  # the newest point follows the value
                return
        points.append((ts, value))
        if len(points) > SPARK_POINTS:
            self.points = points[-1::-2][::-1]  # every other point, the newest kept
            self.gap_ms *= 2


class Board:
    """The console's live state over a GateView (started and stopped by the caller).

    Call :meth:`refresh` periodically (:meth:`run` does): it samples the PnL
    curves, re-encodes the two documents pages follow — ``rows`` (rebuilt on
    every tick: staleness moves with time alone) and ``timeline`` (only when a
    halt event arrived) — bumps the version of each that changed and wakes
    every :meth:`wait_change`.
    """

    DOCUMENTS = ("rows", "timeline")

    def __init__(self, view: GateView, *, timeline_size: int, tick_s: float = 0.25) -> None:
        self.view = view
        self.tick_s = tick_s
        self._timeline: deque[HaltEvent] = deque(maxlen=timeline_size)
        self._events = 0
        view.subscribe(self._add_event)
        self._sparks: dict[str, _Spark] = {}
        self._seen: dict[str, int] = {}
        """Bot -> seq of the account record last sampled."""
        self.documents = dict.fromkeys(self.DOCUMENTS, b"")
        self.versions = dict.fromkeys(self.DOCUMENTS, 0)
        self._encoded_events = -1
        self._changed = asyncio.Event()
        self.failures = 0
        """Refreshes that raised (see :meth:`run`)."""
        self.refresh()

    @property
    def version(self) -> int:
        """Grows whenever either document changes."""
        return sum(self.versions.values())

    def _add_event(self, event: HaltEvent) -> None:
        self._timeline.append(event)
        self._events += 1

    # -- building ----------------------------------------------------------------

    def rows(self) -> Rows:
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
        return Rows(view.caught_up, view.failure, view.staleness_ms, counts, bots)

    def timeline(self) -> list[HaltEvent]:
        return sorted(self._timeline, key=lambda e: e.ts, reverse=True)

    def state(self) -> BoardState:
        return BoardState(**msgspec.structs.asdict(self.rows()), timeline=self.timeline())

    def _bot_row(self, bot: str, records: list[GateState], vouched: bool) -> BotRow:
        view = self.view
        account: AccountGateState | None = view.accounts.get(bot)
        # No symbol is named "" (names are 1..64 characters): the bot's own state.
        state = view.state(bot, "")
        rows = [
            SymbolRow(
                symbol=r.symbol,
                state=view.state(bot, r.symbol),
                entries_allowed=view.entries_allowed(bot, r.symbol),
                blocks=r.blocks,
                net_pnl=r.net_pnl,
                unrealised_pnl=r.unrealised_pnl,
                trades=r.trades,
                recent_losses=r.recent_losses,
                position_qty=r.position_qty,
            )
            for r in records
        ]
        spark = self._sparks.get(bot)
        return BotRow(
            bot=bot,
            state=state,
            stale=not vouched or view.stale(bot),
            entries_allowed=state == "active",
            blocks=account.blocks if account is not None else [],
            account_net_pnl=account.account_net_pnl if account is not None else None,
            unrealised_pnl=account.unrealised_pnl if account is not None else None,
            equity=account.equity if account is not None else None,
            open_positions=account.open_positions if account is not None else None,
            gross_exposure=account.gross_exposure if account is not None else None,
            symbols=rows,
            pnl=list(spark.points) if spark is not None else [],
        )

    # -- ticking -----------------------------------------------------------------

    def refresh(self) -> bool:
        """Sample the PnL curves and re-encode the documents; True when one changed."""
        for bot, account in self.view.accounts.items():
            if self._seen.get(bot) != account.seq:
                self._seen[bot] = account.seq
                spark = self._sparks.setdefault(bot, _Spark())
                spark.add(account.updated_ts, account.account_net_pnl)
        changed = self._update("rows", msgspec.json.encode(self.rows()))
        if self._encoded_events != self._events:
            self._encoded_events = self._events
            changed |= self._update("timeline", msgspec.json.encode(self.timeline()))
        if changed:
            self.wake()
        return changed

    def _update(self, name: str, document: bytes) -> bool:
        if document == self.documents[name]:
            return False
        self.documents[name] = document
        self.versions[name] += 1
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
        """Refresh every ``tick_s`` until cancelled.

        A refresh that raises (a bug) is logged and retried at the next tick:
        a ticker that died would leave every page showing its last, possibly
        "active", rows for ever.
        """
        while True:
            try:
                self.refresh()
            except Exception:
                self.failures += 1
                if self.failures == 1:
                    log.exception("console board refresh failed (logged once; retrying)")
            await asyncio.sleep(self.tick_s)
