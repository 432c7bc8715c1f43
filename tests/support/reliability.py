"""Shared pieces of the reliability suite: worker process, logs, RSS, lag, workloads, verdicts.

Everything here drives the real thing: ``riskgate run --config FILE`` as a
child process (stopped by PID), the broker through aiokafka, and checks it
against the contract's independent reference model (``tests/support/model.py``,
via the harness), so the scripts in ``tests/chaos`` and the short tests in
``tests/integration`` check the same way. The engine is never its own oracle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support.compare import HaltView
from tests.support.harness import (
    DAY_MS,
    MIN_MS,
    Produced,
    Record,
    WorkerProcess,
    expected_gates,
    expected_halts,
    expected_portfolios,
    expected_snapshots,
    persisted_portfolios,
    persisted_snapshots,
    published_gates,
    published_halts,
    reference,
    same_day_window,
)
from tests.support.model import Model
from worker.config import Config, KafkaConfig
from worker.kafka.broker import EmbeddedBroker
from worker.kafka.options import client_kwargs
from worker.messages import ControlCommand, Event, Fill, OrderIntent, TradeOutcome

# -- the worker process ----------------------------------------------------------------


def riskgate_command() -> list[str]:
    """``.venv/bin/riskgate`` next to this interpreter (the installed entry point)."""
    script = Path(sys.executable).with_name("riskgate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "worker.cli"]  # pragma: no cover - not installed


@dataclass
class RiskgateProcess(WorkerProcess):
    """The harness's worker process, started as ``riskgate run --config FILE``."""

    def command(self) -> list[str]:
        return riskgate_command()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self) -> float | None:
        """Resident set size (VmRSS) of the running worker, None if it is not running."""
        if not self.alive:
            return None
        return _proc_status_mib(self.pid, "VmRSS:")


def _proc_status_mib(pid: int, field_name: str) -> float | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field_name):
            return int(line.split()[1]) / 1024
    return None


def pid_rss_mib(pid: int) -> float | None:
    return _proc_status_mib(pid, "VmRSS:")


# -- logs ----------------------------------------------------------------------------

_ERROR_LEVELS = frozenset({"error", "critical", "exception", "fatal"})


def error_lines(log_path: Path) -> list[str]:
    """Error-level lines of a worker log (JSON lines; plain-text tracebacks count too)."""
    if not log_path.exists():
        return []
    errors: list[str] = []
    for line in log_path.read_text(errors="replace").splitlines():
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                entry = msgspec.json.decode(text)
            except msgspec.DecodeError:
                errors.append(text)  # a broken line in a JSON log is itself a defect
                continue
            if str(entry.get("level", "")).lower() in _ERROR_LEVELS:
                errors.append(text)
        elif text.startswith(("Traceback", "ERROR", "CRITICAL")):
            errors.append(text)
    return errors


def warning_count(log_path: Path) -> int:
    if not log_path.exists():
        return 0
    return sum('"level": "warning"' in line for line in log_path.read_text().splitlines())


# -- offsets -------------------------------------------------------------------------


class OffsetWatcher:
    """Committed offsets of a group and end offsets of topics, through one long-lived client.

    It never joins the group (a consumer with the group id that does not
    subscribe only fetches offsets), so it can be asked while the worker runs.
    """

    def __init__(self, kafka: KafkaConfig, group_id: str, topics: Sequence[str]) -> None:
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(kafka), group_id=group_id, enable_auto_commit=False
        )
        self._topics = list(topics)
        self.partitions: list[TopicPartition] = []

    async def __aenter__(self) -> OffsetWatcher:
        await self._consumer.start()
        await self._consumer.topics()
        self.partitions = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in sorted(self._consumer.partitions_for_topic(topic) or ())
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def committed(self) -> dict[TopicPartition, int]:
        return {tp: (await self._consumer.committed(tp)) or 0 for tp in self.partitions}

    async def committed_total(self) -> int:
        return sum((await self.committed()).values())

    async def end_offsets(self) -> dict[TopicPartition, int]:
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(self.partitions)
        return ends

    async def lag(self) -> int:
        """Records produced but not yet committed by the group (all input partitions)."""
        ends = await self.end_offsets()
        committed = await self.committed()
        return sum(max(0, ends[tp] - committed[tp]) for tp in self.partitions)


