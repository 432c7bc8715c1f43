"""H10-1: the daily-loss gate on the halts topic across the 00:00 UTC rollover.

``portfolio_daily_loss`` blocks when latched *or* breached live (SPEC §4.4), and
its halt events follow exactly that (decision H10-1). The rollover releases the
latch, but a losing position carried into the new day can keep the equity at or
past ``max_daily_loss``: the account record still lists the block and opens are
denied, so the halts topic must not say ``resumed`` then — only once an event
(fill, outcome, mark) brings the equity back above the limit. The sweep still
never *engages* the latch (D3).
"""

from __future__ import annotations

from typing import Any

from tests.support.builders import (
    DAY_MS,
    MIDNIGHT,
    T0,
    account_record,
    engine,
    fill,
    intent,
)
from worker.core import Effects, RiskEngine
from worker.kafka.records import snapshot_records
from worker.messages import HaltEvent, Mark

CONFIG = """
[bots.alpha]
pnl_source = "fills"
[bots.alpha.session]
loss_limit = -1000000.0
[bots.alpha.portfolio]
max_daily_loss = -50.0
[bots.alpha.orders]
mark_max_age_ms = 172800000
"""
NEXT = MIDNIGHT + DAY_MS
"""00:00 UTC of the day after ``T0``."""
LOSS_ID = "alpha/*/portfolio_daily_loss/"


def mark(price: float, ts: int, symbol: str = "BTCUSDT") -> Mark:
    return Mark(symbol=symbol, price=price, ts=ts)


def halts(out: Effects) -> list[tuple[str, str, str, int, int | None]]:
    return [(h.kind, h.gate, h.event_id, h.ts, h.until_ts) for h in out.halts]


def decide(e: RiskEngine, now: int, symbol: str = "ETHUSDT") -> str | None:
    (d,) = e.apply(intent(symbol=symbol, ts=now), now).decisions
    return d.gate


def blocks(e: RiskEngine, now: int) -> list[str]:
    return [b.gate for b in account_record(e, now).blocks]


def long_marked_down(e: RiskEngine) -> None:
    """Long 1 BTC @ 100 marked at 40: equity -60, past the -50 limit: latched."""
    e.apply(fill("buy", 1.0, 100.0), T0)
    assert e.apply_mark(mark(100.0, T0)).halts == []
    out = e.apply_mark(mark(40.0, T0 + 1))
    assert halts(out) == [
        ("halted", "portfolio_daily_loss", LOSS_ID + "1", T0 + 1, NEXT),
    ]


def test_rollover_with_a_carried_losing_position_publishes_no_resumed_daily_loss() -> None:
    e = engine(CONFIG)
    long_marked_down(e)
    swept = e.sweep(NEXT + 5)
    assert halts(swept) == []  # the latch is released, the gate still blocks live
    assert e.bots["alpha"].portfolio.halted is False
    record = account_record(e, NEXT + 6)
    assert (record.equity, record.entries_allowed) == (-60.0, False)
    assert blocks(e, NEXT + 6) == ["portfolio_daily_loss"]
    assert decide(e, NEXT + 6) == "portfolio_daily_loss"
    recovered = e.apply_mark(mark(60.0, NEXT + 8))  # equity -40: above the limit
    assert halts(recovered) == [
        ("resumed", "portfolio_daily_loss", LOSS_ID + "2", NEXT + 8, None),
    ]
    assert recovered.halts[0].reason == "portfolio latch cleared at 00:00 UTC"
    assert blocks(e, NEXT + 9) == []
    assert decide(e, NEXT + 9) is None


def test_rollover_with_the_equity_back_above_the_limit_publishes_resumed_at_once() -> None:
    e = engine(CONFIG)
    long_marked_down(e)
    assert e.apply_mark(mark(80.0, T0 + 2)).halts == []  # -20, but latched for the day
    swept = e.sweep(NEXT + 5)
    assert halts(swept) == [("resumed", "portfolio_daily_loss", LOSS_ID + "2", NEXT + 5, None)]
    assert (blocks(e, NEXT + 6), decide(e, NEXT + 6)) == ([], None)


def test_an_event_of_the_new_day_still_past_the_limit_latches_it_again_silently() -> None:
    """Carried past the rollover still breached, the first event of the day latches the
    gate for the new day: it was shown halted all along, so nothing is published."""
    e = engine(CONFIG)
    long_marked_down(e)
    assert e.sweep(NEXT + 5).halts == []
    assert e.apply_mark(mark(45.0, NEXT + 6)).halts == []  # -55: latched again
    assert e.bots["alpha"].portfolio.halted is True
    assert e.apply_mark(mark(90.0, NEXT + 7)).halts == []  # -10: latched for the day
    assert decide(e, NEXT + 8) == "portfolio_daily_loss"
    assert halts(e.sweep(NEXT + DAY_MS)) == [
        ("resumed", "portfolio_daily_loss", LOSS_ID + "2", NEXT + DAY_MS, None)
    ]


