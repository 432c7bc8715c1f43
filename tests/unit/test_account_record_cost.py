"""The account gate record sums nothing (docs/performance.md, lever 1).

Every batch builds the account record of every bot it touched. Today's account
net is a sum over all of the bot's symbols, and the record used to sum it three
times (the daily-loss block, the figure, the equity), then once (phase 2): a
worker holding many symbols paid O(symbols) per touched bot per batch, the halt
path's growth with state. The account now keeps the sum exactly as sessions
change (phase 3), so the record reads no session at all. The figures must not
change.
"""

from __future__ import annotations

import pytest

from worker.config import load_config
from worker.core import Effects, Origin, RiskEngine, valuation
from worker.core.marks import exposure
from worker.core.session import SessionPnl
from worker.messages import AccountGateState, Block, Fill, TradeOutcome

T0 = 1_750_000_000_000  # 2025-06-15T15:06:40Z
DAY_END = (T0 // 86_400_000 + 1) * 86_400_000


def engine(limit: str) -> RiskEngine:
    toml = f"[defaults]\naccept_unknown_bots = true\n[defaults.portfolio]\n{limit}\n"
    return RiskEngine(load_config(text=toml, env={}))


def account_record(eng: RiskEngine) -> AccountGateState:
    dirty = Effects()
    dirty.dirty_bots.add("bot")
    (record,) = eng.gate_states(dirty, T0)
    assert isinstance(record, AccountGateState)
    return record


def book(eng: RiskEngine, nets: list[tuple[float, float]]) -> None:
    for n, (gross, fee) in enumerate(nets):
        outcome = TradeOutcome(f"o{n}", "bot", f"S{n}", gross, fee, T0)
        eng.apply(outcome, T0, Origin("trading.outcomes/0", n))


@pytest.fixture
def sums(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Days of the sessions whose net PnL was read, read by read."""
    calls: list[int] = []
    net_pnl = SessionPnl.net_pnl

    def counted(self: SessionPnl) -> float:
        calls.append(self.last_reset_day)
        return net_pnl.fget(self)  # type: ignore[attr-defined, no-any-return]

    monkeypatch.setattr(SessionPnl, "net_pnl", property(counted))
    return calls


def test_account_record_reads_no_session_with_a_daily_loss_limit(
    sums: list[int],
) -> None:
    eng = engine("max_daily_loss = -100.0")
    book(eng, [(2.5, 0.5), (-1.0, 0.0), (4.0, 0.5)])
    sums.clear()
    record = account_record(eng)
    assert sums == []
    assert (record.entries_allowed, record.account_net_pnl, record.equity) == (True, 4.5, 4.5)


def test_account_record_reads_no_session_without_a_daily_loss_limit(
    sums: list[int],
) -> None:
    eng = engine("max_concurrent_positions = 10")
    book(eng, [(2.5, 0.5), (-1.0, 0.0)])
    sums.clear()
    record = account_record(eng)
    assert sums == []
    assert (record.blocks, record.account_net_pnl, record.equity) == ([], 1.0, 1.0)


def test_account_record_past_the_daily_loss_still_shows_the_block_and_the_exact_net(
    sums: list[int],
) -> None:
    eng = engine("max_daily_loss = -5.0")
    book(eng, [(-4.0, 0.5), (-2.0, 0.0), (1.0, 0.0)])
    sums.clear()
    record = account_record(eng)
    assert sums == []
    block = Block("portfolio_daily_loss", "account net PnL reached max daily loss -5", DAY_END)
    assert (record.entries_allowed, record.blocks) == (False, [block])
    assert (record.account_net_pnl, record.equity) == (-5.5, -5.5)


def test_fill_without_any_mark_values_no_open_position(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fill's daily-loss latch check read the unrealised PnL, which re-valued every
    open position after each fill (the fill moved one): O(open positions) per fill
    even with no mark held, where every position counts 0. Now the fill values its
    own position once, and the record none."""
    eng = engine("max_daily_loss = -1000.0")
    for n in range(20):
        fill = Fill(f"f{n}", "bot", f"S{n}", "buy", 1.0, 100.0, 0.0, T0)
        eng.apply(fill, T0, Origin("trading.fills/0", n))
    valued: list[float] = []
    value = exposure

    def counted(qty: float, avg: float, cv: float, mark: float | None) -> float:
        valued.append(qty)
        return value(qty, avg, cv, mark)

    monkeypatch.setattr(valuation, "exposure", counted)
    eng.apply(Fill("f20", "bot", "S20", "buy", 3.0, 100.0, 0.0, T0), T0, Origin("f/0", 20))
    record = account_record(eng)
    assert valued == [3.0]
    assert (record.open_positions, record.unrealised_pnl, record.gross_exposure) == (
        21,
        0.0,
        2300.0,
    )
