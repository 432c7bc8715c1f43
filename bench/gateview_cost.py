"""Per-call cost of ``GateView.entries_allowed`` with a populated gate table.

Starts an embedded broker (or uses ``--bootstrap``), publishes account and
symbol gate records for ``--bots`` x ``--symbols`` keys, lets a GateView read
them to the end, then times ``entries_allowed`` with ``timeit`` for the cases
an execution service hits: an allowed symbol, a symbol with a block, a symbol
with no record yet, a blocked account, and a bot with no record.

    .venv/bin/python -m bench.gateview_cost
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
import timeit
import uuid

import msgspec
from aiokafka import AIOKafkaProducer

from worker.client import GateView
from worker.clock import wall_clock_ms as now_ms
from worker.config import KafkaConfig, TopicsConfig
from worker.kafka.broker import EmbeddedBroker
from worker.kafka.options import client_kwargs
from worker.kafka.topics import ensure_topics
from worker.messages import AccountGateState, Block, GateState


def records(bots: int, symbols: int) -> list[tuple[bytes, bytes]]:
    encode = msgspec.json.encode
    out: list[tuple[bytes, bytes]] = []
    halt = Block("manual_halt", "halted by bench: blocked", None)
    for b in range(bots):
        bot = f"bot{b}"
        blocked = b == bots - 1  # the last bot is halted as a whole
        account = AccountGateState(
            bot=bot,
            entries_allowed=not blocked,
            blocks=[halt] if blocked else [],
            account_net_pnl=0.0,
            open_positions=0,
            gross_exposure=0.0,
            updated_ts=now_ms(),
            seq=1,
        )
        out.append((f"{bot}/gate".encode(), encode(account)))
        for s in range(symbols):
            symbol_blocked = s == symbols - 1
            state = GateState(
                bot=bot,
                symbol=f"SYM{s}",
                entries_allowed=not symbol_blocked,
                blocks=[halt] if symbol_blocked else [],
                net_pnl=0.0,
                trades=0,
                recent_losses=0,
                position_qty=0.0,
                updated_ts=now_ms(),
                seq=1,
            )
            out.append((f"{bot}/gate/SYM{s}".encode(), encode(state)))
    return out


async def publish(kafka: KafkaConfig, topic: str, table: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**client_kwargs(kafka), acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in table]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def run(args: argparse.Namespace, bootstrap: str) -> None:
    kafka = KafkaConfig(bootstrap_servers=bootstrap, client_id="gateview-bench")
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    topics = TopicsConfig(
        **{
            field: f"{prefix}.{field}"
            for field in (
                "fills",
                "outcomes",
                "intents",
                "control",
                "snapshots",
                "gates",
                "halts",
                "decisions",
                "deadletter",
            )
        },
        partitions=args.partitions,
    )
    await ensure_topics(kafka, topics)
    table = records(args.bots, args.symbols)
    await publish(kafka, topics.gates, table)

    async with GateView(kafka, topics) as view:
        started = time.perf_counter()
        async with asyncio.timeout(60):
            await view.wait_caught_up()
        print(
            f"caught up on {len(table)} gate records in {time.perf_counter() - started:.2f} s: "
            f"{len(view.accounts)} accounts, {len(view.symbols)} symbols"
        )
        # Replayed records prove no owner alive now: bot0's owner heartbeats once.
        await publish(kafka, topics.gates, table[:1])
        async with asyncio.timeout(30):
            while not view.entries_allowed("bot0", "SYM0"):  # noqa: ASYNC110 - polled, as a client would
                await asyncio.sleep(0.01)
        last = args.bots - 1
        cases = {
            "allowed symbol": ("bot0", "SYM0", True),
            "blocked symbol": ("bot0", f"SYM{args.symbols - 1}", False),
            "symbol without record": ("bot0", "NEWSYM", True),
            "blocked account": (f"bot{last}", "SYM0", False),
            "unknown bot": ("nobody", "SYM0", False),
        }
        check = view.entries_allowed
        for name, (bot, symbol, expected) in cases.items():
            assert check(bot, symbol) is expected, name
            timer = timeit.Timer(lambda b=bot, s=symbol: check(b, s))
            per_call = min(timer.repeat(repeat=args.repeat, number=args.number)) / args.number
            print(f"entries_allowed, {name:<22} {per_call * 1e9:7.0f} ns/call")
        baseline = timeit.Timer(lambda: None)
        empty = min(baseline.repeat(repeat=args.repeat, number=args.number)) / args.number
        print(f"(an empty lambda call costs {empty * 1e9:.0f} ns; target <= 2000 ns/call)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=100)
    parser.add_argument("--symbols", type=int, default=50, help="symbols per bot")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--number", type=int, default=200_000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings (the best is shown)")
    parser.add_argument("--bootstrap", help="an existing broker instead of the embedded one")
    args = parser.parse_args()
    print(
        f"settings: bots={args.bots} symbols/bot={args.symbols} partitions={args.partitions} "
        f"timeit number={args.number} repeat={args.repeat} (best of); "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    if args.bootstrap:
        asyncio.run(run(args, args.bootstrap))
    else:
        with EmbeddedBroker() as broker:
            asyncio.run(run(args, broker.bootstrap_servers))


if __name__ == "__main__":
    main()
