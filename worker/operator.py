"""Operator tools behind ``riskgate state`` and ``riskgate halt|resume``.

``state`` rebuilds a bot from the compacted snapshot topic with the same
engine the worker runs (restore, then tick at the wall clock), so what it shows
is exactly what a restarted worker would hold.
"""

from __future__ import annotations

import time

import msgspec
from aiokafka import AIOKafkaProducer
from rich.table import Table

from worker.config import Config
from worker.engine import BotRisk, RiskEngine
from worker.kafka.options import client_kwargs
from worker.kafka.restore import read_snapshot_partitions
from worker.messages import Command, ControlCommand
from worker.signing import signed


async def load_bot(config: Config, bot: str, now_ms: int) -> BotRisk | None:
    """The bot's state as the snapshot topic holds it, ticked to ``now_ms``."""
    read = await read_snapshot_partitions(client_kwargs(config.kafka), config.topics.snapshots)
    prefix = f"{bot}/"
    records = {k: v for k, v in read.records.items() if k.startswith(prefix)}
    engine = RiskEngine(config)
    engine.restore(records, now_ms)
    return engine.bots.get(bot)


def state_table(bot: BotRisk, now_ms: int) -> Table:
    account = bot.account_gate_state(now_ms)
    title = (
        f"{bot.bot}: account net {account.account_net_pnl:.2f}, "
        f"{account.open_positions} open, exposure {account.gross_exposure:.2f}, "
        f"entries {'allowed' if account.entries_allowed else 'BLOCKED'}"
    )
    if account.blocks:
        title += " (" + "; ".join(f"{b.gate}: {b.reason}" for b in account.blocks) + ")"
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
        table.add_column(column)
    for name in sorted(bot.symbols):
        sym = bot.symbols[name]
        s = sym.session
        until = sym.breaker.until_secs
        cooldown = f"{max(0, until - now_ms // 1000)}s" if until is not None else "-"
        blocks = sym.blocks()
        table.add_row(
            name,
            f"{s.net_pnl:.2f}",
            str(s.trades),
            f"{s.wins}/{s.losses}/{s.breakevens}",
            str(len(sym.breaker.recent_losses)),
            cooldown,
            f"{sym.position.qty:g}",
            ", ".join(b.gate for b in blocks) if blocks else "open",
        )
    return table


def make_command(
    config: Config,
    command: Command,
    *,
    bot: str,
    symbol: str | None,
    reason: str,
    issued_by: str,
    now_ms: int | None = None,
) -> ControlCommand:
    """A control command, signed when the config has a control secret."""
    cmd = ControlCommand(
        command=command,
        bot=bot,
        symbol=symbol,
        reason=reason,
        issued_by=issued_by,
        ts=now_ms if now_ms is not None else time.time_ns() // 1_000_000,
    )
    secret = config.control.resolved_secret()
    return signed(cmd, secret) if secret is not None else cmd


async def send_command(config: Config, cmd: ControlCommand) -> None:
    producer = AIOKafkaProducer(**client_kwargs(config.kafka), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            config.topics.control, msgspec.json.encode(cmd), key=cmd.bot.encode()
        )
    finally:
        await producer.stop()
