"""Python port of the seed's tests (rustrade-framework ``risk_state.rs``).

Same names, same assertions. Our primitives take explicit times where the Rust
ones read a clock, so every call passes the fixed ``T0``.
"""

from __future__ import annotations

import msgspec
import pytest

from tests.support.builders import T0, config
from worker.config import BotSettings, bot_settings
from worker.core import Effects
from worker.core.bot import BotRisk
from worker.core.snapshot import (
    SNAPSHOT_VERSION,
    SnapshotError,
    SymbolSnapshot,
    decode_snapshot,
    encode,
    symbol_key,
)
from worker.core.symbol import SymbolRisk

T0_SECS = T0 // 1000


def settings(breaker_loss_limit: int, session_loss_limit: float | None = None) -> BotSettings:
    """The seed's ``cb_cfg(loss_limit)``: window 14 400 s, cooldown 3 600 s."""
    session = "" if session_loss_limit is None else f"loss_limit = {session_loss_limit}"
    cfg = config(
        f"""
        [defaults.session]
        {session}
        [defaults.breaker]
        loss_limit = {breaker_loss_limit}
        window_secs = 14400
        cooldown_secs = 3600
        [bots.test-bot]
        """
    )
    resolved = bot_settings(cfg, "test-bot")
    assert resolved is not None
    return resolved


def fresh_bot(s: BotSettings) -> BotRisk:
    return BotRisk(s, reservation_ttl_ms=30_000, dedupe_keep=64, day=T0 // 86_400_000)


def restore_into(bot: BotRisk, store: dict[str, bytes], now_ms: int) -> None:
    """The seed's ``RiskPersister::restore_into``: missing and unknown snapshots are skipped."""
    for symbol in list(bot.symbols):
        value = store.get(symbol_key(bot.bot, symbol))
        if value is None:
            continue  # first boot
        try:
            _bot, _symbol, snap = decode_snapshot(symbol_key(bot.bot, symbol), value)
        except SnapshotError:
            continue  # unknown version or corrupt: start fresh
        assert isinstance(snap, SymbolSnapshot)
        bot.restore_symbol(symbol, snap, now_ms, Effects())


def test_state_key_is_namespaced() -> None:
    assert symbol_key("my-bot", "BTCUSDT") == "my-bot/risk/BTCUSDT"


def test_persist_then_restore_preserves_trip_and_pnl() -> None:
    sym = "BTCUSDT"
    s = settings(2, session_loss_limit=-1000.0)

    # Trip the breaker + book a loss in "map A".
    bot_a = fresh_bot(s)
    sr = bot_a.symbol(sym)
    sr.session.record_close(-30.0, 1.0, T0)  # net -31
    sr.breaker.record_loss(T0_SECS)
    sr.breaker.record_loss(T0_SECS)
    assert sr.breaker.is_tripped

    store: dict[str, bytes] = {}
    store[symbol_key("test-bot", sym)] = encode(sr.snapshot())
    assert len(store) == 1

    # Restore into a fresh "map B".
    bot_b = fresh_bot(s)
    assert not bot_b.symbol(sym).breaker.is_tripped
    restore_into(bot_b, store, T0)

    restored = bot_b.symbols[sym]
    assert restored.breaker.is_tripped, "restored breaker must remain tripped"
    assert abs(restored.session.net_pnl - (-31.0)) < 1e-9
    assert restored.session.losses == 1


def test_restore_without_snapshot_is_noop() -> None:
    sym = "ETHUSDT"
    bot = fresh_bot(settings(4))
    bot.symbol(sym)
    restore_into(bot, {}, T0)
    sr = bot.symbols[sym]
    assert not sr.breaker.is_tripped
    assert not sr.session.halted


def test_restore_ignores_unknown_version() -> None:
    sym = "BTCUSDT"
    bot = fresh_bot(settings(4))
    bot.symbol(sym)
    # Seed a future-version blob that must be ignored, not misread.
    bogus = msgspec.json.encode(
        {
            "version": SNAPSHOT_VERSION + 99,
            "session_pnl": {
                "realised": -100.0,
                "fees": 0.0,
                "trades": 1,
                "wins": 0,
                "losses": 1,
                "breakevens": 0,
                "halted": True,
                "last_reset_day": 0,
            },
            "circuit_breaker": {"recent_losses": [], "tripped_at_unix_secs": None},
        }
    )
    store = {symbol_key("test-bot", sym): bogus}
    with pytest.raises(SnapshotError, match="version 100"):
        decode_snapshot(symbol_key("test-bot", sym), bogus)
    restore_into(bot, store, T0)
    # Unknown version ignored -> fresh state, not the halted blob.
    assert not bot.symbols[sym].session.halted
    assert bot.symbols[sym].session.trades == 0


def test_build_risk_state_applies_per_symbol_overrides() -> None:
    # BTC gets a tight 1-loss breaker; ETH keeps a loose 5-loss one.
    cfg = config(
        """
        [defaults.breaker]
        loss_limit = 5
        window_secs = 14400
        cooldown_secs = 3600
        [bots.test-bot]
        symbols = ["BTCUSDT", "ETHUSDT"]
        [bots.test-bot.overrides.BTCUSDT.breaker]
        loss_limit = 1
        """
    )
    s = bot_settings(cfg, "test-bot")
    assert s is not None
    bot = fresh_bot(s)
    btc: SymbolRisk = bot.symbol("BTCUSDT")
    eth: SymbolRisk = bot.symbol("ETHUSDT")

    # One loss trips BTC (limit 1) but not ETH (limit 5).
    btc.breaker.record_loss(T0_SECS)
    eth.breaker.record_loss(T0_SECS)
    assert btc.breaker.is_tripped, "BTC's 1-loss breaker should trip"
    assert not eth.breaker.is_tripped, "ETH's 5-loss breaker should not trip on one loss"
