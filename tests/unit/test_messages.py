"""Wire messages: decoding validates in the types and names the bad field."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from worker.messages import (
    GATES,
    ControlCommand,
    Fill,
    GateDecision,
    HaltEvent,
    OrderIntent,
    TradeOutcome,
)

TS = 1_750_000_000_000

FILL = {
    "fill_id": "f-1",
    "bot": "alpha",
    "symbol": "BTCUSDT",
    "side": "buy",
    "qty": 0.5,
    "price": 65000.0,
    "fee": 1.25,
    "ts": TS,
}
OUTCOME = {
    "outcome_id": "o-1",
    "bot": "alpha",
    "symbol": "BTCUSDT",
    "gross_pnl": -12.5,
    "fee": 0.5,
    "ts": TS,
}
INTENT = {
    "intent_id": "i-1",
    "bot": "alpha",
    "symbol": "BTCUSDT",
    "action": "open",
    "side": "sell",
    "qty": 2.0,
    "price": 100.0,
    "ts": TS,
}
CONTROL = {
    "command": "halt",
    "bot": "alpha",
    "symbol": None,
    "reason": "maintenance",
    "issued_by": "alice",
    "ts": TS,
    "sig": None,
}


def raw(base: dict[str, Any], **changes: Any) -> bytes:
    doc = {**base, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def with_literal(base: dict[str, Any], field: str, literal: str) -> bytes:
    """The message with ``field`` set to a raw JSON token (NaN, 1e400...)."""
    return raw(base, **{field: "__X__"}).replace(b'"__X__"', literal.encode())


def test_valid_messages_decode() -> None:
    f = msgspec.json.decode(raw(FILL), type=Fill)
    assert (f.side, f.qty, f.contract_value, f.intent_id) == ("buy", 0.5, 1.0, None)
    o = msgspec.json.decode(raw(OUTCOME), type=TradeOutcome)
    assert o.gross_pnl == -12.5
    i = msgspec.json.decode(raw(INTENT, contract_value=0.01), type=OrderIntent)
    assert i.notional == pytest.approx(2.0 * 100.0 * 0.01)
    c = msgspec.json.decode(raw(CONTROL), type=ControlCommand)
    assert c.symbol is None
    assert c.sig is None


def test_integer_json_numbers_are_accepted_for_floats() -> None:
    f = msgspec.json.decode(raw(FILL, qty=3, price=10, fee=0), type=Fill)
    assert (f.qty, f.price, f.fee) == (3.0, 10.0, 0.0)


def test_unknown_fields_are_ignored() -> None:
    f = msgspec.json.decode(raw(FILL, venue="binance"), type=Fill)
    assert f.fill_id == "f-1"


def test_round_trip_encode_decode() -> None:
    f = msgspec.json.decode(raw(FILL, intent_id="i-9", contract_value=0.1), type=Fill)
    assert msgspec.json.decode(msgspec.json.encode(f), type=Fill) == f


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "nan"])
@pytest.mark.parametrize(
    ("base", "kind", "field"),
    [(FILL, Fill, "qty"), (FILL, Fill, "price"), (OUTCOME, TradeOutcome, "gross_pnl")],
)
def test_nan_and_infinity_are_not_json(
    base: dict[str, Any], kind: type, field: str, literal: str
) -> None:
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(with_literal(base, field, literal), type=kind)


@pytest.mark.parametrize(
    ("base", "kind", "field"),
    [
        (FILL, Fill, "qty"),
        (FILL, Fill, "price"),
        (FILL, Fill, "fee"),
        (OUTCOME, TradeOutcome, "gross_pnl"),
        (INTENT, OrderIntent, "qty"),
    ],
)
@pytest.mark.parametrize("literal", ["1e400", "-1e400"])
def test_overflowing_numbers_are_out_of_range(
    base: dict[str, Any], kind: type, field: str, literal: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"\$\.{field}"):
        msgspec.json.decode(with_literal(base, field, literal), type=kind)


@pytest.mark.parametrize(
    ("base", "kind", "field", "value"),
    [
        (FILL, Fill, "qty", 0),
        (FILL, Fill, "qty", -1.0),
        (FILL, Fill, "price", 0.0),
        (FILL, Fill, "fee", -0.01),
        (FILL, Fill, "contract_value", 0.0),
        (OUTCOME, TradeOutcome, "fee", -1.0),
        (INTENT, OrderIntent, "qty", 0.0),
        (INTENT, OrderIntent, "price", -5.0),
        (FILL, Fill, "qty", 1e16),
        (FILL, Fill, "ts", 0),
        (FILL, Fill, "ts", TS * 1000),
    ],
)
def test_out_of_bounds_values_name_the_field(
    base: dict[str, Any], kind: type, field: str, value: float
) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"\$\.{field}`"):
        msgspec.json.decode(raw(base, **{field: value}), type=kind)


def test_zero_fee_is_allowed() -> None:
    assert msgspec.json.decode(raw(FILL, fee=0.0), type=Fill).fee == 0.0
    assert msgspec.json.decode(raw(OUTCOME, fee=0.0), type=TradeOutcome).fee == 0.0


@pytest.mark.parametrize(
    ("base", "kind", "field", "value"),
    [
        (FILL, Fill, "side", "hold"),
        (FILL, Fill, "side", "BUY"),
        (INTENT, OrderIntent, "action", "flip"),
        (INTENT, OrderIntent, "side", "short"),
        (CONTROL, ControlCommand, "command", "liquidate"),
    ],
)
def test_unknown_enum_values_name_the_field(
    base: dict[str, Any], kind: type, field: str, value: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"\$\.{field}`"):
        msgspec.json.decode(raw(base, **{field: value}), type=kind)


@pytest.mark.parametrize(
    ("base", "kind", "field", "value"),
    [
        (FILL, Fill, "qty", "1.0"),
        (FILL, Fill, "ts", 1.75e12),
        (FILL, Fill, "ts", "1750000000000"),
        (FILL, Fill, "bot", 7),
        (OUTCOME, TradeOutcome, "gross_pnl", None),
        (OUTCOME, TradeOutcome, "gross_pnl", True),
        (CONTROL, ControlCommand, "symbol", 1),
        (INTENT, OrderIntent, "qty", [1]),
    ],
)
def test_wrong_types_name_the_field(
    base: dict[str, Any], kind: type, field: str, value: Any
) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"\$\.{field}`"):
        msgspec.json.decode(raw(base, **{field: value}), type=kind)


@pytest.mark.parametrize(
    ("base", "kind", "field"),
    [
        (FILL, Fill, "fill_id"),
        (FILL, Fill, "fee"),
        (OUTCOME, TradeOutcome, "ts"),
        (INTENT, OrderIntent, "action"),
        (CONTROL, ControlCommand, "issued_by"),
    ],
)
def test_missing_required_fields_are_named(base: dict[str, Any], kind: type, field: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=f"`{field}`"):
        msgspec.json.decode(raw(base, **{field: ...}), type=kind)


@pytest.mark.parametrize("value", ["", "x" * 129])
def test_bot_and_symbol_name_lengths_are_constrained(value: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.bot`"):
        msgspec.json.decode(raw(FILL, bot=value), type=Fill)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.symbol`"):
        msgspec.json.decode(raw(OUTCOME, symbol=value), type=TradeOutcome)


def test_key_unsafe_names_decode_and_are_left_to_the_engine() -> None:
    """'/' and whitespace are rejected once per name by the engine, not per message."""
    assert msgspec.json.decode(raw(FILL, bot="a/b"), type=Fill).bot == "a/b"


def test_not_an_object_is_rejected() -> None:
    for payload in (b"[]", b"42", b'"x"', b"null"):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(payload, type=Fill)
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(b"{not json", type=Fill)


def test_outputs_encode_with_the_documented_fields() -> None:
    decision = GateDecision(
        intent_id="i", bot="b", symbol="s", allowed=False, gate="session_halt", reason="r", ts=TS
    )
    doc = json.loads(msgspec.json.encode(decision))
    assert set(doc) == {
        "intent_id",
        "bot",
        "symbol",
        "allowed",
        "gate",
        "reason",
        "ts",
        "reservation_expires_ts",
        "action",
        "side",
        "qty",
        "price",
    }
    assert doc["reservation_expires_ts"] is None
    halt = HaltEvent(
        event_id="b/*/manual_halt/1",
        bot="b",
        symbol=None,
        kind="halted",
        gate="manual_halt",
        reason="r",
        ts=TS,
    )
    doc = json.loads(msgspec.json.encode(halt))
    assert {"event_id", "bot", "symbol", "kind", "gate", "reason", "ts", "until_ts"} <= set(doc)


def test_gate_names_match_the_spec() -> None:
    assert GATES == (
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
    )
