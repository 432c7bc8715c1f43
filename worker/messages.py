"""Wire messages (SPEC §3) as msgspec Structs.

Validation lives in the types: msgspec enforces it in C while decoding, so a
bad message costs one failed decode and never reaches the engine. Bounds on
every float reject NaN and ±inf (JSON has no NaN literal and an overflowing
literal such as ``1e400`` fails the range check). Unknown fields are allowed so
producers can add fields without breaking the worker.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec

# -- constrained scalars -------------------------------------------------------

_MAX_MONEY = 1e15
_MAX_QTY = 1e15

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Name = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        description=(
            "Bot id or symbol: 1..64 characters, no '/', whitespace or control characters;"
            " a symbol may not be '*'."
        ),
    ),
]
"""Bot ids and symbols. ``/`` separates snapshot key parts and ``*`` names a whole
bot in event ids, so the engine rejects such names (and control characters) when it
first creates their state — a check paid once per name rather than on every message."""
IntentId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[!#-\[\]-~]+(?!\n)$",  # (?!\n): Python's $ also matches before a final \n
        description="1..64 printable ASCII characters except space, '\"' and '\\' (a UUID fits).",
    ),
]
"""An order's id. Bounded in length and characters because every outstanding
reservation is persisted under it, and such an id needs no escaping in JSON:
with ``max_reservations_per_bot`` this bounds the portfolio snapshot well under
the 1 MiB record limit."""
Reason = Annotated[str, msgspec.Meta(max_length=256)]
"""An operator's reason: bounded, it is copied into halt events, gate records and snapshots."""
Positive = Annotated[float, msgspec.Meta(gt=0.0, le=_MAX_QTY)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_MONEY)]
Money = Annotated[float, msgspec.Meta(ge=-_MAX_MONEY, le=_MAX_MONEY)]
EpochMs = Annotated[int, msgspec.Meta(ge=946_684_800_000, le=4_102_444_800_000)]
"""Epoch milliseconds between 2000-01-01 and 2100-01-01; anything else is garbage."""

Side = Literal["buy", "sell"]
Action = Literal["open", "close"]
Command = Literal["halt", "resume", "reset_breaker", "reset_session", "kill", "reset_state"]
"""``kill``: the kill switch (every intent denied, closes included) until ``resume``;
``reset_state``: lift ``unreadable_state`` from a bot (bot target only)."""
HaltKind = Literal["halted", "resumed", "killed"]
"""``killed``: the kill switch engaged (every intent denied, closes included; the event
asks execution services to cancel working orders). It is lifted by a ``resumed``."""
Gate = Literal[
    "manual_halt",
    "session_halt",
    "circuit_breaker",
    "portfolio_daily_loss",
    "max_concurrent_positions",
    "gross_exposure",
    "no_position",
    "reduce_only_exceeds_position",
    "duplicate_intent_id",
    "expired",
    "kill_switch",
    "max_order_qty",
    "max_order_notional",
    "price_collar",
    "stale_mark",
    "order_rate",
    "duplicate_order",
    "unreadable_state",
    "loss_cooldown",
    "drawdown",
    "daily_notional",
]
GATES: tuple[Gate, ...] = get_args(Gate)
"""Every gate, in ``Gate``'s order (one list, so the two cannot drift): append only
(intent-id windows persist gate indices)."""


# -- inputs --------------------------------------------------------------------


class Fill(msgspec.Struct, frozen=True):
    """An execution report: moves the position, books PnL for fills-booked bots."""

    fill_id: Id
    bot: Name
    symbol: Name
    side: Side
    qty: Positive
    price: Positive
    fee: NonNegative
    ts: EpochMs
    contract_value: Positive = 1.0
    intent_id: Id | None = None


class TradeOutcome(msgspec.Struct, frozen=True):
    """One closed trade, as the seed's ``record_trade_outcome(symbol, gross, fee)``."""

    outcome_id: Id
    bot: Name
    symbol: Name
    gross_pnl: Money
    fee: NonNegative
    ts: EpochMs


