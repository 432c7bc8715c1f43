"""Persisted state read and written field by field, generically.

A primitive's persisted Struct (``SessionPnlSnapshot``, ``PositionSnapshot``,
``CircuitBreakerSnapshot``) names exactly the attributes of the live object it
persists (``msgspec.field(name=...)`` keeps the seed's JSON names where they
differ), so one pair of functions serves them all: a field added to a Struct is
persisted and restored without another line to forget.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


def _copy(value: Any) -> Any:
    """Containers are copied: a snapshot must not change with the state, nor the reverse."""
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def capture(obj: object, kind: type[S]) -> S:
    """The Struct ``kind`` of ``obj``: each field read from the attribute of its name."""
    return kind(**{name: _copy(getattr(obj, name)) for name in kind.__struct_fields__})


def adopt(obj: object, snap: msgspec.Struct) -> None:
    """Set each attribute of ``obj`` named by a field of ``snap`` to that field's value."""
    for name in snap.__struct_fields__:
        setattr(obj, name, _copy(getattr(snap, name)))
