"""Issue 9: time, replay-guard, control-command and naming bypasses of the pure engine.

Each test is named after the defect it pins (decisions T1-T3, C1-C3, N1, N2, D1).
"""

from __future__ import annotations

import msgspec
import pytest

from tests.support.builders import (
    DAY_MS,
    MIDNIGHT,
    MIN_MS,
    T0,
    config,
    control,
    fill,
    intent,
    origin,
    outcome,
)
from worker import signing
from worker.core import CircuitBreakerSnapshot, Effects, Origin, RiskEngine, SessionPnlSnapshot
from worker.core.dedupe import IdWindow, IdWindowSnapshot
from worker.core.snapshot import (
    ManualHalt,
    PortfolioSnapshot,
    SymbolSnapshot,
    encode,
    portfolio_key,
    symbol_key,
)
from worker.errors import Rejected
from worker.messages import ControlCommand, Event, HaltEvent, TradeOutcome

SECRET = b"s3cret"


def engine(toml: str) -> RiskEngine:
    return RiskEngine(config(toml))


# -- item 2 / T1, T2: only the wall clock moves time-driven state ----------------------------

LATCHING = """
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -100.0
[defaults.breaker]
loss_limit = 0
[defaults.portfolio]
max_daily_loss = -200.0
"""

AT_23_50 = MIDNIGHT + DAY_MS - 10 * MIN_MS
AT_23_56 = MIDNIGHT + DAY_MS - 4 * MIN_MS
AT_23_57 = MIDNIGHT + DAY_MS - 3 * MIN_MS
AT_00_01 = MIDNIGHT + DAY_MS + 1 * MIN_MS


def test_an_outcome_stamped_past_midnight_does_not_resume_the_session_or_release_the_latch() -> (
    None
):
    eng = engine(LATCHING)
    out = eng.apply(outcome(-300.0, ts=AT_23_50), AT_23_50)
    assert [(h.kind, h.gate) for h in out.halts] == [
        ("halted", "session_halt"),
        ("halted", "portfolio_daily_loss"),
    ]
    # 23:56 on the wall clock: a +1 stamped 00:01 (5 min ahead, within the skew).
    ahead = eng.apply(outcome(1.0, ts=AT_00_01), AT_23_56)
    assert ahead.halts == []
    bot = eng.bots["alpha"]
    sym = bot.symbols["BTCUSDT"]
    assert sym.session.halted
    assert bot.portfolio.halted
    decision = eng.apply(intent(ts=AT_23_56), AT_23_56).decisions[0]
    assert (decision.allowed, decision.gate) == (False, "session_halt")
    # The -500 at 23:57 still counts toward today (it was ignored as "yesterday's").
    eng.apply(outcome(-500.0, ts=AT_23_57), AT_23_57)
    assert sym.session.net_pnl == pytest.approx(-799.0)
    assert sym.session.trades == 3
    assert bot.account.account_net(bot.day) == pytest.approx(-799.0)
    # Midnight on the wall clock lifts both, once.
    swept = eng.sweep(MIDNIGHT + DAY_MS)
    assert sorted((h.kind, h.gate) for h in swept.halts) == [
        ("resumed", "portfolio_daily_loss"),
        ("resumed", "session_halt"),
    ]
    assert not sym.session.halted
    assert sym.session.net_pnl == 0.0
    assert not bot.portfolio.halted


BREAKER = """
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -1e9
[defaults.breaker]
loss_limit = 2
window_secs = 600
cooldown_secs = 600
"""


