"""Snapshot keys and values: the seed's JSON shape, versioning, corrupt input."""

from __future__ import annotations

import json

import msgspec
import pytest

from tests.support.builders import DAY0, T0, apply_all, control, engine, fill, intent, outcome
from worker.core import Effects
from worker.core.snapshot import (
    PortfolioSnapshot,
    SnapshotError,
    SymbolSnapshot,
    decode_snapshot,
    encode,
    parse_key,
    portfolio_key,
    symbol_key,
)

S0 = T0 // 1000

# Exactly what the Rust seed writes with serde_json for a SymbolRiskSnapshot:
# floats keep their ".0", Option::None is null, no extra fields.
SEED_BLOB = (
    '{"version":1,'
    '"session_pnl":{"realised":-30.0,"fees":1.0,"trades":1,"wins":0,"losses":1,'
    f'"breakevens":0,"halted":false,"last_reset_day":{DAY0}}},'
    f'"circuit_breaker":{{"recent_losses":[{S0 - 60},{S0}],"tripped_at_unix_secs":{S0}}}}}'
).encode()

SEED_KEYS = {"version", "session_pnl", "circuit_breaker"}
SEED_SESSION_TYPES = {
    "realised": float,
    "fees": float,
    "trades": int,
    "wins": int,
    "losses": int,
    "breakevens": int,
    "halted": bool,
    "last_reset_day": int,
}


BREAKER_2 = """
[defaults]
accept_unknown_bots = true
[defaults.breaker]
loss_limit = 2
"""


def test_seed_shaped_blob_restores() -> None:
    bot_id, symbol, snap = decode_snapshot("rust-bot/risk/BTCUSDT", SEED_BLOB)
    assert (bot_id, symbol) == ("rust-bot", "BTCUSDT")
    assert isinstance(snap, SymbolSnapshot)
    assert snap.position is None
    assert snap.applied_offsets == {}

    eng = engine(BREAKER_2)
    out = Effects()
    eng.bot(bot_id).restore_symbol("BTCUSDT", snap, T0, out)
    sym = eng.bots["rust-bot"].symbols["BTCUSDT"]
    assert sym.session.net_pnl == pytest.approx(-31.0)
    assert sym.session.losses == 1
    assert sym.session.trades == 1
    assert sym.breaker.is_tripped
    assert sym.breaker.recent_losses == [S0 - 60, S0]
    assert sym.position.is_flat
    assert sym.manual_halt is None
    assert out.halts == []
    d = eng.apply(intent(bot="rust-bot"), T0).decisions[0]
    assert d.gate == "circuit_breaker"


def test_seed_blob_with_integer_money_still_decodes() -> None:
    blob = SEED_BLOB.replace(b'"realised":-30.0', b'"realised":-30')
    _, _, snap = decode_snapshot("b/risk/S", blob)
    assert isinstance(snap, SymbolSnapshot)
    assert snap.session_pnl.realised == -30.0


def _populated_snapshot() -> SymbolSnapshot:
    eng = engine(BREAKER_2)
    apply_all(
        eng,
        [
            outcome(-3.0, 0.5),
            outcome(-4.0, ts=T0 + 1),
            fill("buy", 2.0, 100.0, contract_value=0.1),
            control("halt"),
        ],
    )
    return eng.bots["alpha"].symbols["BTCUSDT"].snapshot()


