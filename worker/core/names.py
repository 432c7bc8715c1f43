"""Bot and symbol names: what may become part of a key or an event id (decision N1)."""

from __future__ import annotations

import re
import unicodedata

from worker.errors import Rejected

_UNSAFE_NAME = re.compile(r"[/\s]")
MAX_NAME_CHARS = 64


def check_name(kind: str, name: str) -> None:
    """Names become parts of ``/``-separated keys and event ids: reject before they
    create state (N1). ``*`` names the whole bot in event ids, so no symbol may use it;
    control and format characters would display as something else (or nothing)."""
    problem = None
    if not 0 < len(name) <= MAX_NAME_CHARS:
        problem = f"must be 1..{MAX_NAME_CHARS} characters"
    elif _UNSAFE_NAME.search(name):
        problem = "contains '/' or whitespace"
    elif any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        problem = "contains control or format characters"
    elif kind == "symbol" and name == "*":
        problem = "'*' names the whole bot"
    if problem is not None:
        raise Rejected("invalid_name", f"{kind} {name!r} {problem}")
