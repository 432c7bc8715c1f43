"""Raw input records → validated events, or :class:`Rejected` with a reason.

The byte-level checks of SPEC §6 (size, JSON, types, ranges, key = bot) that
need no state. Everything that depends on configuration or state (unknown bot,
symbol list, pnl source, signatures, clock skew) is the engine's.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec

from worker.config import TopicsConfig
from worker.errors import Rejected
from worker.messages import ControlCommand, Event, Fill, OrderIntent, TradeOutcome

InputKind = Literal["fill", "outcome", "intent", "control"]
T = TypeVar("T")


def input_kinds(topics: TopicsConfig) -> dict[str, InputKind]:
    """Input topic name → the kind of message it carries."""
    return {
        topics.fills: "fill",
        topics.outcomes: "outcome",
        topics.intents: "intent",
        topics.control: "control",
    }


_DECODERS: dict[InputKind, msgspec.json.Decoder[Event]] = {
    "fill": msgspec.json.Decoder(Fill),
    "outcome": msgspec.json.Decoder(TradeOutcome),
    "intent": msgspec.json.Decoder(OrderIntent),
    "control": msgspec.json.Decoder(ControlCommand),
}


def decode_input(kind: InputKind, key: bytes | None, value: bytes | None, max_bytes: int) -> Event:
    """Decode one input record; raises Rejected naming what is wrong."""
    event = decode_value(_DECODERS[kind], kind, value, max_bytes)
    if key is None:
        raise Rejected("key_mismatch", "record has no key (the key must be the bot id)")
    if key != event.bot.encode():
        raise Rejected(
            "key_mismatch",
            f"key {key[:64]!r} differs from bot {event.bot!r}",
        )
    return event


def decode_value(
    decoder: msgspec.json.Decoder[T], kind: str, value: bytes | None, max_bytes: int
) -> T:
    """The byte-level checks of one record's value (none, size, JSON, types, ranges), shared
    by the inputs and the marks; raises Rejected with the SPEC §8 reason."""
    if value is None:
        raise Rejected("invalid_message", "record has no value")
    if len(value) > max_bytes:
        raise Rejected("oversize", f"value of {len(value)} bytes exceeds {max_bytes}")
    try:
        return decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise Rejected("invalid_message", f"invalid {kind}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise Rejected("malformed_json", f"{kind} is not valid JSON: {exc}") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        # msgspec raises these, not DecodeError, for invalid UTF-8 inside a string
        # and for nesting deeper than the interpreter's recursion limit (~1000
        # levels: a 2 KB record). Uncaught, they would stop the worker on the same
        # uncommitted record after every restart.
        raise Rejected("malformed_json", f"{kind} is not valid JSON: {exc}") from None