def test_a_loss_stamped_after_the_cooldown_does_not_end_the_breaker_early() -> None:
    eng = engine(BREAKER)
    eng.apply(outcome(-1.0, ts=T0), T0)
    eng.apply(outcome(-1.0, ts=T0 + 1_000), T0 + 1_000)
    breaker = eng.bots["alpha"].symbols["BTCUSDT"].breaker
    assert breaker.tripped_at == (T0 + 1_000) // 1000
    cooldown_end = T0 + 1_000 + 600_000
    now = cooldown_end - 4 * MIN_MS  # the loss is stamped 5 min ahead of the wall clock
    out = eng.apply(outcome(-1.0, ts=cooldown_end + MIN_MS), now)
    assert out.halts == []
    assert breaker.tripped_at == (T0 + 1_000) // 1000
    assert eng.apply(intent(ts=now), now).decisions[0].gate == "circuit_breaker"
    assert eng.sweep(cooldown_end - 1).halts == []
    swept = eng.sweep(cooldown_end)
    assert [(h.kind, h.gate) for h in swept.halts] == [("resumed", "circuit_breaker")]
    assert breaker.recent_losses == [(cooldown_end + MIN_MS) // 1000], "it counts after"


def test_a_reset_session_command_stamped_past_midnight_does_not_roll_the_day() -> None:
    eng = engine(LATCHING)
    eng.apply(outcome(-50.0, ts=AT_23_50), AT_23_50)
    eng.apply(control("reset_session", ts=AT_00_01), AT_23_56)
    session = eng.bots["alpha"].symbols["BTCUSDT"].session
    assert session.last_reset_day == AT_23_50 // DAY_MS
    eng.apply(outcome(-60.0, ts=AT_23_57), AT_23_57)
    assert session.net_pnl == pytest.approx(-60.0), "a loss of 23:57 still counts today"


# -- item 4 / T3, C1: commands and skew judged against the record, not processing time ------

SIGNED = """
[defaults]
accept_unknown_bots = true
[control]
secret = "s3cret"
replay_window_ms = 300000
"""


def signed(command: str, ts: int, symbol: str | None = None) -> ControlCommand:
    return signing.signed(control(command, symbol=symbol, ts=ts), SECRET)


def test_a_genuine_command_processed_ten_minutes_late_is_applied() -> None:
    eng = engine(SIGNED)
    late = T0 + 10 * MIN_MS
    cmd = signed("halt", T0)
    out = eng.apply(cmd, late, Origin("risk.control/0", 0), record_ts=T0)
    assert [(h.kind, h.gate) for h in out.halts] == [("halted", "manual_halt")]
    assert eng.bots["alpha"].manual_halt == ManualHalt("ops", "alice", T0)
    # Without the record's time it would be judged by processing time, as before.
    with pytest.raises(Rejected) as exc:
        engine(SIGNED).apply(cmd, late)
    assert exc.value.reason == "bad_signature"


def test_a_replayed_signed_resume_after_a_later_halt_changes_nothing() -> None:
    eng = engine(SIGNED)
    halt, resume, halt_again = signed("halt", T0), signed("resume", T0 + 1), signed("halt", T0 + 2)
    for offset, cmd in enumerate((halt, resume, halt_again)):
        eng.apply(cmd, T0 + 3, Origin("risk.control/0", offset), record_ts=cmd.ts)
    bot = eng.bots["alpha"]
    assert bot.manual_halt == ManualHalt("ops", "alice", T0 + 2)  # the later halt stands
    with pytest.raises(Rejected) as stale:  # the captured resume, re-appended
        eng.apply(resume, T0 + 4, Origin("risk.control/0", 3), record_ts=T0 + 4)
    assert stale.value.reason == "stale_command"
    with pytest.raises(Rejected) as replayed:  # the latest command, re-appended
        eng.apply(halt_again, T0 + 5, Origin("risk.control/0", 4), record_ts=T0 + 5)
    assert replayed.value.reason == "replayed_command"
    assert bot.manual_halt == ManualHalt("ops", "alice", T0 + 2)
    # The guard is persisted: a restarted worker refuses the replay too.
    restarted = engine(SIGNED)
    restarted.restore({portfolio_key("alpha"): encode(bot.portfolio_snapshot())}, T0 + 6)
    with pytest.raises(Rejected) as after_restart:
        restarted.apply(resume, T0 + 6, Origin("risk.control/0", 5), record_ts=T0 + 6)
    assert after_restart.value.reason == "stale_command"
    assert restarted.bots["alpha"].manual_halt == ManualHalt("ops", "alice", T0 + 2)


def test_a_replayed_symbol_command_is_refused_per_target() -> None:
    eng = engine(SIGNED)
    halt, resume = signed("halt", T0, "BTCUSDT"), signed("resume", T0 + 1, "BTCUSDT")
    eng.apply(halt, T0, record_ts=T0)
    eng.apply(resume, T0 + 1, record_ts=T0 + 1)
    eng.apply(signed("halt", T0 + 2, "BTCUSDT"), T0 + 2, record_ts=T0 + 2)
    with pytest.raises(Rejected) as exc:
        eng.apply(resume, T0 + 3, record_ts=T0 + 3)
    assert exc.value.reason == "stale_command"
    # Another target keeps its own guard: an older command for the bot still applies.
    out = eng.apply(signed("halt", T0 - 1), T0 + 3, record_ts=T0 + 3)
    assert [(h.kind, h.symbol) for h in out.halts] == [("halted", None)]


@pytest.mark.parametrize("now_ms", [T0, T0 + 2 * MIN_MS, T0 + 6 * MIN_MS, T0 + 60 * MIN_MS])
def test_an_outcome_six_minutes_ahead_of_its_record_is_rejected_whatever_the_clock(
    now_ms: int,
) -> None:
    eng = engine(LATCHING)
    with pytest.raises(Rejected) as exc:
        eng.apply(outcome(-1.0, ts=T0 + 6 * MIN_MS), now_ms, record_ts=T0)
    assert exc.value.reason == "future_event"
    assert eng.bots == {}
    out = eng.apply(outcome(-1.0, ts=T0 + 4 * MIN_MS), now_ms, record_ts=T0)
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 1
    assert out.skipped == 0


# -- item 8 / D1: re-sends of any run up to the bound count nothing twice ---------------------

OPEN = """
[defaults]
accept_unknown_bots = true
[defaults.session]
loss_limit = -1e12
[defaults.breaker]
loss_limit = 0
"""


def _send(eng: RiskEngine, ids: list[str], first_offset: int) -> Effects:
    out = Effects()
    for n, outcome_id in enumerate(ids):
        event = outcome(-1.0, outcome_id=outcome_id)
        eng.apply(event, T0, origin(first_offset + n), out)
    return out


def test_resending_the_last_33_of_40_outcomes_counts_40_trades() -> None:
    eng = engine(OPEN)
    ids = [f"o-{n}" for n in range(40)]
    _send(eng, ids, 0)
    out = _send(eng, ids[7:], 40)
    assert out.skipped == 33
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 40


def test_resending_a_run_of_10000_outcomes_counts_nothing_twice() -> None:
    eng = engine(OPEN)
    ids = [f"o-{n}" for n in range(10_000)]
    _send(eng, ids, 0)
    out = _send(eng, ids, 10_000)
    assert out.skipped == 10_000
    session = eng.bots["alpha"].symbols["BTCUSDT"].session
    assert session.trades == 10_000
    assert len(eng.bots["alpha"].ids.outcomes) == 10_000


def test_a_duplicate_neither_inserts_nor_evicts_so_resends_never_cascade() -> None:
    eng = engine(OPEN + "[worker]\ndedupe_ids_per_bot = 4\n")
    _send(eng, ["a", "b", "c", "d"], 0)
    _send(eng, ["a", "a", "b", "c", "d", "d"], 4)  # all re-sends: the window is unchanged
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 4
    _send(eng, ["e"], 10)  # evicts "a" only
    _send(eng, ["b", "c", "d", "e"], 11)
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 5


def test_replay_after_a_crash_with_the_window_ahead_of_the_symbol_matches_the_first_pass() -> None:
    """The portfolio record (the window) landed, the symbol's did not: the replay must
    judge each record as the first pass did, not as a duplicate of itself."""
    first = engine(OPEN)
    ids = ["a", "b", "a", "c", "b"]  # offsets 2 and 4 are re-sends
    _send(first, ids[:1], 0)
    stale_symbol = first.bots["alpha"].symbols["BTCUSDT"].snapshot()
    _send(first, ids[1:], 1)
    assert first.bots["alpha"].symbols["BTCUSDT"].session.trades == 3
    restarted = engine(OPEN)
    restarted.restore(
        {
            symbol_key("alpha", "BTCUSDT"): encode(stale_symbol),
            portfolio_key("alpha"): encode(first.bots["alpha"].portfolio_snapshot()),
        },
        T0,
    )
    _send(restarted, ids, 0)  # replay from the committed offset
    assert restarted.bots["alpha"].symbols["BTCUSDT"].session.trades == 3
    assert (
        restarted.bots["alpha"].symbols["BTCUSDT"].snapshot()
        == first.bots["alpha"].symbols["BTCUSDT"].snapshot()
    )


def test_restore_of_an_old_snapshot_keeps_its_recent_ids() -> None:
    old = SymbolSnapshot(  # as written before the window was per bot
        session_pnl=SessionPnlSnapshot(
            realised=-2.0,
            fees=0.0,
            trades=2,
            wins=0,
            losses=2,
            breakevens=0,
            halted=False,
            last_reset_day=T0 // DAY_MS,
        ),
        circuit_breaker=CircuitBreakerSnapshot(recent_losses=[], tripped_at=None),
        recent_outcome_ids=["x", "y"],
        recent_fill_ids=["f-x"],
    )
    eng = engine(OPEN)
    ignored = eng.restore({symbol_key("alpha", "BTCUSDT"): encode(old)}, T0)
    assert ignored == []
    out = _send(eng, ["x", "y", "z"], 0)
    assert out.skipped == 2
    assert eng.bots["alpha"].symbols["BTCUSDT"].session.trades == 3
    fills = Effects()
    eng.apply(fill("buy", 1.0, 100.0, fill_id="f-x"), T0, Origin("trading.fills/0", 0), fills)
    assert fills.skipped == 1


def test_worst_case_portfolio_snapshot_stays_under_one_mib() -> None:
    """Full id windows (10,000 per topic), full intent window and the reservation cap,
    with the longest names: well under the producer's 1 MiB record limit."""
    eng = engine(
        """
        [defaults]
        accept_unknown_bots = true
        [defaults.session]
        loss_limit = -1e12
        [defaults.breaker]
        loss_limit = 0
        """
    )
    bot_name, symbol = "b" * 64, "S" * 64
    for n in range(10_000):
        eng.apply(
            outcome(-1.0, bot=bot_name, symbol=symbol, outcome_id=f"{n:0>256}"),
            T0,
            origin(n, "trading.outcomes/0"),
        )
        eng.apply(
            fill("buy", 1.0, 1.0, bot=bot_name, symbol=symbol, fill_id=f"{n:0>256}"),
            T0,
            Origin("trading.fills/0", n),
        )
    for n in range(10_000):
        eng.apply(
            intent(bot=bot_name, symbol=f"{n % 1000:0>64}", intent_id=f"{n:0>64}"),
            T0,
            Origin("trading.intents/0", n),
        )
    bot = eng.bots[bot_name]
    assert len(bot.ids.outcomes) == len(bot.ids.fills) == 10_000
    size = len(encode(bot.portfolio_snapshot()))
    assert size < 1_000_000, size


# -- item 11 / C3: event ids are the same whatever the interleaving ---------------------------

IDS = """
[bots.alpha]
[bots.alpha.session]
loss_limit = -50.0
[bots.alpha.breaker]
loss_limit = 2
[bots.alpha.portfolio]
max_daily_loss = -80.0
"""


def _run(records: list[tuple[Event, Origin]], toml: str = IDS) -> list[HaltEvent]:
    eng = engine(toml)
    out = Effects()
    for event, src in records:
        eng.apply(event, T0 + 10 * MIN_MS, src, out)
    return out.halts


def test_event_ids_do_not_depend_on_how_control_and_data_interleave() -> None:
    control_records: list[tuple[Event, Origin]] = [
        (control("halt", ts=T0), Origin("risk.control/0", 0)),
        (control("resume", ts=T0 + 1), Origin("risk.control/0", 1)),
        (control("halt", symbol=None, ts=T0 + 2), Origin("risk.control/0", 2)),
        (control("halt", ts=T0 + 3), Origin("risk.control/0", 3)),
    ]
    data_records: list[tuple[Event, Origin]] = [
        (outcome(-30.0, ts=T0 + 10, outcome_id=f"o{n}"), Origin("trading.outcomes/0", n))
        for n in range(3)
    ]
    control_first = _run(control_records + data_records)
    data_first = _run(data_records + control_records)
    d, c = data_records, control_records
    interleaved = _run([d[0], c[0], d[1], c[1], d[2], c[2], c[3]])
    views = [{h.event_id: (h.kind, h.gate) for h in run} for run in (control_first, data_first)]
    assert views[0] == views[1] == {h.event_id: (h.kind, h.gate) for h in interleaved}
    assert len(views[0]) == 7  # 4 commands; session, breaker, latch halts; no id twice
    for run in (control_first, data_first, interleaved):
        assert len({h.event_id for h in run}) == len(run)


# -- issue 15 item 17 / C2: no spurious "resumed" ---------------------------------------------


@pytest.mark.parametrize("command", ["reset_session", "reset_breaker", "resume"])
@pytest.mark.parametrize("symbol", ["BTCUSDT", None])
def test_reset_or_resume_of_something_not_blocked_publishes_no_resumed_event(
    command: str, symbol: str | None
) -> None:
    eng = engine(BREAKER)
    eng.apply(outcome(-1.0, ts=T0), T0)  # one loss: not tripped, session not halted
    out = eng.apply(control(command, symbol=symbol, ts=T0 + 1), T0 + 1)
    assert out.halts == []
    breaker = eng.bots["alpha"].symbols["BTCUSDT"].breaker
    expected_losses = [] if command == "reset_breaker" else [T0 // 1000]
    assert breaker.recent_losses == expected_losses, "the reset still applies"


def test_reset_session_of_a_halted_session_still_publishes_resumed() -> None:
    eng = engine(LATCHING)
    eng.apply(outcome(-150.0, ts=T0), T0)
    out = eng.apply(control("reset_session", ts=T0 + 1), T0 + 1)
    assert [(h.kind, h.gate, h.symbol) for h in out.halts] == [
        ("resumed", "session_halt", "BTCUSDT")
    ]


# -- N1, N2: names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "symbol",
    ["*", "BTC\x00USDT", "BTC\x1bUSDT", "BTC\u200bUSDT", "BTC\u202eUSDT", "S" * 65, "BTC/USDT"],
    ids=["star", "nul", "escape", "zero-width", "rtl-override", "65-chars", "slash"],
)
def test_symbols_that_collide_with_bot_ids_or_hide_characters_are_invalid_names(
    symbol: str,
) -> None:
    eng = engine(OPEN)
    with pytest.raises(Rejected) as exc:
        eng.apply(outcome(-1.0, symbol=symbol), T0)
    assert exc.value.reason == "invalid_name"
    assert eng.bots == {}


def test_bot_names_with_control_characters_are_invalid_names() -> None:
    with pytest.raises(Rejected) as exc:
        engine(OPEN).apply(outcome(-1.0, bot="al\x07pha"), T0)
    assert exc.value.reason == "invalid_name"


def test_names_over_64_characters_fail_to_decode() -> None:
    raw = msgspec.json.encode(outcome(-1.0, symbol="S" * 65))
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=TradeOutcome)
    ok = msgspec.json.encode(outcome(-1.0, symbol="S" * 64))
    assert msgspec.json.decode(ok, type=TradeOutcome).symbol == "S" * 64