# -- time ----------------------------------------------------------------------------


def seconds_to_utc_midnight(now_ms: int | None = None) -> float:
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return (DAY_MS - now % DAY_MS) / 1000


async def avoid_utc_midnight(needed_s: float, *, say: Any = None) -> None:
    """Sleep past 00:00 UTC if a run of ``needed_s`` seconds would cross it.

    The worker rolls sessions over at 00:00 UTC by its wall clock (as it must);
    a state comparison against a reference that never sweeps is only
    meaningful within one UTC day.
    """
    left = seconds_to_utc_midnight()
    if left < needed_s:
        if say is not None:
            say(f"waiting {left + 5:.0f}s for 00:00 UTC to pass (a run must not straddle it)")
        await asyncio.sleep(left + 5)


# -- the crash-loop workload ----------------------------------------------------------

SYMBOL_POOL = (
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "XRPUSDT",
    "ADAUSDT",
    "DOGEUSDT",
    "AVAXUSDT",
    "LINKUSDT",
)
BREAKER_LIMITS = (3, 5, 8, 25, 100, 1000)
"""Per-symbol breaker overrides: small ones trip early, large ones keep recording losses."""


@dataclass(frozen=True)
class BotSpec:
    name: str
    source: str  # "outcomes" | "fills"
    symbols: tuple[str, ...]
    session_limit: float
    breaker_overrides: dict[str, int]
    portfolio: bool
    intents_only: bool = False
    """A bot that only sends intents: its decisions depend on one topic's order alone."""


GATE_BOT_PORTFOLIO = ("max_concurrent_positions = 2", "max_gross_exposure = 6000.0")
RESERVATION_TTL_MS = 4 * 3_600_000
"""For :meth:`Workload.worker_toml`: no intent is stale, no reservation expires mid-run."""


@dataclass
class Workload:
    """A seeded stream of fills, outcomes, intents and operator commands, and its config."""

    seed: int
    bots: list[BotSpec]
    stream: list[Event]
    invalid: set[int] = field(default_factory=set)
    """Indices of events the engine must reject (dead-lettered, never applied)."""
    duplicates: int = 0
    window_secs: int = 14_400
    cooldown_secs: int = 21_600
    reservation_ttl_ms: int = RESERVATION_TTL_MS
    control_secret: str | None = None
    """With a secret, every command must be signed (see :mod:`tests.support.epochs`)."""

    def body(self) -> str:
        """The ``[defaults.*]`` and ``[bots.*]`` tables of the worker's config."""
        lines = [
            "[defaults.session]",
            "loss_limit = -150.0",
            "[defaults.breaker]",
            "loss_limit = 8",
            # By default window and cooldown are far longer than any run: nothing may
            # expire by the wall clock mid-run, or the state would depend on when sweeps
            # happened. Short ones need a stream cut into epochs (tests.support.epochs).
            f"window_secs = {self.window_secs}",
            f"cooldown_secs = {self.cooldown_secs}",
            "",
        ]
        if self.control_secret is not None:
            lines += ["[control]", f'secret = "{self.control_secret}"', ""]
        for bot in self.bots:
            symbols = ", ".join(f'"{s}"' for s in bot.symbols)
            lines += [
                f"[bots.{bot.name}]",
                f"symbols = [{symbols}]",
                f'pnl_source = "{bot.source}"',
                f"[bots.{bot.name}.session]",
                f"loss_limit = {bot.session_limit}",
            ]
            if bot.intents_only:
                lines += [f"[bots.{bot.name}.portfolio]", *GATE_BOT_PORTFOLIO]
            elif bot.portfolio:
                lines += [
                    f"[bots.{bot.name}.portfolio]",
                    "max_daily_loss = -300.0",
                    "max_concurrent_positions = 3",
                    "max_gross_exposure = 5000.0",
                ]
            for symbol, limit in sorted(bot.breaker_overrides.items()):
                lines += [f"[bots.{bot.name}.overrides.{symbol}.breaker]", f"loss_limit = {limit}"]
            lines.append("")
        return "\n".join(lines)

    def worker_toml(self) -> str:
        """A ``[worker]`` table that makes every intent's decision deterministic.

        With a reservation TTL far longer than a run (the default), no intent is
        answered ``expired`` and no reservation expires on the wall clock, so the
        decisions for the intents-only bots (and their reservations) are a function
        of the intents topic alone, and :func:`judge` can compare them with the
        model's. A short TTL is exact only in epochs (``tests.support.epochs``).
        """
        return f"[worker]\nreservation_ttl_ms = {self.reservation_ttl_ms}\n"

    @property
    def exact_bots(self) -> list[str]:
        return [b.name for b in self.bots if b.intents_only]

    @property
    def valid(self) -> list[Event]:
        return [e for i, e in enumerate(self.stream) if i not in self.invalid]

    def unique_ids(self) -> int:
        return len({event_id(e) for e in self.valid})


