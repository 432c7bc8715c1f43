"""Persistence and commits of the worker shell, exact under crashes (issue 9 items 3, 9, 10).

Every test drives the real ``Worker`` over ``worker.runtime.memory``, with the fault
injection of ``tests/support/transport.py``: crashes land at record boundaries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import RecordTooLargeError

from tests.support.transport import (
    MAX_REQUEST_SIZE,
    Shell,
    Stored,
    broker_for,
    engine_state,
)
from worker.config import Config, load_config
from worker.core import Effects, Origin, RiskEngine, idlog
from worker.kafka.records import (
    DEADLETTER_MAX_BYTES,
    deadletter_record,
    output_records,
    snapshot_records,
)
from worker.kafka.restore import (
    CLAIM_KEY,
    epoch_headers,
    fold_snapshot_records,
    record_epoch,
)
from worker.messages import ControlCommand, Event, Fill, OrderIntent, TradeOutcome
from worker.runtime import PublishRefused, home_partition
from worker.runtime.memory import InMemoryBroker, MemoryTransport
from worker.runtime.ownership import Ownership

NOW = 1_767_268_800_000  # 2026-01-01 12:00 UTC
MIN = 60_000

CONFIG = """
[topics]
partitions = 2
[worker]
max_unpersisted_keys = 1
[defaults.session]
loss_limit = -10000.0
[defaults.portfolio]
max_daily_loss = -500.0
max_gross_exposure = 100000.0
[bots.alpha]
symbols = ["BTC", "ETH", "SOL"]
"""


def config(text: str = CONFIG) -> Config:
    return load_config(text=text, env={})


def produce(broker: InMemoryBroker, cfg: Config, events: list[Event]) -> None:
    topic = {
        Fill: cfg.topics.fills,
        TradeOutcome: cfg.topics.outcomes,
        OrderIntent: cfg.topics.intents,
        ControlCommand: cfg.topics.control,
    }
    for event in events:
        broker.append(topic[type(event)], event.bot.encode(), msgspec.json.encode(event))


def outcome(n: int, symbol: str, net: float) -> TradeOutcome:
    return TradeOutcome(f"o{n}", "alpha", symbol, net, 0.0, NOW - 30 * MIN + n)


def fill(n: int, symbol: str, side: str, qty: float, intent: str | None = None) -> Fill:
    return Fill(f"f{n}", "alpha", symbol, side, qty, 100.0, 0.0, NOW - 20 * MIN + n, 1.0, intent)  # type: ignore[arg-type]


def intent(n: int, symbol: str, qty: float) -> OrderIntent:
    return OrderIntent(f"i{n}", "alpha", symbol, "open", "buy", qty, 100.0, NOW - MIN + n)


async def run(
    cfg: Config, events: list[Event], crash_after: int | None, max_records: int = 5
) -> tuple[Any, int]:
    """State after the events, crashing once after ``crash_after`` writes; and writes made.

    Writes are records appended and offset commits: every boundary between two
    of them is a crash point. The crash may land anywhere, the final persist of
    a graceful stop included; a new process then starts from what the broker holds.
    """
    broker = broker_for(cfg, timestamp_ms=NOW)
    produce(broker, cfg, events)
    before = sum(broker.end(tp) for tp in broker.logs)
    partitions = range(cfg.topics.partitions)
    with Shell(cfg, broker, NOW) as shell:
        broker.crash_after(crash_after)
        shell.start(partitions, max_records=max_records)
        while not (await shell.idle() and await shell.stop()):
            shell.start(partitions, max_records=max_records)  # the restarted process
        sent = sum(broker.end(tp) for tp in broker.logs) - before + broker.commits
        worker = shell.worker
        assert worker is not None
        live = engine_state(worker.engine)
        # What the next owner restores must be exactly what this one held.
        shell.start(partitions)
        assert await shell.idle()
        assert shell.worker is not None
        assert engine_state(shell.worker.engine) == live
    return live, sent


LATCH_STREAM: list[Event] = [
    outcome(1, "BTC", -300.0),
    outcome(2, "ETH", -150.0),
    outcome(3, "SOL", -100.0),  # account -550: the daily-loss latch
    outcome(4, "BTC", +400.0),  # account -150: the latch holds for the day
]


async def test_daily_loss_latch_survives_a_crash_between_symbol_and_portfolio_records() -> None:
    """Issue 9 item 3, as reported: symbols acknowledged, portfolio not, crash, replay."""
    cfg = config()
    reference, sent = await run(cfg, LATCH_STREAM, None)
    assert reference["alpha"]["portfolio"]["halted"] is True
    for crash in range(sent):
        state, _ = await run(cfg, LATCH_STREAM, crash)
        assert state == reference, f"crash after {crash} of {sent} writes"


MIXED_STREAM: list[Event] = [
    intent(1, "BTC", 5.0),
    intent(2, "ETH", 3.0),
    fill(1, "BTC", "buy", 2.0, "i1"),
    outcome(1, "SOL", -200.0),
    fill(2, "BTC", "buy", 3.0, "i1"),
    outcome(2, "ETH", -200.0),
    fill(3, "ETH", "buy", 3.0, "i2"),
    outcome(3, "BTC", -150.0),
    intent(3, "SOL", 1.0),
    fill(4, "BTC", "sell", 5.0),
    outcome(4, "SOL", +500.0),
]


async def test_crash_at_every_record_boundary_rebuilds_the_uninterrupted_state() -> None:
    """Issue 9 item 3 / decision D2: symbol states, the latch and reservations, exactly."""
    cfg = config()
    reference, sent = await run(cfg, MIXED_STREAM, None)
    assert reference["alpha"]["portfolio"]["halted"] is True
    for crash in range(sent):
        state, _ = await run(cfg, MIXED_STREAM, crash)
        assert state == reference, f"crash after {crash} of {sent} writes"


@pytest.mark.parametrize("records_per_poll", [1, 3, 100])
async def test_crash_boundaries_hold_for_every_batch_size(records_per_poll: int) -> None:
    cfg = config()
    stream = LATCH_STREAM + MIXED_STREAM[:6]
    reference, sent = await run(cfg, stream, None, records_per_poll)
    for crash in range(0, sent, 2):
        state, _ = await run(cfg, stream, crash, records_per_poll)
        assert state == reference, f"crash after {crash} of {sent} writes"


def _with_resends(events: list[Event]) -> list[Event]:
    """Each event followed by a re-send of the one four before it (a window of 8 covers
    that plus a replay's span: D1 is exact only then, whatever the persisted form)."""
    out: list[Event] = []
    for n, event in enumerate(events):
        out.append(event)
        if n >= 4:
            out.append(events[n - 4])
    return out


CHUNKED_STREAM: list[Event] = [
    *_with_resends([outcome(10 + n, ("BTC", "ETH", "SOL")[n % 3], 10.0 + n) for n in range(8)]),
    *MIXED_STREAM,
    *(intent(10 + n, "SOL", 0.1) for n in range(5)),
    *(fill(10 + n, "SOL", "buy", 0.1, f"i{10 + n}") for n in range(5)),
]


@pytest.mark.parametrize("records_per_poll", [1, 5])
async def test_crash_at_every_record_boundary_with_id_chunks_sealed_and_tombstoned(
    monkeypatch: pytest.MonkeyPatch, records_per_poll: int
) -> None:
    """The id windows persisted as chunk records (``<bot>/ids/<window>/<n>``): a crash
    between a chunk, the portfolio referencing it, a symbol and a tombstone of a chunk
    that fell out of the window still restores + replays to the uninterrupted state."""
    monkeypatch.setattr(idlog, "CHUNK_ENTRIES", 2)
    cfg = config(CONFIG.replace("[worker]\n", "[worker]\ndedupe_ids_per_bot = 8\n", 1))
    reference, sent = await run(cfg, CHUNKED_STREAM, None, records_per_poll)
    for crash in range(sent):
        state, _ = await run(cfg, CHUNKED_STREAM, crash, records_per_poll)
        assert state == reference, f"crash after {crash} of {sent} writes"


# -- item 9: every record riskgate writes fits, and a refused one stops the worker ----

NAME = "N" * 64  # N1: the longest bot or symbol name
ID = "i" * 256  # the longest event id (messages.Id)
REASON = "r" * 256  # N1: the longest operator reason
ISSUER = "o" * 64  # N1: the longest issued_by


def worst_case_engine(id_chars: int = len(ID)) -> tuple[RiskEngine, Effects, int]:
    """A bot at every bound at once: names, reasons, reservations, every id window full.

    Returns the engine, its effects (every key dirty) and how many intents the
    reservation cap denied (so the caller knows the cap was reached).
    """
    cfg = load_config(
        text=f"""
[defaults.portfolio]
max_gross_exposure = 1e12
max_daily_loss = -1e12
[defaults.session]
loss_limit = -1e12
[bots.{NAME}]
symbols = ["{NAME}", "{NAME[:-1]}S"]
""",
        env={},
    )
    engine = RiskEngine(cfg)
    out = Effects()
    worker_cfg = cfg.worker
    window = max(10_000, getattr(worker_cfg, "dedupe_ids_per_bot", 0))
    symbols = (NAME, f"{NAME[:-1]}S")

    def apply(event: Event, topic: str, offset: int) -> None:
        engine.apply(event, NOW, Origin(f"{topic}/0", offset), out)

    for n in range(window + worker_cfg.max_reservations_per_bot):
        unique = f"{n:08d}" + ID[8:id_chars]
        apply(
            OrderIntent(unique, NAME, symbols[n % 2], "open", "buy", 1.0, 1.0, NOW - 1),
            "trading.intents",
            n,
        )
    for n in range(window + 10):
        unique = f"{n:08d}" + ID[8:id_chars]
        fill_event = Fill(unique, NAME, symbols[n % 2], "buy", 1.0, 1.0, 0.0, NOW - 1)
        apply(fill_event, "trading.fills", n)
        apply(TradeOutcome(unique, NAME, symbols[n % 2], -1.0, 0.0, NOW - 1), "trading.outcomes", n)
    offset = 0
    for target in (None, *symbols):
        for n in range(300):  # commands remembered per target (C1), last one a halt
            command = "halt" if n % 2 else "resume"
            cmd = ControlCommand(command, NAME, target, REASON, ISSUER, NOW - 300 + n)  # type: ignore[arg-type]
            apply(cmd, "risk.control", offset)
            offset += 1
    for name in symbols:
        out.dirty_symbols.add((NAME, name))
    out.dirty_bots.add(NAME)
    capped = sum(not d.allowed and "reservations outstanding" in d.reason for d in out.decisions)
    return engine, out, capped


WELL_UNDER = MAX_REQUEST_SIZE * 3 // 4
"""A quarter of the request size left for batch and record overhead (tens of bytes) and
for fields not thought of yet; measured worst case: see the test's printout."""


@pytest.mark.parametrize("id_chars", [8, len(ID)])
def test_worst_case_record_of_every_kind_is_well_under_the_request_size(id_chars: int) -> None:
    """Issue 9 item 9: with N1's bounds no record can exceed aiokafka's max_request_size.

    Long ids fill the reservations' byte budget first, short ones their count cap.
    """
    engine, out, capped = worst_case_engine(id_chars)
    # The reservation cap was reached, so the bot holds the most reservations it can:
    # 1,000 short ids (the count cap), 304 long ones (the byte budget), of 11,000 intents.
    allowed = sum(d.allowed for d in out.decisions)
    assert (allowed, capped) == {8: (1_000, 10_000), len(ID): (304, 10_696)}[id_chars]
    topics = engine.config.topics
    snapshots = snapshot_records(engine, out, topics, {NAME: 0}, {0: 1 << 40})
    outputs = output_records(engine, out, topics, NOW)
    dead = deadletter_record(
        topics,
        source_topic=topics.fills,
        partition=0,
        offset=1 << 62,
        key=b"k" * 2_000_000,
        value=b"v" * 2_000_000,
        headers=[("h" * 1000, b"x" * 500_000)],
        error_class="unprocessable",
        message="m" * 10_000,
    )
    sizes: dict[str, int] = {}
    for record in [*snapshots, *outputs, dead]:
        kind = record.topic
        if kind == topics.snapshots:
            assert record.key is not None
            kind = (
                "portfolio snapshot"
                if record.key.endswith(b"/portfolio")
                else "id chunk"
                if b"/ids/" in record.key
                else "symbol snapshot"
            )
        size = len(record.key or b"") + len(record.value or b"")
        size += sum(len(k.encode()) + len(v) for k, v in record.headers or ())
        sizes[kind] = max(sizes.get(kind, 0), size)
    kinds = {topics.halts, topics.decisions, topics.gates, topics.deadletter}
    assert kinds <= set(sizes), sizes
    assert {"portfolio snapshot", "symbol snapshot"} <= set(sizes)
    print("worst-case record bytes:", sizes)
    for kind, size in sizes.items():
        assert size <= WELL_UNDER, f"{kind}: {size} bytes"
    # The id windows are chunk records now (worker.core.idlog): the portfolio keeps at
    # most a chunk's worth of each (its tail), reservations and command digests are the
    # rest (measured 149,787 bytes; 740 KB when it held the whole windows).
    assert sizes["portfolio snapshot"] <= 160_000
    assert sizes["id chunk"] <= 8_000  # 256 intent entries of 21 bytes, as base64 JSON
    assert sizes[topics.deadletter] <= DEADLETTER_MAX_BYTES


async def test_non_retriable_send_error_stops_the_worker_instead_of_retrying_forever() -> None:
    """Issue 9 item 9 (send side): a refused record was retried forever, wedging every bot."""
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    broker.max_request_size = 100  # every output is now "too large"
    produce(broker, cfg, LATCH_STREAM[:1])
    with Shell(cfg, broker, NOW) as shell:
        shell.start(range(cfg.topics.partitions))
        with pytest.raises(PublishRefused, match=r"refused a record .*MessageSizeTooLarge"):
            await shell.idle()
    assert broker.committed == {}


async def test_a_record_the_broker_refuses_stops_the_worker_instead_of_retrying_forever() -> None:
    """Issue 9 item 9 (send side): the broker's non-retriable answer, not the client's."""
    cfg = config()
    broker = broker_for(cfg, timestamp_ms=NOW)
    broker.refuse_with = RecordTooLargeError("the broker's message.max.bytes is smaller")
    produce(broker, cfg, LATCH_STREAM[:1])
    with Shell(cfg, broker, NOW) as shell:
        shell.start(range(cfg.topics.partitions))
        with pytest.raises(PublishRefused, match=r"refused a record .*RecordTooLarge"):
            await shell.idle()
    assert broker.committed == {}


# -- item 10: offsets commit only for partitions owned and restored (P3) ---------------


async def settle(condition: Callable[[], bool], steps: int = 10_000) -> None:
    """Let the worker's tasks run until ``condition`` holds (bounded by steps, not time)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_timed_out_revoke_never_commits_offsets_of_the_returning_partition() -> None:
    """Issue 9 item 10: acks arriving after the bot was forgotten committed its offsets."""
    kafka = "max_poll_interval_ms = 200\nsession_timeout_ms = 150\nheartbeat_interval_ms = 50\n"
    cfg = config(CONFIG + "[kafka]\n" + kafka)  # a revoke waits 0.1 s for its persist
    stream = LATCH_STREAM[:2]
    reference, _ = await run(cfg, stream, None)
    broker = broker_for(cfg, timestamp_ms=NOW)
    produce(broker, cfg, stream[:1])
    home = home_partition(b"alpha", cfg.topics.partitions)
    outcomes = TopicPartition(cfg.topics.outcomes, home)
    with Shell(cfg, broker, NOW) as shell:
        shell.start(range(cfg.topics.partitions))
        assert await shell.idle()
        assert broker.committed[outcomes] == 1
        gates = len(broker.records(cfg.topics.gates))
        broker.hold_acks()
        produce(broker, cfg, stream[1:])
        await settle(lambda: len(broker.records(cfg.topics.gates)) > gates)  # outputs unacked
        assert await shell.revoke([home])  # its persist cannot finish: times out, forgets alpha
        assert shell.worker is not None and "alpha" not in shell.worker.engine.bots
        await shell.assign([home])  # the partition comes straight back
        broker.release_acks()  # the stale batch's offsets reach the loop now
        assert await shell.idle()
        assert broker.committed[outcomes] == 2
        assert await shell.stop()
        assert engine_state(shell.worker.engine) == reference


async def test_commit_skips_partitions_assigned_but_not_yet_restored() -> None:
    """P3: between an assignment and its restore, nothing of that partition commits."""
    cfg = config()
    transport = MemoryTransport(broker_for(cfg, timestamp_ms=NOW), cfg.topics.snapshots)
    ownership = Ownership(cfg.topics, transport.read_snapshots)
    tp = TopicPartition(cfg.topics.outcomes, 0)
    assert ownership.assign([tp]) == {tp}
    assert ownership.committable({tp: 7}) == {}
    [(read, owned)] = [r async for r in finished(ownership)]
    assert (read.partitions, owned) == (frozenset({0}), {tp})
    ownership.mark_restored(owned)
    assert ownership.committable({tp: 7}) == {tp: 7}


async def finished(ownership: Ownership) -> Any:
    """The restores of ``ownership`` once every read in flight is done."""
    while ownership.restoring:
        await asyncio.sleep(0)
        for done in ownership.finished_restores():
            yield done


# -- suspected: zombie writers are fenced by the owner epoch --------------------------


def test_snapshot_fold_ignores_an_older_epoch_written_after_a_newer_one() -> None:
    def rec(key: str, value: bytes, epoch: int | None) -> Stored:
        headers = tuple(epoch_headers(epoch)) if epoch is not None else ()
        return Stored("risk.snapshots", 0, 0, NOW, key.encode(), value, headers, 0)

    logs = {
        0: [
            rec("a/portfolio", b"legacy", None),
            rec("a/risk/X", b"old-owner", 1),
            rec("a/risk/X", b"new-owner", 2),
            rec("a/risk/X", b"zombie", 1),
            rec("a/portfolio", b"zombie", 1),
        ]
    }
    read = fold_snapshot_records(frozenset({0, 1}), logs)
    assert read.records == {"a/portfolio": b"legacy", "a/risk/X": b"new-owner"}
    assert read.epochs == {0: 2, 1: 0}
    assert read.fenced == ("a/risk/X", "a/portfolio")


def test_the_latest_ownership_claim_fences_what_compaction_left_of_a_zombie() -> None:
    """Compaction dropped the new owner's records of a key; its claim still fences."""
    claim = Stored("risk.snapshots", 0, 0, NOW, CLAIM_KEY, b"2", tuple(epoch_headers(2)), 0)
    zombie = Stored("risk.snapshots", 0, 5, NOW, b"a/risk/X", b"zombie", tuple(epoch_headers(1)), 0)
    other = Stored("risk.snapshots", 0, 6, NOW, b"a/risk/Y", b"zombie", tuple(epoch_headers(1)), 0)
    owner = Stored("risk.snapshots", 0, 7, NOW, b"a/risk/Y", b"owner", tuple(epoch_headers(2)), 0)
    read = fold_snapshot_records(frozenset({0}), {0: [claim, zombie, other, owner]})
    # X has nothing but the zombie's record left: used, flagged for rewriting.
    assert read.records == {"a/risk/X": b"zombie", "a/risk/Y": b"owner"}
    assert read.epochs == {0: 2}
    assert read.fenced == ("a/risk/X", "a/risk/Y")


async def test_zombie_writer_snapshots_after_the_new_owner_are_ignored_on_restore() -> None:
    """Issue 9, suspected: an expelled-but-alive worker's late snapshot won on restore."""
    cfg = config()
    partitions = range(cfg.topics.partitions)
    broker = broker_for(cfg, timestamp_ms=NOW)
    produce(broker, cfg, [outcome(1, "BTC", -10.0)])
    with Shell(cfg, broker, NOW) as zombie, Shell(cfg, broker, NOW) as owner:
        zombie.start(partitions, max_records=1)
        assert await zombie.idle()
        assert zombie.consumer is not None
        zombie.consumer.pause(*zombie.input_tps(partitions))  # stalls; the group moves on
        owner.start(partitions)
        assert await owner.idle()
        produce(broker, cfg, [outcome(2, "BTC", -10.0), outcome(3, "BTC", -10.0)])
        assert await owner.idle()
        assert owner.worker is not None
        expected = engine_state(owner.worker.engine)
        assert expected["alpha"]["symbols"]["BTC"]["session_pnl"]["trades"] == 3
        newest = broker.records(cfg.topics.snapshots)[-1].seq
        zombie.consumer.resume(*zombie.input_tps(partitions))  # wakes: applies o2 alone
        await settle(
            lambda: any(
                r.key == b"alpha/risk/BTC" and r.seq > newest
                for r in broker.records(cfg.topics.snapshots)
            )
        )
        zombie.kill()
        stale = broker.last_per_key(cfg.topics.snapshots)[b"alpha/risk/BTC"]
        assert record_epoch(stale.headers) == 1  # the zombie's record is the last one
        assert await owner.stop()
    with Shell(cfg, broker, NOW) as successor:
        successor.start(partitions)
        assert await successor.idle()
        assert successor.worker is not None
        assert engine_state(successor.worker.engine) == expected
        assert await successor.stop()  # it rewrote the fenced keys under its own epoch
    broker.compact(cfg.topics.snapshots)  # so compaction cannot bring the zombie back
    assert record_epoch(broker.last_per_key(cfg.topics.snapshots)[b"alpha/risk/BTC"].headers) == 3
    with Shell(cfg, broker, NOW) as next_owner:
        next_owner.start(partitions)
        assert await next_owner.idle()
        assert next_owner.worker is not None
        assert engine_state(next_owner.worker.engine) == expected


# -- suspected / issue 15 item 17: gate records after restore and for silent bots -----


def gate_records(broker: InMemoryBroker, cfg: Config) -> dict[bytes, Any]:
    return {
        key: msgspec.json.decode(r.value or b"null")
        for key, r in broker.last_per_key(cfg.topics.gates).items()
    }


async def test_restore_republishes_the_gate_record_of_everything_restored() -> None:
    """Issue 9, suspected: with the gates topic truncated, GateView read a gap as "allowed"."""
    cfg = config()
    partitions = range(cfg.topics.partitions)
    broker = broker_for(cfg, timestamp_ms=NOW)
    produce(broker, cfg, LATCH_STREAM)
    with Shell(cfg, broker, NOW) as shell:
        shell.start(partitions)
        assert await shell.idle()
        assert await shell.stop()
        for tp, log in broker.logs.items():
            if tp.topic == cfg.topics.gates:
                log.clear()  # recreated, truncated
        shell.start(partitions)
        assert await shell.idle()
    gates = gate_records(broker, cfg)
    assert set(gates) == {b"alpha/gate", b"alpha/gate/BTC", b"alpha/gate/ETH", b"alpha/gate/SOL"}
    assert gates[b"alpha/gate"]["entries_allowed"] is False
    assert [b["gate"] for b in gates[b"alpha/gate"]["blocks"]] == ["portfolio_daily_loss"]
    assert gates[b"alpha/gate/BTC"]["trades"] == 2


async def test_configured_bot_that_sent_nothing_gets_an_account_gate_record_at_assignment() -> None:
    """Issue 15 item 17: GateView denied a configured but silent bot forever (no record)."""
    cfg = config(CONFIG + '[bots.quiet]\nsymbols = ["BTC"]\n')
    broker = broker_for(cfg, timestamp_ms=NOW)
    with Shell(cfg, broker, NOW) as shell:
        shell.start(range(cfg.topics.partitions))
        assert await shell.idle()
    gates = gate_records(broker, cfg)
    assert set(gates) == {b"alpha/gate", b"quiet/gate"}
    assert gates[b"quiet/gate"]["entries_allowed"] is True
    assert gates[b"quiet/gate"]["blocks"] == []


SWAP_STREAM: list[Event] = [
    outcome(1, "ETH", -300.0),
    outcome(2, "BTC", 0.0),  # persisted: ETH -300, BTC 0 (account -300)
    outcome(3, "ETH", +300.0),
    outcome(4, "BTC", -300.0),  # persisted: ETH 0, BTC -300 (account -300)
]


async def test_a_partial_persist_never_latches_the_daily_loss_on_a_mixed_account() -> None:
    """D2: BTC of the second persist with ETH of the first read -600, a loss never incurred;
    the restore's sweep must not latch on it (nor may the replay: the portfolio's watermark)."""
    cfg = config()
    reference, sent = await run(cfg, SWAP_STREAM, None, max_records=2)
    assert reference["alpha"]["portfolio"]["halted"] is False
    for crash in range(sent):
        state, _ = await run(cfg, SWAP_STREAM, crash, max_records=2)
        assert state == reference, f"crash after {crash} of {sent} writes"


RESET_STREAM: list[Event] = [
    intent(1, "BTC", 1.0),  # the bot exists, no symbol yet (a decision creates none)
    ControlCommand("reset_session", "alpha", None, "new day", "ops", NOW - 2 * MIN),
    outcome(9, "SOL", -100.0),  # SOL is created after the reset
]


async def test_a_replayed_bot_wide_reset_never_reaches_a_symbol_created_after_it() -> None:
    """D2: the crash persisted the portfolio and SOL, not the commit; the replayed reset
    found SOL fresh for the control partition and wiped the loss it never saw live."""
    cfg = config()
    reference, sent = await run(cfg, RESET_STREAM, None, max_records=1)
    assert reference["alpha"]["symbols"]["SOL"]["session_pnl"]["realised"] == -100.0
    for crash in range(sent):
        state, _ = await run(cfg, RESET_STREAM, crash, max_records=1)
        assert state == reference, f"crash after {crash} of {sent} writes"
