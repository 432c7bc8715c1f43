"""PortfolioRisk: daily-loss latch, concurrency and exposure caps, reservations."""

from __future__ import annotations

import pytest

from tests.support.builders import (
    DAY_MS,
    MIDNIGHT,
    T0,
    apply_all,
    control,
    engine,
    fill,
    intent,
    outcome,
)
from worker.config import PortfolioConfig
from worker.core import Effects, PortfolioRisk
from worker.core.session import utc_day
from worker.core.snapshot import PortfolioSnapshot


def portfolio(**limits: float | int | None) -> PortfolioRisk:
    p = PortfolioRisk(PortfolioConfig(**limits))  # type: ignore[arg-type]
    p.tick(T0)
    return p


def test_all_limits_are_off_by_default() -> None:
    p = portfolio()
    assert not p.observe(-1e12, T0)
    assert not p.blocked_by_daily_loss(-1e12)
    assert not p.concurrency_blocks({f"S{i}" for i in range(1000)}, "NEW")
    assert not p.exposure_blocks(1e15, 1e15)


def test_daily_loss_latches_at_the_limit() -> None:
    p = portfolio(max_daily_loss=-100.0)
    assert not p.observe(-99.0, T0)
    assert p.observe(-100.0, T0) is True
    assert p.halted
    assert p.observe(-200.0, T0) is False, "already latched"


def test_latch_is_sticky_after_pnl_recovers() -> None:
    p = portfolio(max_daily_loss=-100.0)
    p.observe(-150.0, T0)
    p.observe(+50.0, T0 + 1)
    assert p.halted
    assert p.blocked_by_daily_loss(+50.0)


def test_live_check_blocks_before_any_observation() -> None:
    p = portfolio(max_daily_loss=-100.0)
    assert p.blocked_by_daily_loss(-100.0)
    assert not p.halted


def test_latch_clears_at_utc_rollover() -> None:
    p = portfolio(max_daily_loss=-100.0)
    p.observe(-150.0, T0)
    assert p.tick(MIDNIGHT + DAY_MS - 1) is False
    assert p.halted
    assert p.tick(MIDNIGHT + DAY_MS) is True
    assert not p.halted
    assert p.last_reset_day == utc_day(MIDNIGHT + DAY_MS)


def test_observation_from_an_earlier_day_does_not_latch_today() -> None:
    p = portfolio(max_daily_loss=-100.0)
    p.tick(T0 + DAY_MS)
    assert p.observe(-500.0, T0) is False
    assert not p.halted


def test_concurrency_counts_only_new_symbols() -> None:
    p = portfolio(max_concurrent_positions=2)
    open_symbols = {"BTC", "ETH"}
    assert not p.concurrency_blocks(open_symbols, "BTC")
    assert p.concurrency_blocks(open_symbols, "SOL")
    assert not p.concurrency_blocks({"BTC"}, "SOL")


def test_concurrency_counts_reserved_symbols() -> None:
    p = portfolio(max_concurrent_positions=2)
    p.reserve("i1", "ETH", 10.0, T0 + 30_000)
    assert p.concurrency_blocks({"BTC"}, "SOL")
    assert not p.concurrency_blocks({"BTC"}, "ETH")


def test_exposure_cap_includes_reservations() -> None:
    p = portfolio(max_gross_exposure=1000.0)
    assert not p.exposure_blocks(400.0, 600.0), "exactly at the cap is allowed"
    p.reserve("i1", "ETH", 300.0, T0 + 30_000)
    assert p.reserved_notional == pytest.approx(300.0)
    assert p.exposure_blocks(400.0, 301.0)
    assert not p.exposure_blocks(400.0, 300.0)
    assert p.consume("i1", "ETH", 1.0)  # no qty (an older snapshot's): released whole
    assert not p.consume("i1", "ETH", 1.0)
    assert not p.exposure_blocks(400.0, 600.0)


def test_reservations_expire_at_their_deadline() -> None:
    p = portfolio()
    p.reserve("i1", "BTC", 1.0, T0 + 10)
    p.reserve("i2", "ETH", 1.0, T0 + 20)
    assert p.expire_reservations(T0 + 9) == []
    assert p.expire_reservations(T0 + 10) == ["i1"]
    assert list(p.reservations) == ["i2"]


