"""Hostile input through the worker's own path: ``decode_input`` then ``RiskEngine.apply``.

Each record either is ``Rejected`` with a reason (the worker dead-letters it)
and changes nothing - the set of bots, every symbol snapshot and every
portfolio snapshot are compared before and after - or is valid input applied
with documented semantics:

* unknown fields are ignored (whatever their size or nesting, within the size limit);
* a JSON key given twice keeps its last value (as Python, JavaScript and Go read it);
* a duplicate event id is dropped (state unchanged, counted as skipped), even
  with different content: ids are the producer's idempotency keys;
* an event from an earlier UTC day (far past, but after 2000-01-01) moves no
  gate of today: the session ignores it, the breaker's window holds it only until
  the wall clock's next sweep evicts it (only the wall clock evicts);
  a fill still moves the position (positions are not per day);
* names may hold any character but ``/``, whitespace and control or format
  characters (they become key parts and are shown to operators), up to 64.

Anything raised that is not ``Rejected`` is a bug: in the worker it would
stop the poll loop on a record it can never commit, i.e. a crash loop.

``pytest -s`` prints how many inputs were tried.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chaos.hostile import (
    APPLIED,
    BODY,
    MAX_BYTES,
    SECRET,
    Case,
    command,
    corpus,
    fill,
    intent,
    outcome,
)
from tests.support.builders import HOUR_MS, T0
from worker.config import TopicsConfig, load_config
from worker.core import Effects, Origin, RiskEngine
from worker.errors import Rejected
from worker.inbound import InputKind, decode_input
from worker.kafka.records import DEADLETTER_MAX_BYTES, deadletter_record
from worker.messages import ControlCommand, Fill, OrderIntent, TradeOutcome

NOW = T0 + 3 * HOUR_MS
"""12:00 UTC: the engine's wall clock in every test here."""
TS = NOW - 60_000
BIG = 16 << 20
"""A size limit no case reaches: every record gets to the decoder."""

TRIED: Counter[str] = Counter()
"""Inputs tried, by outcome (``rejected:<reason>``, ``applied``)."""

_enc = msgspec.json.encode
_TOPIC = {
    "fill": "trading.fills",
    "outcome": "trading.outcomes",
    "intent": "trading.intents",
    "control": "risk.control",
}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    rejected = sum(n for k, n in TRIED.items() if k.startswith("rejected:"))
    reasons = ", ".join(
        f"{k.split(':', 1)[1]} {n}" for k, n in sorted(TRIED.items()) if k.startswith("rejected:")
    )
    print(
        f"\nhostile inputs tried: {sum(TRIED.values())}"
        f" (rejected {rejected}: {reasons}; applied {TRIED['applied']})"
    )


# -- the worker's path ----------------------------------------------------------------


def state(engine: RiskEngine) -> dict[str, Any]:
    """Everything a rejected record must leave untouched."""
    return {
        "bots": sorted(engine.bots),
        "symbols": {
            f"{b}/risk/{s}": msgspec.to_builtins(sym.snapshot())
            for b, bot in engine.bots.items()
            for s, sym in bot.symbols.items()
        },
        "portfolios": {
            f"{b}/portfolio": msgspec.to_builtins(bot.portfolio_snapshot())
            for b, bot in engine.bots.items()
        },
    }


def _floats(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, list):
        for v in value:
            yield from _floats(v)


