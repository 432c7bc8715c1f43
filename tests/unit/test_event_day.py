"""An event never moves its session's day: only the wall clock does (decisions T1, T2).

The data paths (``worker.core.events``) used to pass the session's day before
and after booking to the account net, which re-summed when they differed; a
mutant showed that branch was never taken. It cannot be: a session's day moves
only in ``SessionPnl.tick`` (sweep, restore, a decision's tick) or by a restore,
never while an outcome or a fill is applied. This pins that invariant for events
stamped a day ahead (clamped to today) and a day late (ignored), with the account
net exactly today's sum, for both input kinds.
"""

from __future__ import annotations

import math

from tests.support.builders import DAY_MS, T0, config, fill, origin, outcome
from worker.core import RiskEngine

CONFIG = """
[defaults]
accept_unknown_bots = true
[defaults.breaker]
loss_limit = 0
"""
FILLS = """
[bots.alpha]
pnl_source = "fills"
"""


def sessions(engine: RiskEngine) -> dict[str, tuple[int, float]]:
    bot = engine.bots["alpha"]
    return {n: (s.session.last_reset_day, s.session.net_pnl) for n, s in bot.symbols.items()}


def account_net(engine: RiskEngine) -> float:
    bot = engine.bots["alpha"]
    return bot.account.account_net(bot.day)


def test_an_outcome_a_day_ahead_or_late_never_moves_its_sessions_day() -> None:
    engine = RiskEngine(config(CONFIG))
    day = T0 // DAY_MS
    engine.apply(outcome(-5.0, ts=T0), T0, origin(0))
    engine.apply(outcome(-7.0, ts=T0 + DAY_MS), T0, origin(1), record_ts=T0 + DAY_MS)
    engine.apply(outcome(-11.0, ts=T0 - DAY_MS), T0, origin(2))
    engine.apply(outcome(3.0, ts=T0, symbol="ETHUSDT"), T0, origin(3))
    assert sessions(engine) == {"BTCUSDT": (day, -12.0), "ETHUSDT": (day, 3.0)}
    assert account_net(engine) == math.fsum([-12.0, 3.0]) == -9.0


def test_a_fill_a_day_ahead_or_late_never_moves_its_sessions_day() -> None:
    engine = RiskEngine(config(CONFIG + FILLS))
    day = T0 // DAY_MS
    src = "trading.fills/0"
    engine.apply(fill("buy", 1.0, 100.0, ts=T0), T0, origin(0, src))
    engine.apply(fill("sell", 1.0, 90.0, ts=T0 + DAY_MS), T0, origin(1, src), record_ts=T0 + DAY_MS)
    engine.apply(fill("buy", 1.0, 100.0, ts=T0 - DAY_MS), T0, origin(2, src))
    engine.apply(fill("sell", 1.0, 80.0, ts=T0 - DAY_MS), T0, origin(3, src))
    assert sessions(engine) == {"BTCUSDT": (day, -10.0)}
    assert account_net(engine) == -10.0
