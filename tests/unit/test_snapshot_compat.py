"""Snapshot compatibility with the Rust seed, against checked-in fixtures.

Three directions (SPEC §5):

* the seed's snapshots (``SymbolRiskSnapshot`` as serde writes it, version 1)
  restore with every value preserved, then the stale-snapshot policy (``tick``)
  applies: UTC rollover, window eviction, cooldown expiry;
* a future version is ignored, never misread;
* our own snapshots still parse as the seed's shape: a strict reader mirroring
  the seed's Rust structs (nested structs exact, unsigned integers where Rust
  has them, finite floats; unknown top-level fields ignored as serde does).

Our version-1 format is pinned too: the checked-in ``riskgate-v1-*.json``
must restore and re-encode to the very same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.builders import DAY0, MIDNIGHT, T0, control, engine, fill, intent, outcome
from worker import signing
from worker.core import Effects, Origin, RiskEngine
from worker.core.snapshot import (
    ManualHalt,
    PortfolioSnapshot,
    SymbolSnapshot,
    decode_snapshot,
    encode,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "snapshots"
KEY = "rust-bot/risk/BTCUSDT"
HOUR = 3_600_000
BODY = """
[defaults]
accept_unknown_bots = true
[defaults.breaker]
loss_limit = 2
window_secs = 14400
cooldown_secs = 3600
"""


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes().strip()


def seed_fixtures() -> list[str]:
    """The seed's version-1 fixtures of today (the stale one has its own tests)."""
    return sorted(p.name for p in FIXTURES.glob("seed-v1-*.json") if "stale" not in p.name)


# -- a strict reader in the seed's shape ---------------------------------------------

U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0)]
"""msgspec has no uint64 bound; its ``int`` itself stops at 2**64 - 1."""


class SeedSessionPnlSnapshot(msgspec.Struct, forbid_unknown_fields=True):
    """``rustrade_risk::SessionPnlSnapshot``: exact, so even ``deny_unknown_fields`` reads it."""

    realised: float
    fees: float
    trades: U32
    wins: U32
    losses: U32
    breakevens: U32
    halted: bool
    last_reset_day: U64


class SeedCircuitBreakerSnapshot(msgspec.Struct, forbid_unknown_fields=True):
    """``rustrade_risk::CircuitBreakerSnapshot``: loss and trip times in Unix seconds."""

    recent_losses: list[U64]
    tripped_at_unix_secs: U64 | None


class SeedSymbolRiskSnapshot(msgspec.Struct):
    """``SymbolRiskSnapshot`` (no ``deny_unknown_fields``: serde skips our extra fields)."""

    version: U32
    session_pnl: SeedSessionPnlSnapshot
    circuit_breaker: SeedCircuitBreakerSnapshot


def read_as_seed(value: bytes) -> SeedSymbolRiskSnapshot:
    seed = msgspec.json.decode(value, type=SeedSymbolRiskSnapshot, strict=True)
    # serde_json has no NaN/inf: msgspec would have written null, which fails above;
    # and f64 must be finite for the seed's arithmetic.
    assert all(
        v == v and abs(v) != float("inf")
        for v in (seed.session_pnl.realised, seed.session_pnl.fees)
    )
    return seed


# -- the seed's snapshots restore ------------------------------------------------------


def restore(value: bytes, now: int, key: str = KEY) -> tuple[RiskEngine, Effects, list[Any]]:
    eng = engine(BODY)
    out = Effects()
    ignored = eng.restore({key: value}, now, out)
    return eng, out, ignored


def symbol_json(eng: RiskEngine, key: str = KEY) -> dict[str, Any]:
    bot, _, symbol = key.split("/")
    built: dict[str, Any] = msgspec.to_builtins(eng.bots[bot].symbols[symbol].snapshot())
    return built


