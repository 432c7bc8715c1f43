"""Gate transitions become halt/resume events here, and only here.

A symbol and a bot alike report "which of my gates block" as a signature
(``SymbolRisk.signature``, ``BotRisk.signature``); a path that may change state
takes the signature before, and this diffs it with the one after
(:func:`worker.core.gates.transitions`) into numbered ``HaltEvent``s
(``Holder.halt_event``), each carrying the blocks in force afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from worker.core.effects import Effects
from worker.core.gates import transitions
from worker.core.replay import Cause
from worker.core.symbol import SYMBOL_GATES, SymbolRisk
from worker.messages import Gate

if TYPE_CHECKING:
    from worker.core.bot import BotRisk

BOT_GATES: tuple[Gate, ...] = (
    "kill_switch",
    "manual_halt",
    "unreadable_state",
    "portfolio_daily_loss",
    "drawdown",
)
"""The bot-level gates, in the order ``BotRisk.signature`` reports them."""
LOSS = BOT_GATES.index("portfolio_daily_loss")


def emit(
    bot: BotRisk,
    holder: SymbolRisk | BotRisk,
    before: Sequence[bool],
    ts_ms: int,
    out: Effects,
    *,
    cause: Cause = None,
) -> None:
    """Events for the gates of ``holder`` (a symbol of ``bot``, or ``bot``) that flipped
    since ``before``; ``cause``: the operator command that caused them (C3)."""
    if isinstance(holder, SymbolRisk):
        gates: Sequence[Gate] = SYMBOL_GATES
        symbol: str | None = holder.symbol
        after: Sequence[bool] = holder.signature()
    else:
        gates, symbol, after = BOT_GATES, None, bot.signature()
        before = as_published(bot, before, after)
    if tuple(after) == tuple(before):
        return
    blocks = holder.blocks() if isinstance(holder, SymbolRisk) else bot.account_blocks()
    out.halts.extend(
        holder.halt_event(bot.bot, symbol, t, ts_ms, cause)
        for t in transitions(gates, before, after, blocks)
    )
    holder.touch(out)


def as_published(bot: BotRisk, before: Sequence[bool], after: Sequence[bool]) -> Sequence[bool]:
    """``before`` with the daily-loss gate as last published; ``after`` becomes that.

    Its live half moves with every fill, outcome and mark, and only the bot's
    own events and the clock diff it (a replay below the portfolio's watermark
    after a crash between the records of a persist, or a bot-wide reset, moves
    it unseen): diffing against what was published makes the next transition
    correct the halts topic instead of missing the change."""
    shown, bot.shown_loss = bot.shown_loss, after[LOSS]
    if shown is None:
        return before
    return (*before[:LOSS], shown, *before[LOSS + 1 :])