def event_id(event: Event) -> str:
    if isinstance(event, TradeOutcome):
        return event.outcome_id
    if isinstance(event, Fill):
        return event.fill_id
    if isinstance(event, OrderIntent):
        return event.intent_id
    return f"control:{event.bot}:{event.symbol}:{event.command}:{event.ts}"


def generate_workload(
    seed: int,
    events: int,
    *,
    bots: int = 16,
    symbols_per_bot: int = 4,
    span_ms: int = 60 * MIN_MS,
    window: tuple[int, int] | None = None,
    gate_bots: int = 2,
    expiry_secs: int | None = None,
    control_secret: str | None = None,
) -> Workload:
    """``events`` records for ``bots`` bots, stamped over the last ``span_ms`` of today (UTC).

    ``window`` (start, end) overrides the timestamps: for an in-process worker
    on the harness's clock rather than the real one.

    Half of the bots book PnL from outcomes (fills move only their positions),
    half from fills (round trips). ``gate_bots`` more bots send only intents
    (opens against concurrency and exposure caps, closes with nothing to close,
    re-used intent ids with the same and with different content): their
    decisions are exact under :meth:`Workload.worker_toml`. About 4% of fills
    and outcomes are re-sent 1-15 records later (a producer retry: same id, new
    offset), 0.5% are bad input the worker must dead-letter, 0.3% are operator
    halt/resume commands. The other bots' intents only name symbols that
    already traded. ``expiry_secs`` sets the breaker window, the cooldown and the
    reservation TTL (default: hours); ``control_secret`` makes the worker demand
    signed commands.

    All of it keeps the state independent of how the worker interleaves its
    input topics (it reads fills, outcomes, intents and control from separate
    partitions): per symbol, PnL comes from exactly one topic; positions only
    from fills; manual halts only from control; intents change no symbol state.
    """
    rng = random.Random(seed)
    specs: list[BotSpec] = []
    for i in range(bots):
        symbols = tuple(sorted(rng.sample(SYMBOL_POOL, symbols_per_bot)))
        specs.append(
            BotSpec(
                name=f"cb{i:02d}",
                source="fills" if i % 2 else "outcomes",
                symbols=symbols,
                session_limit=float(rng.choice((-80, -150, -400, -2000))),
                breaker_overrides={
                    s: rng.choice(BREAKER_LIMITS) for s in symbols if rng.random() < 0.75
                },
                portfolio=i % 3 == 0,
            )
        )
    gate_specs = [
        BotSpec(
            name=f"gb{i:02d}",
            source="outcomes",
            symbols=tuple(sorted(rng.sample(SYMBOL_POOL, symbols_per_bot))),
            session_limit=-150.0,
            breaker_overrides={},
            portfolio=True,
            intents_only=True,
        )
        for i in range(gate_bots)
    ]
    asked: dict[str, list[OrderIntent]] = {}
    start, end = window or same_day_window(span_ms)
    stream: list[Event] = []
    invalid: set[int] = set()
    traded: set[tuple[str, str]] = set()
    position: dict[tuple[str, str], int] = {}
    price: dict[tuple[str, str], float] = {}
    open_intents: dict[tuple[str, str], list[str]] = {}
    resend: dict[int, list[Event]] = {}
    duplicates = 0
    for i in range(events):
        ts = start + (end - start) * i // max(1, events)
        if gate_specs and rng.random() < 0.06:
            gate_bot = rng.choice(gate_specs)
            stream.append(_gate_intent(rng, gate_bot, i, ts, asked.setdefault(gate_bot.name, [])))
            continue
        bot = rng.choice(specs)
        symbol = rng.choice(bot.symbols)
        key = (bot.name, symbol)
        roll = rng.random()
        event: Event
        if roll < 0.003:
            command = rng.choice(("halt", "resume"))
            event = ControlCommand(
                command=command,  # type: ignore[arg-type]
                bot=bot.name,
                symbol=symbol if rng.random() < 0.5 else None,
                reason=f"chaos {i}",
                issued_by="chaos",
                ts=ts,
            )
        elif roll < 0.008:
            invalid.add(len(stream))
            stream.append(_bad_event(rng, bot, i, ts))
            continue
        elif roll < 0.18 and key in traded:
            event = _intent(
                rng, bot.name, symbol, i, ts, position.get(key, 0), price.get(key, 100.0)
            )
            if event.action == "open" and rng.random() < 0.5:
                open_intents.setdefault(key, []).append(event.intent_id)
        elif bot.source == "outcomes" and roll < 0.6:
            event = TradeOutcome(
                outcome_id=f"o-{seed}-{i}",
                bot=bot.name,
                symbol=symbol,
                gross_pnl=round(rng.uniform(-22.0, 16.0), 2),
                fee=round(rng.uniform(0.0, 0.8), 2),
                ts=ts,
            )
            traded.add(key)
        else:
            event = _fill(rng, bot.name, symbol, i, ts, position, price, open_intents, seed)
            traded.add(key)
        stream.append(event)
        if isinstance(event, (Fill, TradeOutcome)) and rng.random() < 0.04:
            resend.setdefault(i + rng.randint(1, 15), []).append(event)
        for again in resend.pop(i, ()):
            stream.append(again)
            duplicates += 1
    for late in resend.values():
        stream.extend(late)
        duplicates += len(late)
    workload = Workload(seed, specs + gate_specs, stream, invalid, duplicates)
    workload.control_secret = control_secret
    if expiry_secs is not None:
        workload.window_secs = workload.cooldown_secs = expiry_secs
        workload.reservation_ttl_ms = expiry_secs * 1000
    return workload


