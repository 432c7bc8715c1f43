"""Immutable pictures of a bot's state for readers outside the core (operator tools).

Built from the same gate records the worker publishes, plus the few figures
only a human asks about; holding one never keeps the live state reachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

from worker.messages import AccountGateState, GateState

if TYPE_CHECKING:
    from worker.core.bot import BotRisk


class SymbolView(NamedTuple):
    gate: GateState
    """The symbol's gate record as the worker would publish it now."""
    wins: int
    losses: int
    breakevens: int
    cooldown_until_secs: int | None
    """When the breaker's cooldown ends (Unix seconds); None when not tripped."""


class BotView(NamedTuple):
    bot: str
    account: AccountGateState
    symbols: Mapping[str, SymbolView]
    """By symbol, sorted (read-only)."""


def bot_view(bot: BotRisk, now_ms: int) -> BotView:
    symbols = {}
    for name in sorted(bot.symbols):
        sym = bot.symbols[name]
        s = sym.session
        until = sym.breaker.until_secs
        symbols[name] = SymbolView(sym.gate_state(now_ms), s.wins, s.losses, s.breakevens, until)
    return BotView(bot.bot, bot.account_gate_state(now_ms), MappingProxyType(symbols))
