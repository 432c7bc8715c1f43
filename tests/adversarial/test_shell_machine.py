"""Adversarial state machine over the worker shell: crashes, re-sends, rebalances.

Hypothesis drives the real ``Worker`` loop over the in-memory transport of
``tests/support/transport.py`` with two bots on two partitions: fills (some
filling earlier intents), outcomes, open and close intents (new and reused
ids), operator commands on a symbol or a whole bot (halts, resumes, resets),
and between them it

- crashes the worker process between any two records it writes (outputs,
  snapshots, claims: ``crash_after(n)`` for any n, during any step), then
  starts a new one;
- re-sends any run of earlier input records (same bytes, new offsets);
- takes a partition away and gives it back (the revoke flushes), or hands every
  partition to a new worker (a rolling restart);
- varies the fetch size, which moves batch and persist boundaries;
- varies how many loop turns each ack is in flight (the worker pipelines: it
  fetches and applies the next batch before the last one's acks arrive).

A reference worker is fed the same input records and never crashes nor
rebalances. After every step both have consumed everything, and their state
(symbol states, portfolio latch and halts, reservations, intent and id windows,
watermarks) must be equal: restore + replay rebuilds the uninterrupted run
exactly (decision D2). At the end the crashed side's persisted snapshots must
restore to that same state.

The clock is fixed for a run, and every event lies in the hour before it
with windows, cooldowns and TTLs longer than that, so no sweep ever finds a
deadline passed: restarts sweep, the reference does not, and time-driven
changes would differ by when they were swept, not by what was persisted (the
engine machine covers time). ``RISKGATE_FUZZ_EXAMPLES`` (examples) and
``RISKGATE_FUZZ_STEPS`` (steps per example) scale the run: ``make fuzz`` runs
it much longer than ``make test``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec
from aiokafka import TopicPartition
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.support.transport import Shell, Stored, broker_for, engine_state
from worker.config import Config, load_config
from worker.core import idlog
from worker.messages import ControlCommand, Event, Fill, OrderIntent, TradeOutcome

NOW = 1_767_268_800_000  # 2026-01-01 12:00 UTC: every event of a run is of this day
BOTS = ("alpha", "bravo")  # murmur2 puts them on partitions 0 and 1 of 2
SYMBOLS = ("BTC", "ETH", "SOL")
COMMANDS = ("halt", "resume", "reset_session", "reset_breaker")

CONFIG = f"""
[topics]
partitions = 2
[worker]
max_unpersisted_keys = 1
reservation_ttl_ms = 3600000
[defaults.session]
loss_limit = -400.0
[defaults.breaker]
loss_limit = 2
window_secs = 7200
cooldown_secs = 7200
[defaults.portfolio]
max_daily_loss = -500.0
max_gross_exposure = 1000.0
max_concurrent_positions = 2
[bots.alpha]
symbols = {list(SYMBOLS)!r}
[bots.bravo]
symbols = {list(SYMBOLS)!r}
[bots.silent]
""".replace("'", '"')

crashes = st.none() | st.integers(0, 24)
"""Where the step's worker dies: after that many more records it writes (None: it does not)."""

Spec = tuple[str, int, int, int, int]
"""(kind, bot, symbol, amount, variant): what one input record will be."""

specs = st.tuples(
    st.sampled_from(("outcome", "fill", "intent", "control")),
    st.integers(0, len(BOTS) - 1),
    st.integers(0, len(SYMBOLS) - 1),
    st.integers(-6, 4),
    st.integers(0, 7),
)


CHUNK_ENTRIES = 2
"""Id chunks of two entries (:mod:`worker.core.idlog`): a few events seal chunks, so
crashes land between chunk, portfolio and tombstone records too."""


