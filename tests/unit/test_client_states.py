"""GateView trading states and the kill callback (issue 11, trading states and kill switch)."""

from __future__ import annotations

import msgspec
import pytest
from aiokafka.errors import KafkaConnectionError

from tests.unit.test_client_unit import (
    HALT,
    HALTS_TP,
    NOW,
    STALE_MS,
    Clock,
    account,
    gate,
    halt,
    halt_event,
    make_view,
    started_view,
    symbol,
)
from worker.messages import Block, HaltEvent

KILL = Block("kill_switch", "kill by ops: runaway", None)
COOLDOWN = Block("loss_cooldown", "losing trade", NOW + 60_000)


def killed_event(symbol_name: str | None = "S1") -> HaltEvent:
    event = halt_event("killed", symbol=symbol_name, gate="kill_switch")
    return msgspec.structs.replace(event, cancel_open_orders=True)


async def test_state_is_active_reducing_or_killed_from_the_blocks() -> None:
    view, feed = await started_view(Clock())
    await gate(feed, "a/gate", account())
    await gate(feed, "a/gate/S1", symbol())
    await gate(feed, "a/gate/S2", symbol(name="S2", blocks=[HALT]))
    await gate(feed, "a/gate/S3", symbol(name="S3", blocks=[COOLDOWN, KILL]))
    assert [view.state("a", s) for s in ("S1", "S2", "S3", "S4")] == [
        "active",
        "reducing",
        "killed",
        "active",
    ]
    assert [view.entries_allowed("a", s) for s in ("S1", "S2", "S3", "S4")] == [
        True,
        False,
        False,
        True,
    ]


async def test_a_bot_level_kill_kills_every_symbol() -> None:
    view, feed = await started_view(Clock())
    await gate(feed, "a/gate", account(blocks=[KILL]))
    await gate(feed, "a/gate/S1", symbol())
    assert (view.state("a", "S1"), view.state("a", "S9")) == ("killed", "killed")


async def test_a_listed_block_denies_entries_whatever_entries_allowed_says() -> None:
    """Every gate blocks entries, also one this client does not know yet."""
    view, feed = await started_view(Clock())
    lying = msgspec.structs.replace(symbol(), entries_allowed=True, blocks=[COOLDOWN])
    await gate(feed, "a/gate", account())
    await gate(feed, "a/gate/S1", lying)
    assert (view.state("a", "S1"), view.entries_allowed("a", "S1")) == ("reducing", False)


async def test_state_is_halted_when_the_view_cannot_vouch() -> None:
    clock = Clock()
    view, feed = await started_view(clock, ends={HALTS_TP: 1})
    await gate(feed, "a/gate", account())
    assert view.state("a", "S1") == "halted"  # not caught up
    await halt(feed, halt_event("resumed", symbol="S9"))  # the last record to replay
    assert view.caught_up
    assert (view.state("a", "S1"), view.state("b", "S1")) == ("active", "halted")  # b: no record
    clock.now = NOW + STALE_MS + 1
    assert view.state("a", "S1") == "halted"  # stale owner
    clock.now = NOW
    assert view.state("a", "S1") == "active"
    feed.push(KafkaConnectionError("broker gone"))  # the reader stops
    await feed.settled()
    assert view.failure is not None
    assert view.state("a", "S1") == "halted"


async def test_on_kill_gets_killed_events_only_once_the_table_shows_the_kill() -> None:
    view, feed = await started_view(Clock())
    kills: list[HaltEvent] = []
    everything: list[str] = []
    view.on_kill(kills.append)
    view.subscribe(lambda e: everything.append(e.kind))
    await gate(feed, "a/gate/S1", symbol())
    event = killed_event()
    await halt(feed, event)
    assert kills == []  # the table does not show it yet
    await gate(feed, "a/gate/S1", symbol(blocks=[KILL]))
    assert kills == [event]
    assert kills[0].cancel_open_orders is True
    await halt(feed, halt_event("halted", n=2))  # another gate's event is not a kill
    await gate(feed, "a/gate/S1", symbol(blocks=[KILL, HALT]))
    assert kills == [event]
    assert everything == ["killed", "halted"]


def test_on_kill_refuses_a_coroutine_function() -> None:
    async def cancel(event: HaltEvent) -> None:
        pass

    with pytest.raises(TypeError, match="coroutine function"):
        make_view(Clock()).on_kill(cancel)