class Path:
    """``decode_input`` + ``RiskEngine.apply`` with per-topic offsets, as the worker calls them."""

    def __init__(self, engine: RiskEngine, *, max_bytes: int = MAX_BYTES, now: int = NOW) -> None:
        self.engine = engine
        self.max_bytes = max_bytes
        self.now = now
        self.offsets: Counter[str] = Counter()

    def feed(
        self, kind: InputKind, key: bytes | None, value: bytes | None, *, count: bool = True
    ) -> Effects | Rejected:
        """Returns the effects, or the Rejected (after checking nothing changed)."""
        before = state(self.engine)
        source = f"{_TOPIC[kind]}/0"
        offset = self.offsets[source]
        self.offsets[source] += 1
        try:
            event = decode_input(kind, key, value, self.max_bytes)
            out = self.engine.apply(event, self.now, Origin(source, offset))
        except Rejected as exc:
            if count:
                TRIED[f"rejected:{exc.reason}"] += 1
            assert exc.reason, "a rejection needs a reason (metrics, dead-letter headers)"
            assert state(self.engine) == before, f"rejected ({exc.reason}) but state changed"
            return exc
        if count:
            TRIED["applied"] += 1
        after = state(self.engine)
        bad = [x for x in _floats(after) if not math.isfinite(x)]
        assert not bad, f"non-finite numbers reached the state: {bad}"
        return out

    def case(self, case: Case) -> Effects | Rejected:
        return self.feed(case.kind, case.key, case.value)


def engine(body: str = BODY) -> RiskEngine:
    return RiskEngine(load_config(text=body, env={}))


def seeded(max_bytes: int = MAX_BYTES) -> Path:
    """A path into an engine that already holds some state of every kind."""
    path = Path(engine(), max_bytes=max_bytes)
    sig = command(TS, symbol="BTCUSDT", bot="any", reason="seed")
    seeds: list[tuple[InputKind, bytes, bytes]] = [
        ("outcome", b"alpha", _enc(outcome(TS, outcome_id="h-seed-loss", gross_pnl=-5.0))),
        (
            "outcome",
            b"alpha",
            _enc(outcome(TS, outcome_id="h-seed-win", symbol="ETHUSDT", gross_pnl=3.0)),
        ),
        ("fill", b"fb", _enc(fill(TS, fill_id="h-seed-open", side="buy", qty=2.0))),
        ("fill", b"alpha", _enc(fill(TS, fill_id="h-seed-eth", bot="alpha", symbol="ETHUSDT"))),
        (
            "outcome",
            b"any",
            _enc(outcome(TS, outcome_id="h-seed-any", bot="any", symbol="XYZUSDT")),
        ),
        ("intent", b"alpha", _enc(intent(TS, intent_id="h-seed-intent"))),
        ("control", b"any", _enc(sig)),
    ]
    for kind, key, value in seeds:
        assert not isinstance(path.feed(kind, key, value, count=False), Rejected), value
    return path


def symbol(path: Path, bot: str, name: str) -> dict[str, Any]:
    snap = msgspec.to_builtins(path.engine.bots[bot].symbols[name].snapshot())
    return {k: snap[k] for k in ("session_pnl", "circuit_breaker", "position", "manual_halt")}


# -- the corpus ---------------------------------------------------------------------

CASES = corpus(NOW)
CASES_UNBOUNDED = corpus(NOW, max_bytes=BIG)


def _check_semantics(path: Path, case: Case, before: dict[str, Any], out: Effects) -> None:
    """What "applied with documented semantics" means for the cases that are not rejected."""
    name = case.name
    btc_before = before["symbols"]["alpha/risk/BTCUSDT"]
    btc_after = symbol(path, "alpha", "BTCUSDT")
    keep = ("session_pnl", "circuit_breaker", "position", "manual_halt")
    if name.startswith("duplicate id"):
        assert out.skipped == 1 and not out.halts
        assert btc_after == {k: btc_before[k] for k in keep}
    elif name.startswith("outcome on 2000-01-02"):
        # An earlier day's loss moves no gate today: session and breaker unchanged
        # once the wall clock's sweep evicted it from the window.
        assert not out.halts
        assert not path.engine.sweep(path.now).halts
        assert symbol(path, "alpha", "BTCUSDT") == {k: btc_before[k] for k in keep}
        # The latch is unchanged; only the replay guards (watermarks, the bot's
        # outcome-id window) recorded the event.
        guards = {"applied_offsets", "outcome_ids"}
        after = state(path.engine)["portfolios"]["alpha/portfolio"]
        was = before["portfolios"]["alpha/portfolio"]
        assert {k: v for k, v in after.items() if k not in guards} == {
            k: v for k, v in was.items() if k not in guards
        }
    elif name.startswith("fill on 2000-01-02"):
        assert not out.halts
        assert btc_after["session_pnl"] == btc_before["session_pnl"]
        assert btc_after["circuit_breaker"] == btc_before["circuit_breaker"]
        assert btc_after["position"]["qty"] == -1.0  # positions are not per day
    elif name.startswith("repeated JSON key"):
        realised = btc_after["session_pnl"]["realised"] - btc_before["session_pnl"]["realised"]
        assert realised == 1.0  # the last value of the key
    elif name.startswith("signed halt of one symbol"):
        halt = {"reason": "valid", "issued_by": "mallory", "ts": NOW - 60_000}
        assert symbol(path, "alpha", "ETHUSDT")["manual_halt"] == halt
    elif name.startswith("symbol with an emoji"):
        assert "BTC\U0001f4b8" in path.engine.bots["any"].symbols
    else:  # a valid outcome, whatever unknown fields or odd literals came with it
        trades = btc_after["session_pnl"]["trades"] - btc_before["session_pnl"]["trades"]
        assert trades == 1, name