def test_a_carried_loss_past_the_limit_once_realised_pnl_restarts_halts_at_the_rollover() -> None:
    """+20 realised and -60 open is -40 today; at midnight realised restarts at 0 and the
    carried -60 blocks live: published ``halted`` at the rollover, the latch untouched."""
    e = engine(CONFIG)
    e.apply(fill("buy", 1.0, 100.0, symbol="SOLUSDT"), T0)
    e.apply(fill("sell", 1.0, 120.0, symbol="SOLUSDT"), T0)  # +20 realised
    e.apply(fill("buy", 1.0, 100.0), T0)
    assert e.apply_mark(mark(40.0, T0 + 1)).halts == []  # equity -40
    swept = e.sweep(NEXT + 5)
    assert halts(swept) == [
        ("halted", "portfolio_daily_loss", LOSS_ID + "1", NEXT + 5, NEXT + DAY_MS),
    ]
    assert swept.halts[0].reason == "equity (with unrealised PnL) reached max daily loss -50"
    assert e.bots["alpha"].portfolio.halted is False  # the sweep never engages the latch
    assert decide(e, NEXT + 6) == "portfolio_daily_loss"


def test_a_late_mark_that_breaches_live_publishes_halted_and_latches_nothing() -> None:
    """A mark stamped yesterday (arriving after the rollover) latches nothing today, but
    the account record lists the live breach it makes: the halts topic says so."""
    e = engine(CONFIG)
    e.apply(fill("buy", 1.0, 100.0), T0)
    e.apply_mark(mark(100.0, T0))
    assert e.sweep(NEXT + 5).halts == []
    late = e.apply_mark(mark(40.0, NEXT - 1))
    assert halts(late) == [
        ("halted", "portfolio_daily_loss", LOSS_ID + "1", NEXT - 1, NEXT + DAY_MS)
    ]
    assert e.bots["alpha"].portfolio.halted is False
    assert halts(e.apply_mark(mark(70.0, NEXT + 6))) == [
        ("resumed", "portfolio_daily_loss", LOSS_ID + "2", NEXT + 6, None)
    ]


# -- replay equals live ----------------------------------------------------------------

Step = tuple[str, Any]
STEPS: list[Step] = [
    ("fill", fill("buy", 1.0, 100.0, fill_id="f-1")),
    ("mark", mark(100.0, T0)),
    ("mark", mark(40.0, T0 + 1)),  # latched: halted /1
    ("sweep", T0 + 3_600_000),
    ("sweep", NEXT + 5),  # released, still breached: nothing
    ("intent", NEXT + 6),  # denied
    ("mark", mark(60.0, NEXT + 8)),  # back above: resumed /2
    ("intent", NEXT + 9),  # allowed
    ("mark", mark(30.0, NEXT + 10)),  # -70: halted /3
    ("sweep", NEXT + DAY_MS + 1),  # carried, still breached: nothing
    ("mark", mark(55.0, NEXT + DAY_MS + 2)),  # -45: resumed /4
]


def _at(step: Step) -> int:
    kind, arg = step
    at: int = arg if kind in ("sweep", "intent") else arg.ts
    return at


def _run(e: RiskEngine, steps: list[Step], out: Effects) -> list[tuple[Any, ...]]:
    """Apply ``steps``; the halt events and decisions they published, in order."""
    published: list[tuple[Any, ...]] = []
    for kind, arg in steps:
        step = Effects()
        if kind == "fill":
            e.apply(arg, arg.ts, out=step)
        elif kind == "mark":
            e.apply_mark(arg, step)
        elif kind == "sweep":
            e.sweep(arg, step)
        else:
            e.apply(intent(symbol="ETHUSDT", ts=arg, intent_id=f"i-{arg}"), arg, out=step)
        published.extend(_content(h) for h in step.halts)
        published.extend((d.intent_id, d.gate) for d in step.decisions)
        out.dirty_bots |= step.dirty_bots
        out.dirty_symbols |= step.dirty_symbols
    return published


def _content(h: HaltEvent) -> tuple[Any, ...]:
    return (h.event_id, h.kind, h.gate, h.reason, h.ts, h.until_ts)


def test_a_restore_mid_way_publishes_what_the_uninterrupted_run_publishes() -> None:
    """Persist after every step, restore into a new engine (its marks read back first, as
    the worker does) at the next step's time, and run the rest: the same halt events,
    ids and content, and decisions — whether the restore lands while latched, while
    the carried loss blocks live after a rollover, or across the rollover itself."""
    live = engine(CONFIG)
    expected = _run(live, STEPS, Effects())
    assert [x[:2] for x in expected if len(x) == 6] == [
        (LOSS_ID + "1", "halted"),
        (LOSS_ID + "2", "resumed"),
        (LOSS_ID + "3", "halted"),
        (LOSS_ID + "4", "resumed"),
    ]
    for cut in range(1, len(STEPS)):
        first = engine(CONFIG)
        dirty = Effects()
        before = _run(first, STEPS[:cut], dirty)
        records = snapshot_records(first, dirty, first.config.topics, {"alpha": 0})
        log = {r.key.decode(): r.value for r in records if r.key is not None}
        restored = engine(CONFIG)
        for kind, arg in STEPS[:cut]:
            if kind == "mark":
                restored.apply_mark(arg)
        at = _at(STEPS[cut])
        start = Effects()
        assert restored.restore(log, at, start) == []
        after = [_content(h) for h in start.halts]
        after += _run(restored, STEPS[cut:], Effects())
        assert before + after == expected, cut