def test_our_snapshot_json_keeps_the_seed_keys_and_types() -> None:
    doc = json.loads(encode(_populated_snapshot()))
    assert set(doc) >= SEED_KEYS, "extra keys only, never fewer"
    assert list(doc)[:3] == ["version", "session_pnl", "circuit_breaker"]
    assert doc["version"] == 1
    session = doc["session_pnl"]
    assert set(session) == set(SEED_SESSION_TYPES)
    for field, kind in SEED_SESSION_TYPES.items():
        assert type(session[field]) is kind, field
    breaker = doc["circuit_breaker"]
    assert set(breaker) == {"recent_losses", "tripped_at_unix_secs"}
    # Two losses in the same second (T0 and T0 + 1 ms) trip the 2-loss breaker then.
    assert breaker["recent_losses"] == [T0 // 1000, T0 // 1000]
    assert all(type(x) is int for x in breaker["recent_losses"])
    assert breaker["tripped_at_unix_secs"] == T0 // 1000
    assert type(breaker["tripped_at_unix_secs"]) is int
    # Our extras are there too.
    assert doc["position"]["qty"] == 2.0
    assert doc["manual_halt"]["issued_by"] == "alice"


def test_a_fresh_snapshot_has_float_money_and_null_trip() -> None:
    eng = engine()
    snap = eng.bot("alpha").symbol("BTCUSDT").snapshot()
    doc = json.loads(encode(snap))
    assert type(doc["session_pnl"]["realised"]) is float
    assert type(doc["session_pnl"]["fees"]) is float
    assert doc["circuit_breaker"] == {"recent_losses": [], "tripped_at_unix_secs": None}


class _SeedSession(msgspec.Struct, forbid_unknown_fields=True):
    realised: float
    fees: float
    trades: int
    wins: int
    losses: int
    breakevens: int
    halted: bool
    last_reset_day: int


class _SeedBreaker(msgspec.Struct, forbid_unknown_fields=True):
    recent_losses: list[int]
    tripped_at_unix_secs: int | None


class _SeedSnapshot(msgspec.Struct):
    """The Rust reader: unknown top-level fields ignored, nested shapes exact."""

    version: int
    session_pnl: _SeedSession
    circuit_breaker: _SeedBreaker


def test_a_seed_reader_can_decode_our_snapshot() -> None:
    snap = _populated_snapshot()
    seed = msgspec.json.decode(encode(snap), type=_SeedSnapshot, strict=True)
    assert seed.version == 1
    assert seed.session_pnl.losses == snap.session_pnl.losses
    assert seed.circuit_breaker.tripped_at_unix_secs == snap.circuit_breaker.tripped_at


def test_symbol_snapshot_round_trips_through_bytes() -> None:
    snap = _populated_snapshot()
    _, _, back = decode_snapshot("alpha/risk/BTCUSDT", encode(snap))
    assert back == snap


def test_restore_of_an_engine_snapshot_reproduces_the_state() -> None:
    snap = _populated_snapshot()
    eng = engine(BREAKER_2)
    eng.bot("alpha").restore_symbol("BTCUSDT", snap, T0 + 2, Effects())
    assert eng.bots["alpha"].symbols["BTCUSDT"].snapshot() == snap


def test_portfolio_snapshot_round_trips_latch_halt_and_reservations() -> None:
    eng = engine(
        """
        [bots.alpha.portfolio]
        max_daily_loss = -10.0
        """
    )
    eng.apply(intent(intent_id="r1", symbol="ETHUSDT"), T0)  # allowed: reserves
    apply_all(eng, [outcome(-20.0), control("halt", symbol=None)])  # latch + bot halt
    bot = eng.bots["alpha"]
    assert bot.portfolio.halted
    snap = bot.portfolio_snapshot()
    assert set(snap.reservations) == {"r1"}

    key = portfolio_key("alpha")
    bot_id, symbol, back = decode_snapshot(key, encode(snap))
    assert (bot_id, symbol) == ("alpha", None)
    assert isinstance(back, PortfolioSnapshot)
    assert back == snap

    fresh = engine(
        """
        [bots.alpha.portfolio]
        max_daily_loss = -10.0
        """
    )
    restored = fresh.bot("alpha")
    restored.restore_portfolio(back, T0 + 1, Effects())
    assert restored.portfolio.halted, "the latch survives a restart even with no symbol PnL"
    assert restored.manual_halt == snap.manual_halt
    assert set(restored.portfolio.reservations) == {"r1"}
    assert restored.portfolio_snapshot() == snap


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"{",
        b"[]",
        b'{"version":"1"}',
        b'{"version":1}',
        b'{"version":1,"session_pnl":{},"circuit_breaker":{}}',
        SEED_BLOB.replace(b'"trades":1', b'"trades":"one"'),
        SEED_BLOB.replace(b'"recent_losses":[', b'"recent_losses":["x",'),
        SEED_BLOB[:-5],
    ],
    ids=[
        "empty",
        "text",
        "truncated",
        "array",
        "version-str",
        "missing",
        "empty-parts",
        "bad-type",
        "bad-loss",
        "cut",
    ],
)
def test_corrupt_values_raise_snapshot_error(value: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode_snapshot("alpha/risk/BTCUSDT", value)


@pytest.mark.parametrize("version", [0, 2, 100, -1])
def test_unknown_versions_raise_snapshot_error(version: int) -> None:
    blob = SEED_BLOB.replace(b'"version":1', f'"version":{version}'.encode())
    with pytest.raises(SnapshotError, match="version"):
        decode_snapshot("alpha/risk/BTCUSDT", blob)
    portfolio = f'{{"version":{version},"halted":true,"last_reset_day":1}}'.encode()
    with pytest.raises(SnapshotError, match="version"):
        decode_snapshot("alpha/portfolio", portfolio)


def test_a_symbol_blob_under_a_portfolio_key_is_not_misread() -> None:
    with pytest.raises(SnapshotError):
        decode_snapshot("alpha/portfolio", SEED_BLOB)


def test_keys() -> None:
    assert symbol_key("bot-1", "ETHUSDT") == "bot-1/risk/ETHUSDT"
    assert portfolio_key("bot-1") == "bot-1/portfolio"
    assert parse_key("bot-1/risk/ETHUSDT") == ("bot-1", "ETHUSDT")
    assert parse_key("bot-1/portfolio") == ("bot-1", None)
    assert parse_key(symbol_key("a", "b")) == ("a", "b")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "alpha",
        "alpha/gate/BTCUSDT",
        "alpha/gate",
        "/risk/BTCUSDT",
        "alpha/risk/",
        "alpha/risk/BTC/USDT",
        "/portfolio",
        "alpha/portfolio/x",
        "alpha/RISK/BTCUSDT",
    ],
)
def test_parse_key_rejects_other_keys(key: str) -> None:
    with pytest.raises(SnapshotError):
        parse_key(key)
    with pytest.raises(SnapshotError):
        decode_snapshot(key, SEED_BLOB)