def _run_case(case: Case, max_bytes: int) -> None:
    path = seeded(max_bytes)
    before = state(path.engine)
    result = path.case(case)
    if isinstance(result, Rejected):
        assert result.reason in case.expect, f"{case.name}: rejected as {result.reason}: {result}"
    else:
        assert APPLIED in case.expect, f"{case.name}: applied, expected {set(case.expect)}"
        _check_semantics(path, case, before, result)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case_at_the_configured_size_limit(case: Case) -> None:
    _run_case(case, MAX_BYTES)


@pytest.mark.parametrize("case", CASES_UNBOUNDED, ids=[c.name for c in CASES_UNBOUNDED])
def test_corpus_case_reaching_the_decoder_whatever_its_size(case: Case) -> None:
    _run_case(case, BIG)


def test_the_corpus_has_one_of_each_kind() -> None:
    reasons = {r for c in CASES for r in c.expect}
    assert reasons == {
        "malformed_json",
        "invalid_message",
        "oversize",
        "key_mismatch",
        "unknown_bot",
        "unknown_symbol",
        "invalid_name",
        "pnl_source",
        "future_event",
        "bad_signature",
        APPLIED,
    }
    assert len(CASES) == 117


def test_all_corpus_cases_in_one_engine_in_a_row() -> None:
    """The whole corpus into one engine: state only ever moves on the applied cases."""
    path = seeded()
    for case in CASES:
        result = path.case(case)
        if isinstance(result, Rejected):
            assert result.reason in case.expect, case.name
        else:
            assert APPLIED in case.expect, case.name


# -- regressions (defects this suite found) -------------------------------------------


def test_regression_deep_nesting_is_rejected_not_a_recursion_error() -> None:
    # msgspec raises RecursionError (not DecodeError) past ~1000 levels: a 2 KB
    # record used to escape decode_input and stop the worker on every restart.
    value = _enc(outcome(TS))[:-1] + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert len(value) < 4096
    with pytest.raises(Rejected) as info:
        decode_input("outcome", b"alpha", value, MAX_BYTES)
    assert info.value.reason == "malformed_json"


def test_regression_invalid_utf8_is_rejected_not_a_unicode_error() -> None:
    # msgspec raises UnicodeDecodeError for invalid UTF-8 inside a string.
    value = _enc(outcome(TS)).replace(b"BTCUSDT", b"BTC\xe9USDT")
    with pytest.raises(Rejected) as info:
        decode_input("outcome", b"alpha", value, MAX_BYTES)
    assert info.value.reason == "malformed_json"


def test_regression_a_rejected_event_of_a_new_bot_creates_no_state() -> None:
    # The engine used to create a bot's state before checking the rest of the
    # event: with accept_unknown_bots every rejected record of a new bot id left
    # a bot behind (memory, and heartbeat gate records published for it).
    eng = engine("[defaults]\naccept_unknown_bots = true\n[bots.fb]\npnl_source = 'fills'\n")
    path = Path(eng)
    for i in range(50):
        ahead = _enc(outcome(TS, bot=f"rnd{i}", ts=NOW + 3_600_000))
        assert isinstance(path.feed("outcome", f"rnd{i}".encode(), ahead), Rejected)
    source = _enc(outcome(TS, bot="fb"))
    assert isinstance(path.feed("outcome", b"fb", source), Rejected)
    halt = _enc(command(TS, secret=None, bot="configured-later"))
    assert not isinstance(path.feed("control", b"configured-later", halt), Rejected)
    assert sorted(eng.bots) == ["configured-later"]


