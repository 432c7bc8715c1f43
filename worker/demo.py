"""``riskgate demo``: embedded broker, topics, worker, a synthetic feed and a live table.

Everything goes through Kafka: the feed produces fills and outcomes, the worker
consumes them, and the table is drawn from ``risk.gates`` / ``risk.halts``
through the same :class:`~worker.client.GateView` an execution service uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import secrets
import time

import msgspec
from aiokafka import AIOKafkaProducer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.client import GateView
from worker.config import Config, load_config
from worker.console import open_console
from worker.http import HttpServer
from worker.kafka.broker import EmbeddedBroker
from worker.kafka.options import client_kwargs
from worker.kafka.topics import ensure_topics
from worker.logs import configure_logging
from worker.messages import Fill, HaltEvent, Side, TradeOutcome
from worker.runtime import Worker

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
_encode = msgspec.json.Encoder().encode

DEMO_CONFIG = """
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 4
window_secs = 30
cooldown_secs = 15
[worker]
sweep_interval_ms = 250
heartbeat_interval_ms = 1000
[http]
host = "127.0.0.1"
port = 0
[log]
format = "json"
level = "WARNING"
[console]
host = "127.0.0.1"
port = 0
"""


def demo_config(bootstrap: str, bots: list[str], console_token: str = "") -> Config:
    """``console_token``: the demo console's operator (``demo``) logs in with it."""
    text = DEMO_CONFIG + "".join(f"[bots.{b}]\nsymbols = {list(SYMBOLS)!r}\n" for b in bots)
    if console_token:
        digest = hashlib.sha256(console_token.encode()).hexdigest()
        text += f'[console.users.demo]\nrole = "operator"\ntoken_sha256 = "{digest}"\n'
    text = text.replace("'", '"')
    return load_config(text=text, env={"RISKGATE_KAFKA__BOOTSTRAP_SERVERS": bootstrap})


async def _feed(config: Config, bots: list[str], stop: asyncio.Event) -> None:
    """A few events per second per bot; the first bot has a losing streak on one symbol."""
    producer = AIOKafkaProducer(**client_kwargs(config.kafka), linger_ms=5)
    await producer.start()
    rng = random.Random(7)
    topics = config.topics
    n = 0
    try:
        while not stop.is_set():
            n += 1
            now = time.time_ns() // 1_000_000
            for bot in bots:
                symbol = rng.choice(SYMBOLS)
                win_or_loss = rng.uniform(1, 14) * rng.choice((1,) * 9 + (-1,))
                trades = [(symbol, win_or_loss)]
                if bot == bots[0] and n % 2 == 0:
                    # A losing streak: trips ETHUSDT's breaker and session halt in seconds.
                    trades.append(("ETHUSDT", -rng.uniform(8, 20)))
                for k, (sym, gross) in enumerate(trades):
                    outcome = TradeOutcome(f"{bot}-o{n}-{k}", bot, sym, round(gross, 2), 0.5, now)
                    await producer.send(topics.outcomes, _encode(outcome), key=bot.encode())
                side: Side = rng.choice(("buy", "sell"))
                fill = Fill(f"{bot}-f{n}", bot, symbol, side, 0.1, 100 + rng.random(), 0.01, now)
                await producer.send(topics.fills, _encode(fill), key=bot.encode())
            await asyncio.sleep(1.0)
    finally:
        await producer.stop()


def _render(view: GateView, halts: list[HaltEvent], elapsed: float, port: int) -> Group:
    table = Table(title=f"riskgate demo — gates ({elapsed:5.1f}s, metrics :{port}/metrics)")
    for column in (
        "bot",
        "symbol",
        "net PnL",
        "trades",
        "losses in window",
        "position",
        "entries",
        "blocked by",
    ):
        table.add_column(
            column,
            justify="right"
            if column in {"net PnL", "trades", "losses in window", "position"}
            else "left",
        )
    for (bot, symbol), s in sorted(view.symbols.items()):
        allowed = view.entries_allowed(bot, symbol)
        table.add_row(
            bot,
            symbol,
            Text(f"{s.net_pnl:9.2f}", style="red" if s.net_pnl < 0 else "green"),
            str(s.trades),
            str(s.recent_losses),
            f"{s.position_qty:.1f}",
            Text("allowed" if allowed else "BLOCKED", style="green" if allowed else "bold red"),
            ", ".join(b.gate for b in s.blocks),
        )
    recent = Table(title="recent halt events", show_header=False)
    for event in halts[-6:]:
        recent.add_row(event.kind, event.bot, event.symbol or "*", event.gate, event.reason)
    return Group(table, recent)


async def run_demo(duration: float | None = None, bots: int = 3) -> int:
    configure_logging("json", "WARNING")
    names = [f"bot{i + 1}" for i in range(bots)]
    console = Console()
    async with EmbeddedBroker() as broker:
        token = secrets.token_urlsafe(24)
        config = demo_config(broker.bootstrap_servers, names, token)
        await ensure_topics(config.kafka, config.topics)
        worker = Worker(config)
        http = HttpServer(worker, worker.metrics.registry, "127.0.0.1", 0)
        await http.start()
        worker_task = asyncio.create_task(worker.run())
        stop = asyncio.Event()
        feed_task = asyncio.create_task(_feed(config, names, stop))
        halts: list[HaltEvent] = []
        view = GateView(config.kafka, config.topics, staleness_ms=5_000)
        view.subscribe(halts.append)
        await view.start()
        started = time.monotonic()
        try:
            async with open_console(config) as web:
                # The token rides in the fragment: the page logs in with it; no server sees it.
                console.print(f"console (operator demo): {web.url}#token={token}", soft_wrap=True)
                with Live(console=console, refresh_per_second=4) as live:
                    while duration is None or time.monotonic() - started < duration:
                        live.update(_render(view, halts, time.monotonic() - started, http.port))
                        await asyncio.sleep(0.25)
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
        finally:
            stop.set()
            worker.stop()
            with contextlib.suppress(Exception):
                await feed_task
            await worker_task
            await view.stop()
            await http.stop()
        halted = sum(1 for h in halts if h.kind == "halted")
        console.print(f"demo finished: {len(view.symbols)} symbols, {halted} halt events published")
    return 0
