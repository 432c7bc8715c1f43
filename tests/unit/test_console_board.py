"""The console board: what each row shows, failing closed like GateView.

Records are fed to a real, started GateView through the fake transport of the
GateView unit tests (its reader loop applies them), with an injected monotonic
clock for staleness.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiokafka.errors import KafkaConnectionError

from tests.unit.test_client_unit import (
    GATES_TP,
    HALTS_TP,
    Clock,
    Feed,
    account,
    started_view,
    symbol,
)
from worker.console.live import DAY_MS, SPARK_MIN_GAP_MS, SPARK_POINTS, Board, BoardState
from worker.messages import AccountGateState, Block, GateState, HaltEvent

NOON = 20_254 * DAY_MS + 12 * 3_600_000
SESSION = Block("session_halt", "session net -60.00 <= limit -50.00", NOON + 12 * 3_600_000)
LATCH = Block("portfolio_daily_loss", "account net -600 <= -500", NOON + 12 * 3_600_000)


async def show(feed: Feed, record: AccountGateState | GateState) -> None:
    """Publish a gate record; returns once the view's reader has applied it."""
    if isinstance(record, AccountGateState):
        key = f"{record.bot}/gate"
    else:
        key = f"{record.bot}/gate/{record.symbol}"
    await feed.deliver(GATES_TP, key.encode(), msgspec.json.encode(record))


def halt_event(
    event_id: str, ts: int, kind: str = "halted", symbol_: str | None = "S1"
) -> HaltEvent:
    return msgspec.convert(
        {
            "event_id": event_id,
            "bot": "a",
            "symbol": symbol_,
            "kind": kind,
            "gate": "session_halt",
            "reason": "r",
            "ts": ts,
        },
        HaltEvent,
    )