WITH_SYMBOLS = """
[bots.alpha]
symbols = [{symbols}]
"""


def test_a_symbol_removed_from_the_config_is_ignored_at_restore_and_its_events_dead_lettered() -> (
    None
):
    before = engine(WITH_SYMBOLS.format(symbols='"BTCUSDT", "ETHUSDT"'))
    before.apply(outcome(-5.0, symbol="ETHUSDT"), T0)
    before.apply(outcome(-5.0, symbol="BTCUSDT"), T0)
    bot = before.bots["alpha"]
    records = {
        symbol_key("alpha", name): encode(sym.snapshot()) for name, sym in bot.symbols.items()
    }
    after = engine(WITH_SYMBOLS.format(symbols='"BTCUSDT"'))
    ignored = after.restore(records, T0 + 1)
    assert ignored == [
        (
            symbol_key("alpha", "ETHUSDT"),
            "symbol 'ETHUSDT' is no longer configured for bot 'alpha'",
        )
    ]
    assert list(after.bots["alpha"].symbols) == ["BTCUSDT"]
    with pytest.raises(Rejected) as exc:
        after.apply(outcome(-5.0, symbol="ETHUSDT"), T0 + 2)
    assert exc.value.reason == "unknown_symbol"


def test_portfolio_snapshot_carries_the_command_guard_and_windows() -> None:
    eng = engine(OPEN)
    eng.apply(control("halt", symbol=None, ts=T0), T0)
    _send(eng, ["a"], 0)
    snap = msgspec.json.decode(
        encode(eng.bots["alpha"].portfolio_snapshot()), type=PortfolioSnapshot
    )
    assert snap.last_command_ts == T0
    assert snap.command_digests == [signing.command_digest(control("halt", symbol=None, ts=T0))]
    assert snap.outcome_ids is not None
    assert (len(snap.outcome_ids.ids), len(snap.outcome_ids.offsets)) == (8, 4)
    assert snap.applied_offsets["trading.outcomes/0"] == 0  # the window's watermark


def test_an_id_window_restored_from_its_snapshot_judges_like_the_original() -> None:
    window = IdWindow(3)
    for n, event_id in enumerate("abcde"):  # wraps: keeps c, d, e
        assert window.first(event_id, ("trading.outcomes/0", n))
    restored = IdWindow(3)
    restored.load(msgspec.json.decode(encode(window.dump()), type=IdWindowSnapshot))
    for w in (window, restored):
        assert len(w) == 3
        assert [w.first(x, ("trading.outcomes/0", 9), fresh=False) for x in "abcde"] == [
            True,  # evicted: the symbol's watermark decides
            True,
            False,  # inserted by an earlier offset: a re-send
            False,
            False,
        ]
        assert w.first("e", ("trading.outcomes/0", 4), fresh=False), "inserted by this record"
    assert [restored.first(x, ("trading.outcomes/0", 10)) for x in "adf"] == [True, False, True]