def _bad_event(rng: random.Random, bot: BotSpec, i: int, ts: int) -> Event:
    """A well-formed event the engine must reject (so the reference skips it too)."""
    kind = rng.randrange(3)
    if kind == 0:  # a symbol outside the bot's list
        return TradeOutcome(f"bad-{i}", bot.name, "ZZZUSDT", -999.0, 0.0, ts)
    if kind == 1:  # a bot nobody configured
        return Fill(f"bad-{i}", "ghost", "BTCUSDT", "buy", 1.0, 100.0, 0.0, ts)
    # an outcome for a fills-booked bot, or a fill for a symbol outside the list
    if bot.source == "fills":
        return TradeOutcome(f"bad-{i}", bot.name, bot.symbols[0], -999.0, 0.0, ts)
    return Fill(f"bad-{i}", bot.name, "ZZZUSDT", "sell", 1.0, 100.0, 0.0, ts)


def _intent(
    rng: random.Random, bot: str, symbol: str, i: int, ts: int, held: int, last: float
) -> OrderIntent:
    close = held != 0 and rng.random() < 0.25
    side = ("sell" if held > 0 else "buy") if close else rng.choice(("buy", "sell"))
    return OrderIntent(
        intent_id=f"i-{bot}-{i}",
        bot=bot,
        symbol=symbol,
        action="close" if close else "open",
        side=side,  # type: ignore[arg-type]
        qty=float(rng.randint(1, 5)),
        price=last,
        ts=ts,
    )


