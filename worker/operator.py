"""Operator tools behind ``riskgate state`` and ``riskgate halt|resume|reset-*``.

An operator acts on what these tools print, so they must never print a
comfortable lie: ``state`` shows exactly what a restarted worker would hold
(restore, then sweep at the wall clock) and how far that lags the live worker;
a control command is checked against the config and the message types before
it is sent, signed whenever a secret is available, and by default the tool
waits for the worker's verdict instead of reporting "sent" as success.

Every failure is an :class:`OperatorError` with one line the CLI prints.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeVar

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from worker.clock import wall_clock_ms
from worker.config import Config, ConfigError, ControlConfig, bot_settings
from worker.core.engine import RiskEngine
from worker.core.symbol import command_gate
from worker.core.views import BotView
from worker.errors import Rejected
from worker.kafka.options import client_kwargs
from worker.kafka.records import gate_key
from worker.kafka.restore import read_snapshot_partitions
from worker.messages import AccountGateState, Command, ControlCommand, GateState, HaltEvent
from worker.signing import command_digest, signed

T = TypeVar("T")
SECRET_ENV = "RISKGATE_CONTROL_SECRET"
"""Where an operator's shell holds the control secret (deploy/compose.yaml exports it)."""


class OperatorError(Exception):
    """Why an operator tool refused or failed, in one line; the CLI exits non-zero."""


@asynccontextmanager
async def kafka_session(config: Config, needs: Iterable[str] = ()) -> AsyncIterator[dict[str, Any]]:
    """Turn an unreachable or failing broker, or a missing topic, into one OperatorError line.

    Every client started inside is stopped by its own ``finally`` (no
    "Unclosed AIOKafkaConsumer" at exit); the connection check runs first so a
    missing broker fails before anything else is attempted.
    """
    kwargs = client_kwargs(config.kafka)
    where = config.kafka.bootstrap_servers
    try:
        probe = AIOKafkaConsumer(**kwargs, group_id=None, enable_auto_commit=False)
        try:
            await probe.start()
            # A round trip; it also lets start()'s tasks run, or stop() raises CancelledError.
            existing = await probe.topics()
        finally:
            await probe.stop()
        missing = [t for t in needs if t not in existing]
        if missing:
            raise OperatorError(
                f"topic {missing[0]} does not exist on {where}: run `riskgate topics`"
            )
        yield kwargs
    except (KafkaError, OSError, TimeoutError) as exc:
        detail = str(exc) or "no answer"
        if not detail.startswith(type(exc).__name__):
            detail = f"{type(exc).__name__}: {detail}"
        raise OperatorError(f"Kafka at {where}: {detail}") from exc


# -- state ----------------------------------------------------------------------


class Lag(NamedTuple):
    """How far the snapshot state is behind the input the live worker has."""

    partition: int
    uncommitted: dict[str, int]
    """Per input topic: records on the bot's partition not yet committed by the group
    (snapshots are persisted before a commit, so at most this much is missing)."""
    heartbeat_ts: int | None
    """``updated_ts`` of the live worker's last ``<bot>/gate`` record (its clock)."""


class BotState(NamedTuple):
    risk: BotView | None
    """None when the snapshot topic holds nothing for the bot."""
    lag: Lag
    now_ms: int


async def load_bot(config: Config, bot: str, at_ms: int) -> BotView | None:
    """The bot's restored state (None: no snapshot); see :func:`load_state`."""
    return (await load_state(config, bot, at_ms)).risk


async def load_state(config: Config, bot: str, at_ms: int) -> BotState:
    """The bot as a worker restarted at ``at_ms`` would hold it: restore, then sweep."""
    if bot_settings(config, bot) is None:
        raise OperatorError(
            f"bot {bot!r} is not configured ([bots] in the config, accept_unknown_bots = false)"
        )
    topics = config.topics
    needs = (topics.snapshots, topics.gates, *topics.inputs())
    async with kafka_session(config, needs) as kwargs:
        snapshots = await read_snapshot_partitions(kwargs, topics.snapshots)
        gates = await read_snapshot_partitions(kwargs, topics.gates)
        partition = snapshots.bot_partitions.get(bot, gates.bot_partitions.get(bot, 0))
        uncommitted = await _uncommitted(config, kwargs, partition)
    prefix = f"{bot}/"
    records = {k: v for k, v in snapshots.records.items() if k.startswith(prefix)}
    engine = RiskEngine(_unsigned(config))
    engine.restore(records, at_ms)
    engine.sweep(at_ms)
    heartbeat = _decode(gates.records.get(gate_key(bot, None)), AccountGateState)
    lag = Lag(partition, uncommitted, heartbeat.updated_ts if heartbeat else None)
    return BotState(engine.bot_view(bot, at_ms), lag, at_ms)


