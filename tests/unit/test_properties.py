"""Property tests (hypothesis) over random event streams and fills."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.builders import DAY_MS, T0, config, next_id
from worker.config import BreakerConfig
from worker.core import CircuitBreaker, Effects, Origin, RiskEngine
from worker.core.snapshot import (
    PortfolioSnapshot,
    SymbolSnapshot,
    decode_snapshot,
    encode,
    portfolio_key,
    symbol_key,
)
from worker.core.symbol import SymbolRisk
from worker.errors import Rejected
from worker.messages import ControlCommand, Fill, OrderIntent, TradeOutcome

FAST = settings(
    # ``make mutate`` runs the suite once per mutant: it asks for fewer examples.
    max_examples=int(os.environ.get("RISKGATE_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    database=None,  # no .hypothesis/ directory in the repository
    suppress_health_check=[HealthCheck.too_slow],
)

ENGINE_TOML = """
[defaults.session]
loss_limit = -120.0
[defaults.breaker]
loss_limit = 2
window_secs = 3600
cooldown_secs = 900
[worker]
reservation_ttl_ms = 60000
dedupe_ids_per_bot = 8
[bots.out]
symbols = ["AAA", "BBB", "CCC"]
[bots.out.portfolio]
max_daily_loss = -150.0
max_concurrent_positions = 2
max_gross_exposure = 5000.0
[bots.fil]
pnl_source = "fills"
symbols = ["AAA", "BBB", "CCC"]
[bots.fil.portfolio]
max_daily_loss = -200.0
max_concurrent_positions = 2
[bots.fil.overrides.CCC.breaker]
loss_limit = 1
"""
BOTS = ("out", "fil")
SYMBOLS = ("AAA", "BBB", "CCC")


# -- random event streams -----------------------------------------------------------------

money = st.integers(-80, 60).map(float)
fees = st.sampled_from([0.0, 0.5, 1.0, 2.5])
# Halves, plus sizes whose sums leave float residue near the flat tolerance
# (0.1 + 0.2 - 0.3) or a real leftover that must not be zeroed (1.0005 - 1).
qtys = st.integers(1, 8).map(lambda n: n * 0.5) | st.sampled_from([0.1, 0.2, 0.3, 0.0005, 1.0005])
prices = st.integers(90, 110).map(float)
steps = st.one_of(
    st.integers(0, 120_000),  # seconds to minutes
    st.integers(0, 3 * 3_600_000),  # hours
    st.just(DAY_MS),  # a whole day
    st.just(-1),  # to just before the next 00:00 UTC (see ``streams``)
)
# Event ts against the wall clock: on it, behind (late, also yesterday's when the
# clock just passed midnight), ahead within the accepted skew (across midnight
# when the clock is just before it).
skews = st.sampled_from([0, 0, 0, -1000, -3_600_000, 30_000, 4 * 60_000])


@dataclass(frozen=True)
class Step:
    """One input: an event (with its origin) or a sweep, at wall time ``now``."""

    now: int
    event: Any | None
    origin: Origin | None


@st.composite
def streams(draw: st.DrawFn, max_size: int = 40) -> list[Step]:
    n = draw(st.integers(1, max_size))
    now = T0
    offsets: dict[str, int] = {}
    out: list[Step] = []
    for _ in range(n):
        step = draw(steps)
        if step == -1:
            now = max(now, (now // DAY_MS + 1) * DAY_MS - draw(st.sampled_from([1000, 90_000])))
        else:
            now += step
        kind = draw(st.sampled_from(["outcome", "fill", "fill", "intent", "control", "sweep"]))
        if kind == "sweep":
            out.append(Step(now, None, None))
            continue
        bot = draw(st.sampled_from(BOTS))
        symbol = draw(st.sampled_from(SYMBOLS))
        ts = now + draw(skews)
        event: Any
        if kind == "outcome":
            event = TradeOutcome(
                outcome_id=next_id("o"),
                bot=bot,
                symbol=symbol,
                gross_pnl=draw(money),
                fee=draw(fees),
                ts=ts,
            )
            topic = "trading.outcomes"
        elif kind == "fill":
            event = Fill(
                fill_id=next_id("f"),
                bot=bot,
                symbol=symbol,
                side=draw(st.sampled_from(["buy", "sell"])),
                qty=draw(qtys),
                price=draw(prices),
                fee=draw(fees),
                ts=ts,
                intent_id=draw(st.sampled_from([None, "i-1", "i-2"])),
            )
            topic = "trading.fills"
        elif kind == "intent":
            event = OrderIntent(
                intent_id=draw(st.sampled_from(["i-1", "i-2", next_id("i")])),
                bot=bot,
                symbol=symbol,
                action=draw(st.sampled_from(["open", "open", "close"])),
                side=draw(st.sampled_from(["buy", "sell"])),
                qty=draw(qtys),
                price=draw(prices),
                ts=ts,
            )
            topic = "trading.intents"
        else:
            event = ControlCommand(
                command=draw(st.sampled_from(["halt", "resume", "reset_breaker", "reset_session"])),
                bot=bot,
                symbol=draw(st.sampled_from([None, *SYMBOLS])),
                reason="prop",
                issued_by="hypothesis",
                ts=ts,
            )
            topic = "risk.control"
        source = f"{topic}/0"
        offsets[source] = offsets.get(source, -1) + 1
        origin = Origin(source, offsets[source])
        out.append(Step(now, event, origin))
        if draw(st.integers(0, 9)) == 0:  # a redelivered record: same event, same origin
            out.append(Step(now, event, origin))
    return out


def run(eng: RiskEngine, stream: list[Step], out: Effects | None = None) -> list[Effects]:
    """Apply a stream; one shared Effects when ``out`` is given, else one per step."""
    produced: list[Effects] = []
    for step in stream:
        effects = out if out is not None else Effects()
        if step.event is None:
            eng.sweep(step.now, effects)
        else:
            with contextlib.suppress(Rejected):  # outcomes for the fills-booked bot
                eng.apply(step.event, step.now, origin=step.origin, out=effects)
        if out is None:
            produced.append(effects)
    return produced if out is None else [out]


def engine() -> RiskEngine:
    return RiskEngine(config(ENGINE_TOML))


def state(eng: RiskEngine) -> dict[str, bytes]:
    """Every snapshot the engine would persist, encoded."""
    records: dict[str, bytes] = {}
    for bot_id, bot in eng.bots.items():
        records[portfolio_key(bot_id)] = encode(bot.portfolio_snapshot())
        for name, sym in bot.symbols.items():
            records[symbol_key(bot_id, name)] = encode(sym.snapshot())
    return records


# -- snapshots round-trip -----------------------------------------------------------------


@FAST
@given(streams())
def test_snapshot_encode_decode_restore_round_trips_exactly(stream: list[Step]) -> None:
    eng = engine()
    run(eng, stream)
    now = stream[-1].now
    # After a sweep at ``now`` the restore-time tick has nothing left to do, so a
    # restore at ``now`` must reproduce the state exactly (sequence numbers included).
    eng.sweep(now)
    for key, value in state(eng).items():
        bot_id, symbol, snap = decode_snapshot(key, value)
        bot = eng.bots[bot_id]
        restored = engine().bot(bot_id)
        out = Effects()
        if symbol is None:
            assert isinstance(snap, PortfolioSnapshot)
            assert snap == bot.portfolio_snapshot()
            restored.restore_portfolio(snap, now, out)
            assert restored.portfolio_snapshot() == snap
        else:
            assert isinstance(snap, SymbolSnapshot)
            original = bot.symbols[symbol]
            assert snap == original.snapshot()
            raw = SymbolRisk(symbol, bot.settings, 0)
            raw.restore(snap)
            assert raw.snapshot() == snap
            restored.restore_symbol(symbol, snap, now, out)
            assert restored.symbols[symbol].snapshot() == snap
            assert out.halts == []


@FAST
@given(streams())
def test_restored_engine_continues_like_the_original(stream: list[Step]) -> None:
    cut = len(stream) // 2
    head, tail = stream[:cut], stream[cut:]
    original = engine()
    run(original, head)
    now = head[-1].now if head else T0
    original.sweep(now)
    restored = engine()
    restored.restore(dict(state(original).items()), now)
    assert state(restored).keys() == state(original).keys()
    run(original, tail)
    run(restored, tail)
    original.sweep(tail[-1].now if tail else now)
    restored.sweep(tail[-1].now if tail else now)
    # Every persisted key, the portfolio's (latch, halts, reservations) included.
    assert state(original) == state(restored)


# -- batching does not change the result --------------------------------------------------


@FAST
@given(streams())
def test_one_batch_or_event_by_event_gives_the_same_state(stream: list[Step]) -> None:
    batched, single = engine(), engine()
    (batch,) = run(batched, stream, out=Effects())
    per_event = run(single, stream)
    assert state(batched) == state(single)
    assert batch.halts == [h for e in per_event for h in e.halts]
    assert batch.decisions == [d for e in per_event for d in e.decisions]
    assert batch.dirty_symbols == set().union(*(e.dirty_symbols for e in per_event))
    assert batch.dirty_bots == set().union(*(e.dirty_bots for e in per_event))
    assert batch.skipped == sum(e.skipped for e in per_event)


@FAST
@given(streams())
def test_redelivered_records_change_nothing(stream: list[Step]) -> None:
    once, twice = engine(), engine()
    run(once, stream)
    doubled = [s for step in stream for s in ((step, step) if step.event is not None else (step,))]
    out = run(twice, doubled, out=Effects())[0]
    assert state(once) == state(twice)
    applied, skipped = _single_pass(stream)
    # Each applied event's copy is skipped; an event skipped once is skipped twice;
    # a rejected one is rejected again (it moved no watermark).
    assert out.skipped == applied + 2 * skipped


def _single_pass(stream: list[Step]) -> tuple[int, int]:
    """Events one pass applies and skips; the rest are rejected (outcomes for the
    fills-booked bot, commands refused as stale or replayed, events too far ahead)."""
    eng = engine()
    applied = skipped = 0
    for step in stream:
        if step.event is None:
            eng.sweep(step.now, Effects())
            continue
        out = Effects()
        try:
            eng.apply(step.event, step.now, origin=step.origin, out=out)
        except Rejected:
            continue
        skipped += out.skipped
        applied += 1 - out.skipped
    return applied, skipped


# -- the breaker against a brute force ------------------------------------------------------


@st.composite
def breaker_runs(draw: st.DrawFn) -> tuple[BreakerConfig, list[tuple[str, int]]]:
    cfg = BreakerConfig(
        loss_limit=draw(st.integers(1, 5)),
        window_secs=draw(st.integers(1, 500)),
        cooldown_secs=draw(st.integers(0, 500)),
    )
    t = 1_750_000_000
    ops: list[tuple[str, int]] = []
    for _ in range(draw(st.integers(1, 60))):
        t += draw(st.integers(0, 300))
        op = draw(st.sampled_from(["loss", "loss", "loss", "late-loss", "tick"]))
        if op == "late-loss":
            ops.append(("loss", t - draw(st.integers(0, 600))))
        else:
            ops.append((op, t))
    return cfg, ops


@FAST
@given(breaker_runs())
def test_breaker_never_trips_with_fewer_than_limit_losses_in_a_window(
    run_: tuple[BreakerConfig, list[tuple[str, int]]],
) -> None:
    cfg, ops = run_
    b = CircuitBreaker(cfg)
    fed: list[int] = []  # every loss fed since the breaker last reset (a reset forgets)
    for op, t in ops:
        before = b.tripped_at
        if op == "tick":
            if b.tick(t):
                assert before is not None
                # A reset forgets all but losses stamped after the trip and its cooldown.
                cut = max(before + cfg.cooldown_secs, before + 1)
                fed = [x for x in fed if x >= cut]
            continue
        tripped = b.record_loss(t)
        if before is not None:
            assert b.tripped_at == before, "only the wall clock (tick) ends a trip"
        fed.append(t)
        if tripped:
            at = b.tripped_at
            assert at is not None
            inside = [x for x in fed if at - cfg.window_secs < x <= at]
            assert len(inside) >= cfg.loss_limit, (at, fed)
        if b.tripped_at is not None:
            assert b.until_secs == b.tripped_at + cfg.cooldown_secs


@FAST
@given(breaker_runs())
def test_breaker_matches_a_sliding_window_model_for_in_order_losses(
    run_: tuple[BreakerConfig, list[tuple[str, int]]],
) -> None:
    cfg, ops = run_
    in_order = sorted(t for op, t in ops if op == "loss")
    b = CircuitBreaker(cfg)
    tripped_at: int | None = None
    kept: list[int] = []
    for t in in_order:
        b.tick(t)  # live and in order: the wall clock is at each loss's time
        if tripped_at is not None and t >= tripped_at + cfg.cooldown_secs:
            tripped_at, kept = None, []
        newly_tripped = False
        if tripped_at is None:
            kept.append(t)
            if sum(1 for x in kept if t - cfg.window_secs < x <= t) >= cfg.loss_limit:
                tripped_at, newly_tripped = t, True
        assert b.record_loss(t) == newly_tripped
        assert b.tripped_at == tripped_at


@FAST
@given(breaker_runs())
def test_breaker_does_trip_when_a_window_holds_the_limit(
    run_: tuple[BreakerConfig, list[tuple[str, int]]],
) -> None:
    """Not only "never too early": with no wall-clock tick in between, losses in any
    order trip the breaker exactly when some window ``(t - window, t]`` holds the limit."""
    cfg, ops = run_
    losses = [t for op, t in ops if op == "loss"]
    b = CircuitBreaker(cfg)
    for t in losses:
        b.record_loss(t)
    should = cfg.loss_limit > 0 and any(
        sum(1 for x in losses if t - cfg.window_secs < x <= t) >= cfg.loss_limit for t in losses
    )
    assert (b.tripped_at is not None) == should, (cfg, losses, b.tripped_at)


# -- position accounting against an average-cost reference ------------------------------------


class AvgCost:
    """Independent average-cost reference: realised gross, booked fees, round trips."""

    def __init__(self) -> None:
        self.qty = 0.0
        self.avg = 0.0
        self.entry_fees = 0.0
        self.realised = 0.0
        self.fees = 0.0
        self.trips = 0

    def fill(self, signed: float, price: float, fee: float, cv: float) -> None:
        size = abs(signed)
        if self.qty == 0.0 or math.copysign(1, self.qty) == math.copysign(1, signed):
            held = abs(self.qty)
            self.avg = (held * self.avg + size * price) / (held + size)
            self.qty += signed
            self.entry_fees += fee
            return
        held = abs(self.qty)
        closed = min(held, size)
        long = self.qty > 0
        self.realised += (price - self.avg) * closed * cv * (1 if long else -1)
        entry_part = self.entry_fees * closed / held
        self.fees += fee * closed / size + entry_part
        self.entry_fees -= entry_part
        remaining = self.qty + signed
        if abs(remaining) <= 1e-9 * max(held, size):  # float residue counts as flat
            self.qty, self.avg, self.entry_fees = 0.0, 0.0, 0.0
            self.trips += 1
        elif size < held:
            self.qty = remaining
        else:
            self.trips += 1
            self.qty = signed + self.qty
            self.avg = price
            self.entry_fees = fee * (size - held) / size


fills_lists = st.lists(
    st.tuples(st.sampled_from(["buy", "sell"]), qtys, prices, fees), min_size=1, max_size=60
)


@FAST
@given(fills_lists, st.sampled_from([1.0, 0.5, 0.01]))
def test_position_conserves_quantity_and_matches_average_cost(
    fills: list[tuple[str, float, float, float]], cv: float
) -> None:
    eng = RiskEngine(
        config(
            """
            [defaults.session]
            loss_limit = -inf
            [bots.fil]
            pnl_source = "fills"
            """
        )
    )
    ref = AvgCost()
    signed_total = 0.0
    for i, (side, qty, price, fee) in enumerate(fills):
        eng.apply(
            Fill(
                fill_id=f"f{i}",
                bot="fil",
                symbol="AAA",
                side=side,  # type: ignore[arg-type]
                qty=qty,
                price=price,
                fee=fee,
                ts=T0 + i,
                contract_value=cv,
            ),
            T0 + i,
        )
        signed = qty if side == "buy" else -qty
        signed_total += signed
        ref.fill(signed, price, fee, cv)
    sym = eng.bots["fil"].symbols["AAA"]
    volume = sum(q for _, q, _, _ in fills)
    assert abs(sym.position.qty - signed_total) <= 1e-9 * volume
    assert abs(sym.position.qty - ref.qty) <= 1e-9 * volume
    scale = 1.0 + sum(q * p * cv for _, q, p, _ in fills)
    assert abs(sym.session.realised - ref.realised) <= 1e-9 * scale
    assert abs(sym.session.fees - ref.fees) <= 1e-9 * scale
    assert abs(sym.session.net_pnl - (ref.realised - ref.fees)) <= 1e-9 * scale
    assert sym.session.trades == ref.trips
    assert abs(sym.position.entry_fees - ref.entry_fees) <= 1e-9 * scale
    if not sym.position.is_flat:
        assert abs(sym.position.avg_price - ref.avg) <= 1e-9 * ref.avg