def _gate_intent(
    rng: random.Random, bot: BotSpec, i: int, ts: int, asked: list[OrderIntent]
) -> OrderIntent:
    """An intent of an intents-only bot; some re-use an earlier id (same or new content)."""
    roll = rng.random()
    if asked and roll < 0.15:
        again = rng.choice(asked)
        if roll < 0.08:
            return again  # a client retry: the same decision again
        return msgspec.structs.replace(again, qty=again.qty + 1.0, ts=ts)  # a reused id
    intent = OrderIntent(
        intent_id=f"g-{bot.name}-{i}",
        bot=bot.name,
        symbol=rng.choice(bot.symbols),
        action="close" if roll < 0.25 else "open",
        side=rng.choice(("buy", "sell")),
        qty=float(rng.randint(1, 5)),
        price=float(rng.choice((50, 100, 200))),
        ts=ts,
    )
    asked.append(intent)
    return intent


def _fill(
    rng: random.Random,
    bot: str,
    symbol: str,
    i: int,
    ts: int,
    position: dict[tuple[str, str], int],
    price: dict[tuple[str, str], float],
    open_intents: dict[tuple[str, str], list[str]],
    seed: int,
) -> Fill:
    key = (bot, symbol)
    last = price.get(key, round(rng.uniform(20.0, 200.0), 2))
    last = max(1.0, round(last * (1.0 + rng.gauss(0.0, 0.03)), 2))
    price[key] = last
    held = position.get(key, 0)
    if held == 0 or rng.random() < 0.45:
        side = rng.choice(("buy", "sell")) if held == 0 else ("buy" if held > 0 else "sell")
        qty = rng.randint(1, 8)
    else:
        side = "sell" if held > 0 else "buy"
        choice = rng.random()
        qty = abs(held) if choice < 0.5 else (abs(held) + rng.randint(1, 4))
        if choice > 0.8:
            qty = rng.randint(1, abs(held))
    position[key] = held + (qty if side == "buy" else -qty)
    waiting = open_intents.get(key)
    intent_id = waiting.pop(0) if waiting and rng.random() < 0.6 else None
    return Fill(
        fill_id=f"f-{seed}-{i}",
        bot=bot,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        qty=float(qty),
        price=last,
        fee=round(last * qty * 0.0004, 4),
        ts=ts,
        intent_id=intent_id,
    )


# -- verdict -------------------------------------------------------------------------


Answer = tuple[bool, str | None, str, str, str, float, float]
"""What a decision says: (allowed, gate, symbol, action, side, qty, price)."""


@dataclass
class Verdict:
    symbols_compared: int = 0
    portfolios_compared: int = 0
    gates_compared: int = 0
    state_mismatches: list[str] = field(default_factory=list)
    halts_expected: int = 0
    halts_published: int = 0
    halts_missing: list[str] = field(default_factory=list)
    halts_unexpected: list[str] = field(default_factory=list)
    halt_id_conflicts: list[str] = field(default_factory=list)
    halt_ids_wrong: list[str] = field(default_factory=list)
    intents: int = 0
    decisions_missing: list[str] = field(default_factory=list)
    decisions_compared: int = 0
    decisions_wrong: list[str] = field(default_factory=list)
    deadletters_expected: int = 0
    deadletters_missing: list[str] = field(default_factory=list)
    deadletter_reasons_wrong: list[str] = field(default_factory=list)
    clock_halts: int = 0
    """Halt events the wall clock caused (their ``ts`` is the sweep's: checked, not matched)."""
    halts_early: list[str] = field(default_factory=list)
    """Clock-caused events stamped before the time the clock had to pass (a cooldown's end)."""

    @property
    def mismatches(self) -> int:
        return sum(
            len(items)
            for items in (
                self.state_mismatches,
                self.halts_missing,
                self.halts_unexpected,
                self.halt_id_conflicts,
                self.halt_ids_wrong,
                self.decisions_missing,
                self.decisions_wrong,
                self.deadletters_missing,
                self.deadletter_reasons_wrong,
                self.halts_early,
            )
        )

    def lines(self) -> list[str]:
        out = [
            f"symbol states compared:   {self.symbols_compared}",
            f"portfolio states compared: {self.portfolios_compared}",
            f"gate records compared:    {self.gates_compared}",
            f"state mismatches:         {len(self.state_mismatches)}",
            f"halts expected/published: {self.halts_expected}/{self.halts_published}"
            f" (missing {len(self.halts_missing)}, unexpected {len(self.halts_unexpected)},"
            f" event_id conflicts {len(self.halt_id_conflicts)},"
            f" ids not the model's {len(self.halt_ids_wrong)})",
            f"clock-caused halt events: {self.clock_halts} (early {len(self.halts_early)})",
            f"intents answered:         {self.intents - len(self.decisions_missing)}"
            f"/{self.intents}",
            f"decisions compared:       {self.decisions_compared}"
            f" (wrong {len(self.decisions_wrong)})",
            f"dead letters:             {self.deadletters_expected - len(self.deadletters_missing)}"
            f"/{self.deadletters_expected} (wrong reason {len(self.deadletter_reasons_wrong)})",
        ]
        for title, items in (
            ("state", self.state_mismatches),
            ("missing halt", self.halts_missing),
            ("unexpected halt", self.halts_unexpected),
            ("event_id conflict", self.halt_id_conflicts),
            ("event_id", self.halt_ids_wrong),
            ("unanswered intent", self.decisions_missing),
            ("wrong decision", self.decisions_wrong),
            ("missing dead letter", self.deadletters_missing),
            ("dead-letter reason", self.deadletter_reasons_wrong),
            ("early clock event", self.halts_early),
        ):
            out.extend(f"  {title}: {item}" for item in items[:10])
        return out