def test_snapshot_restore_keeps_latch_and_reservations() -> None:
    p = portfolio(max_daily_loss=-1.0)
    p.observe(-5.0, T0)
    p.reserve("i1", "BTC", 12.5, T0 + 30_000)
    q = PortfolioRisk(PortfolioConfig())
    q.restore(PortfolioSnapshot(**p.persisted(whole=True)))
    assert q.persisted(whole=True) == p.persisted(whole=True)
    assert q.halted


# -- through the engine ------------------------------------------------------------------

LATCH = """
[defaults.session]
loss_limit = -1e9
[bots.alpha.portfolio]
max_daily_loss = -100.0
"""


def test_engine_latch_is_sticky_and_cleared_by_the_rollover_sweep() -> None:
    eng = engine(LATCH)
    out = apply_all(eng, [outcome(-150.0, symbol="BTCUSDT")])
    assert [(h.kind, h.gate, h.symbol) for h in out.halts] == [
        ("halted", "portfolio_daily_loss", None)
    ]
    assert out.halts[0].until_ts == MIDNIGHT + DAY_MS
    apply_all(eng, [outcome(+120.0, symbol="BTCUSDT", ts=T0 + 1)])
    bot = eng.bots["alpha"]
    assert bot.account.account_net(utc_day(T0)) == pytest.approx(-30.0)

    d = eng.apply(intent(symbol="ETHUSDT", ts=T0 + 2), T0 + 2).decisions[0]
    assert (d.allowed, d.gate) == (False, "portfolio_daily_loss")

    sweep = eng.sweep(MIDNIGHT + DAY_MS)
    assert ("resumed", "portfolio_daily_loss") in [(h.kind, h.gate) for h in sweep.halts]
    assert "alpha" in sweep.dirty_bots
    t1 = MIDNIGHT + DAY_MS + 1
    d = eng.apply(intent(symbol="ETHUSDT", ts=t1), t1).decisions[0]
    assert d.allowed


def test_engine_late_outcome_from_yesterday_does_not_latch_today() -> None:
    eng = engine(LATCH)
    t1 = T0 + DAY_MS
    apply_all(eng, [outcome(10.0, symbol="ETHUSDT", ts=t1)], now_ms=t1)
    out = apply_all(eng, [outcome(-600.0, symbol="BTCUSDT", ts=T0)], now_ms=t1)
    bot = eng.bots["alpha"]
    assert not bot.portfolio.halted
    assert not [h for h in out.halts if h.gate == "portfolio_daily_loss"]
    d = eng.apply(intent(symbol="SOLUSDT", ts=t1), t1).decisions[0]
    assert d.allowed, d


def test_engine_max_concurrent_counts_only_new_symbols() -> None:
    eng = engine(
        """
        [bots.alpha.portfolio]
        max_concurrent_positions = 2
        """
    )
    apply_all(
        eng, [fill("buy", 1.0, 10.0, symbol="BTCUSDT"), fill("sell", 1.0, 10.0, symbol="ETHUSDT")]
    )
    same = eng.apply(intent("open", "buy", symbol="BTCUSDT"), T0).decisions[0]
    assert same.allowed
    new = eng.apply(intent("open", "buy", symbol="SOLUSDT"), T0).decisions[0]
    assert (new.allowed, new.gate) == (False, "max_concurrent_positions")


def test_engine_zero_concurrency_means_unlimited() -> None:
    eng = engine("[bots.alpha]\n")
    apply_all(eng, [fill("buy", 1.0, 10.0, symbol=f"S{i}") for i in range(50)])
    assert eng.apply(intent(symbol="NEW"), T0).decisions[0].allowed


