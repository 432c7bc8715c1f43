"""CPU per input record of the worker's own loop, without a broker.

Feeds pre-encoded outcomes (``bench.core``'s configuration: the 4 of its
8 bots that book from outcomes, 50 symbols each) to :class:`~worker.runtime.batch.BatchApplier` in
batches shaped like a fetch (records grouped per partition, each bot on its
murmur2 home partition), with the engine's ``sweep`` after each batch as the
worker does. What it measures is everything riskgate adds per record on top
of the client: decode, home check, the engine, counting. Not the client, not
publishing, not persisting.

    python -m bench.shell_cost [--events 300000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from typing import NamedTuple

import msgspec
from aiokafka import TopicPartition

from bench.core import BOTS, CONFIG, START_MS, STEP_MS, SYMBOLS
from worker.config import load_config
from worker.core import Effects, RiskEngine
from worker.inbound import input_kinds
from worker.kafka.records import OutRecord
from worker.messages import TradeOutcome
from worker.metrics import Metrics
from worker.runtime.batch import BatchApplier
from worker.runtime.ownership import Ownership, home_partition

PARTITIONS = 8
TOPIC = "trading.outcomes"
OUTCOME_BOTS = BOTS[0::2]
"""The bots that book PnL from outcomes in ``bench.core``'s configuration."""


class Record(NamedTuple):
    """What the applier reads of an aiokafka ``ConsumerRecord``."""

    key: bytes
    value: bytes
    offset: int
    timestamp: int


def batches(n: int, size: int, seed: int) -> list[tuple[dict[TopicPartition, list[Record]], int]]:
    """``n`` outcomes in fetches of ``size`` records, grouped per partition, with the clock."""
    rng = random.Random(seed)
    encode = msgspec.json.Encoder().encode
    offsets = [0] * PARTITIONS
    out: list[tuple[dict[TopicPartition, list[Record]], int]] = []
    ts = START_MS
    fetch: dict[TopicPartition, list[Record]] = {}
    for i in range(n):
        ts += rng.randint(0, 2 * STEP_MS)
        bot = rng.choice(OUTCOME_BOTS)
        key = bot.encode()
        partition = home_partition(key, PARTITIONS)
        win = rng.random() < 0.52
        value = encode(
            TradeOutcome(
                outcome_id=f"o{i}",
                bot=bot,
                symbol=rng.choice(SYMBOLS),
                gross_pnl=round(rng.uniform(0.5, 25.0) * (1 if win else -1), 4),
                fee=round(rng.uniform(0.01, 0.6), 4),
                ts=ts,
            )
        )
        tp = TopicPartition(TOPIC, partition)
        fetch.setdefault(tp, []).append(Record(key, value, offsets[partition], ts))
        offsets[partition] += 1
        if (i + 1) % size == 0 or i == n - 1:
            out.append((fetch, ts))
            fetch = {}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    config = load_config(text=CONFIG, env={})
    engine = RiskEngine(config)

    async def no_read(partitions: frozenset[int]) -> object:
        raise AssertionError("no restore in this bench")

    ownership = Ownership(config.topics, no_read)  # type: ignore[arg-type]
    ownership.input_partitions = PARTITIONS
    metrics = Metrics()
    applier = BatchApplier(config, engine, ownership, metrics, input_kinds(config.topics))
    work = batches(args.events, args.batch, args.seed)
    letters: list[OutRecord] = []
    halts = dirty = 0
    gc.collect()
    gc.disable()
    c0 = time.process_time()
    for fetch, now in work:
        out = Effects()
        applier.apply(fetch, now, out, letters)
        engine.sweep(now, out)
        halts += len(out.halts)
        dirty += len(out.dirty_symbols)
    cpu = time.process_time() - c0
    gc.enable()
    n = args.events
    applied = metrics.events.labels(TOPIC, "applied")._value.get()
    print(
        f"shell+engine {n:>9} outcomes  cpu {cpu:6.3f} s {n / cpu:>10,.0f} records/s "
        f"{cpu / n * 1e6:5.2f} us/record  (applied {applied:,.0f}, dead letters "
        f"{len(letters)}, halts {halts}, dirty keys {dirty})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