def reference_run(
    config: Config, events: Iterable[Event], now: int
) -> tuple[Model, list[HaltView]]:
    """The input through the reference model (the harness's reference), with its halts."""
    model = reference(config, events, now)
    return model, expected_halts(model)


def judge(
    expected: Model,
    expected_halt_views: Sequence[HaltView],
    snapshots: dict[str, Record],
    halts: Sequence[Record],
    decisions: Sequence[Record],
    deadletters: Sequence[Record],
    *,
    intents: Iterable[OrderIntent | str],
    rejected_at: Iterable[Produced],
    exact_bots: Iterable[str] = (),
    gates: dict[str, Record] | None = None,
    rejected_reasons: Sequence[str] | None = None,
    clock_halts: Mapping[str, int] | None = None,
) -> Verdict:
    """Compare what the worker left on the topics with the reference model.

    ``snapshots`` is the last value per key of the snapshot topic; ``intents``
    the valid intents produced (or only their ids); ``rejected_at`` where each
    record the model rejected was produced. For ``exact_bots`` (bots whose
    decisions depend on the intents topic alone, see :meth:`Workload.worker_toml`)
    the content of every decision and the outstanding reservations are compared
    too; for the others a decision must answer its intent and echo it. ``gates``
    (the last gate record per key), when given, must block exactly as the model.
    ``rejected_reasons`` (one per ``rejected_at``): the reason each dead letter must
    carry. ``clock_halts``: the ids of the model's halt events a sweep caused, each
    with the earliest ``ts`` the worker may stamp it with (its sweep ran at a wall
    time the model cannot know, so only the rest of such an event must match).
    """
    v = Verdict()
    exact = set(exact_bots)
    _judge_state(v, expected, snapshots, exact)
    if gates is not None:
        _judge_gates(v, expected_gates(expected), published_gates(gates))
    _judge_halts(v, expected_halt_views, published_halts(halts), clock_halts or {})
    _judge_decisions(v, expected, decisions, list(intents), exact)
    _judge_deadletters(v, deadletters, list(rejected_at), rejected_reasons)
    return v