def test_regression_non_ascii_signature_is_rejected_not_a_type_error() -> None:
    # hmac.compare_digest raises TypeError for a str with non-ASCII characters:
    # anyone able to write to the control topic could stop the worker for good.
    for sig in ("\u0080", "é" * 64, "\U0001f4b8"):
        value = _enc(msgspec.structs.replace(command(TS, secret=None), sig=sig))
        result = seeded().feed("control", b"alpha", value)
        assert isinstance(result, Rejected) and result.reason == "bad_signature"


@pytest.mark.parametrize(
    ("key", "value", "headers", "dropped"),
    [
        (b"alpha", b"v" * (2 << 20), [("h", b"x")], {"value"}),
        (b"alpha", b"v" * 10, [("h", b"x" * (2 << 20))], {"headers"}),
        (b"k" * (2 << 20), b"v", [("h", b"x")], {"key"}),
        (b"alpha", b"v" * 999_000, [("h", b"x" * 999_000)], {"headers"}),
        (b"k" * 600_000, b"v" * 700_000, [("h", b"x" * 800_000)], {"headers", "value"}),
    ],
)
def test_regression_a_dead_letter_never_exceeds_what_a_producer_sends(
    key: bytes, value: bytes, headers: list[tuple[str, bytes]], dropped: set[str]
) -> None:
    # A bad record bigger than 1 MiB (brokers accept them when configured to) used
    # to be copied whole into its dead letter; the worker's producer refused it
    # (MessageSizeTooLargeError) and the send was retried forever: stuck for good.
    record = deadletter_record(
        TopicsConfig(),
        source_topic="trading.outcomes",
        partition=0,
        offset=7,
        key=key,
        value=value,
        headers=headers,
        error_class="oversize",
        message="too big",
    )
    size = len(record.key or b"") + len(record.value or b"")
    size += sum(len(k) + len(v) for k, v in record.headers or ())
    assert size <= DEADLETTER_MAX_BYTES
    marks = {k.split(".")[2]: int(v) for k, v in record.headers or () if k.endswith(".dropped")}
    assert set(marks) == dropped
    sizes = {
        "value": len(value),
        "key": len(key),
        "headers": sum(len(k) + len(v) for k, v in headers),
    }
    assert marks == {part: sizes[part] for part in dropped}
    assert dict(record.headers or ())["riskgate.errors.offset"] == b"7"


def test_a_dead_letter_under_the_bound_is_untouched() -> None:
    record = deadletter_record(
        TopicsConfig(),
        source_topic="trading.outcomes",
        partition=0,
        offset=7,
        key=b"alpha",
        value=b"v" * 900_000,
        headers=[("trace", b"1")],
        error_class="oversize",
        message="too big",
    )
    assert (record.key, record.value) == (b"alpha", b"v" * 900_000)
    assert (record.headers or [])[0] == ("trace", b"1")


def test_regression_dead_letter_keeps_a_null_key_null() -> None:
    record = deadletter_record(
        TopicsConfig(),
        source_topic="trading.outcomes",
        partition=0,
        offset=1,
        key=None,
        value=b"x",
        headers=[],
        error_class="key_mismatch",
        message="no key",
    )
    assert record.key is None


# -- generated input ----------------------------------------------------------------

