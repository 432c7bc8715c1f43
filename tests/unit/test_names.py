"""Bot and symbol names (decision N1) checked by one compiled pattern.

The oracle is the check the pattern replaced (a Python loop over each name's
characters), kept here verbatim: the two must accept and reject exactly the same
names, with the same reason text.
"""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from worker.core.names import CONTROL_OR_FORMAT, MAX_NAME_CHARS, check_name
from worker.errors import Rejected

_OLD_UNSAFE = re.compile(r"[/\s]")


def old_problem(kind: str, name: str) -> str | None:
    """``check_name`` before the pattern (commit 293d23c): None when the name is valid."""
    if not 0 < len(name) <= 64:
        return "must be 1..64 characters"
    if _OLD_UNSAFE.search(name):
        return "contains '/' or whitespace"
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        return "contains control or format characters"
    if kind == "symbol" and name == "*":
        return "'*' names the whole bot"
    return None


def new_problem(kind: str, name: str) -> str | None:
    try:
        check_name(kind, name)
    except Rejected as exc:
        assert exc.reason == "invalid_name"
        return str(exc)
    return None


def old_detail(kind: str, name: str) -> str | None:
    problem = old_problem(kind, name)
    return None if problem is None else f"{kind} {name!r} {problem}"


# Names built from the characters that matter: each rule's edge, and everything else.
_interesting = st.sampled_from(
    [
        "/",
        "*",
        " ",
        "\t",
        "\n",
        "\x1f",
        "\x7f",
        "\x85",
        "\xa0",
        "\xad",
        "\u2028",
        "\u200b",
        "\u3000",
        "\ufeff",
        "\U000e0001",
        "\U000e007f",
        "\U000e0080",
        "\ud800",
        "a",
        "Z",
        "9",
    ]
)
_names = st.one_of(
    st.text(max_size=70),
    st.text(st.one_of(_interesting, st.characters()), max_size=70),
    st.lists(_interesting, min_size=1, max_size=3).map("".join),
)


@given(kind=st.sampled_from(["bot", "symbol"]), name=_names)
@example(kind="symbol", name="*")
@example(kind="bot", name="*")
@example(kind="symbol", name="")
@example(kind="symbol", name="x" * MAX_NAME_CHARS)
@example(kind="symbol", name="x" * (MAX_NAME_CHARS + 1))
@example(kind="symbol", name="x" * 70 + "/")
@example(kind="bot", name="BTC\u200bUSDT")
@example(kind="bot", name="BTC\u2028USDT")
@example(kind="bot", name="BTC\nUSDT")
def test_name_pattern_accepts_and_rejects_exactly_what_the_character_loop_did(
    kind: str, name: str
) -> None:
    assert new_problem(kind, name) == old_detail(kind, name)


def test_every_code_point_is_judged_as_the_character_loop_judged_it() -> None:
    """All 1.1M one-character names (the pattern's class is the whole rule per character)."""
    differ = [
        cp
        for cp in range(0x110000)
        if (new_problem("bot", chr(cp)) is None) != (old_problem("bot", chr(cp)) is None)
    ]
    assert differ == []


def test_control_or_format_ranges_are_this_pythons_unicode_categories() -> None:
    """Fails on a Python whose Unicode database changed Cc/Cf: regenerate the table."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)) in ("Cc", "Cf"):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    assert tuple(ranges) == CONTROL_OR_FORMAT


@pytest.mark.parametrize(
    ("kind", "name", "problem"),
    [
        ("symbol", "BTCUSDT", None),
        ("symbol", "ÉTH-€_1.5", None),
        ("bot", "*", None),
        ("symbol", "*", "'*' names the whole bot"),
        ("symbol", "", "must be 1..64 characters"),
        ("bot", "a/b", "contains '/' or whitespace"),
        ("bot", "a\u00adb", "contains control or format characters"),
    ],
)
def test_name_reasons(kind: str, name: str, problem: str | None) -> None:
    expected = None if problem is None else f"{kind} {name!r} {problem}"
    assert new_problem(kind, name) == expected
