"""The data paths: a trade outcome or a fill applied to one bot (SPEC §3-§4).

Each passes the replay guards first (its topic's id window, then the symbol's
and the portfolio's own watermarks, decisions D1-D2), books what it realised
on the symbol, re-checks the symbol's gates, then judges the daily-loss latch
on the running account net — only above the portfolio's own watermark.
Hot path (one call per event): small helpers are inlined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.core.effects import Effects, Origin
from worker.core.symbol import SymbolRisk
from worker.messages import Fill, TradeOutcome

if TYPE_CHECKING:
    from worker.core.bot import BotRisk


def apply_outcome(bot: BotRisk, o: TradeOutcome, origin: Origin | None, out: Effects) -> None:
    # Hot path (one call per outcome): small helpers are inlined.
    ts = o.ts
    sym = bot.symbols.get(o.symbol) or _created(bot, o.symbol, origin)
    fresh = bot.fresh(origin)  # the portfolio's own watermark (D2)
    if not _admit(bot, sym, bot.ids.outcomes.first(o.outcome_id, origin, fresh), origin, out):
        out.skipped += 1
        return
    session, breaker = sym.session, sym.breaker
    was_halted, tripped_before, day_before = (
        session.halted,
        breaker.tripped_at,
        session.last_reset_day,
    )
    gross, fee = o.gross_pnl, o.fee
    sym.gate_seq += 1  # the gate records change where the state does (``Holder.gate_seq``)
    if session.record_close(gross, fee, ts) is not None:
        bot.account.fold(day_before, session.last_reset_day, gross - fee)
        if fresh:  # counted above the bot's own watermark, as all its state (D2)
            bot.gate_seq += 1  # the account net moved
    if gross - fee < 0.0:
        _record_loss(bot, sym, ts, tripped_before)
    sym.touch(out)
    _after_change(
        bot,
        sym,
        was_halted=was_halted,
        tripped_before=tripped_before,
        ts_ms=ts,
        out=out,
        portfolio_fresh=fresh,
    )


def apply_fill(bot: BotRisk, f: Fill, origin: Origin | None, out: Effects) -> None:
    ts = f.ts
    sym = bot.symbols.get(f.symbol) or _created(bot, f.symbol, origin)
    fresh = bot.fresh(origin)  # the portfolio's own watermark (D2)
    if not _admit(bot, sym, bot.ids.fills.first(f.fill_id, origin, fresh), origin, out):
        out.skipped += 1
        return
    # Only above the bot's own watermark: the portfolio is its own record, so a replay
    # after a crash must not release again what the persisted portfolio released.
    account = bot.account
    if f.intent_id is not None and fresh and account.consume(f):
        bot.touch(out)
    signed_qty = f.qty if f.side == "buy" else -f.qty
    trip = sym.position.apply(signed_qty, f.price, f.fee, f.contract_value)
    account.track(sym)
    sym.gate_seq += 1  # the position moved, and with it the account's figures
    if fresh:
        bot.gate_seq += 1
    sym.touch(out)
    bot.touch(out)
    closed_net = trip.closed_net
    booked = trip.fees or trip.gross
    if bot.settings.pnl_source != "fills" or (closed_net is None and not booked):
        # Nothing booked: no gate can change, but the latch may still be judged.
        if fresh:
            _latch(bot, ts, out)
        return
    session, breaker = sym.session, sym.breaker
    was_halted, tripped_before, day_before = (
        session.halted,
        breaker.tripped_at,
        session.last_reset_day,
    )
    moved = booked and session.book(trip.gross, trip.fees, ts)
    # A round trip ends even when its last leg realises nothing by itself.
    if closed_net is not None:
        session.count_trade(closed_net, ts)
        if closed_net < 0.0:
            _record_loss(bot, sym, ts, tripped_before)
    if moved or session.last_reset_day != day_before:
        account.fold(day_before, session.last_reset_day, trip.gross - trip.fees)
    _after_change(
        bot,
        sym,
        was_halted=was_halted,
        tripped_before=tripped_before,
        ts_ms=ts,
        out=out,
        portfolio_fresh=fresh,
    )


def _created(bot: BotRisk, name: str, origin: Origin | None) -> SymbolRisk:
    """A symbol first seen by a fill or outcome; live, it remembers the bot's watermarks.

    Events at or below them happened before it existed, so a bot-wide reset
    replayed after a crash must not reach it (D2). During a replay (the bot
    already saw ``origin``) it is a symbol whose record the crash lost: it
    takes every reset after its creation, as it did live.
    """
    sym = bot.symbol(name)
    if origin is not None and bot.applied.get(origin.source, -1) < origin.offset:
        sym.born = dict(bot.applied)
    return sym


def _admit(bot: BotRisk, sym: SymbolRisk, first: bool, origin: Origin | None, out: Effects) -> bool:
    """Replay guards of a fill/outcome: its topic's id window, then the symbol's watermark.

    ``first`` is the window's verdict, taken for every record, even one the
    symbol's watermark then skips, so a replay after a crash rebuilds the
    window exactly (D1). The window is part of the portfolio record, which
    must therefore be persisted again.
    """
    bot.touch(out)
    return first and sym.fresh(origin)


def _after_change(
    bot: BotRisk,
    sym: SymbolRisk,
    *,
    was_halted: bool,
    tripped_before: int | None,
    ts_ms: int,
    out: Effects,
    portfolio_fresh: bool,
) -> None:
    """Halt/resume events for what an event flipped, then the portfolio latch.

    The latch is the portfolio's state: an event at or below the portfolio's
    watermark (replayed after a crash that persisted the portfolio but not
    this symbol) must not re-judge it against a partly caught-up account (D2).
    """
    if sym.session.halted is not was_halted or sym.breaker.tripped_at != tripped_before:
        before = (sym.manual_halt is not None, was_halted, tripped_before is not None)
        bot.emit(sym, before, ts_ms, out)
    if portfolio_fresh:
        _latch(bot, ts_ms, out)


def _latch(bot: BotRisk, ts_ms: int, out: Effects) -> None:
    if bot.account.latch(ts_ms):  # it was not latched before
        bot.gate_seq += 1
        bot.touch(out)
        bot.emit(bot, (bot.manual_halt is not None, False), ts_ms, out)


def _record_loss(bot: BotRisk, sym: SymbolRisk, ts_ms: int, tripped_before: int | None) -> None:
    breaker = sym.breaker
    tripped = breaker.record_loss(ts_ms // 1000)
    if tripped or tripped_before is None or breaker.tripped_at != tripped_before:
        # Unless the loss was dropped by a trip that is still on, a deadline moved.
        bot.deadline = sym.wake(bot.deadline)