async def _uncommitted(config: Config, kwargs: dict[str, Any], partition: int) -> dict[str, int]:
    tps = [TopicPartition(t, partition) for t in config.topics.inputs()]
    consumer = AIOKafkaConsumer(**kwargs, group_id=config.kafka.group_id, enable_auto_commit=False)
    try:
        await consumer.start()
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return {tp.topic: ends[tp] - ((await consumer.committed(tp)) or starts[tp]) for tp in tps}
    finally:
        await consumer.stop()


def _unsigned(config: Config) -> Config:
    """The config without its control secret: the tools never verify signatures, and
    the worker's ``secret_file`` need not exist on an operator's machine."""
    return msgspec.structs.replace(
        config, control=ControlConfig(replay_window_ms=config.control.replay_window_ms)
    )


def _decode(value: bytes | None, kind: type[T]) -> T | None:
    if value is None:
        return None
    try:
        return msgspec.json.decode(value, type=kind)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def render_state(state: BotState, bot: str) -> RenderableType:
    """The state as a table. Every name and reason is ``Text`` (never markup):
    they are untrusted, and ``[red]`` or ``[/x]`` in a reason must print as is."""
    risk, now = state.risk, state.now_ms
    lines: list[RenderableType] = []
    if risk is None:
        lines.append(Text(f"{bot}: configured, no snapshot yet (nothing applied for it)"))
    else:
        lines.append(_table(risk, now))
    lines.append(Text(_lag_line(state.lag, now)))
    return Group(*lines)


def _table(risk: BotView, now: int) -> Table:
    account = risk.account
    blocked_symbols = [name for name, sym in risk.symbols.items() if sym.gate.blocks]
    if not account.entries_allowed:
        verdict = (
            "entries BLOCKED for every symbol ("
            + "; ".join(f"{b.gate}: {b.reason}" for b in account.blocks)
            + ")"
        )
    elif blocked_symbols:
        verdict = f"entries BLOCKED on {', '.join(blocked_symbols)}; allowed on the rest"
    else:
        verdict = "entries allowed"
    title = Text(
        f"{risk.bot}: account net {account.account_net_pnl:.2f}, "
        f"{account.open_positions} open, exposure {account.gross_exposure:.2f}; {verdict}"
    )
    table = Table(title=title)
    for column in (
        "symbol",
        "net PnL",
        "trades",
        "W/L/BE",
        "breaker losses",
        "cooldown left",
        "position",
        "gates",
    ):
        table.add_column(column, overflow="fold")
    for name, sym in risk.symbols.items():
        s, blocks = sym.gate, sym.gate.blocks
        until = sym.cooldown_until_secs
        cooldown = f"{max(0, until - now // 1000)}s" if until is not None else "-"
        gates = "; ".join(f"{b.gate}: {b.reason}" for b in blocks) if blocks else "open"
        if not account.entries_allowed:
            gates = "blocked (account)" if not blocks else gates + "; blocked (account)"
        table.add_row(
            Text(name),
            f"{s.net_pnl:.2f}",
            str(s.trades),
            f"{sym.wins}/{sym.losses}/{sym.breakevens}",
            str(s.recent_losses),
            cooldown,
            f"{s.position_qty:g}",
            Text(gates),
        )
    return table


def _lag_line(lag: Lag, now: int) -> str:
    behind = ", ".join(f"{topic} {n}" for topic, n in lag.uncommitted.items())
    total = sum(lag.uncommitted.values())
    heartbeat = (
        "no live worker heartbeat on the gates topic"
        if lag.heartbeat_ts is None
        else f"live worker's last heartbeat {(now - lag.heartbeat_ts) / 1000:.1f}s ago"
    )
    return (
        "State as a worker restarted now would hold it (restore, then sweep).\n"
        f"Lag: {total} input records on partition {lag.partition} are not committed yet "
        f"({behind}); {heartbeat}."
    )


