"""Persisted state read and written field by field, generically.

A primitive's persisted Struct (``SessionPnlSnapshot``, ``PositionSnapshot``,
``CircuitBreakerSnapshot``) names exactly the attributes of the live object it
persists (``msgspec.field(name=...)`` keeps the seed's JSON names where they
differ), so one pair of functions serves them all: a field added to a Struct is
persisted and restored without another line to forget.

Restoring 100k symbols runs these 500k times, so each Struct type gets its own
straight-line copy function, generated once from its field list (a loop of
``setattr`` cost ~15% of a whole restore).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)

_capture: dict[type[Any], Callable[[object], Any]] = {}
_adopt: dict[type[Any], Callable[[object, Any], None]] = {}


def _value(source: str, field: msgspec.structs.FieldInfo) -> str:
    """``source.<name>``, copied when a container: a snapshot must not change with the
    state, nor the state with a snapshot restored twice."""
    origin = typing.get_origin(field.type) or field.type
    expr = f"{source}.{field.name}"
    return f"{origin.__name__}({expr})" if origin in (list, dict) else expr


def _compile(kind: type[msgspec.Struct]) -> None:
    fields = msgspec.structs.fields(kind)
    assert all(f.name.isidentifier() for f in fields)
    args = ", ".join(f"{f.name}={_value('obj', f)}" for f in fields)
    sets = "".join(f"\n    obj.{f.name} = {_value('snap', f)}" for f in fields) or "\n    pass"
    scope: dict[str, Any] = {"kind": kind}
    exec(  # source built from a Struct's own field names, checked above
        f"def capture(obj):\n    return kind({args})\n\ndef adopt(obj, snap):{sets}\n", scope
    )
    _capture[kind] = scope["capture"]
    _adopt[kind] = scope["adopt"]


def capture(obj: object, kind: type[S]) -> S:
    """The Struct ``kind`` of ``obj``: each field read from the attribute of its name."""
    if kind not in _capture:
        _compile(kind)
    result: S = _capture[kind](obj)
    return result


def adopt(obj: object, snap: msgspec.Struct) -> None:
    """Set each attribute of ``obj`` named by a field of ``snap`` to that field's value."""
    kind = type(snap)
    if kind not in _adopt:
        _compile(kind)
    _adopt[kind](obj, snap)
