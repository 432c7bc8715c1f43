"""Decision D2 with issue 11's state: a crash at every record boundary, then restore and
replay, rebuilds exactly the uninterrupted state (order rate and duplicate windows, the
day's notional, the drawdown, cooldowns and kill switches)."""

from __future__ import annotations

from tests.unit.test_bypass_persist import CONFIG, MIN, NOW, config, fill, intent, outcome, run
from worker.messages import ControlCommand, Event

CONTROLS = (
    CONFIG
    + """
[defaults.orders]
max_orders_per_sec = 3
duplicate_window_ms = 60000
[defaults.cooldown]
after_loss_secs = 3600
"""
)
CONTROLS = CONTROLS.replace("[worker]\n", "[worker]\nreservation_ttl_ms = 120000\n").replace(
    "max_gross_exposure = 100000.0",
    "max_gross_exposure = 100000.0\nmax_drawdown = 250.0\nmax_daily_notional = 900.0",
)

STREAM: list[Event] = [
    intent(1, "BTC", 5.0),  # notional 500 of 900
    intent(2, "ETH", 3.0),  # 800
    intent(3, "ETH", 3.0),  # a duplicate of i2 (record time: the same second)
    intent(4, "SOL", 2.0),  # over the day's notional
    fill(1, "BTC", "buy", 2.0, "i1"),
    outcome(1, "SOL", -200.0),  # a losing trade: SOL cools down
    ControlCommand("kill", "alpha", "ETH", "runaway", "ops", NOW - 10 * MIN),
    outcome(2, "BTC", -60.0),  # equity -260 from a peak of 0: the drawdown latches
    intent(5, "ETH", 1.0),  # killed
    outcome(3, "ETH", +100.0),
]


async def test_crash_at_every_record_boundary_rebuilds_issue_11_state() -> None:
    cfg = config(CONTROLS)
    reference, sent = await run(cfg, STREAM, None)
    controls = reference["alpha"]["portfolio"]["controls"]
    assert controls["drawdown"]["halted"] is True
    assert controls["notional_total"] == 800.0
    assert len(controls["order_times"]) == 2
    assert reference["alpha"]["symbols"]["SOL"]["controls"]["cooldown_until_ms"] > NOW - 30 * MIN
    assert reference["alpha"]["symbols"]["ETH"]["controls"]["kill"]["reason"] == "runaway"
    assert sent == 34  # records and commits (a persist claims batches in flight): crash points
    for crash in range(sent):
        state, _ = await run(cfg, STREAM, crash)
        assert state == reference, f"crash after {crash} of {sent} writes"
