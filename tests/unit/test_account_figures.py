"""The account figures kept exactly on change (docs/performance.md, lever 1).

A bot's account net, gross exposure, unrealised PnL and open-position count are
kept up to date as sessions, positions, marks and reservations change, so that
reading them costs O(1). The oracle here is a brute-force recomputation over
the engine's state: ``math.fsum`` of the per-symbol values. After any sequence of
outcomes, fills, intents, marks (in or out of order), sweeps across midnight and
reservation expiry, operator resets and restarts, the published figures must
equal it exactly (correctly rounded, whatever the order of the changes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.builders import DAY_MS, MIN_MS, T0, account_record, config, control, next_id
from worker.core import Effects, RiskEngine, valuation
from worker.core.bot import BotRisk
from worker.core.exact import COMPACT_AT, ExactSum
from worker.core.marks import exposure
from worker.core.session import SessionPnl
from worker.core.snapshot import encode, portfolio_key, symbol_key
from worker.errors import Rejected
from worker.messages import ControlCommand, Fill, Mark, OrderIntent, Side, TradeOutcome

CONFIG = """
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -1e15
[defaults.portfolio]
max_daily_loss = -1e15
max_gross_exposure = 1e15
[worker]
reservation_ttl_ms = 600000
[bots.beta]
pnl_source = "fills"
"""
BOTS = ("alpha", "beta")
SYMBOLS = ("AAA", "BBB", "CCC", "DDD")

# -- the oracle ------------------------------------------------------------------------------


def brute_force(eng: RiskEngine, bot: BotRisk) -> tuple[float, int, float, float, float]:
    """(account net, open positions, gross exposure, unrealised PnL, reserved notional) of
    ``bot``, recomputed from its state: ``fsum`` of the per-symbol values."""
    day = bot.day
    sessions = [s.session for s in bot.symbols.values()]
    net = math.fsum(s.net_pnl for s in sessions if s.last_reset_day == day)
    held = [s for s in bot.symbols.values() if s.position.qty != 0.0]
    exposures = []
    for s in held:
        mark = eng.marks.latest(s.symbol)
        p = s.position
        price = None if mark is None else mark.price
        exposures.append(exposure(p.qty, p.avg_price, p.contract_value, price))
    reserved = [r.notional for r in bot.portfolio.reservations.values() if not r.close]
    return (
        net,
        len(held),
        math.fsum(exposures),
        math.fsum(s.unrealised() for s in held),
        math.fsum(reserved),
    )


def published(eng: RiskEngine, bot: BotRisk, now: int) -> tuple[float, int, float, float, float]:
    record = account_record(eng, now, bot.bot)
    assert record.equity == record.account_net_pnl + (record.unrealised_pnl or 0.0)
    return (
        record.account_net_pnl,
        record.open_positions,
        record.gross_exposure,
        record.unrealised_pnl or 0.0,
        bot.portfolio.reserved_notional,
    )


# -- random sequences ------------------------------------------------------------------------


@dataclass
class World:
    """An engine driven by a wall clock, with what a restart needs (the marks topic)."""

    eng: RiskEngine = field(default_factory=lambda: RiskEngine(config(CONFIG)))
    now: int = T0
    marks: dict[str, Mark] = field(default_factory=dict)
    intents: list[OrderIntent] = field(default_factory=list)

    def apply(self, event: TradeOutcome | Fill | OrderIntent | ControlCommand) -> None:
        with contextlib.suppress(Rejected):  # bad input changes nothing (an outcome of a
            self.eng.apply(event, self.now, out=Effects())  # bot booking from fills)

    def restart(self, marks_first: bool, rebuild: bool) -> None:
        """Persist everything, then a new engine restores it (marks read before or after),
        with or without ``Account.rebuild`` once each bot is in (a bulk restore's call)."""
        records: dict[str, bytes | None] = {}
        for bot_id, bot in self.eng.bots.items():
            records[portfolio_key(bot_id)] = encode(bot.portfolio_snapshot())
            for name, sym in bot.symbols.items():
                records[symbol_key(bot_id, name)] = encode(sym.snapshot())
        self.eng = RiskEngine(config(CONFIG))
        if marks_first:
            self.replay_marks()
        self.eng.restore(records, self.now, Effects())
        if rebuild:
            for bot in self.eng.bots.values():
                bot.account.rebuild()
        if not marks_first:
            self.replay_marks()

    def replay_marks(self) -> None:
        for mark in self.marks.values():
            self.eng.apply_mark(mark, Effects())


money = st.one_of(
    st.builds(lambda n, k: n / 10.0**k, st.integers(-(10**12), 10**12), st.integers(0, 6)),
    st.floats(-1e12, 1e12, allow_nan=False, allow_subnormal=False),
)
"""Amounts with decimals (inexact in binary) and of any magnitude: their float sums depend
on the order of summation, their exact sum does not."""
positive = st.builds(lambda n, k: n / 10.0**k, st.integers(1, 10**8), st.integers(0, 4))
bots = st.sampled_from(BOTS)
symbols = st.sampled_from(SYMBOLS)
sides = st.sampled_from(("buy", "sell"))
ages = st.sampled_from((0, 1, 5 * MIN_MS, DAY_MS))
"""How long before the wall clock an event is stamped (a day: a late event)."""
SWEEPS = (1, MIN_MS, 15 * MIN_MS, 6 * 60 * MIN_MS, DAY_MS)
"""Wall-clock steps: across midnight, past the reservations' TTL (10 minutes)."""


def outcome(bot: str, symbol: str, gross: float, fee: float, world: World) -> None:
    world.apply(TradeOutcome(next_id("o"), bot, symbol, gross, abs(fee), world.now))


def trade(
    bot: str, symbol: str, side: Side, size: tuple[float, float, float], world: World
) -> None:
    """A fill of (qty, price, contract value) at the wall clock."""
    qty, price, cv = size
    world.apply(
        Fill(next_id("f"), bot, symbol, side, qty, price, 0.01, world.now, contract_value=cv)
    )


def late_trade(bot: str, symbol: str, side: Side, qty: float, age: int, world: World) -> None:
    world.apply(Fill(next_id("f"), bot, symbol, side, qty, 10.01, 0.5, world.now - age))


def reserve(bot: str, symbol: str, side: Side, qty: float, price: float, world: World) -> None:
    i = OrderIntent(next_id("i"), bot, symbol, "open", side, qty, price, world.now)
    world.intents.append(i)
    world.apply(i)


def consume(n: int, part: float, world: World) -> None:
    """A fill of part of an earlier intent (filled, consumed, expired or denied)."""
    if world.intents:
        i = world.intents[n % len(world.intents)]
        f = Fill(next_id("f"), i.bot, i.symbol, i.side, i.qty * part, i.price, 0.0, world.now)
        world.apply(msgspec.structs.replace(f, intent_id=i.intent_id))


def mark(symbol: str, price: float, back: int, world: World) -> None:
    """A mark ``back`` ms before the wall clock: older than the held one, it is ignored."""
    m = Mark(symbol, price, world.now - back)
    held = world.marks.get(symbol)
    if held is None or m.ts >= held.ts:
        world.marks[symbol] = m
    world.eng.apply_mark(m, Effects())


def sweep(step: int, world: World) -> None:
    world.now += step
    world.eng.sweep(world.now, Effects())


def reset(bot: str, symbol: str | None, world: World) -> None:
    world.apply(control("reset_session", bot=bot, symbol=symbol, ts=world.now))


def restart(marks_first: bool, rebuild: bool, world: World) -> None:
    world.restart(marks_first, rebuild)


Step = Callable[[World], None]
sizes = st.tuples(positive, positive, st.sampled_from((1.0, 0.1, 3.0)))
steps: st.SearchStrategy[Step] = st.one_of(
    st.builds(partial, st.just(outcome), bots, symbols, money, money),
    st.builds(partial, st.just(outcome), bots, symbols, money, money),
    st.builds(partial, st.just(trade), bots, symbols, sides, sizes),
    st.builds(partial, st.just(trade), bots, symbols, sides, sizes),
    st.builds(partial, st.just(late_trade), bots, symbols, sides, positive, ages),
    st.builds(partial, st.just(reserve), bots, symbols, sides, positive, positive),
    st.builds(partial, st.just(consume), st.integers(0, 50), st.sampled_from((0.5, 1.0, 2.0))),
    st.builds(partial, st.just(mark), symbols, positive, st.integers(0, 2 * DAY_MS)),
    st.builds(partial, st.just(sweep), st.sampled_from(SWEEPS)),
    st.builds(partial, st.just(reset), bots, st.sampled_from((None, *SYMBOLS))),
    st.builds(partial, st.just(restart), st.booleans(), st.booleans()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, min_size=1, max_size=40))
def test_account_figures_equal_fsum_over_the_symbols_after_any_sequence(plan: list[Step]) -> None:
    world = World()
    for step in plan:
        step(world)
        for bot in list(world.eng.bots.values()):
            assert published(world.eng, bot, world.now) == brute_force(world.eng, bot), step


# -- examples ---------------------------------------------------------------------------------


def test_account_net_is_the_correctly_rounded_sum_not_the_sum_in_event_order() -> None:
    """1e16 + 1 - 1e16 per symbol in that order sums to 0 with floats; exactly it is 1."""
    world = World()
    for symbol, gross in (("AAA", 1e16), ("BBB", 1.0), ("CCC", -1e16)):
        world.apply(TradeOutcome(next_id("o"), "alpha", symbol, gross, 0.0, T0))
    assert account_record(world.eng).account_net_pnl == 1.0
    assert sum([1e16, 1.0, -1e16]) == 0.0


def test_a_mark_revalues_only_the_symbol_it_moved_in_every_bot_holding_it() -> None:
    world = World()
    for bot in BOTS:
        for symbol, price in (("AAA", 10.0), ("BBB", 20.0)):
            world.apply(Fill(next_id("f"), bot, symbol, "buy", 2.0, price, 0.0, T0))
    world.eng.apply_mark(Mark("AAA", 12.5, T0), Effects())
    world.eng.apply_mark(Mark("AAA", 11.0, T0 - 1), Effects())  # older: ignored
    for bot in BOTS:
        record = account_record(world.eng, T0, bot)
        assert (record.gross_exposure, record.unrealised_pnl, record.open_positions) == (
            65.0,
            5.0,
            2,
        )


def test_a_session_of_yesterday_leaves_the_account_net_at_the_rollover() -> None:
    world = World()
    world.apply(TradeOutcome(next_id("o"), "alpha", "AAA", -40.0, 0.5, T0))
    world.apply(TradeOutcome(next_id("o"), "alpha", "BBB", 15.0, 0.0, T0))
    assert account_record(world.eng).account_net_pnl == -25.5
    tomorrow = T0 + DAY_MS
    world.eng.sweep(tomorrow, Effects())
    world.now = tomorrow
    world.apply(TradeOutcome(next_id("o"), "alpha", "AAA", 3.0, 0.0, tomorrow))
    assert account_record(world.eng, tomorrow).account_net_pnl == 3.0


def test_a_position_flip_moves_its_exposure_to_the_new_side() -> None:
    world = World()
    world.apply(Fill(next_id("f"), "alpha", "AAA", "buy", 2.0, 100.0, 0.0, T0))
    world.apply(Fill(next_id("f"), "alpha", "AAA", "sell", 5.0, 110.0, 0.0, T0))
    world.eng.apply_mark(Mark("AAA", 120.0, T0), Effects())
    record = account_record(world.eng)
    assert (record.open_positions, record.gross_exposure, record.unrealised_pnl) == (
        1,
        360.0,
        -30.0,
    )


def test_a_released_reservation_leaves_no_residue_in_the_reserved_notional() -> None:
    """Thirds of 0.1 reserved and consumed: a running float would keep a residue."""
    world = World()
    world.apply(OrderIntent("i-1", "alpha", "AAA", "open", "buy", 3.0, 0.1, T0))
    for n in range(3):
        world.apply(Fill(f"f-{n}", "alpha", "AAA", "buy", 1.0, 0.1, 0.0, T0, intent_id="i-1"))
        bot = world.eng.bots["alpha"]
        assert bot.portfolio.reserved_notional == brute_force(world.eng, bot)[4]
    assert world.eng.bots["alpha"].portfolio.reserved_notional == 0.0


# -- a read does not iterate the symbols -------------------------------------------------------


class CountingSymbols(dict):  # type: ignore[type-arg]
    """The bot's symbols, counting every pass over them."""

    passes = 0

    def values(self) -> Iterator[object]:  # type: ignore[override]
        CountingSymbols.passes += 1
        return iter(list(super().values()))

    def items(self) -> Iterator[tuple[str, object]]:  # type: ignore[override]
        CountingSymbols.passes += 1
        return iter(list(super().items()))

    def __iter__(self) -> Iterator[str]:
        CountingSymbols.passes += 1
        return super().__iter__()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> tuple[World, list[str]]:
    """A bot of 60 symbols (20 open, marked) whose symbol passes and session-net reads
    are counted."""
    world = World()
    for n in range(60):
        symbol = f"S{n:02d}"
        world.apply(TradeOutcome(next_id("o"), "alpha", symbol, 1.25 * n - 30.0, 0.1, T0))
        if n % 3 == 0:
            world.apply(Fill(next_id("f"), "alpha", symbol, "buy", 1.0, 100.0 + n, 0.0, T0))
            world.eng.apply_mark(Mark(symbol, 99.0 + n, T0), Effects())
    account_record(world.eng)  # any rebuild due happened
    bot = world.eng.bots["alpha"]
    symbols = CountingSymbols(bot.symbols)
    bot.symbols = symbols
    bot.account.symbols = symbols
    reads: list[str] = []
    net_pnl = SessionPnl.net_pnl

    def counted_net(session: SessionPnl) -> float:
        reads.append("net_pnl")
        return net_pnl.fget(session)  # type: ignore[attr-defined, no-any-return]

    monkeypatch.setattr(SessionPnl, "net_pnl", property(counted_net))
    CountingSymbols.passes = 0
    return world, reads


def test_an_account_record_reads_no_symbol(counted: tuple[World, list[str]]) -> None:
    world, reads = counted
    record = account_record(world.eng)
    assert (CountingSymbols.passes, reads) == (0, [])
    assert (record.open_positions, record.gross_exposure, record.unrealised_pnl) == (
        20,
        2550.0,
        -20.0,
    )
    assert record.account_net_pnl == math.fsum(1.25 * n - 30.0 - 0.1 for n in range(60))


def test_events_and_a_decision_value_only_the_symbols_they_moved(
    counted: tuple[World, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill and a mark re-value their own symbol; the decision after them, with its
    daily-loss, exposure and concurrency gates, values none (it re-valued all 21 open
    positions, and summed 60 session nets when the running sum was due)."""
    world, reads = counted
    valued: list[float] = []
    value = exposure

    def counted_exposure(qty: float, avg: float, cv: float, mark: float | None) -> float:
        valued.append(qty)
        return value(qty, avg, cv, mark)

    monkeypatch.setattr(valuation, "exposure", counted_exposure)
    world.apply(TradeOutcome(next_id("o"), "alpha", "S02", -3.0, 0.0, T0))
    world.apply(Fill(next_id("f"), "alpha", "S04", "buy", 4.0, 50.0, 0.0, T0))
    world.eng.apply_mark(Mark("S03", 80.0, T0 + 1), Effects())
    out = world.eng.apply(OrderIntent("i-x", "alpha", "S01", "open", "buy", 1.0, 5.0, T0), T0)
    assert out.decisions[0].allowed
    assert (CountingSymbols.passes, len(reads), valued) == (0, 1, [4.0, 1.0])


def test_concurrency_counts_a_symbol_both_open_and_reserved_once() -> None:
    """Open and reserved symbols are counted without building their union: AAA, open and
    reserved, takes one slot of two, so CCC fits until BBB is reserved too."""
    eng = RiskEngine(config(CONFIG.replace("[worker]", "max_concurrent_positions = 2\n[worker]")))
    eng.apply(Fill(next_id("f"), "alpha", "AAA", "buy", 1.0, 10.0, 0.0, T0), T0)
    eng.apply(OrderIntent("i-a", "alpha", "AAA", "open", "buy", 1.0, 10.0, T0), T0)
    first = eng.apply(OrderIntent("i-c", "alpha", "CCC", "open", "buy", 1.0, 10.0, T0), T0)
    eng.apply(Fill(next_id("f"), "alpha", "CCC", "buy", 1.0, 10.0, 0.0, T0, intent_id="i-c"), T0)
    eng.apply(Fill(next_id("f"), "alpha", "CCC", "sell", 1.0, 10.0, 0.0, T0), T0)  # flat again
    eng.apply(OrderIntent("i-b", "alpha", "BBB", "open", "buy", 1.0, 10.0, T0), T0)
    second = eng.apply(OrderIntent("i-d", "alpha", "CCC", "open", "buy", 1.0, 10.0, T0), T0)
    assert (first.decisions[0].allowed, second.decisions[0].gate) == (
        True,
        "max_concurrent_positions",
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.one_of(money, st.floats(-1e300, 1e300), st.just(-0.0))),
        max_size=120,
    )
)
def test_an_exact_sum_reads_as_fsum_of_its_terms_after_any_changes(
    changes: list[tuple[int, float]],
) -> None:
    """Terms replaced in any order, of any magnitude (folded every ``COMPACT_AT``)."""
    terms: dict[int, float] = {}
    total = ExactSum()
    for slot, value in changes:
        total.replace(terms.get(slot, 0.0), value)
        terms[slot] = value
        assert total.value == math.fsum(terms.values())
        assert len(total.partials) <= COMPACT_AT + 1
    assert (ExactSum(terms.values()).value, math.copysign(1.0, ExactSum([-0.0]).value)) == (
        total.value,
        1.0,
    )


def test_the_latch_is_not_skipped_when_a_float_estimate_is_above_the_limit() -> None:
    """+1e16, -1 and -1e16 added as floats give 0.0, above a -1 limit; the exact net is -1,
    at it: the estimate is trusted only far above the limit (its error is bounded)."""
    eng = RiskEngine(config(CONFIG.replace("max_daily_loss = -1e15", "max_daily_loss = -1.0")))
    halts = []
    for symbol, gross in (("AAA", 1e16), ("BBB", -1.0), ("CCC", -1e16)):
        halts = eng.apply(TradeOutcome(next_id("o"), "alpha", symbol, gross, 0.0, T0), T0).halts
    assert 1e16 + -1.0 + -1e16 == 0.0
    assert [(h.kind, h.gate) for h in halts] == [
        ("halted", "session_halt"),  # CCC's own loss limit (-1e15)
        ("halted", "portfolio_daily_loss"),
    ]
    assert account_record(eng).account_net_pnl == -1.0
