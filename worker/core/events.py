"""The data paths: a trade outcome or a fill applied to one bot (SPEC §3-§4).

Each passes the replay guards first (its topic's id window, then the symbol's
and the portfolio's own watermarks, decisions D1-D2), books what it realised
on the symbol, re-checks the symbol's gates, then judges the daily-loss latch
on the running account net (with the open positions at their marks) and the
drawdown — only above the portfolio's own watermark. A mark (:func:`apply_mark`)
re-values a held position the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.core.dedupe import IdWindow
from worker.core.effects import Effects, Origin
from worker.core.session import MS_PER_DAY
from worker.core.symbol import SymbolRisk
from worker.messages import Fill, TradeOutcome

if TYPE_CHECKING:
    from worker.core.bot import BotRisk


def apply_outcome(bot: BotRisk, o: TradeOutcome, origin: Origin | None, out: Effects) -> None:
    """A closed trade: booked on its symbol's session (a loss enters the breaker's window)."""
    admitted = _admit(bot, o.symbol, bot.ids.outcomes, o.outcome_id, origin=origin, out=out)
    if admitted is None:
        return
    sym, fresh = admitted
    session = sym.session
    before = (session.halted, sym.breaker.tripped_at)
    gross, fee = o.gross_pnl, o.fee
    booked = session.record_close(gross, fee, o.ts) is not None  # None: a late event
    cooled = gross - fee < 0.0 and _record_loss(bot, sym, o.ts, before[1])
    sym.gate_seq += 1  # the gate records change where the state does (``Holder.gate_seq``)
    out.dirty_symbols.add(sym.key)  # ``touch``, inlined (hot path)
    delta = gross - fee if booked else None
    _settle(bot, sym, before, delta, ts_ms=o.ts, out=out, fresh=fresh, cooled=cooled)


def apply_fill(bot: BotRisk, f: Fill, origin: Origin | None, out: Effects) -> None:
    """A fill: moves the position, releases what it filled of its intent's reservation (R2)
    and, when the bot books PnL from fills, books what it realised (a finished round trip
    counts as one trade)."""
    admitted = _admit(bot, f.symbol, bot.ids.fills, f.fill_id, origin=origin, out=out)
    if admitted is None:
        return
    sym, fresh = admitted
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
    out.dirty_symbols.add(sym.key)
    closed_net = trip.closed_net
    booked = trip.fees or trip.gross
    if bot.settings.pnl_source != "fills" or (closed_net is None and not booked):
        # Nothing booked: only a loss judged at the mark can halt the session (the
        # position moved); the bot's latches may still be judged.
        if not sym.session.halted and sym.judge_unrealised(f.ts):
            bot.emit(sym, _without(sym.signature(), _SESSION), f.ts, out)
        if fresh:
            judge_equity(bot, f.ts, out)
        return
    session = sym.session
    before = (session.halted, sym.breaker.tripped_at)
    moved = booked and session.book(trip.gross, trip.fees, f.ts)
    # A round trip ends even when its last leg realises nothing by itself.
    cooled = False
    if closed_net is not None:
        session.count_trade(closed_net, f.ts)
        if closed_net < 0.0:
            cooled = _record_loss(bot, sym, f.ts, before[1])
    delta = trip.gross - trip.fees if moved else None
    _settle(bot, sym, before, delta, ts_ms=f.ts, out=out, fresh=fresh, cooled=cooled)


def _admit(
    bot: BotRisk,
    symbol: str,
    window: IdWindow,
    event_id: str,
    *,
    origin: Origin | None,
    out: Effects,
) -> tuple[SymbolRisk, bool] | None:
    """Replay guards of a fill/outcome: its topic's id window, then the symbol's watermark.

    Returns the symbol and whether the event is above the portfolio's own
    watermark (D2); None, counted as skipped, for a replay or a re-send. The
    window's verdict is taken for every record, even one the symbol's watermark
    then skips, so a replay after a crash rebuilds the window exactly (D1); the
    window is part of the portfolio record, which must therefore be persisted again.
    """
    sym = bot.symbols.get(symbol) or _created(bot, symbol, origin)
    out.dirty_bots.add(bot.bot)  # ``touch``, inlined (hot path)
    if origin is None:
        if window.first(event_id, None):
            return sym, True
        out.skipped += 1
        return None
    # ``Holder.fresh`` of the bot, then of the symbol, inlined (hot path: twice per event).
    source, offset = origin
    applied = bot.applied
    last = applied.get(source)
    fresh = last is None or offset > last
    if fresh:
        applied[source] = offset
    if window.first(event_id, origin, fresh):
        applied = sym.applied
        last = applied.get(source)
        if last is None or offset > last:
            applied[source] = offset
            return sym, fresh
    out.skipped += 1
    return None


def _settle(
    bot: BotRisk,
    sym: SymbolRisk,
    before: tuple[bool, int | None],
    booked: float | None,
    *,
    ts_ms: int,
    out: Effects,
    fresh: bool,
    cooled: bool,
) -> None:
    """After the symbol booked ``booked`` (None: nothing): the running account net, the
    halt/resume events of what flipped, then the portfolio latch.

    The latch is the portfolio's state: an event at or below the portfolio's
    watermark (replayed after a crash that persisted the portfolio but not
    this symbol) must not re-judge it against a partly caught-up account (D2).
    ``cooled``: the event started the symbol's after-loss cooldown.
    """
    was_halted, tripped_before = before
    if booked is not None:
        bot.account.book(sym)
        if fresh:  # counted above the bot's own watermark, as all its state (D2)
            bot.gate_seq += 1  # the account net moved
    if not was_halted and sym.session.config.include_unrealised:  # (hot path: test it here)
        sym.judge_unrealised(ts_ms)
    if cooled or sym.session.halted is not was_halted or sym.breaker.tripped_at != tripped_before:
        flags = (
            sym.controls.kill is not None,
            sym.manual_halt is not None,
            was_halted,
            tripped_before is not None,
            sym.controls.cooldown.blocking and not cooled,
        )
        bot.emit(sym, flags, ts_ms, out)
    if fresh:
        judge_equity(bot, ts_ms, out)


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


def judge_equity(bot: BotRisk, ts_ms: int, out: Effects) -> None:
    """After an event of the bot at ``ts_ms`` (above the portfolio's watermark, or a
    mark): latch the daily loss (on equity with ``include_unrealised``) and the
    drawdown when reached, publishing what started blocking. Only ever latches (T1).
    Hot path: the drawdown costs nothing unless configured."""
    account = bot.account
    loss = account.latch(ts_ms)
    drawdown = bot.controls.drawdown
    fell = False
    if drawdown.limit and not drawdown.halted:
        fell = drawdown.observe(account.account_net(bot.day) + account.unrealised(), ts_ms)
    if loss or fell:
        bot.gate_seq += 1
        bot.touch(out)
    # The daily-loss gate blocks when latched *or* breached live (H10-1). An event of
    # the bot's day was just judged: it blocks live only if latched. A late one judged
    # nothing: the live figure decides. Either may end a breach carried past the
    # rollover, a late one start one: diffed against what was published.
    late = ts_ms // MS_PER_DAY < bot.day
    blocking = account.portfolio.halted or (late and bot.loss_blocking())
    if loss or fell or bot.shown_loss is not blocking:
        before = bot.signature()
        if loss:
            before = _without(before, _LOSS)
        if fell:
            before = _without(before, _DRAWDOWN)
        bot.emit(bot, before, ts_ms, out)


def apply_mark(bot: BotRisk, sym: SymbolRisk, ts_ms: int, out: Effects) -> None:
    """A new mark of ``sym``, which holds a position: its unrealised PnL moved, and with
    it the gate records, the session's loss with ``include_unrealised`` and the bot's
    equity limits. Marks have no offset in the bot's partitions: always judged."""
    bot.account.track(sym)  # re-value this position alone (the account's sums are exact)
    sym.gate_seq += 1
    sym.touch(out)
    if not sym.session.halted and sym.judge_unrealised(ts_ms):
        bot.emit(sym, _without(sym.signature(), _SESSION), ts_ms, out)
    bot.gate_seq += 1
    bot.touch(out)
    judge_equity(bot, ts_ms, out)


_SESSION = 2
"""Index of ``session_halt`` in ``SYMBOL_GATES``."""
_LOSS, _DRAWDOWN = 3, 4
"""Indices of ``portfolio_daily_loss`` and ``drawdown`` in ``BOT_GATES``."""


def _without(signature: tuple[bool, ...], index: int) -> tuple[bool, ...]:
    """``signature`` with the gate at ``index`` not blocking: what it was before the
    event that just made it block."""
    return (*signature[:index], False, *signature[index + 1 :])


def _record_loss(bot: BotRisk, sym: SymbolRisk, ts_ms: int, tripped_before: int | None) -> bool:
    """A losing trade: the breaker's window and the after-loss cooldown; True if the
    cooldown started blocking."""
    breaker = sym.breaker
    tripped = breaker.record_loss(ts_ms // 1000)
    cooled = sym.controls.cooldown.record_loss(ts_ms)
    if tripped or cooled or tripped_before is None or breaker.tripped_at != tripped_before:
        # Unless the loss was dropped by a trip that is still on, a deadline moved.
        bot.deadline = sym.wake(bot.deadline)
    return cooled
