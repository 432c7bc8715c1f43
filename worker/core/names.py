"""Bot and symbol names: what may become part of a key or an event id (decision N1)."""

from __future__ import annotations

import re

from worker.errors import Rejected

MAX_NAME_CHARS = 64

CONTROL_OR_FORMAT: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F),
    (0x007F, 0x009F),
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)
"""Code point ranges of Unicode categories Cc and Cf (Unicode 14.0, Python 3.11's
``unicodedata``), written out because deriving them walks 1.1M code points at import;
``tests/unit/test_names.py`` derives them again and fails when the database differs."""

_UNSAFE_NAME = re.compile(r"[/\s]")
_VALID_NAME = re.compile(
    "[^/\\s"
    + "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in CONTROL_OR_FORMAT)
    + f"]{{1,{MAX_NAME_CHARS}}}"
)
"""Every rule of N1 but the symbol ``*`` as one compiled match: a restore checks 100k
names, and a Python loop over each name's characters cost ~2 % of it."""


def check_name(kind: str, name: str) -> None:
    """Names become parts of ``/``-separated keys and event ids: reject before they
    create state (N1). ``*`` names the whole bot in event ids, so no symbol may use it;
    control and format characters would display as something else (or nothing)."""
    if _VALID_NAME.fullmatch(name) is None or (kind == "symbol" and name == "*"):
        raise Rejected("invalid_name", f"{kind} {name!r} {_problem(name)}")


def _problem(name: str) -> str:
    """Why a rejected name is invalid, the first rule it breaks in N1's order."""
    if not 0 < len(name) <= MAX_NAME_CHARS:
        return f"must be 1..{MAX_NAME_CHARS} characters"
    if _UNSAFE_NAME.search(name):
        return "contains '/' or whitespace"
    if _VALID_NAME.fullmatch(name) is None:
        return "contains control or format characters"
    return "'*' names the whole bot"
