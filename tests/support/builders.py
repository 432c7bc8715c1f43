"""Shared builders for the pure-core unit tests (no broker, no clock)."""

from __future__ import annotations

import itertools
from typing import Any

from worker.config import Config, load_config
from worker.core import Effects, Origin, RiskEngine
from worker.messages import (
    AccountGateState,
    ControlCommand,
    Fill,
    GateState,
    OrderIntent,
    Side,
    TradeOutcome,
)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000

DAY0 = 20_254
"""An arbitrary UTC day (2025-06-15)."""
MIDNIGHT = DAY0 * DAY_MS
T0 = MIDNIGHT + 9 * HOUR_MS
"""09:00 UTC on DAY0: the default event and wall-clock time of the tests."""

_ids = itertools.count(1)


def next_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def config(toml: str = "", **env: str) -> Config:
    """A Config from TOML text with only the given ``RISKGATE_*`` environment."""
    return load_config(text=toml, env=env)


OPEN_CONFIG = """
[defaults]
accept_unknown_bots = true
"""


def engine(toml: str = OPEN_CONFIG) -> RiskEngine:
    return RiskEngine(config(toml))


def outcome(
    gross: float,
    fee: float = 0.0,
    *,
    ts: int = T0,
    bot: str = "alpha",
    symbol: str = "BTCUSDT",
    outcome_id: str | None = None,
) -> TradeOutcome:
    return TradeOutcome(
        outcome_id=outcome_id or next_id("o"),
        bot=bot,
        symbol=symbol,
        gross_pnl=gross,
        fee=fee,
        ts=ts,
    )


def fill(
    side: Side,
    qty: float,
    price: float,
    fee: float = 0.0,
    *,
    ts: int = T0,
    bot: str = "alpha",
    symbol: str = "BTCUSDT",
    contract_value: float = 1.0,
    intent_id: str | None = None,
    fill_id: str | None = None,
) -> Fill:
    return Fill(
        fill_id=fill_id or next_id("f"),
        bot=bot,
        symbol=symbol,
        side=side,
        qty=qty,
        price=price,
        fee=fee,
        ts=ts,
        contract_value=contract_value,
        intent_id=intent_id,
    )


def intent(
    action: str = "open",
    side: Side = "buy",
    qty: float = 1.0,
    price: float = 100.0,
    *,
    ts: int = T0,
    bot: str = "alpha",
    symbol: str = "BTCUSDT",
    intent_id: str | None = None,
    contract_value: float = 1.0,
) -> OrderIntent:
    return OrderIntent(
        intent_id=intent_id or next_id("i"),
        bot=bot,
        symbol=symbol,
        action=action,  # type: ignore[arg-type]
        side=side,
        qty=qty,
        price=price,
        ts=ts,
        contract_value=contract_value,
    )


def control(
    command: str,
    *,
    symbol: str | None = "BTCUSDT",
    bot: str = "alpha",
    ts: int = T0,
    reason: str = "ops",
    issued_by: str = "alice",
    sig: str | None = None,
) -> ControlCommand:
    return ControlCommand(
        command=command,  # type: ignore[arg-type]
        bot=bot,
        symbol=symbol,
        reason=reason,
        issued_by=issued_by,
        ts=ts,
        sig=sig,
    )


def apply_all(
    eng: RiskEngine, events: list[Any], now_ms: int | None = None, out: Effects | None = None
) -> Effects:
    """Apply events in order into one Effects; ``now_ms`` defaults to each event's ts."""
    out = out if out is not None else Effects()
    for event in events:
        eng.apply(event, event.ts if now_ms is None else now_ms, out=out)
    return out


def origin(offset: int, source: str = "trading.outcomes/0") -> Origin:
    return Origin(source, offset)


def account_record(e: RiskEngine, now: int = T0, bot: str = "alpha") -> AccountGateState:
    """The bot's account gate record as the worker would publish it at ``now``."""
    dirty = Effects()
    dirty.dirty_bots.add(bot)
    (state,) = e.gate_states(dirty, now)
    assert isinstance(state, AccountGateState)
    return state


def symbol_record(
    e: RiskEngine, symbol: str = "BTCUSDT", now: int = T0, bot: str = "alpha"
) -> GateState:
    """One symbol's gate record as the worker would publish it at ``now``."""
    dirty = Effects()
    dirty.dirty_symbols.add((bot, symbol))
    (state,) = e.gate_states(dirty, now)
    assert isinstance(state, GateState)
    return state