KINDS: tuple[InputKind, ...] = ("fill", "outcome", "intent", "control")
FUZZ = settings(
    # ``make mutate`` runs the suite once per mutant: it asks for fewer examples.
    max_examples=int(os.environ.get("RISKGATE_PROPERTY_EXAMPLES", "500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)

TEMPLATES: dict[InputKind, dict[str, Any]] = {
    "outcome": outcome(TS, outcome_id="g-o"),
    "fill": fill(TS, fill_id="g-f"),
    "intent": intent(TS, intent_id="g-i"),
    "control": msgspec.to_builtins(command(TS, secret=None)),
}


_TYPES: dict[InputKind, type[Any]] = {
    "fill": Fill,
    "outcome": TradeOutcome,
    "intent": OrderIntent,
    "control": ControlCommand,
}
UNDECODABLE = frozenset({"malformed_json", "invalid_message"})
"""What ``decode_input`` says of bytes that are no valid message (stdlib ``json`` and
msgspec differ at the edges, e.g. ``NaN`` literals: either reason is right)."""
ENGINE_REASONS = frozenset(
    {
        "unknown_bot",
        "invalid_name",
        "unknown_symbol",
        "future_event",
        "pnl_source",
        "bad_signature",
        "stale_command",
        "replayed_command",
    }
)


def expected(kind: InputKind, key: bytes | None, value: bytes) -> frozenset[str]:
    """What a record must come to, judged from its bytes without the decoder under test:
    a decoding reason, ``key_mismatch``, or (a valid message) applied or an engine reason."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        # Not UTF-8: undecodable, except that msgspec skips an unknown key without
        # validating its bytes, so such a record may also mean what it says without it.
        lenient = value.decode("utf-8", "replace").encode()
        return UNDECODABLE | expected(kind, key, lenient)
    try:
        doc = json.loads(text)
        event = msgspec.convert(doc, type=_TYPES[kind])
    except (ValueError, RecursionError, msgspec.ValidationError):
        return UNDECODABLE
    if key != event.bot.encode():
        return frozenset({"key_mismatch"})
    if kind == "control" and not event.sig:
        # Names and time are judged before the signature: a bot or symbol that is not
        # configured or badly named, or a ts too far ahead, is refused as such first.
        return frozenset(
            {"bad_signature", "unknown_bot", "invalid_name", "unknown_symbol", "future_event"}
        )
    return ENGINE_REASONS | {APPLIED}


def outcome_of(result: Effects | Rejected) -> str:
    return result.reason if isinstance(result, Rejected) else APPLIED


@FUZZ
@given(kind=st.sampled_from(KINDS), value=st.binary(max_size=2048))
def test_random_bytes_are_rejected(kind: InputKind, value: bytes) -> None:
    path = seeded()
    assert outcome_of(path.feed(kind, b"alpha", value)) in UNDECODABLE


@FUZZ
@given(kind=st.sampled_from(KINDS), value=json_values)
def test_random_json_documents_are_invalid_messages(kind: InputKind, value: Any) -> None:
    """At most 5 keys of random text: never every required field (6 or more)."""
    assert outcome_of(seeded().feed(kind, b"alpha", _enc(value))) == "invalid_message"


@FUZZ
@given(data=st.data(), kind=st.sampled_from(KINDS), replacement=json_values)
def test_a_field_replaced_by_any_json_value(kind: InputKind, data: Any, replacement: Any) -> None:
    template = dict(TEMPLATES[kind])
    name = data.draw(st.sampled_from(sorted(template)))
    template[name] = replacement
    key = str(template.get("bot")).encode()
    value = _enc(template)
    want = expected(kind, key, value)
    if want == ENGINE_REASONS | {APPLIED} and name == "sig":
        want = frozenset({"bad_signature"})  # any signature but the right one
    elif want == ENGINE_REASONS | {APPLIED} and name not in ("bot", "symbol", "ts"):
        want = frozenset({APPLIED})  # any other valid field value is just applied
    assert outcome_of(seeded().feed(kind, key, value)) in want, (name, replacement)


@FUZZ
@given(kind=st.sampled_from(KINDS), extra=json_values, name=st.text(min_size=1, max_size=12))
def test_unknown_fields_of_any_shape_are_ignored(kind: InputKind, extra: Any, name: str) -> None:
    template = TEMPLATES[kind]
    if name in template:
        return
    value = _enc(template)[:-1] + b"," + _enc(name) + b":" + _enc(extra) + b"}"
    path = seeded()
    result = path.feed(kind, str(template["bot"]).encode(), value)
    if kind == "control":
        assert isinstance(result, Rejected) and result.reason == "bad_signature"  # unsigned
    else:
        assert not isinstance(result, Rejected), result


@FUZZ
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_byte_level_mutations_of_valid_records(kind: InputKind, data: Any) -> None:
    value = bytearray(_enc(TEMPLATES[kind]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(("flip", "insert", "delete", "truncate")))
        at = data.draw(st.integers(0, max(0, len(value) - 1)))
        if op == "flip" and value:
            value[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            value[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and value:
            del value[at]
        else:
            del value[at:]
    key = str(TEMPLATES[kind]["bot"]).encode()
    result = seeded().feed(kind, key, bytes(value))
    assert outcome_of(result) in expected(kind, key, bytes(value)), bytes(value)


@FUZZ
@given(
    bot=st.text(max_size=140), symbol=st.text(max_size=140), key=st.none() | st.binary(max_size=20)
)
def test_any_names_and_keys_on_a_bot_accepting_all(
    bot: str, symbol: str, key: bytes | None
) -> None:
    body = "[defaults]\naccept_unknown_bots = true\n"
    path = Path(engine(body))
    value = _enc(outcome(TS, bot=bot, symbol=symbol))
    for k in (key, bot.encode()):
        result = path.feed("outcome", k, value)
        if isinstance(result, Rejected):
            assert not path.engine.bots
        else:
            assert k == bot.encode() and "/" not in bot and "/" not in symbol


@FUZZ
@given(
    cmd=st.sampled_from(("halt", "resume", "reset_breaker", "reset_session")),
    symbol=st.none() | st.sampled_from(("BTCUSDT", "ETHUSDT", "DOGEUSDT")),
    sig=st.none() | st.text(max_size=300) | st.binary(min_size=32, max_size=32).map(bytes.hex),
    skew=st.integers(-(10**9), 10**9),
)
def test_control_commands_with_any_signature(
    cmd: str, symbol: str | None, sig: str | None, skew: int
) -> None:
    c = command(NOW + skew, secret=None, command=cmd, symbol=symbol)
    value = _enc(msgspec.structs.replace(c, sig=sig))
    result = seeded().feed("control", b"alpha", value)
    assert isinstance(result, Rejected)  # only the secret's signature passes
    signed = _enc(command(NOW + skew, secret=SECRET, command=cmd, symbol=symbol))
    result = seeded().feed("control", b"alpha", signed)
    if abs(skew) <= 300_000 and symbol != "DOGEUSDT":  # replay window = max skew = 5 min
        assert not isinstance(result, Rejected), result
    else:
        assert isinstance(result, Rejected)


@FUZZ
@given(
    gross=st.floats(allow_nan=False),
    fee=st.floats(allow_nan=False),
    qty=st.floats(allow_nan=False),
    price=st.floats(allow_nan=False),
    ts=st.integers(-(2**63), 2**63),
)
def test_numbers_of_any_size(gross: float, fee: float, qty: float, price: float, ts: int) -> None:
    path = seeded()

    def want(*ok: bool) -> str:
        """Out of range or non-finite (encoded as null) is invalid; else only time decides."""
        if not (all(ok) and 946_684_800_000 <= ts <= 4_102_444_800_000):
            return "invalid_message"
        return "future_event" if ts > NOW + 5 * 60_000 else APPLIED

    money, amount = abs(gross) <= 1e15, 0.0 <= fee <= 1e15
    size = 0.0 < qty <= 1e15 and 0.0 < price <= 1e15
    value = _enc(outcome(TS, gross_pnl=gross, fee=fee, ts=ts))
    assert outcome_of(path.feed("outcome", b"alpha", value)) == want(money, amount)
    value = _enc(fill(TS, qty=qty, price=price, fee=fee, ts=ts))
    assert outcome_of(path.feed("fill", b"fb", value)) == want(size, amount)
    value = _enc(intent(TS, qty=qty, price=price, ts=ts))
    assert outcome_of(path.feed("intent", b"alpha", value)) == want(size)
