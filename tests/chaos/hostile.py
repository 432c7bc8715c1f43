"""A corpus of hostile input records, one of each kind, with what the worker must do.

Used twice: record by record through ``decode_input`` + ``RiskEngine.apply``
(``tests/unit/test_hostile_input.py``), and as a compact burst through a
running worker on a real broker (``tests/integration/test_reliability_hostile.py``).

Every case says which outcomes are acceptable: dead-lettered under one of the
listed reasons, or ``APPLIED`` (valid input with documented semantics: unknown
fields are ignored, a repeated JSON key keeps its last value, a duplicate id is
dropped, an event of an earlier day does not move today's gates, ...).
Anything raised that is not ``Rejected`` is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from worker.inbound import InputKind
from worker.messages import ControlCommand
from worker.signing import sign

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hostile"

APPLIED = "applied"
"""Not rejected: applied (or dropped as a duplicate) with documented semantics."""

SECRET = "hostile-secret"
MAX_BYTES = 64 * 1024
MAX_SKEW_MS = 5 * 60_000
DAY_MS = 86_400_000

BODY = f"""
[control]
secret = "{SECRET}"
replay_window_ms = 300000

[worker]
max_message_bytes = {MAX_BYTES}
max_future_skew_ms = {MAX_SKEW_MS}

[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 3
window_secs = 14400
cooldown_secs = 3600

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]
[bots.alpha.portfolio]
max_daily_loss = -500.0
max_gross_exposure = 1000000.0

[bots.fb]
symbols = ["BTCUSDT"]
pnl_source = "fills"

[bots.any]
"""
"""Bots: ``alpha`` (outcomes, two symbols), ``fb`` (books from fills), ``any`` (any symbol)."""

MALFORMED = frozenset({"malformed_json"})
INVALID = frozenset({"invalid_message"})
UNPARSEABLE = frozenset({"malformed_json", "invalid_message"})


@dataclass(frozen=True)
class Case:
    name: str
    kind: InputKind
    key: bytes | None
    value: bytes | None
    expect: frozenset[str]
    """Acceptable outcomes: rejection reasons, and/or ``APPLIED``."""

    @property
    def rejected_only(self) -> bool:
        return APPLIED not in self.expect


_enc = msgspec.json.encode


def outcome(at: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "outcome_id": "h-o",
        "bot": "alpha",
        "symbol": "BTCUSDT",
        "gross_pnl": -400.0,
        "fee": 0.5,
        "ts": at,
    }
    base.update(fields)
    return base


def fill(at: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "fill_id": "h-f",
        "bot": "fb",
        "symbol": "BTCUSDT",
        "side": "sell",
        "qty": 1.0,
        "price": 100.0,
        "fee": 0.1,
        "ts": at,
    }
    base.update(fields)
    return base


def intent(at: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "intent_id": "h-i",
        "bot": "alpha",
        "symbol": "BTCUSDT",
        "action": "open",
        "side": "buy",
        "qty": 1.0,
        "price": 100.0,
        "ts": at,
    }
    base.update(fields)
    return base


def command(at: int, secret: str | None = SECRET, **fields: Any) -> ControlCommand:
    base: dict[str, Any] = {
        "command": "halt",
        "bot": "alpha",
        "symbol": None,
        "reason": "hostile",
        "issued_by": "mallory",
        "ts": at,
    }
    base.update(fields)
    cmd = ControlCommand(**base)
    if secret is not None:
        cmd = msgspec.structs.replace(cmd, sig=sign(cmd, secret.encode()))
    return cmd


def _with(value: dict[str, Any], raw_field: str, raw: bytes) -> bytes:
    """``value`` as JSON with one field's value replaced by raw bytes (any literal)."""
    marker = "__RAW__"
    text = _enc({**value, raw_field: marker})
    return text.replace(_enc(marker), raw)


def _extra(value: dict[str, Any], raw: bytes, name: bytes = b"x_unknown") -> bytes:
    """``value`` as JSON with one unknown field holding raw bytes."""
    return _enc(value)[:-1] + b',"' + name + b'":' + raw + b"}"


