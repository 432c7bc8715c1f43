"""The risk engine: validates events, sends each to its bot, restores and forgets bots.

Pure and synchronous ("bring your own I/O"): every method takes the time it
needs as an argument and returns :class:`~worker.core.effects.Effects` — halt
and resume events, decisions, and which keys are dirty — instead of
publishing anything. The shell reads state only through the methods under
"reads" below; it never walks the bots.

Time-driven state (UTC rollover, the daily-loss latch's release, breaker
cooldowns and window eviction, reservation expiry) moves only with the wall
clock given to :meth:`RiskEngine.sweep` and :meth:`RiskEngine.restore`; an
event's own ``ts`` places it but never advances time. Whether an event is
accepted depends only on the record and state, never on when it is processed
(``record_ts``, decision T3).
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView, Mapping
from typing import NamedTuple

from worker import signing
from worker.config import BotSettings, Config, bot_settings
from worker.core.bot import BotRisk
from worker.core.commands import control
from worker.core.effects import Effects, Origin
from worker.core.events import apply_fill, apply_mark, apply_outcome
from worker.core.marks import MarkTable
from worker.core.names import check_name
from worker.core.replay import IdChunkOut
from worker.core.restore import Restore
from worker.core.session import utc_day
from worker.core.snapshot import PortfolioSnapshot, SymbolSnapshot
from worker.core.views import BotView, bot_view
from worker.errors import Rejected
from worker.messages import (
    AccountGateState,
    ControlCommand,
    Event,
    Fill,
    GateState,
    Mark,
    OrderIntent,
    TradeOutcome,
)


class BotSnapshots(NamedTuple):
    """One bot's part of a persist, in write order (decision D3, :mod:`worker.core.idlog`)."""

    bot: str
    chunks: list[IdChunkOut]
    """Id chunks sealed since the last persist: before the portfolio that references them."""
    portfolio: PortfolioSnapshot
    symbols: list[tuple[str, SymbolSnapshot]]
    drops: list[tuple[str, int]]
    """Id chunks out of the window: tombstoned after the bot's last record."""


class EngineStats(NamedTuple):
    bots: int
    symbols: int
    reservations: int