def print_wide(renderable: RenderableType) -> None:
    """Print without cutting anything: on a terminal, cells wrap at its width; piped,
    each row stays on one line however wide (rich would otherwise assume 80)."""
    console = Console()
    if not console.is_terminal:
        options = console.options.update_width(100_000)
        needed = Measurement.get(console, options, renderable).maximum
        console = Console(width=max(needed, 1))
    console.print(renderable)


# -- control commands ----------------------------------------------------------------


def operator_secret(config: Config, env: Mapping[str, str]) -> bytes | None:
    """The key to sign with: ``RISKGATE_CONTROL_SECRET``, else the config's.

    When the config says the worker verifies signatures (``secret`` or
    ``secret_file``) and no key can be had, the command is refused rather than
    sent unsigned: the worker would dead-letter it and trading would go on.
    """
    from_env = env.get(SECRET_ENV)
    if from_env is not None:
        if not from_env.strip():
            raise OperatorError(f"{SECRET_ENV} is set but empty")
        return from_env.encode()
    try:
        return config.control.resolved_secret()
    except ConfigError as exc:
        raise OperatorError(
            f"the worker requires signed commands and {exc}; export {SECRET_ENV}"
        ) from exc


def make_command(
    config: Config,
    command: Command,
    *,
    bot: str,
    symbol: str | None,
    reason: str,
    issued_by: str,
    secret: bytes | None = None,
    now_ms: int | None = None,
) -> ControlCommand:
    """A command the worker will accept, or an OperatorError saying why it would not.

    Signed with ``secret``, else with the config's secret when it has one (never
    unsigned when the worker verifies signatures: see :func:`operator_secret`).

    The message types' bounds (``msgspec.convert``) and the engine's own checks
    (``RiskEngine.validate``: configured bot, configured symbol, valid names)
    run here, so the tool and the worker cannot disagree.
    """
    if symbol is not None and not symbol.strip():
        raise OperatorError("--symbol is empty; omit it to address the whole bot")
    at_ms = now_ms if now_ms is not None else wall_clock_ms()
    fields = {
        "command": command,
        "bot": bot,
        "symbol": symbol,
        "reason": reason,
        "issued_by": issued_by,
        "ts": at_ms,
    }
    if secret is None:
        secret = operator_secret(config, {})
    try:
        cmd = msgspec.convert(fields, ControlCommand)
    except msgspec.ValidationError as exc:
        raise OperatorError(f"invalid {command} command: {exc}") from exc
    try:
        RiskEngine(_unsigned(config)).validate(cmd, at_ms)
    except Rejected as exc:
        raise OperatorError(f"the worker would reject this command ({exc.reason}): {exc}") from exc
    return signed(cmd, secret) if secret is not None else cmd


def command_event_id(cmd: ControlCommand) -> str:
    """The ``event_id`` of the HaltEvent the worker publishes for ``cmd`` (decision C3)."""
    return f"{cmd.bot}/{cmd.symbol or '*'}/{command_gate(cmd)}/cmd-{command_digest(cmd)}"


def _is_verdict(event: HaltEvent, cmd: ControlCommand) -> bool:
    """Is ``event`` one the worker published for ``cmd``? A ``resume`` may lift the kill
    switch, the manual halt or both: any gate of the target, named after the command."""
    target = f"{cmd.bot}/{cmd.symbol or '*'}/"
    return event.event_id.startswith(target) and event.event_id.endswith(
        f"/cmd-{command_digest(cmd)}"
    )


class Verdict(NamedTuple):
    ok: bool
    message: str


async def send_command(config: Config, cmd: ControlCommand) -> None:
    """Send without waiting (``--no-wait``)."""
    async with kafka_session(config, [config.topics.control]) as kwargs:
        await _send(config, kwargs, cmd)