def test_engine_exposure_cap_includes_reservations() -> None:
    eng = engine(
        """
        [bots.alpha.portfolio]
        max_gross_exposure = 1000.0
        """
    )
    apply_all(eng, [fill("buy", 2.0, 100.0, symbol="BTCUSDT")])  # 200 open
    first = eng.apply(intent(qty=5.0, price=100.0, symbol="ETHUSDT"), T0).decisions[0]
    assert first.allowed  # 200 + 500 <= 1000, reserves 500
    second = eng.apply(intent(qty=4.0, price=100.0, symbol="SOLUSDT"), T0).decisions[0]
    assert (second.allowed, second.gate) == (False, "gross_exposure")
    third = eng.apply(intent(qty=3.0, price=100.0, symbol="SOLUSDT"), T0).decisions[0]
    assert third.allowed  # 200 + 500 + 300 == 1000
    assert eng.bots["alpha"].portfolio.reserved_notional == pytest.approx(800.0)


def test_engine_exposure_uses_contract_value() -> None:
    eng = engine(
        """
        [bots.alpha.portfolio]
        max_gross_exposure = 100.0
        """
    )
    ok = eng.apply(intent(qty=10.0, price=1000.0, contract_value=0.01), T0).decisions[0]
    assert ok.allowed
    denied = eng.apply(intent(qty=1.0, price=1.0, contract_value=1.0, symbol="X"), T0)
    assert denied.decisions[0].gate == "gross_exposure"


def test_engine_sweep_without_changes_is_quiet() -> None:
    eng = engine(LATCH)
    apply_all(eng, [outcome(-10.0)])
    out = eng.sweep(T0 + 1000, Effects())
    assert out.halts == []
    assert out.dirty_bots == set()
    assert out.dirty_symbols == set()


# -- the account net behind the latch stays exact through every way a session changes -----

ACCOUNT = """
[defaults.session]
loss_limit = -1e9
[bots.alpha.portfolio]
max_daily_loss = -100.0
"""


def test_latch_sees_an_operator_session_reset() -> None:
    eng = engine(ACCOUNT)
    apply_all(eng, [outcome(-40.0, symbol="A"), outcome(-40.0, symbol="B")])
    eng.apply(control("reset_session", symbol="A"), T0)  # account back to -40
    apply_all(eng, [outcome(-50.0, symbol="C", ts=T0 + 1)])  # -90: above the limit
    bot = eng.bots["alpha"]
    assert bot.account.account_net(utc_day(T0)) == pytest.approx(-90.0)
    assert not bot.portfolio.halted


def test_latch_sees_a_restored_session() -> None:
    eng = engine(ACCOUNT)
    apply_all(eng, [outcome(-90.0, symbol="A")])
    snap = eng.bots["alpha"].symbols["A"].snapshot()

    fresh = engine(ACCOUNT)
    apply_all(fresh, [outcome(5.0, symbol="B")])  # the account net is being tracked
    fresh.bot("alpha").restore_symbol("A", snap, T0 + 1, Effects())
    apply_all(fresh, [outcome(-20.0, symbol="C", ts=T0 + 2)])  # -90 + 5 - 20 = -105
    assert fresh.bots["alpha"].portfolio.halted


def test_latch_sees_a_rollover_by_the_sweep() -> None:
    eng = engine(ACCOUNT)
    apply_all(eng, [outcome(-80.0, symbol="A")])
    tomorrow = MIDNIGHT + DAY_MS
    eng.sweep(tomorrow)
    apply_all(eng, [outcome(-50.0, symbol="B", ts=tomorrow + 1)])
    assert not eng.bots["alpha"].portfolio.halted
    apply_all(eng, [outcome(-50.0, symbol="A", ts=tomorrow + 2)])
    assert eng.bots["alpha"].portfolio.halted


def test_latch_is_exact_at_the_limit_over_many_small_losses() -> None:
    eng = engine(ACCOUNT)
    # 0.1 is not exact in binary: a running sum drifts, the latch must not.
    events = [outcome(-0.1, symbol=f"S{i % 7}", ts=T0 + i) for i in range(999)]
    apply_all(eng, events)
    bot = eng.bots["alpha"]
    assert bot.portfolio.halted == (bot.account.account_net(utc_day(T0)) <= -100.0)
    apply_all(eng, [outcome(-0.1, symbol="S0", ts=T0 + 1000), outcome(-0.1, ts=T0 + 1001)])
    assert bot.portfolio.halted