class OrderIntent(msgspec.Struct, frozen=True):
    """A pre-trade check request: may this order add (or remove) risk?"""

    intent_id: IntentId
    bot: Name
    symbol: Name
    action: Action
    side: Side
    qty: Positive
    price: Positive
    ts: EpochMs
    contract_value: Positive = 1.0

    @property
    def notional(self) -> float:
        return self.qty * self.price * self.contract_value


class Mark(msgspec.Struct, frozen=True):
    """A mark price (``[topics] marks``, key = symbol): market-wide, not per bot.

    Every worker keeps the latest per symbol; it values open positions
    (unrealised PnL, equity, exposure) and anchors the price collar.
    """

    symbol: Name
    price: Positive
    ts: EpochMs


class ControlCommand(msgspec.Struct, frozen=True):
    """An operator command; ``symbol=None`` addresses the whole bot."""

    command: Command
    bot: Name
    symbol: Name | None
    reason: Reason
    issued_by: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    ts: EpochMs
    sig: Annotated[str, msgspec.Meta(max_length=256)] | None = None


# -- outputs -------------------------------------------------------------------


class GateDecision(msgspec.Struct, frozen=True):
    """The answer to an OrderIntent, published on ``risk.decisions``.

    ``action``, ``side``, ``qty`` and ``price`` echo the intent answered, so a
    client can check that a decision under its ``intent_id`` answers *its*
    order and not another one sent under the same id. They default to None so
    decisions written before they existed still decode.
    """

    intent_id: str
    bot: str
    symbol: str
    allowed: bool
    gate: Gate | None
    reason: str
    ts: int
    reservation_expires_ts: int | None = None
    action: Action | None = None
    side: Side | None = None
    qty: float | None = None
    price: float | None = None


class Block(msgspec.Struct, frozen=True):
    """One reason entries are blocked, with when it lifts by itself (if ever)."""

    gate: Gate
    reason: str
    until_ts: int | None = None


class GateState(msgspec.Struct, frozen=True):
    """Per-symbol gate record, compacted under ``<bot>/gate/<symbol>``."""

    bot: str
    symbol: str
    entries_allowed: bool
    blocks: list[Block]
    net_pnl: float
    trades: int
    recent_losses: int
    position_qty: float
    updated_ts: int
    seq: int
    unrealised_pnl: float | None = None
    """The open position valued at ``mark`` (0 when flat); None from workers before marks."""
    mark: float | None = None
    """The latest mark of the symbol, None when none was received."""


class AccountGateState(msgspec.Struct, frozen=True):
    """Account-level gate record, compacted under ``<bot>/gate``."""

    bot: str
    entries_allowed: bool
    blocks: list[Block]
    account_net_pnl: float
    open_positions: int
    gross_exposure: float
    updated_ts: int
    seq: int
    unrealised_pnl: float | None = None
    """Sum over the bot's open positions at their marks; None from workers before marks."""
    equity: float | None = None
    """The bot's equity for the UTC day: account net PnL + unrealised PnL."""


class HaltEvent(msgspec.Struct, frozen=True):
    """A gate starting or stopping to block; ``event_id`` is deterministic."""

    event_id: str
    bot: str
    symbol: str | None
    kind: HaltKind
    gate: Gate
    reason: str
    ts: int
    until_ts: int | None = None
    issued_by: str | None = None
    """The operator, for events caused by a control command."""
    cancel_open_orders: bool = False
    """True on a ``killed`` event: execution services cancel the target's working
    orders (CME's kill switch)."""


Event = Fill | TradeOutcome | OrderIntent | ControlCommand
"""Everything the engine consumes."""

SCHEMA_TYPES: tuple[type[msgspec.Struct], ...] = (
    Fill,
    TradeOutcome,
    OrderIntent,
    ControlCommand,
    Mark,
    GateDecision,
    GateState,
    AccountGateState,
    HaltEvent,
)