def _judge_deadletters(
    v: Verdict,
    deadletters: Sequence[Record],
    rejected: list[Produced],
    reasons: Sequence[str] | None,
) -> None:
    """Every rejected record dead-lettered (under the model's reason, when given)."""
    dead: dict[tuple[str, int, int], set[str]] = {}
    for r in deadletters:
        headers = dict(r.headers)
        with contextlib.suppress(KeyError, ValueError):
            where = (
                headers["riskgate.errors.topic"].decode(),
                int(headers["riskgate.errors.partition"]),
                int(headers["riskgate.errors.offset"]),
            )
            dead.setdefault(where, set()).add(headers["riskgate.errors.exception"].decode())
    v.deadletters_expected = len(rejected)
    for n, p in enumerate(rejected):
        said = dead.get((p.topic, p.partition, p.offset))
        if said is None:
            v.deadletters_missing.append(f"{p.topic}/{p.partition}@{p.offset}")
        elif reasons is not None and said != {reasons[n]}:
            v.deadletter_reasons_wrong.append(
                f"{p.topic}/{p.partition}@{p.offset}: {sorted(said)} want {reasons[n]}"
            )


def _judge_state(v: Verdict, model: Model, snapshots: dict[str, Record], exact: set[str]) -> None:
    """Symbol states, then portfolios (reservations only for the exact bots)."""
    want, have = expected_snapshots(model), persisted_snapshots(snapshots)
    v.symbols_compared = len(want.keys() | have.keys())
    for key in sorted(want.keys() | have.keys()):
        if key not in have:
            v.state_mismatches.append(f"{key}: never persisted")
        elif key not in want:
            v.state_mismatches.append(f"{key}: persisted, unknown to the model")
        elif want[key] != have[key]:
            v.state_mismatches.append(f"{key}: {_diff(want[key], have[key])}")
    plain_want = expected_portfolios(model, reservations=False)
    plain_have = persisted_portfolios(snapshots, reservations=False)
    full_want = expected_portfolios(model)
    full_have = persisted_portfolios(snapshots)
    bots = plain_want.keys() | plain_have.keys() | exact
    v.portfolios_compared = len(bots)
    for bot in sorted(bots):
        w, h = (full_want, full_have) if bot in exact else (plain_want, plain_have)
        if w.get(bot, {}) != h.get(bot, {}):
            v.state_mismatches.append(f"{bot}/portfolio: {_diff(w.get(bot, {}), h.get(bot, {}))}")


def _judge_gates(v: Verdict, want: dict[str, list[str]], have: dict[str, list[str]]) -> None:
    """Each gate record the model implies blocks as modelled; any other blocks nothing."""
    v.gates_compared = len(want.keys() | have.keys())
    for key in sorted(want.keys() | have.keys()):
        if have.get(key, []) != want.get(key, []):
            v.state_mismatches.append(f"{key}: blocks {have.get(key)} want {want.get(key, [])}")


def _judge_halts(
    v: Verdict, want: Sequence[HaltView], got: Sequence[HaltView], clock: Mapping[str, int]
) -> None:
    """Each of the model's halts published at least once, nothing else, under its id.

    A clock-caused event must not be stamped before the time its clock had to
    pass; then its ``ts`` is left out of the comparison (it is the sweep's).
    """
    v.clock_halts = sum(h.event_id in clock for h in want)
    v.halts_early = [
        f"{h.event_id} at {h.ts}, before {clock[h.event_id]}"
        for h in got
        if h.event_id in clock and h.ts < clock[h.event_id]
    ]
    want = [h._replace(ts=0) if h.event_id in clock else h for h in want]
    got = [h._replace(ts=0) if h.event_id in clock else h for h in got]
    wanted = Counter(h[1:] for h in want)
    published = Counter(h[1:] for h in got)
    v.halts_expected, v.halts_published = len(want), len(got)
    v.halts_missing = [f"{k} x{n - published[k]}" for k, n in wanted.items() if published[k] < n]
    v.halts_unexpected = [str(k) for k in published if k not in wanted]
    by_id: dict[str, HaltView] = {}
    for h in got:
        seen = by_id.setdefault(h.event_id, h)
        if seen != h:
            v.halt_id_conflicts.append(f"{h.event_id}: {seen[1:]} vs {h[1:]}")
    ids = {h.event_id for h in want}
    v.halt_ids_wrong = [f"{i}: not published" for i in sorted(ids - by_id.keys())] + [
        f"{i}: not the model's" for i in sorted(by_id.keys() - ids)
    ]


