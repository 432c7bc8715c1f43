"""Restoring bots from the compacted snapshots topic (SPEC §5, decisions D3-D4, N2).

The last value per key is read: symbol and portfolio records, and the id
chunks a portfolio references (:mod:`worker.core.idlog`). Anything that cannot
be used is reported and ignored, never fatal and never misread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def restore(
    bot_of: Callable[[str], BotRisk],
    records: Mapping[str, bytes | None],
    now_ms: int,
    out: Effects,
    *,
    block_unreadable: bool = False,
) -> list[tuple[str, str]]:
    """Restore from the last value per snapshot key; returns ``(key, why)`` of ignored ones.

    ``bot_of``: the engine's bot, created when new (Rejected for a bot no longer
    configured). Corrupt values, unknown versions, bots no longer configured and
    symbols no longer in their bot's ``symbols`` (N2) are ignored; tombstones
    (None) are skipped. Then every restored bot is swept at ``now_ms``: the wall
    clock, not the snapshot, says what day it is.

    ``block_unreadable`` (``[worker] on_unreadable_state = "halt"``): a bot with a
    record that does not decode or has an unknown version starts blocked by
    ``unreadable_state`` (issue 11) instead of fresh.
    """
    ignored: list[tuple[str, str]] = []
    restored: dict[str, BotRisk] = {}
    legacy: list[tuple[BotRisk, SymbolSnapshot]] = []
    chunks: dict[str, dict[str, dict[int, bytes]]] = {}
    """bot -> window -> chunk number -> entries"""
    refs: dict[str, dict[str, IdLogRef]] = {}
    unreadable: set[str] = set()
    for key, value in records.items():
        if value is None:
            continue
        chunk = parse_chunk_key(key)
        if chunk is not None:
            bot_id, window, number = chunk
            try:
                entries = decode_chunk(value)
                chunks.setdefault(bot_id, {}).setdefault(window, {})[number] = entries
            except SnapshotError as exc:
                ignored.append((key, str(exc)))
                unreadable.add(bot_id)
            continue
        try:
            bot_id, symbol, snap = decode_snapshot(key, value)
            bot = bot_of(bot_id)
            if symbol is not None:
                _check_restored_symbol(bot, symbol)
        except (SnapshotError, Rejected) as exc:
            ignored.append((key, str(exc)))
            if isinstance(exc, SnapshotError):
                unreadable.add(key.split("/", 1)[0])
            continue
        restored[bot_id] = bot
        if isinstance(snap, SymbolSnapshot) and symbol is not None:
            bot.load_symbol(symbol, snap, now_ms)
            if snap.recent_outcome_ids or snap.recent_fill_ids:
                legacy.append((bot, snap))
        elif isinstance(snap, PortfolioSnapshot):
            bot.restore_portfolio(snap, now_ms, out)
            if snap.id_logs is not None:
                refs[bot_id] = snap.id_logs
    for bot_id, bot_refs in refs.items():
        missing = restored[bot_id].ids.restore(bot_id, bot_refs, chunks.get(bot_id, {}))
        ignored.extend((key, "id chunk missing: newer entries kept") for key in missing)
    for bot, snap in legacy:  # after the portfolios, whose windows they join
        bot.ids.adopt(snap)
    for bot_id in sorted(unreadable) if block_unreadable else ():
        try:
            restored[bot_id] = _block_unreadable(bot_of(bot_id), now_ms, out)
        except Rejected:  # a bot no longer configured
            continue
    for bot in restored.values():
        bot.account.resum()  # sessions changed outside the event paths
        bot.sweep(now_ms, out)  # due at once: ticks every restored symbol once
    return ignored


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