@pytest.mark.parametrize("name", seed_fixtures())
def test_seed_fixture_restores_with_every_value_preserved(name: str) -> None:
    value = fixture(name)
    doc = msgspec.json.decode(value)
    assert doc["session_pnl"]["last_reset_day"] == DAY0
    session = {k: doc["session_pnl"][k] for k in SeedSessionPnlSnapshot.__struct_fields__}
    breaker = {k: doc["circuit_breaker"][k] for k in SeedCircuitBreakerSnapshot.__struct_fields__}
    tripped = breaker["tripped_at_unix_secs"]
    # Restore at a moment where nothing can have expired yet.
    losses = breaker["recent_losses"]
    now = max([T0, *(s * 1000 + 1 for s in losses)])
    if tripped is not None:
        assert now < (tripped + 3600) * 1000
    eng, out, ignored = restore(value, now)
    assert ignored == []
    assert out.halts == []
    restored = symbol_json(eng)
    assert restored["session_pnl"] == session
    assert restored["circuit_breaker"] == breaker
    assert type(restored["session_pnl"]["realised"]) is float  # even from a JSON integer
    assert restored["position"]["qty"] == 0.0
    assert restored["manual_halt"] is None
    assert restored["applied_offsets"] == {} and restored["recent_outcome_ids"] == []