class ShellMachine(RuleBasedStateMachine):
    config_text = CONFIG

    def __init__(self) -> None:
        super().__init__()
        self._chunk_entries = idlog.CHUNK_ENTRIES
        idlog.CHUNK_ENTRIES = CHUNK_ENTRIES
        self.config: Config = load_config(text=self.config_text, env={})
        self.loop = asyncio.new_event_loop()
        self.broker = broker_for(self.config, timestamp_ms=NOW)
        self.reference_broker = broker_for(self.config, timestamp_ms=NOW)
        self.shell = Shell(self.config, self.broker, NOW).__enter__()
        self.reference = Shell(self.config, self.reference_broker, NOW).__enter__()
        self.partitions = range(self.config.topics.partitions)
        self.inputs: list[Stored] = []
        self.intents: dict[str, list[str]] = {bot: [] for bot in BOTS}
        self.n = 0
        self.run(self._start(self.shell, 5))
        self.run(self._start(self.reference, 7))

    # -- plumbing ----------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _start(self, shell: Shell, max_records: int) -> None:
        shell.start(self.partitions, max_records=max_records)
        await self._settle(shell)

    async def _settle(self, shell: Shell) -> None:
        """Run to idle; a crash (at most one is armed) starts a new worker process."""
        while not await shell.idle():
            event("worker crashed at a record boundary")
            shell.start(self.partitions)

    def event(self, spec: Spec) -> Event:
        kind, b, s, amount, variant = spec
        self.n += 1
        n, bot, symbol = self.n, BOTS[b], SYMBOLS[s]
        ts = NOW - 3_600_000 + n * 1_000
        side = "buy" if variant % 2 else "sell"
        if kind == "outcome":
            return TradeOutcome(f"o{n}", bot, symbol, amount * 50.0, float(variant % 2), ts)
        if kind == "fill":
            ids = self.intents[bot]
            intent = ids[variant % len(ids)] if ids and variant >= 4 else None
            qty = 1.0 + abs(amount) % 3
            return Fill(f"f{n}", bot, symbol, side, qty, 100.0, 0.5, ts, 1.0, intent)  # type: ignore[arg-type]
        if kind == "intent":
            ids = self.intents[bot]
            reuse = ids and variant == 7
            intent_id = ids[amount % len(ids)] if reuse else f"i{n}"
            if not reuse:
                ids.append(intent_id)
            action = "close" if variant in (2, 3) else "open"
            qty = 1.0 + abs(amount) % 3
            return OrderIntent(intent_id, bot, symbol, action, side, qty, 100.0, ts)  # type: ignore[arg-type]
        command = COMMANDS[variant % len(COMMANDS)]
        target = None if amount < -2 else symbol
        return ControlCommand(command, bot, target, f"r{n}", "fuzz", ts)  # type: ignore[arg-type]

    def topic(self, event: Event) -> str:
        t = self.config.topics
        return {Fill: t.fills, TradeOutcome: t.outcomes, OrderIntent: t.intents}.get(
            type(event), t.control
        )

    def append(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        assert key is not None
        sent = self.broker.append(topic, key, value)
        self.reference_broker.append(topic, key, value)
        self.inputs.append(self.broker.logs[_tp(sent.topic, sent.partition)][sent.offset])

    def settle_both(self) -> None:
        self.run(self._settle(self.shell))
        self.broker.crash_after(None)  # a crash armed but not reached does not carry over
        self.run(self._settle(self.reference))

    # -- rules -------------------------------------------------------------------

    @rule(batch=st.lists(specs, min_size=1, max_size=6), crash=crashes)
    def produce(self, batch: list[Spec], crash: int | None) -> None:
        self.broker.crash_after(crash)
        for spec in batch:
            event = self.event(spec)
            self.append(self.topic(event), event.bot.encode(), msgspec.json.encode(event))
        self.settle_both()

    @rule(data=st.data(), crash=crashes)
    def resend(self, data: st.DataObject, crash: int | None) -> None:
        """A producer retry: a run of earlier records again, under new offsets."""
        if not self.inputs:
            return
        self.broker.crash_after(crash)
        start = data.draw(st.integers(0, len(self.inputs) - 1))
        length = data.draw(st.integers(1, min(8, len(self.inputs) - start)))
        for record in self.inputs[start : start + length]:
            self.append(record.topic, record.key, record.value)
        self.settle_both()

    @rule(partition=st.integers(0, 1), crash=crashes)
    def rebalance(self, partition: int, crash: int | None) -> None:
        """The partition goes away (its persist is flushed) and comes back."""
        shell = self.shell
        self.broker.crash_after(crash)

        async def move() -> None:
            if not await shell.revoke([partition]):
                return  # crashed while flushing: settle restarts it
            await shell.assign([partition])

        self.run(move())
        self.run(self._settle(shell))
        self.broker.crash_after(None)

    @rule(max_records=st.integers(1, 9), crash=crashes)
    def rolling_restart(self, max_records: int, crash: int | None) -> None:
        """Every partition goes to a new worker (graceful stop: persist and commit)."""
        self.broker.crash_after(crash)
        if not self.run(self.shell.stop()):
            event("worker crashed at a record boundary")
        self.run(self._start(self.shell, max_records))
        self.broker.crash_after(None)

    @rule(turns=st.integers(0, 4))
    def ack_delay(self, turns: int) -> None:
        """Acks arrive this many loop turns after their records: the worker fetches, applies
        and sends the next batches meanwhile, so crashes land between a send and its ack."""
        self.broker.ack_turns = turns

    # -- checks ------------------------------------------------------------------

    @invariant()
    def same_state_as_the_uninterrupted_run(self) -> None:
        assert self.shell.worker is not None and self.reference.worker is not None
        assert engine_state(self.shell.worker.engine) == engine_state(self.reference.worker.engine)

    def teardown(self) -> None:
        try:
            self.broker.crash_after(None)
            if self.shell.worker is not None and self.reference.worker is not None:
                expected = engine_state(self.reference.worker.engine)
                self.run(self.shell.stop())
                self.run(self._start(self.shell, 5))  # restore from what was persisted
                assert self.shell.worker is not None
                assert engine_state(self.shell.worker.engine) == expected
        finally:
            self.reference.__exit__(None, None, None)  # patches unwind in reverse order
            self.shell.__exit__(None, None, None)
            self.run(asyncio.sleep(0))
            self.loop.close()
            idlog.CHUNK_ENTRIES = self._chunk_entries


class SmallWindowShellMachine(ShellMachine):
    """Id windows of three entries: chunks fall out of them and are tombstoned mid-run."""

    config_text = CONFIG.replace("[worker]\n", "[worker]\ndedupe_ids_per_bot = 3\n", 1)


class PipelinedShellMachine(ShellMachine):
    """Persists every eight changed keys: several batches' outputs are in flight between
    persists (up to the checkpoint's bound), and crashes land among them."""

    config_text = CONFIG.replace("max_unpersisted_keys = 1\n", "max_unpersisted_keys = 8\n", 1)


def _tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


ShellMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("RISKGATE_FUZZ_EXAMPLES", "40")),
    stateful_step_count=int(os.environ.get("RISKGATE_FUZZ_STEPS", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_shell_machine = ShellMachine.TestCase
SmallWindowShellMachine.TestCase.settings = settings(
    ShellMachine.TestCase.settings,
    max_examples=int(os.environ.get("RISKGATE_FUZZ_EXAMPLES", "20")),
)
test_shell_machine_small_id_windows = SmallWindowShellMachine.TestCase
PipelinedShellMachine.TestCase.settings = settings(
    ShellMachine.TestCase.settings,
    max_examples=int(os.environ.get("RISKGATE_FUZZ_EXAMPLES", "20")),
)
test_shell_machine_pipelined = PipelinedShellMachine.TestCase
