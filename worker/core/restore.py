"""Restoring bots from the compacted snapshots topic (SPEC §5, decisions D3-D4, N2).

The last value per key is read: symbol and portfolio records, and the id
chunks a portfolio references (:mod:`worker.core.idlog`). Anything that cannot
be used is reported and ignored, never fatal and never misread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from worker.core.effects import Effects
from worker.core.idlog import IdLogRef
from worker.core.names import check_name
from worker.core.snapshot import (
    PortfolioSnapshot,
    SnapshotError,
    SymbolSnapshot,
    decode_chunk,
    decode_snapshot,
    parse_chunk_key,
)
from worker.errors import Rejected

if TYPE_CHECKING:
    from worker.core.bot import BotRisk


class Restore:
    """A restore from the last value per snapshot key, fed in parts so that a caller can
    free each part's values once applied and let its event loop run between parts.

    ``bot_of``: the engine's bot, created when new (Rejected for a bot no longer
    configured). Corrupt values, unknown versions, bots no longer configured and
    symbols no longer in their bot's ``symbols`` (N2) are ignored; tombstones
    (None) are skipped. :meth:`finish` then sweeps every restored bot once at
    ``now_ms``: the wall clock, not the snapshot, says what day it is, and each
    symbol is ticked once, the bot's next deadline taken from all of them.

    ``block_unreadable`` (``[worker] on_unreadable_state = "halt"``): a bot with a
    record that does not decode or has an unknown version starts blocked by
    ``unreadable_state`` (issue 11) instead of fresh.
    """

    def __init__(
        self,
        bot_of: Callable[[str], BotRisk],
        now_ms: int,
        out: Effects,
        *,
        block_unreadable: bool = False,
    ) -> None:
        self._bot_of = bot_of
        self._now_ms = now_ms
        self._out = out
        self._block_unreadable = block_unreadable
        self.ignored: list[tuple[str, str]] = []
        self._restored: dict[str, BotRisk] = {}
        self._legacy: list[tuple[BotRisk, SymbolSnapshot]] = []
        self._chunks: dict[str, dict[str, dict[int, bytes]]] = {}
        """bot -> window -> chunk number -> entries"""
        self._refs: dict[str, dict[str, IdLogRef]] = {}
        self._unreadable: set[str] = set()

    def feed(self, records: Iterable[tuple[str, bytes | None]]) -> None:
        """Load these records (bots and symbols in state, id chunks kept for :meth:`finish`)."""
        ignored, unreadable, now_ms = self.ignored, self._unreadable, self._now_ms
        for key, value in records:
            if value is None:
                continue
            chunk = parse_chunk_key(key)
            if chunk is not None:
                bot_id, window, number = chunk
                try:
                    entries = decode_chunk(value)
                    self._chunks.setdefault(bot_id, {}).setdefault(window, {})[number] = entries
                except SnapshotError as exc:
                    ignored.append((key, str(exc)))
                    unreadable.add(bot_id)
                continue
            try:
                bot_id, symbol, snap = decode_snapshot(key, value)
                bot = self._bot_of(bot_id)
                if symbol is not None:
                    _check_restored_symbol(bot, symbol)
            except (SnapshotError, Rejected) as exc:
                ignored.append((key, str(exc)))
                if isinstance(exc, SnapshotError):
                    unreadable.add(key.split("/", 1)[0])
                continue
            self._restored[bot_id] = bot
            if isinstance(snap, SymbolSnapshot) and symbol is not None:
                bot.load_symbol(symbol, snap, now_ms)
                if snap.recent_outcome_ids or snap.recent_fill_ids:
                    self._legacy.append((bot, snap))
            elif isinstance(snap, PortfolioSnapshot):
                bot.restore_portfolio(snap, now_ms, self._out)
                if snap.id_logs is not None:
                    self._refs[bot_id] = snap.id_logs

    def finish(self) -> list[tuple[str, str]]:
        """Id windows from their chunks, unreadable bots blocked, then every restored bot
        swept once; returns ``(key, why)`` of the records ignored."""
        for _ in self.finishing():
            pass
        return self.ignored

    def finishing(self) -> Iterator[None]:
        """:meth:`finish` a bot at a time (a ``yield`` after each bot's sweep), then
        :attr:`ignored` holds the ``(key, why)`` of the records ignored."""
        restored, now_ms, out = self._restored, self._now_ms, self._out
        for bot_id, bot_refs in self._refs.items():
            missing = restored[bot_id].ids.restore(bot_id, bot_refs, self._chunks.get(bot_id, {}))
            self.ignored.extend((key, "id chunk missing: newer entries kept") for key in missing)
        for bot, snap in self._legacy:  # after the portfolios, whose windows they join
            bot.ids.adopt(snap)
        for bot_id in sorted(self._unreadable) if self._block_unreadable else ():
            try:
                restored[bot_id] = _block_unreadable(self._bot_of(bot_id), now_ms, out)
            except Rejected:  # a bot no longer configured
                continue
        for bot in restored.values():
            bot.account.resum()  # sessions changed outside the event paths
            bot.sweep(now_ms, out)  # due at once: ticks every restored symbol once
            yield


def _block_unreadable(bot: BotRisk, now_ms: int, out: Effects) -> BotRisk:
    """Block a bot some of whose saved state could not be read, until an operator's
    ``reset_state``: starting it fresh would forget its halts and latches (fail
    closed, where NautilusTrader fails open: its issues #4011, #4946)."""
    before = bot.signature()
    bot.controls.unreadable = True
    if bot.signature() != before:
        bot.gate_seq += 1
        bot.emit(bot, before, now_ms, out)
    bot.touch(out)  # the flag is persisted with the portfolio
    return bot


def _check_restored_symbol(bot: BotRisk, symbol: str) -> None:
    """A snapshot of a symbol the config no longer allows (or never could) is ignored;
    its events are then dead-lettered as ``unknown_symbol`` (N2)."""
    check_name("symbol", symbol)
    allowed = bot.settings.symbols
    if allowed is not None and symbol not in allowed:
        raise Rejected(
            "unknown_symbol", f"symbol {symbol!r} is no longer configured for bot {bot.bot!r}"
        )