def corpus(now_ms: int, *, max_bytes: int = MAX_BYTES) -> list[Case]:
    """Every case, for a worker whose clock reads ``now_ms`` and whose size limit is ``max_bytes``.

    ``ts`` of the otherwise-valid records is one minute before ``now_ms``.
    Cases bigger than ``max_bytes`` must be dead-lettered as ``oversize``
    whatever else is wrong with them.
    """
    ts = now_ms - 60_000
    o = outcome(ts)
    cases: list[Case] = []

    def add(
        name: str,
        value: bytes | None,
        expect: frozenset[str] | str,
        *,
        kind: InputKind = "outcome",
        key: bytes | None = b"alpha",
    ) -> None:
        wanted = frozenset({expect}) if isinstance(expect, str) else expect
        if value is not None and len(value) > max_bytes:
            wanted = frozenset({"oversize"})
        cases.append(Case(name, kind, key, value, wanted))

    # -- not JSON at all ---------------------------------------------------------
    for path in sorted(FIXTURES.glob("*.bin")):
        add(f"file {path.name}", path.read_bytes(), MALFORMED)
    add("empty value", b"", MALFORMED)
    add("null value (tombstone)", None, INVALID)
    add("whitespace only", b" \n\t ", MALFORMED)
    valid = _enc(o)
    add("truncated to half", valid[: len(valid) // 2], MALFORMED)
    add("truncated by one byte", valid[:-1], MALFORMED)
    add("only an opening brace", b"{", MALFORMED)
    add("trailing garbage", valid + b"x", MALFORMED)
    add("two objects", valid + valid, MALFORMED)
    add("top-level array", b"[" + valid + b"]", INVALID)
    add("top-level string", b'"alpha"', INVALID)
    add("top-level number", b"42", INVALID)
    add("top-level null", b"null", INVALID)
    add("top-level true", b"true", INVALID)

    # -- deep nesting -------------------------------------------------------------
    for depth in (1_000, 10_000, 100_000):
        add(
            f"{depth} nested arrays in an unknown field",
            _extra(o, b"[" * depth + b"]" * depth),
            MALFORMED,
        )
    add(
        "5000 nested objects in an unknown field",
        _extra(o, b'{"a":' * 5_000 + b"1" + b"}" * 5_000),
        MALFORMED,
    )
    add("100000 unclosed arrays", _extra(o, b"[" * 100_000), MALFORMED)
    add("100000 nested arrays as the value", b"[" * 100_000 + b"]" * 100_000, UNPARSEABLE)
    add("nested arrays in gross_pnl", _with(o, "gross_pnl", b"[" * 5000 + b"]" * 5000), INVALID)

    # -- huge strings and numbers ----------------------------------------------------
    add("id of 257 characters", _enc(outcome(ts, outcome_id="i" * 257)), INVALID)
    add("1 MiB id", _enc(outcome(ts, outcome_id="i" * (1 << 20))), INVALID)
    add("bot of 129 characters", _enc(outcome(ts, bot="b" * 129)), INVALID, key=b"b" * 129)
    add(
        "60 KB string in an unknown field",
        _extra(outcome(ts, outcome_id="h-big-note"), _enc("n" * 60_000)),
        APPLIED,
    )
    add("2 MiB string in an unknown field", _extra(o, _enc("n" * (2 << 20))), APPLIED)
    add(
        "2000 unknown fields",
        _enc({**outcome(ts, outcome_id="h-many-fields"), **{f"k{i}": i for i in range(2000)}}),
        APPLIED,
    )
    add("gross_pnl 1e400", _with(o, "gross_pnl", b"-1e400"), UNPARSEABLE)
    add("gross_pnl with 400 digits", _with(o, "gross_pnl", b"-1" + b"0" * 400), UNPARSEABLE)
    add("gross_pnl beyond the money bound", _with(o, "gross_pnl", b"-1e16"), INVALID)
    add("ts with 30 digits", _with(o, "ts", b"1" + b"0" * 29), INVALID)
    add("ts as a float", _with(o, "ts", str(float(ts)).encode()), INVALID)
    add("ts as a string", _with(o, "ts", _enc(str(ts))), INVALID)
    add("ts negative", _with(o, "ts", b"-1"), INVALID)
    add("fill qty 1e300", _enc(fill(ts, qty=1e300)), INVALID, kind="fill", key=b"fb")
    add(
        "negative zero fee (equal to 0)",
        _with(outcome(ts, outcome_id="h-neg-zero"), "fee", b"-0.0"),
        APPLIED,
    )
    add("gross_pnl 1e-400 (underflows to 0)", _with(o, "gross_pnl", b"1e-400"), APPLIED)

    # -- NaN and infinities ----------------------------------------------------------
    for literal in (b"NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"-inf"):
        add(f"gross_pnl {literal.decode()} literal", _with(o, "gross_pnl", literal), MALFORMED)
    add('gross_pnl "NaN" string', _with(o, "gross_pnl", b'"NaN"'), INVALID)
    add("fill price Infinity", _with(fill(ts), "price", b"Infinity"), MALFORMED, kind="fill")

    # -- wrong types and missing fields -------------------------------------------------
    add("gross_pnl as a string", _with(o, "gross_pnl", b'"-400"'), INVALID)
    add("gross_pnl true", _with(o, "gross_pnl", b"true"), INVALID)
    add("gross_pnl null", _with(o, "gross_pnl", b"null"), INVALID)
    add("gross_pnl an object", _with(o, "gross_pnl", b'{"v":-400}'), INVALID)
    add("bot as a number", _with(o, "bot", b"123"), INVALID)
    add("symbol null", _with(o, "symbol", b"null"), INVALID)
    add("symbol a list", _with(o, "symbol", b'["BTCUSDT"]'), INVALID)
    add("missing bot", _enc({k: v for k, v in o.items() if k != "bot"}), INVALID)
    add("missing ts", _enc({k: v for k, v in o.items() if k != "ts"}), INVALID)
    add("empty object", b"{}", INVALID)
    add(
        '"Bot" instead of "bot"',
        _enc({**{k: v for k, v in o.items() if k != "bot"}, "Bot": "alpha"}),
        INVALID,
    )
    add("side BUY", _enc(fill(ts, side="BUY")), INVALID, kind="fill", key=b"fb")
    add("intent action hold", _enc(intent(ts, action="hold")), INVALID, kind="intent")
    add(
        "control command shutdown",
        _enc(command(ts, secret=None, command="shutdown")),
        INVALID,
        kind="control",
    )
    add(
        "fill contract_value null",
        _enc(fill(ts, contract_value=None)),
        INVALID,
        kind="fill",
        key=b"fb",
    )

    # -- out-of-range quantities -----------------------------------------------------------
    for field_name, value in (("qty", 0.0), ("qty", -1.0), ("price", 0.0), ("price", -5.0)):
        add(
            f"fill {field_name} {value}",
            _enc(fill(ts, **{field_name: value})),
            INVALID,
            kind="fill",
            key=b"fb",
        )
    add("fill fee -1", _enc(fill(ts, fee=-1.0)), INVALID, kind="fill", key=b"fb")
    add(
        "fill contract_value 0", _enc(fill(ts, contract_value=0.0)), INVALID, kind="fill", key=b"fb"
    )
    add("intent qty 0", _enc(intent(ts, qty=0.0)), INVALID, kind="intent")
    add("intent price -1", _enc(intent(ts, price=-1.0)), INVALID, kind="intent")
    add("outcome fee -0.01", _enc(outcome(ts, fee=-0.01)), INVALID)
    add("empty outcome_id", _enc(outcome(ts, outcome_id="")), INVALID)
    add("empty bot", _enc(outcome(ts, bot="")), INVALID, key=b"")

    # -- unknown bots and symbols, unsafe names -----------------------------------------
    add("unknown bot", _enc(outcome(ts, bot="ghost")), frozenset({"unknown_bot"}), key=b"ghost")
    add("unknown symbol", _enc(outcome(ts, symbol="DOGEUSDT")), frozenset({"unknown_symbol"}))
    add(
        "symbol with a slash",
        _enc(outcome(ts, bot="any", symbol="BTC/USDT")),
        frozenset({"invalid_name"}),
        key=b"any",
    )
    add(
        "symbol with a space",
        _enc(outcome(ts, bot="any", symbol="BTC USDT")),
        frozenset({"invalid_name"}),
        key=b"any",
    )
    add(
        "symbol with U+2028",
        _enc(outcome(ts, bot="any", symbol="BTC\u2028USDT")),
        frozenset({"invalid_name"}),
        key=b"any",
    )
    add(
        "bot with a slash",
        _enc(outcome(ts, bot="al/pha")),
        frozenset({"invalid_name"}),
        key=b"al/pha",
    )
    add(
        "path traversal symbol",
        _enc(outcome(ts, bot="any", symbol="../../etc")),
        frozenset({"invalid_name"}),
        key=b"any",
    )
    add(
        "symbol with NUL (a control character: invalid)",
        _enc(outcome(ts, bot="any", symbol="BTC\u0000\U0001f4b8", outcome_id="h-nul-name")),
        frozenset({"invalid_name"}),
        key=b"any",
    )
    add(
        "symbol with an emoji (no '/', whitespace or control character: a valid name)",
        _enc(outcome(ts, bot="any", symbol="BTC\U0001f4b8", outcome_id="h-odd-name")),
        APPLIED,
        key=b"any",
    )

    # -- key != bot --------------------------------------------------------------------
    add("key of another bot", valid, frozenset({"key_mismatch"}), key=b"fb")
    add("no key", valid, frozenset({"key_mismatch"}), key=None)
    add("empty key", valid, frozenset({"key_mismatch"}), key=b"")
    add("key with invalid UTF-8", valid, frozenset({"key_mismatch"}), key=b"alpha\xff")
    add("key with a trailing space", valid, frozenset({"key_mismatch"}), key=b"alpha ")
    add("key in upper case", valid, frozenset({"key_mismatch"}), key=b"ALPHA")

    # -- pnl source -----------------------------------------------------------------------
    add(
        "outcome for a fills-booked bot",
        _enc(outcome(ts, bot="fb")),
        frozenset({"pnl_source"}),
        key=b"fb",
    )

    # -- time ----------------------------------------------------------------------------
    add("ts one day ahead", _enc(outcome(ts, ts=now_ms + DAY_MS)), frozenset({"future_event"}))
    add(
        "ts a minute beyond the allowed skew",
        _enc(outcome(ts, ts=now_ms + MAX_SKEW_MS + 60_000)),
        frozenset({"future_event"}),
    )
    add("ts in 2200", _enc(outcome(ts, ts=7_258_118_400_000)), INVALID)
    add("ts in 1999", _enc(outcome(ts, ts=915_148_800_000)), INVALID)
    add(
        "outcome on 2000-01-02 (far past, valid)",
        _enc(outcome(ts, ts=946_771_200_000, outcome_id="h-far-past", gross_pnl=-10_000.0)),
        APPLIED,
    )
    add(
        "fill on 2000-01-02 (far past, valid)",
        _enc(fill(ts, ts=946_771_200_000, fill_id="h-far-past-fill", bot="alpha")),
        APPLIED,
        kind="fill",
    )
    add(
        "ts within the allowed skew",
        _enc(outcome(ts, ts=now_ms + MAX_SKEW_MS // 2, outcome_id="h-skew", gross_pnl=1.0)),
        APPLIED,
    )

    # -- duplicates -------------------------------------------------------------------
    add("duplicate id, same bytes", _enc(outcome(ts, outcome_id="h-seed-loss")), APPLIED)
    add(
        "duplicate id, different content",
        _enc(outcome(ts, outcome_id="h-seed-loss", gross_pnl=-9_999.0)),
        APPLIED,
    )
    add(
        "repeated JSON key (last value wins)",
        valid.replace(b'"gross_pnl":-400.0', b'"gross_pnl":-400.0,"gross_pnl":1.0').replace(
            b'"h-o"', b'"h-repeated-key"'
        ),
        APPLIED,
    )

    # -- control commands --------------------------------------------------------------
    signed = command(ts)
    add(
        "unsigned control",
        _enc(command(ts, secret=None)),
        frozenset({"bad_signature"}),
        kind="control",
    )
    add(
        "control signed with another secret",
        _enc(command(ts, secret="not-the-secret")),
        frozenset({"bad_signature"}),
        kind="control",
    )
    add(
        "signed control, reason tampered",
        _enc(msgspec.structs.replace(signed, reason="tampered")),
        frozenset({"bad_signature"}),
        kind="control",
    )
    add(
        "halt signature on a resume",
        _enc(msgspec.structs.replace(signed, command="resume")),
        frozenset({"bad_signature"}),
        kind="control",
    )
    add(
        "signed control from an hour ago (replay)",
        _enc(command(now_ms - 3_600_000)),
        frozenset({"bad_signature"}),
        kind="control",
    )
    add(
        "signature in upper-case hex",
        _enc(msgspec.structs.replace(signed, sig=(signed.sig or "").upper())),
        frozenset({"bad_signature"}),
        kind="control",
    )
    add(
        "non-ASCII signature",
        _enc(msgspec.structs.replace(signed, sig="\u00e9" * 64)),
        frozenset({"bad_signature"}),
        kind="control",
    )
    add(
        "signature of 300 characters",
        _enc(msgspec.structs.replace(signed, sig="a" * 300)),
        INVALID,
        kind="control",
    )
    add(
        "signed control for an unknown symbol",
        _enc(command(ts, symbol="DOGEUSDT")),
        frozenset({"unknown_symbol"}),
        kind="control",
    )
    add(
        "signed halt of one symbol (valid)",
        _enc(command(ts, symbol="ETHUSDT", reason="valid")),
        APPLIED,
        kind="control",
    )

    # -- size -------------------------------------------------------------------------
    padding = max_bytes + 1 - len(_extra(o, b'""'))
    add("one byte over the limit", _extra(o, _enc("p" * max(0, padding))), APPLIED)
    return cases


def rejected_cases(now_ms: int, *, max_bytes: int = MAX_BYTES) -> list[Case]:
    """The cases that must be dead-lettered whatever else happens (for the broker test)."""
    return [c for c in corpus(now_ms, max_bytes=max_bytes) if c.rejected_only]