def _judge_decisions(
    v: Verdict,
    model: Model,
    records: Sequence[Record],
    intents: list[OrderIntent | str],
    exact: set[str],
) -> None:
    """Every intent answered; every answer echoes its intent; exact bots' answers as modelled."""
    asked: dict[str, set[tuple[str, str, str, str, float, float]]] = {}
    for i in intents:
        if isinstance(i, OrderIntent):
            asked.setdefault(i.intent_id, set()).add(
                (i.bot, i.symbol, i.action, i.side, i.qty, i.price)
            )
        else:
            asked.setdefault(i, set())
    published: dict[str, set[Answer]] = {}
    for r in records:
        if r.value is None:
            continue
        d = msgspec.json.decode(r.value)
        echo = (d["bot"], d["symbol"], d.get("action"), d.get("side"), d.get("qty"), d.get("price"))
        if asked.get(d["intent_id"]) and echo not in asked[d["intent_id"]]:
            v.decisions_wrong.append(f"{d['intent_id']}: echoes {echo}, not its intent")
        published.setdefault(d["intent_id"], set()).add(
            (d["allowed"], d["gate"], d["symbol"], echo[2], echo[3], echo[4], echo[5])
        )
    v.intents = len(asked)
    v.decisions_missing = sorted(asked.keys() - published.keys())
    modelled: dict[str, set[Answer]] = {}
    for m in model.decisions:
        if m.bot in exact:
            modelled.setdefault(m.intent_id, set()).add(
                (m.allowed, m.gate, m.symbol, m.action, m.side, m.qty, m.price)
            )
    v.decisions_compared = len(modelled)
    for intent_id, answers in sorted(modelled.items()):
        if published.get(intent_id, answers) != answers:
            v.decisions_wrong.append(
                f"{intent_id}: want {sorted(answers, key=str)} have "
                f"{sorted(published[intent_id], key=str)}"
            )


def _diff(want: dict[str, Any], have: dict[str, Any]) -> str:
    parts = [
        f"{k}: want {want.get(k)!r} have {have.get(k)!r}"
        for k in sorted(want.keys() | have.keys())
        if want.get(k) != have.get(k)
    ]
    return "; ".join(parts)


# -- small helpers ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stopping(worker: WorkerProcess) -> AsyncIterator[WorkerProcess]:
    """Yield the worker; whatever happens, it is not left running (SIGTERM, then SIGKILL)."""
    try:
        yield worker
    finally:
        with contextlib.suppress(Exception):
            worker.terminate(grace=15)
        worker.kill()


# -- the chaos scripts' command line (tests/chaos) ------------------------------------


def say(text: str) -> None:
    """A script's progress line, shown at once (runs take minutes)."""
    print(text, flush=True)


def add_place_args(parser: argparse.ArgumentParser) -> None:
    """``--bootstrap`` and ``--workdir``, which :func:`script_place` reads."""
    parser.add_argument("--bootstrap", default=None, help="use this broker, not an embedded one")
    parser.add_argument("--workdir", type=Path, default=None, help="keep config and logs here")


class Place(NamedTuple):
    workdir: Path
    bootstrap: str
    broker_pid: int | None
    """The embedded broker's process (None with ``--bootstrap``: not ours to watch)."""


@contextlib.asynccontextmanager
async def script_place(args: argparse.Namespace, prefix: str) -> AsyncIterator[Place]:
    """Where a script runs: ``--workdir`` (else a temporary directory, removed after)
    and ``--bootstrap`` (else an embedded broker logging into the workdir, stopped after)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.bootstrap:
            yield Place(workdir, args.bootstrap, None)
            return
        broker = await EmbeddedBroker(log_dir=workdir / "broker").start_async()
        try:
            yield Place(workdir, broker.bootstrap_servers, broker.pid)
        finally:
            await broker.stop_async()


class Report(Protocol):
    @property
    def ok(self) -> bool: ...

    def lines(self) -> list[str]: ...


def report_exit(report: Report) -> int:
    """Print ``report``; the script's exit code (0 only when it passed)."""
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1


def fmt_ints(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)
