"""Restoring many symbols at once (issue 16, restore of 100k symbols <= 2 s).

A bulk restore loads every record first and then sweeps each restored bot once:
each symbol is ticked once (not once when loaded and again in the sweep), the
bot's day is checked once (not once per symbol, which valued every open position
each time), and the bot's next deadline is taken from all its symbols at once.
The state and the halt events are those of restoring the symbols one by one.
"""

from __future__ import annotations

import msgspec
import pytest

from tests.support.builders import DAY_MS, T0, apply_all, engine, fill, outcome
from worker.core import Effects, RiskEngine
from worker.core.bot import BotRisk
from worker.core.snapshot import (
    PortfolioSnapshot,
    decode_snapshot,
    encode,
    portfolio_key,
    symbol_key,
)
from worker.core.symbol import UNBORN, SymbolRisk
from worker.messages import Mark

BREAKER_2 = """
[defaults]
accept_unknown_bots = true
[defaults.breaker]
loss_limit = 2
cooldown_secs = 600
[defaults.session]
loss_limit = -50.0
"""

SYMBOLS = ("AAA", "BBB", "CCC")


def _records() -> dict[str, bytes | None]:
    """Three symbols: tripped at different times, a halted session, an open position."""
    eng = engine(BREAKER_2)
    dirty = apply_all(
        eng,
        [
            outcome(-1.0, symbol="AAA", ts=T0),
            outcome(-1.0, symbol="AAA", ts=T0 + 1_000),
            outcome(-1.0, symbol="BBB", ts=T0 + 5_000),
            outcome(-1.0, symbol="BBB", ts=T0 + 6_000),
            outcome(-80.0, symbol="CCC", ts=T0 + 7_000),
            fill("buy", 2.0, 100.0, symbol="CCC", ts=T0 + 8_000),
        ],
    )
    records: dict[str, bytes | None] = {}
    for persisted in eng.snapshots(dirty):
        records[portfolio_key(persisted.bot)] = encode(persisted.portfolio)
        for symbol, snap in persisted.symbols:
            records[symbol_key(persisted.bot, symbol)] = encode(snap)
    return records


def _one_by_one(records: dict[str, bytes | None], now: int) -> tuple[RiskEngine, Effects]:
    """The reference: each symbol restored alone (restore, tick, its own deadline)."""
    eng = engine(BREAKER_2)
    out = Effects()
    portfolio = records[portfolio_key("alpha")]
    assert portfolio is not None
    _, _, psnap = decode_snapshot(portfolio_key("alpha"), portfolio)
    bot = eng.bot("alpha", now)
    bot.restore_portfolio(psnap, now, out)  # type: ignore[arg-type]
    for symbol in SYMBOLS:
        value = records[symbol_key("alpha", symbol)]
        assert value is not None
        _, _, snap = decode_snapshot(symbol_key("alpha", symbol), value)
        bot.restore_symbol(symbol, snap, now, out)  # type: ignore[arg-type]
    bot.account.resum()
    bot.sweep(now, out)
    return eng, out


def _without_ids(eng: RiskEngine) -> PortfolioSnapshot:
    """The portfolio record but its id windows (the reference does not restore chunks)."""
    snap = eng.bots["alpha"].portfolio_snapshot()
    return msgspec.structs.replace(snap, outcome_ids=None, fill_ids=None)


@pytest.mark.parametrize(
    "now",
    [T0 + 9_000, T0 + 601_500, T0 + DAY_MS],
    ids=["all-blocked", "first-cooled", "next-day"],
)
def test_bulk_restore_matches_restoring_symbols_one_by_one(now: int) -> None:
    records = _records()
    bulk = engine(BREAKER_2)
    out = Effects()
    assert bulk.restore(records, now, out) == []
    reference, ref_out = _one_by_one(records, now)
    assert bulk.bots["alpha"].deadline == reference.bots["alpha"].deadline
    for symbol in SYMBOLS:
        assert bulk.bots["alpha"].symbols[symbol].snapshot() == (
            reference.bots["alpha"].symbols[symbol].snapshot()
        )
        assert bulk.bots["alpha"].symbols[symbol].gate_state(now) == (
            reference.bots["alpha"].symbols[symbol].gate_state(now)
        )
    assert _without_ids(bulk) == _without_ids(reference)
    assert sorted(h.event_id for h in out.halts) == sorted(h.event_id for h in ref_out.halts)