async def send_and_wait(config: Config, cmd: ControlCommand, timeout_s: float) -> Verdict:
    """Send ``cmd`` and wait for the worker's verdict on it.

    Success: the HaltEvent with the command's own event id on ``risk.halts``.
    Failure: a dead letter carrying the exact bytes sent. Neither within the
    timeout: the worker publishes nothing for a command that changes nothing
    (a resume of what is not halted, decision C2), so the target's gate records
    decide - if they already show what the command asks for, that is a success
    ("nothing to change"); otherwise no worker has acted on it and that fails.
    """
    topics = config.topics
    value = msgspec.json.encode(cmd)
    needs = (topics.control, topics.halts, topics.deadletter, topics.gates)
    async with kafka_session(config, needs) as kwargs:
        watch = AIOKafkaConsumer(
            **kwargs,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=config.kafka.fetch_max_wait_ms,
        )
        try:
            await watch.start()
            await watch.topics()  # metadata of every topic, for partitions_for_topic
            tps = [
                TopicPartition(t, p)
                for t in (topics.halts, topics.deadletter)
                for p in sorted(watch.partitions_for_topic(t) or ())
            ]
            watch.assign(tps)
            for tp, end in (await watch.end_offsets(tps)).items():
                watch.seek(tp, end)
            await _send(config, kwargs, cmd)
            verdict = await _watch(watch, config, value, cmd, timeout_s)
        finally:
            await watch.stop()
        if verdict is not None:
            return verdict
        gates = await read_snapshot_partitions(kwargs, topics.gates)
    return _settled(cmd, gates.records, timeout_s)


async def _send(config: Config, kwargs: dict[str, Any], cmd: ControlCommand) -> None:
    producer = AIOKafkaProducer(**kwargs, acks="all")
    try:
        await producer.start()
        await producer.send_and_wait(
            config.topics.control, msgspec.json.encode(cmd), key=cmd.bot.encode()
        )
    finally:
        await producer.stop()


async def _watch(
    watch: AIOKafkaConsumer, config: Config, value: bytes, cmd: ControlCommand, timeout_s: float
) -> Verdict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = await watch.getmany(timeout_ms=200)
        for tp, records in batch.items():
            for record in records:
                if tp.topic == config.topics.halts:
                    event = _decode(record.value, HaltEvent)
                    if event is not None and _is_verdict(event, cmd):
                        reason = f"{event.kind}: {event.reason} (event {event.event_id})"
                        return Verdict(True, reason)
                elif record.value == value:
                    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
                    return Verdict(
                        False,
                        "rejected by the worker: "
                        f"{headers.get('riskgate.errors.exception', '?')}: "
                        f"{headers.get('riskgate.errors.message', '?')}",
                    )
    return None


def _settled(cmd: ControlCommand, gates: Mapping[str, bytes | None], timeout_s: float) -> Verdict:
    """Whether the target's gate records already show what ``cmd`` asks for."""
    gate = command_gate(cmd)
    gates_of_command = {gate, "kill_switch"} if cmd.command == "resume" else {gate}
    if cmd.symbol is not None:
        keys = [gate_key(cmd.bot, cmd.symbol)]
    elif cmd.command in ("halt", "resume", "kill", "reset_state"):
        keys = [gate_key(cmd.bot, None)]
    else:
        keys = [k for k in gates if k.startswith(gate_key(cmd.bot, "")) and gates[k] is not None]
    blocking: list[str] = []
    for key in keys:
        kind: type[GateState] | type[AccountGateState] = (
            GateState if key.count("/") == 2 else AccountGateState
        )
        record = _decode(gates.get(key), kind)
        if record is None:
            return Verdict(
                False,
                f"no verdict within {timeout_s:g}s and no gate record {key!r}: "
                "is a worker running and caught up?",
            )
        if any(b.gate in gates_of_command for b in record.blocks):
            blocking.append(key)
    target = f"{cmd.bot}/{cmd.symbol or '*'}"
    if (cmd.command in ("halt", "kill")) == bool(blocking):
        return Verdict(
            True,
            f"no change: {target} already {'shows' if blocking else 'has no'} {gate} "
            f"(the worker publishes no event when there is nothing to change)",
        )
    return Verdict(
        False,
        f"no verdict within {timeout_s:g}s and {target} "
        f"{'still shows ' + gate if blocking else 'shows no ' + gate}: "
        "is a worker running and caught up? The command stays on the control topic.",
    )