def rows(state: BoardState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for bot in state.bots:
        out[bot.bot] = (bot.state, bot.entries_allowed)
        for s in bot.symbols:
            out[f"{bot.bot}/{s.symbol}"] = (s.state, s.entries_allowed)
    return out


async def board(clock: Clock, *, caught_up: bool = True) -> tuple[Board, Feed]:
    """The board of a started view (``caught_up=False``: a halt record still to replay)."""
    view, feed = await started_view(clock, ends=None if caught_up else {HALTS_TP: 1})
    return Board(view, timeline_size=3), feed


async def test_board_before_catch_up_shows_every_bot_stale_and_blocked() -> None:
    b, f = await board(Clock(), caught_up=False)
    await show(f, account("a"))
    await show(f, symbol("a", "S1"))
    state = b.state()
    assert rows(state) == {"a": ("halted", False), "a/S1": ("halted", False)}
    assert (state.counts.blocked_bots, state.counts.blocked_symbols, state.counts.stale_bots) == (
        1,
        1,
        1,
    )


async def test_board_symbol_blocked_by_its_own_gate_is_reducing() -> None:
    b, f = await board(Clock())
    await show(f, account("a"))
    await show(f, symbol("a", "S1"))
    await show(f, symbol("a", "S2", blocks=[SESSION]))
    state = b.state()
    assert rows(state) == {
        "a": ("active", True),
        "a/S1": ("active", True),
        "a/S2": ("reducing", False),
    }
    [bot] = state.bots
    assert bot.symbols[1].blocks == [SESSION]
    assert (state.counts.bots, state.counts.symbols, state.counts.blocked_symbols) == (1, 2, 1)


async def test_board_bot_blocked_blocks_every_symbol() -> None:
    b, f = await board(Clock())
    await show(f, account("a", blocks=[LATCH]))
    await show(f, symbol("a", "S1"))
    state = b.state()
    assert rows(state) == {"a": ("reducing", False), "a/S1": ("reducing", False)}
    assert state.bots[0].blocks == [LATCH]


async def test_board_quiet_worker_marks_the_bot_stale_and_blocked() -> None:
    clock = Clock()
    b, f = await board(clock)
    await show(f, account("a"))
    await show(f, symbol("a", "S1"))
    clock.now += b.view.staleness_ms
    assert rows(b.state())["a/S1"] == ("active", True)
    clock.now += 1
    state = b.state()
    assert rows(state) == {"a": ("halted", False), "a/S1": ("halted", False)}
    assert (state.counts.stale_bots, state.counts.blocked_bots, state.counts.blocked_symbols) == (
        1,
        1,
        1,
    )


async def test_board_replayed_history_is_no_heartbeat() -> None:
    view, feed = await started_view(Clock(), ends={GATES_TP: 1})
    b = Board(view, timeline_size=3)
    await show(feed, account("a"))  # offset 0: history, read before catching up
    assert view.caught_up
    assert rows(b.state())["a"] == ("halted", False)


async def test_board_stopped_reader_fails_closed() -> None:
    b, f = await board(Clock())
    await show(f, account("a"))
    f.push(KafkaConnectionError("broker gone"))  # the reader stops
    await f.settled()
    state = b.state()
    assert rows(state)["a"] == ("halted", False)
    assert state.failure == (
        "GateView reader stopped (KafkaConnectionError: KafkaConnectionError: broker gone): "
        "failing closed"
    )


async def test_board_timeline_is_latest_first_and_bounded() -> None:
    b, f = await board(Clock())
    await show(f, account("a"))
    await show(f, symbol("a", "S1", blocks=[SESSION]))
    for n, ts in enumerate((NOON + 3, NOON + 1, NOON + 4, NOON + 2)):
        await f.deliver(HALTS_TP, b"a", msgspec.json.encode(halt_event(f"e{n}", ts)))
    assert [e.event_id for e in b.state().timeline] == ["e2", "e3", "e1"]


async def test_board_refresh_reports_change_only_when_the_document_changes() -> None:
    b, f = await board(Clock(), caught_up=False)
    first = b.version
    # The last record to replay (held by the view: no gate record shows it yet).
    await f.deliver(HALTS_TP, b"a", msgspec.json.encode(halt_event("e0", NOON, "resumed")))
    assert b.view.caught_up
    assert b.refresh() is True  # caught up since construction
    assert b.refresh() is False
    assert b.version == first + 1
    await show(f, account("a"))
    assert b.refresh() is True
    assert b.version == first + 2


async def spark_of(f: Feed, b: Board, *samples: tuple[int, float]) -> list[tuple[int, float]]:
    for seq, (ts, value) in enumerate(samples, start=1):
        record = msgspec.structs.replace(
            account("a"), updated_ts=ts, account_net_pnl=value, seq=seq
        )
        await show(f, record)
        b.refresh()
    return b.state().bots[0].pnl


async def test_board_sparkline_keeps_points_about_the_gap_apart() -> None:
    b, f = await board(Clock())
    points = await spark_of(
        f,
        b,
        (NOON, 0.0),
        (NOON + SPARK_MIN_GAP_MS, -5.0),
        (NOON + SPARK_MIN_GAP_MS + 100, -7.0),
        (NOON + SPARK_MIN_GAP_MS + 200, -9.0),
        (NOON + 2 * SPARK_MIN_GAP_MS + 100, -9.0),
    )
    assert points == [
        (NOON, 0.0),
        (NOON + SPARK_MIN_GAP_MS, -5.0),
        (NOON + SPARK_MIN_GAP_MS + 200, -9.0),
    ]


async def test_board_sparkline_starts_over_on_the_workers_next_day() -> None:
    b, f = await board(Clock())
    points = await spark_of(
        f, b, (NOON, -3.0), (NOON + DAY_MS // 2 - 1, -4.0), (NOON + DAY_MS // 2, 4.0)
    )
    assert points == [(NOON + DAY_MS // 2, 4.0)]


async def test_board_sparkline_full_keeps_every_other_point_and_the_newest() -> None:
    b, f = await board(Clock())
    samples = [(NOON + k * SPARK_MIN_GAP_MS, float(k)) for k in range(SPARK_POINTS + 1)]
    points = await spark_of(f, b, *samples)
    assert points == samples[::2]
    assert points[-1] == samples[-1]


async def test_board_timeline_document_changes_only_when_an_event_arrives() -> None:
    clock = Clock()
    b, f = await board(clock)
    await show(f, account("a"))
    await show(f, symbol("a", "S1", blocks=[SESSION]))
    b.refresh()
    before = dict(b.versions)
    clock.now += b.view.staleness_ms + 1  # the bot goes stale: the rows change
    b.refresh()
    assert b.versions == {"rows": before["rows"] + 1, "timeline": before["timeline"]}
    await f.deliver(HALTS_TP, b"a", msgspec.json.encode(halt_event("e1", NOON)))
    b.refresh()
    assert b.versions == {"rows": before["rows"] + 1, "timeline": before["timeline"] + 1}
    assert b.documents["timeline"] == msgspec.json.encode([halt_event("e1", NOON)])


async def test_board_refresh_that_raises_is_logged_and_retried() -> None:
    b, _ = await board(Clock())
    b.tick_s = 0
    real, calls, retried = b.rows, [], asyncio.Event()

    def flaky() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in one refresh")
        retried.set()
        return real()

    b.rows = flaky  # type: ignore[method-assign]
    ticker = asyncio.create_task(b.run())
    try:
        async with asyncio.timeout(5):
            await retried.wait()
    finally:
        ticker.cancel()
    assert b.failures == 1
    assert msgspec.json.decode(b.documents["rows"])["caught_up"] is True


async def test_board_kill_switch_shows_killed_and_unrealised_pnl_passes_through() -> None:
    b, f = await board(Clock())
    kill = Block("kill_switch", "killed by ops: runaway orders", None)
    await show(f, msgspec.structs.replace(account("a"), unrealised_pnl=-3.5, equity=-3.5))
    await show(f, msgspec.structs.replace(symbol("a", "S1", blocks=[kill]), unrealised_pnl=-3.5))
    state = b.state()
    assert rows(state) == {"a": ("active", True), "a/S1": ("killed", False)}
    [bot] = state.bots
    assert (bot.unrealised_pnl, bot.equity, bot.symbols[0].unrealised_pnl) == (-3.5, -3.5, -3.5)
    assert state.counts.blocked_symbols == 1
