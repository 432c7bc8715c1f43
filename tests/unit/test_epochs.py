"""The crash loop's epoch machinery (``tests.support.epochs``), without a broker.

The integration crash loop trusts it to say what the worker must publish when
the wall clock expires state between epochs; these pin that on small inputs.
"""

from __future__ import annotations

import random

from tests.support.builders import HOUR_MS, MIDNIGHT, config, intent, outcome
from tests.support.epochs import SECRET, Epoch, barrier_commands, reference, sign, stamp
from tests.support.reliability import BotSpec, Workload
from worker.config import Config
from worker.messages import Event

EXPIRY_S = 15
START = MIDNIGHT + 10 * HOUR_MS
BOT = BotSpec("cb00", "outcomes", ("BTCUSDT", "ETHUSDT"), -1e9, {"BTCUSDT": 2}, portfolio=False)
GATE_BOT = BotSpec("gb00", "outcomes", ("BTCUSDT",), -150.0, {}, portfolio=True, intents_only=True)


def workload_config() -> Config:
    workload = Workload(0, [BOT, GATE_BOT], [], control_secret=SECRET)
    workload.window_secs = workload.cooldown_secs = EXPIRY_S
    workload.reservation_ttl_ms = EXPIRY_S * 1000
    return config(workload.body() + workload.worker_toml())


def test_a_trip_ended_by_the_sweep_after_its_epoch_may_not_resume_before_its_cooldown() -> None:
    losses: list[Event] = [
        outcome(-1.0, bot="cb00", symbol="BTCUSDT", ts=START + n) for n in range(2)
    ]
    epoch = Epoch(START, losses, [], committed_ms=START + 3_000, swept_ms=START + 20_000)
    ref = reference(workload_config(), [epoch])
    trip_s = START // 1000
    assert [(h.kind, h.gate, h.ts, h.until_ts) for h in ref.halts] == [
        ("halted", "circuit_breaker", START + 1, (trip_s + EXPIRY_S) * 1000),
        ("resumed", "circuit_breaker", START + 20_000, None),
    ]
    resumed = ref.halts[1].event_id
    assert ref.clock_halts == {resumed: (trip_s + EXPIRY_S) * 1000}
    assert ref.model.symbol_states()["cb00/risk/BTCUSDT"]["recent_losses"] == []


def test_barrier_commands_end_in_a_replayed_a_stale_and_a_forged_command() -> None:
    barrier = barrier_commands(random.Random(1), [BOT, GATE_BOT], START, SECRET, resets=1)
    epoch = Epoch(START, [], [*barrier], committed_ms=START, swept_ms=START + 1)
    ref = reference(workload_config(), [epoch])
    assert [c.bot for c in barrier] == ["cb00"] * 4  # never the intents-only bot
    assert barrier[1] == barrier[0] and barrier[2].ts == START - 1
    assert ref.rejected == [(1, "replayed_command"), (2, "stale_command"), (3, "bad_signature")]


def test_a_retried_intent_keeps_its_first_stamp_and_expires_in_a_later_epoch() -> None:
    asked = intent(bot="gb00", symbol="BTCUSDT", price=10.0, intent_id="g-1")
    stamped: dict[int, Event] = {}
    first = stamp([asked], START, 1_000, SECRET, stamped)
    later = START + 40_000
    again = stamp([asked], later, 1_000, SECRET, stamped)
    assert first == again and first[0].ts == START
    epochs = [
        Epoch(START, first, [], committed_ms=START + 100, swept_ms=START + 17_000),
        Epoch(later, again, [], committed_ms=later + 100, swept_ms=later + 17_000),
    ]
    ref = reference(workload_config(), epochs)
    assert [(d.intent_id, d.allowed, d.gate) for d in ref.model.decisions] == [
        ("g-1", True, None),
        ("g-1", False, "expired"),
    ]
    assert ref.model.bot_states()["gb00"]["reservations"] == {}  # expired at the first sweep


def test_commands_are_signed_over_the_specs_canonical_bytes() -> None:
    from worker import signing
    from worker.messages import ControlCommand

    command = ControlCommand("reset_session", "cb00", None, "r", "chaos", START)
    assert sign(command, SECRET).sig == signing.sign(command, SECRET.encode())