class RiskEngine:
    """All bots this worker owns, with config-driven validation of every event."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bots: dict[str, BotRisk] = {}
        self.marks = MarkTable()
        """The latest mark per symbol: market-wide, shared by every bot (issue 11)."""
        self._control_secret = config.control.resolved_secret()
        self._max_skew_ms = config.worker.max_future_skew_ms

    def bot(self, bot_id: str, now_ms: int = 0) -> BotRisk:
        """The bot's state, created on first use; Rejected if the bot is unknown.

        A new bot starts in the UTC day of ``now_ms`` (the wall clock); without it,
        in day 0 until the first restore, sweep or decision moves it to the clock's.
        """
        bot = self.bots.get(bot_id)
        if bot is None:
            bot = self._create(self._settings(bot_id), now_ms)
        return bot

    def _settings(self, bot_id: str) -> BotSettings:
        """A bot's effective settings; Rejected if the bot is unknown. Creates nothing."""
        check_name("bot", bot_id)
        settings = bot_settings(self.config, bot_id)
        if settings is None:
            raise Rejected("unknown_bot", f"bot {bot_id!r} is not configured")
        return settings

    def _create(self, settings: BotSettings, now_ms: int) -> BotRisk:
        worker = self.config.worker
        bot = self.bots[settings.bot] = BotRisk(
            settings,
            reservation_ttl_ms=worker.reservation_ttl_ms,
            dedupe_keep=worker.dedupe_ids_per_bot,
            max_reservations=worker.max_reservations_per_bot,
            day=utc_day(now_ms),
            marks=self.marks,
        )
        return bot

    def validate(self, event: Event, now_ms: int, *, record_ts: int | None = None) -> BotRisk:
        """Every check that makes an event bad input, before anything changes.

        A bot seen for the first time is created only once its event passed every
        check: rejected input must not leave state behind (an unknown-bot flood
        under ``accept_unknown_bots`` would otherwise grow memory and the heartbeat
        gate records without bound).

        Time checks (future skew, a command's signature window) are judged against
        ``record_ts``, the Kafka record's timestamp (``now_ms`` when None, for pure
        callers), so a record is accepted or refused alike live, late and on replay (T3).
        """
        bot = self.bots.get(event.bot)
        settings = bot.settings if bot is not None else self._settings(event.bot)
        symbol = event.symbol
        allowed = settings.symbols
        if symbol is not None and (bot is None or symbol not in bot.symbols):
            if allowed is not None and symbol not in allowed:
                raise Rejected(
                    "unknown_symbol", f"symbol {symbol!r} is not configured for bot {event.bot!r}"
                )
            check_name("symbol", symbol)
        ref_ms = now_ms if record_ts is None else record_ts
        if event.ts > ref_ms + self._max_skew_ms:
            raise Rejected(
                "future_event", f"ts {event.ts} is ahead of the record's time ({ref_ms})"
            )
        if type(event) is TradeOutcome:
            if settings.pnl_source == "fills":
                raise Rejected(
                    "pnl_source",
                    f"bot {event.bot!r} books PnL from fills; outcomes would double-count",
                )
        elif type(event) is ControlCommand and event.command == "reset_state" and symbol:
            raise Rejected(
                "invalid_message", "reset_state addresses a whole bot: its symbol must be null"
            )
        elif type(event) is ControlCommand and self._control_secret is not None:
            problem = signing.verify(
                event, self._control_secret, ref_ms, self.config.control.replay_window_ms
            )
            if problem is not None:
                raise Rejected("bad_signature", problem)
        return bot if bot is not None else self._create(settings, now_ms)

    def apply(
        self,
        event: Event,
        now_ms: int,
        origin: Origin | None = None,
        out: Effects | None = None,
        *,
        record_ts: int | None = None,
    ) -> Effects:
        """Apply one event; raises Rejected (changing nothing) for bad input.

        ``now_ms`` is the wall clock; ``record_ts`` the Kafka record's timestamp
        that validation is judged against (see :meth:`validate`).
        """
        if out is None:
            out = Effects()
        bot = self.validate(event, now_ms, record_ts=record_ts)
        kind = type(event)
        if kind is TradeOutcome:
            apply_outcome(bot, event, origin, out)  # type: ignore[arg-type]
        elif kind is Fill:
            apply_fill(bot, event, origin, out)  # type: ignore[arg-type]
        elif kind is OrderIntent:
            bot.decide(event, now_ms, origin, out, record_ts)  # type: ignore[arg-type]
        else:
            control(bot, event, origin, out)  # type: ignore[arg-type]
        return out

    def apply_mark(self, mark: Mark, out: Effects | None = None) -> Effects:
        """A mark price (``[topics] marks``): hold it if it is the symbol's latest, then
        re-value every held bot's open position on it (gate records, equity limits,
        sessions with ``include_unrealised``). A mark never creates a bot or a symbol."""
        if out is None:
            out = Effects()
        if not self.marks.apply(mark):
            return out
        symbol = mark.symbol
        for bot in self.bots.values():
            sym = bot.symbols.get(symbol)
            if sym is not None and not sym.position.is_flat:
                apply_mark(bot, sym, mark.ts, out)
        return out

    def sweep(self, now_ms: int, out: Effects | None = None) -> Effects:
        if out is None:
            out = Effects()
        for bot in self.bots.values():
            bot.sweep(now_ms, out)
        return out

    def forget(self, bot_ids: Iterable[str]) -> None:
        """Drop bots whose partition this worker no longer owns."""
        for bot_id in bot_ids:
            self.bots.pop(bot_id, None)

    def rewrite_ids(self, bot_id: str) -> bool:
        """Write the bot's id windows afresh under new chunk numbers (a zombie's chunks were
        fenced out); False when the bot is not held."""
        bot = self.bots.get(bot_id)
        if bot is None:
            return False
        bot.ids.renumber()
        return True

    def restore(
        self, records: Mapping[str, bytes | None], now_ms: int, out: Effects | None = None
    ) -> list[tuple[str, str]]:
        """Restore from the last value per snapshot key; returns ``(key, why)`` of ignored ones
        (:class:`worker.core.restore.Restore`, fed at once)."""
        job = self.restoring(now_ms, out or Effects())
        job.feed(records.items())
        return job.finish()

    def restoring(self, now_ms: int, out: Effects) -> Restore:
        """A restore fed in parts (:class:`worker.core.restore.Restore`): the shell frees
        each part's values once applied and keeps its event loop running between parts."""
        return Restore(
            lambda bot_id: self.bot(bot_id, now_ms),
            now_ms,
            out,
            block_unreadable=self.config.worker.on_unreadable_state == "halt",
        )

    # -- reads: all the shell sees of the state -------------------------------------------

    def gate_states(self, dirty: Effects, now_ms: int) -> list[GateState | AccountGateState]:
        """The gate records of the keys ``dirty`` names (held ones), symbols first.

        A pure read: each record's ``seq`` was numbered when its key changed.
        """
        states: list[GateState | AccountGateState] = []
        bots = self.bots
        for bot_id, symbol in dirty.dirty_symbols:
            bot = bots.get(bot_id)
            sym = bot.symbols.get(symbol) if bot is not None else None
            if sym is not None:
                states.append(sym.gate_state(now_ms))
        for bot_id in dirty.dirty_bots:
            bot = bots.get(bot_id)
            if bot is not None:
                states.append(bot.account_gate_state(now_ms))
        return states

    def snapshots(self, dirty: Effects) -> list[BotSnapshots]:
        """What a persist writes for the keys ``dirty`` names, per bot (sorted), the
        portfolio whenever any of the bot's symbols is written (decision D3).

        Marks the returned id chunks written (:meth:`worker.core.idlog.ChunkedLog.persist`):
        the shell writes every record it is given, or stops.
        """
        by_bot: dict[str, list[str]] = {bot_id: [] for bot_id in sorted(dirty.dirty_bots)}
        for bot_id, symbol in sorted(dirty.dirty_symbols):
            by_bot.setdefault(bot_id, []).append(symbol)
        out: list[BotSnapshots] = []
        for bot_id, names in by_bot.items():
            bot = self.bots.get(bot_id)
            if bot is None:
                continue
            chunks, portfolio, drops = bot.persist()
            symbols = [(s, bot.symbols[s].snapshot()) for s in names if s in bot.symbols]
            out.append(BotSnapshots(bot_id, chunks, portfolio, symbols, drops))
        return out

    def stats(self) -> EngineStats:
        """Counts for the state gauges (computed when scraped)."""
        bots = self.bots.values()
        return EngineStats(
            bots=len(self.bots),
            symbols=sum(len(b.symbols) for b in bots),
            reservations=sum(len(b.portfolio.reservations) for b in bots),
        )

    def bot_ids(self) -> KeysView[str]:
        """The bots held (a live read-only view)."""
        return self.bots.keys()

    def symbols_of(self, bot_id: str) -> tuple[str, ...]:
        """The symbols held for a bot (none when the bot is not held)."""
        bot = self.bots.get(bot_id)
        return tuple(bot.symbols) if bot is not None else ()

    def watermarks(self, bot_ids: Iterable[str]) -> dict[str, int]:
        """Per input partition (``topic/partition``), the highest offset any state holder of
        these bots applied: where a restored partition's replay guards stand."""
        marks: dict[str, int] = {}
        for bot_id in bot_ids:
            bot = self.bots.get(bot_id)
            if bot is None:
                continue
            for holder in (bot, *bot.symbols.values()):
                for source, offset in holder.applied.items():
                    if offset > marks.get(source, -1):
                        marks[source] = offset
        return marks

    def bot_view(self, bot_id: str, now_ms: int) -> BotView | None:
        """An immutable picture of one bot for the operator tools; None when not held."""
        bot = self.bots.get(bot_id)
        return bot_view(bot, now_ms) if bot is not None else None