def test_bulk_restore_deadline_is_the_earliest_of_every_symbol() -> None:
    """AAA's trip (at T0 + 1 s) ends first: the bot wakes then, not at midnight."""
    eng = engine(BREAKER_2)
    eng.restore(_records(), T0 + 9_000, Effects())
    assert eng.bots["alpha"].deadline == (T0 + 1_000) // 1000 * 1000 + 600_000


def test_bulk_restore_ticks_each_symbol_once_and_the_bot_day_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: each symbol was ticked twice (when loaded and in the sweep), and each
    tick re-checked the bot's day, valuing every open position again (O(symbols²))."""
    ticks: list[str] = []
    rolls: list[int] = []
    tick, roll = SymbolRisk.tick, BotRisk._roll_day

    def counted_tick(self: SymbolRisk, now_ms: int) -> tuple[bool, bool]:
        ticks.append(self.symbol)
        return tick(self, now_ms)

    def counted_roll(self: BotRisk, now_ms: int, out: Effects) -> bool:
        rolls.append(now_ms)
        return roll(self, now_ms, out)

    monkeypatch.setattr(SymbolRisk, "tick", counted_tick)
    monkeypatch.setattr(BotRisk, "_roll_day", counted_roll)
    engine(BREAKER_2).restore(_records(), T0 + DAY_MS, Effects())
    assert sorted(ticks) == list(SYMBOLS)
    assert rolls == [T0 + DAY_MS]


def test_restored_symbols_without_birth_watermarks_share_one_empty_mapping() -> None:
    """64 bytes a restored symbol: ``born`` was copied into a new empty dict each."""
    eng = engine(BREAKER_2)
    eng.restore(_records(), T0 + 9_000, Effects())
    syms = eng.bots["alpha"].symbols
    assert [syms[s].born is UNBORN for s in SYMBOLS] == [True, True, True]
    assert [syms[s].snapshot().born for s in SYMBOLS] == [{}, {}, {}]


def test_restored_birth_watermarks_are_kept() -> None:
    records = _records()
    value = records[symbol_key("alpha", "AAA")]
    assert value is not None
    records[symbol_key("alpha", "AAA")] = value.replace(
        b'"born":{}', b'"born":{"trading.outcomes/0":41}'
    )
    eng = engine(BREAKER_2)
    eng.restore(records, T0 + 9_000, Effects())
    assert eng.bots["alpha"].symbols["AAA"].snapshot().born == {"trading.outcomes/0": 41}


DRAWDOWN = """
[defaults]
accept_unknown_bots = true
[defaults.portfolio]
max_drawdown = 1000.0
"""


def test_drawdown_day_restored_past_midnight_opens_at_every_restored_position() -> None:
    """Regression: the first symbol restored rolled the bot's day, so the drawdown's new
    day opened at the equity of the symbols restored so far (the portfolio record comes
    first, D3): here AAA's +10 alone, not AAA's +10 and BBB's +30."""
    live = engine(DRAWDOWN)
    dirty = apply_all(
        live,
        [
            fill("buy", 1.0, 100.0, symbol="AAA", ts=T0),
            fill("buy", 1.0, 100.0, symbol="BBB", ts=T0 + 1),
        ],
    )
    records: dict[str, bytes | None] = {}
    for persisted in live.snapshots(dirty):
        records[portfolio_key(persisted.bot)] = encode(persisted.portfolio)
        for symbol, snap in persisted.symbols:
            records[symbol_key(persisted.bot, symbol)] = encode(snap)
    eng = engine(DRAWDOWN)
    eng.apply_mark(Mark("AAA", 110.0, T0 + DAY_MS))
    eng.apply_mark(Mark("BBB", 130.0, T0 + DAY_MS))
    eng.restore(records, T0 + DAY_MS, Effects())
    drawdown = eng.bots["alpha"].controls.drawdown
    assert (drawdown.day, drawdown.peak) == ((T0 + DAY_MS) // DAY_MS, 40.0)
