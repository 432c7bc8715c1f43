"""Halt event ids survive replays that interleave the input topics differently.

The worker reads a bot's fills/outcomes and its operator commands from
different topics, so after a crash (outputs acknowledged, state not yet
persisted) a replay may apply them in another order than the first run did.
Both runs publish their halt/resume events (at-least-once), and consumers drop
duplicates by ``event_id`` (SPEC §3). So an id must name the same event in
every run: numbered per holder, a replay handed ``.../manual_halt/2`` to a
``halted`` that the first run had published as a ``resumed``, and a consumer
dropping it ended up believing a manually halted symbol was trading again.
Numbered per gate (each gate's events come from one ordered source), ids are
the same whatever the interleaving.

Not covered, on purpose: ``reset_session`` / ``reset_breaker`` commands, whose
effect itself depends on where they fall among the PnL events.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.builders import T0, control, engine, outcome
from worker.core import Effects, Origin
from worker.core.snapshot import ManualHalt
from worker.messages import HaltEvent

BODY = """
[bots.alpha]
[bots.alpha.session]
loss_limit = -50.0
[bots.alpha.breaker]
loss_limit = 2
[bots.alpha.portfolio]
max_daily_loss = -80.0
"""


def run(order: list[tuple[Any, str, int]]) -> tuple[list[HaltEvent], Any]:
    eng = engine(BODY)
    out = Effects()
    for event, source, offset in order:
        eng.apply(event, T0 + 600_000, Origin(source, offset), out)
    return out.halts, eng


def consumer_view(*runs: list[HaltEvent]) -> dict[tuple[str | None, str], str]:
    """A consumer of ``risk.halts`` that drops duplicate ids, as SPEC §3 invites."""
    seen: set[str] = set()
    view: dict[tuple[str | None, str], str] = {}
    for halts in runs:
        for h in halts:
            if h.event_id in seen:
                continue
            seen.add(h.event_id)
            view[(h.symbol, h.gate)] = h.kind
    return view


def test_regression_a_replay_in_another_order_reuses_no_id_for_another_event() -> None:
    loss = outcome(-60.0, outcome_id="o-1")
    resume = control("resume", symbol="BTCUSDT", ts=T0 + 1)
    halt = control("halt", symbol="BTCUSDT", ts=T0 + 2)
    first, _ = run(
        [
            (loss, "trading.outcomes/0", 0),
            (resume, "risk.control/0", 0),
            (halt, "risk.control/0", 1),
        ]
    )
    replay, eng = run(
        [
            (resume, "risk.control/0", 0),
            (halt, "risk.control/0", 1),
            (loss, "trading.outcomes/0", 0),
        ]
    )
    assert {h.event_id: h.kind for h in first} == {h.event_id: h.kind for h in replay}
    assert eng.bots["alpha"].symbols["BTCUSDT"].manual_halt == ManualHalt(
        reason=halt.reason, issued_by=halt.issued_by, ts=halt.ts
    )
    assert consumer_view(first, replay)[("BTCUSDT", "manual_halt")] == "halted"


control_steps = st.lists(
    st.tuples(st.sampled_from(("halt", "resume")), st.sampled_from(("BTCUSDT", "ETHUSDT", None))),
    max_size=8,
)
pnl_steps = st.lists(
    st.tuples(st.floats(-40.0, 10.0), st.sampled_from(("BTCUSDT", "ETHUSDT"))), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(controls=control_steps, pnl=pnl_steps, seed=st.integers(0, 2**32))
def test_any_two_interleavings_name_every_event_alike(
    controls: list[tuple[str, str | None]], pnl: list[tuple[float, str]], seed: int
) -> None:
    commands = [
        (control(cmd, symbol=symbol, ts=T0 + i), "risk.control/0", i)
        for i, (cmd, symbol) in enumerate(controls)
    ]
    outcomes = [
        (outcome(gross, symbol=symbol, ts=T0 + 1_000 + i, outcome_id=f"o-{i}"), "trading.o/0", i)
        for i, (gross, symbol) in enumerate(pnl)
    ]
    rng = random.Random(seed)
    orders = []
    for _ in range(2):  # two merges, each keeping the order within a topic
        a, b, merged = list(commands), list(outcomes), []
        while a or b:
            source = a if a and (not b or rng.random() < 0.5) else b
            merged.append(source.pop(0))
        orders.append(merged)
    first, _ = run(orders[0])
    second, eng = run(orders[1])

    def named(halts: list[HaltEvent]) -> dict[str, tuple[str | None, str, str]]:
        return {h.event_id: (h.symbol, h.gate, h.kind) for h in halts}

    assert named(first) == named(second)
    truth = {
        (symbol, "manual_halt"): "halted" if sym.manual_halt is not None else "resumed"
        for symbol, sym in (eng.bots["alpha"].symbols if "alpha" in eng.bots else {}).items()
    }
    view = consumer_view(first, second)
    for key, kind in truth.items():
        if key in view:
            assert view[key] == kind, key