def test_seed_trip_still_gates_after_restore() -> None:
    eng, _, _ = restore(fixture("seed-v1-tripped.json"), T0 + HOUR // 2)
    now = T0 + HOUR // 2
    decision = eng.apply(intent(bot="rust-bot", ts=now), now).decisions[0]
    assert (decision.allowed, decision.gate) == (False, "circuit_breaker")
    sym = eng.bots["rust-bot"].symbols["BTCUSDT"]
    assert sym.session.net_pnl == -31.0
    assert sym.breaker.until_secs == MIDNIGHT // 1000 + 10 * 3600


@pytest.mark.parametrize(
    ("now", "tripped", "losses"),
    [
        (T0 + HOUR - 1_000, True, 2),  # 09:59:59: cooldown (from 09:00) not over
        (T0 + HOUR, False, 0),  # 10:00:00: cooldown over, breaker resets and forgets
        (MIDNIGHT + 23 * HOUR, False, 0),
    ],
)
def test_seed_breaker_ticks_on_restore(now: int, tripped: bool, losses: int) -> None:
    eng, out, _ = restore(fixture("seed-v1-tripped.json"), now)
    sym = eng.bots["rust-bot"].symbols["BTCUSDT"]
    assert sym.breaker.is_tripped is tripped
    assert len(sym.breaker.recent_losses) == losses
    assert sym.session.net_pnl == -31.0  # same UTC day: the session stays
    resumed = [(h.gate, h.kind) for h in out.halts]
    assert resumed == ([] if tripped else [("circuit_breaker", "resumed")])


def test_seed_window_evicts_old_losses_on_restore() -> None:
    value = fixture("seed-v1-halted-sorted-keys.json")
    loss = msgspec.json.decode(value)["circuit_breaker"]["recent_losses"][0]
    eng, _, _ = restore(value, (loss + 14_400) * 1000 - 1_000)
    assert eng.bots["rust-bot"].symbols["BTCUSDT"].breaker.recent_losses == [loss]
    eng, _, _ = restore(value, (loss + 14_400) * 1000)
    assert eng.bots["rust-bot"].symbols["BTCUSDT"].breaker.recent_losses == []


def test_seed_halted_session_rolls_over_at_midnight_on_restore() -> None:
    value = fixture("seed-v1-halted-sorted-keys.json")
    eng, out, _ = restore(value, MIDNIGHT + 23 * HOUR)
    session = eng.bots["rust-bot"].symbols["BTCUSDT"].session
    assert session.halted and session.net_pnl == -62.5 and out.halts == []
    eng, out, _ = restore(value, MIDNIGHT + 24 * HOUR)
    session = eng.bots["rust-bot"].symbols["BTCUSDT"].session
    assert not session.halted
    assert (session.trades, session.net_pnl, session.last_reset_day) == (0, 0.0, DAY0 + 1)
    assert [(h.gate, h.kind) for h in out.halts] == [("session_halt", "resumed")]


def test_a_three_day_old_seed_snapshot_restores_fresh_and_says_so() -> None:
    eng, out, ignored = restore(fixture("seed-v1-stale-three-days.json"), T0)
    assert ignored == []
    sym = eng.bots["rust-bot"].symbols["BTCUSDT"]
    assert not sym.session.halted and sym.session.trades == 0
    assert sym.session.last_reset_day == DAY0
    assert not sym.breaker.is_tripped and sym.breaker.recent_losses == []
    assert sorted((h.gate, h.kind) for h in out.halts) == [
        ("circuit_breaker", "resumed"),
        ("session_halt", "resumed"),
    ]
    assert eng.apply(intent(bot="rust-bot"), T0).decisions[0].allowed


def test_seed_snapshot_with_unknown_fields_restores() -> None:
    eng, _, ignored = restore(fixture("seed-v1-unknown-fields.json"), T0)
    assert ignored == []
    session = eng.bots["rust-bot"].symbols["BTCUSDT"].session
    assert (session.realised, session.fees, session.trades, session.wins) == (12.25, 0.75, 3, 2)


# -- other versions are ignored ------------------------------------------------------


def test_a_future_version_is_ignored_not_misread() -> None:
    eng, out, ignored = restore(fixture("seed-v100-future.json"), T0)
    assert [(k, "unknown snapshot version 100" in why) for k, why in ignored] == [(KEY, True)]
    assert "rust-bot" not in eng.bots or not eng.bots["rust-bot"].symbols
    assert out.halts == [] and not out.dirty_symbols
    # The bot starts fresh: an intent is allowed (the blob said "halted").
    assert eng.apply(intent(bot="rust-bot"), T0).decisions[0].allowed


@pytest.mark.parametrize("version", [b"0", b"2", b"-1", b'"1"', b"1.0", b"null", b"4294967296"])
def test_other_version_values_are_ignored(version: bytes) -> None:
    value = fixture("seed-v1-tripped.json").replace(b'"version":1', b'"version":' + version, 1)
    eng, _, ignored = restore(value, T0)
    assert [k for k, _ in ignored] == [KEY]
    assert "rust-bot" not in eng.bots or not eng.bots["rust-bot"].symbols


# -- our version-1 format is pinned ---------------------------------------------------


def test_our_symbol_fixture_restores_and_re_encodes_identically() -> None:
    value = fixture("riskgate-v1-symbol.json")
    _, _, snap = decode_snapshot("alpha/risk/BTCUSDT", value)
    assert isinstance(snap, SymbolSnapshot)
    body = "[bots.alpha]\n[bots.alpha.breaker]\nloss_limit = 2\n"
    eng = engine(body)
    out = Effects()
    assert eng.restore({"alpha/risk/BTCUSDT": value}, T0 + 5 * 60_000, out) == []
    sym = eng.bots["alpha"].symbols["BTCUSDT"]
    # Every field reads back unchanged, but the recent ids: the window is per bot now,
    # and restore adopted them into it (they are no longer written per symbol).
    doc, old = msgspec.json.decode(encode(sym.snapshot())), msgspec.json.decode(value)
    for field, was in old.items():
        moved = field in ("recent_outcome_ids", "recent_fill_ids")
        assert doc[field] == ([] if moved else was), field
    assert out.halts == []
    before_dups = encode(sym.snapshot())
    # The watermarks still guard: a replay of the last applied offset is skipped.
    replay = outcome(-100.0, outcome_id="new-id", ts=T0 + 1)
    skipped = eng.apply(replay, T0 + 5 * 60_000, Origin("trading.outcomes/3", 102))
    assert skipped.skipped == 1
    # And the dedupe ids: a known id at a new offset is dropped.
    dup = eng.apply(outcome(-100.0, outcome_id="o-1"), T0, Origin("trading.outcomes/3", 500))
    assert dup.skipped == 1
    assert encode(sym.snapshot()) == before_dups  # both dropped before touching the symbol
    assert sym.session.net_pnl == -7.75


def test_our_portfolio_fixture_restores_and_re_encodes_identically() -> None:
    value = fixture("riskgate-v1-portfolio.json")
    _, symbol, snap = decode_snapshot("alpha/portfolio", value)
    assert symbol is None and isinstance(snap, PortfolioSnapshot)
    eng = engine("[bots.alpha]\n")
    before_expiry = 1_749_977_970_000 - 1  # restore sweeps: the reservation must not expire
    assert eng.restore({"alpha/portfolio": value}, before_expiry) == []
    bot = eng.bots["alpha"]
    # Every field reads back unchanged (fields added since take their empty defaults).
    doc, old = msgspec.json.decode(encode(bot.portfolio_snapshot())), msgspec.json.decode(value)
    assert {field: doc[field] for field in old} == old
    assert (doc["intent_ids"], doc["outcome_ids"], doc["last_command_ts"]) == (
        "",
        {"ids": "", "offsets": ""},
        None,
    )
    assert bot.portfolio.halted
    assert bot.manual_halt == ManualHalt("desk closed", "bob", 1_749_978_300_000)
    assert bot.portfolio.reservations["i-1"].notional == 50.0


@pytest.mark.parametrize(
    ("name", "key", "holder"),
    [
        ("riskgate-v1-symbol-holder-seq.json", "alpha/risk/BTCUSDT", ("alpha", "BTCUSDT")),
        ("riskgate-v1-portfolio-holder-seq.json", "alpha/portfolio", ("alpha", None)),
    ],
)
def test_snapshots_from_before_per_gate_numbering_never_reuse_an_event_id(
    name: str, key: str, holder: tuple[str, str | None]
) -> None:
    # Written when halt/resume events were numbered per holder (halt_seq 2: ids
    # .../1 and .../2 of any gate may be out there). Restored, every gate's data- or
    # clock-driven numbering must continue after 2, whichever gate the earlier ids
    # belonged to (a command's event is named after the command: it cannot collide).
    value = fixture(name)
    assert b"halt_seqs" not in value
    eng = engine(
        "[bots.alpha]\n[bots.alpha.breaker]\nloss_limit = 2\n"
        "[bots.alpha.session]\nloss_limit = -10.0\n"
    )
    assert eng.restore({key: value}, T0 + 5 * 60_000) == []
    bot_id, symbol = holder
    resume = control("resume", symbol=symbol, ts=T0 + 400_000)
    out = eng.apply(resume, T0 + 400_000)
    prefix = f"{bot_id}/{symbol or '*'}"
    assert [h.event_id for h in out.halts] == [
        f"{prefix}/manual_halt/cmd-{signing.command_digest(resume)}"
    ]
    if symbol is None:  # the wall clock releases the restored latch
        gate, data = "portfolio_daily_loss", eng.sweep(MIDNIGHT + 86_400_000)
    else:  # a loss halts the session
        gate, data = "session_halt", eng.apply(outcome(-5.0, ts=T0 + 400_001), T0 + 400_001)
    assert [h.event_id for h in data.halts if h.gate == gate] == [f"{prefix}/{gate}/3"]
    bot = eng.bots[bot_id]
    snap = bot.symbols[symbol].snapshot() if symbol else bot.portfolio_snapshot()
    doc = msgspec.json.decode(encode(snap))
    assert (doc["halt_seq"], doc["halt_seqs"], doc["halt_seq_base"]) == (3, {gate: 3}, 2)


def test_our_symbol_fixture_reads_as_the_seed_shape() -> None:
    seed = read_as_seed(fixture("riskgate-v1-symbol.json"))
    assert seed.version == 1
    assert seed.circuit_breaker.tripped_at_unix_secs == T0 // 1000 + 60


# -- whatever state we are in, our snapshots read as the seed's shape -----------------

money = st.floats(min_value=-1e15, max_value=1e15, allow_nan=False)
fees = st.floats(min_value=0.0, max_value=1e15, allow_nan=False)
step = st.one_of(
    st.tuples(st.just("outcome"), money, fees, st.integers(0, 6 * HOUR)),
    st.tuples(
        st.just("fill"),
        st.floats(min_value=1e-9, max_value=1e15),
        st.floats(min_value=1e-9, max_value=1e15),
        st.integers(0, 6 * HOUR),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(step, st.booleans(), st.sampled_from(["BTCUSDT", "ETHUSDT"]))))
def test_any_state_we_persist_reads_as_the_seed_shape(steps: list[Any]) -> None:
    eng = engine(BODY)
    for (kind, a, b, dt), buy, symbol in steps:
        ts = T0 - 6 * HOUR + dt
        if kind == "outcome":
            eng.apply(outcome(a, b, ts=ts, symbol=symbol), T0)
        else:
            eng.apply(fill("buy" if buy else "sell", a, b, ts=ts, symbol=symbol), T0)
    eng.sweep(T0)
    for bot in eng.bots.values():
        for sym in bot.symbols.values():
            value = encode(sym.snapshot())
            seed = read_as_seed(value)
            assert seed.session_pnl.trades == sym.session.trades
            assert seed.circuit_breaker.recent_losses == sym.breaker.recent_losses
            _, _, back = decode_snapshot(f"{bot.bot}/risk/{sym.symbol}", value)
            assert back == sym.snapshot()
