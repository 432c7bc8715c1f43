"""Bad input (SPEC §6): dead-lettered with its original bytes, state untouched, worker alive."""

from __future__ import annotations

import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import (
    MIN_MS,
    Raw,
    as_raw,
    clock,
    create_topics,
    decoded,
    expected_portfolios,
    expected_snapshots,
    latest,
    make_config,
    outcome,
    persisted_portfolios,
    persisted_snapshots,
    produce,
    produce_events,
    read_topic,
    reference,
    running_worker,
    wait_processed,
)
from worker.messages import ControlCommand, Fill
from worker.signing import signed

pytestmark = pytest.mark.broker

SECRET = "correct horse battery staple"
BODY = f"""
[control]
secret = "{SECRET}"

[worker]
max_message_bytes = 2048

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]
[bots.fb]
symbols = ["BTCUSDT"]
pnl_source = "fills"
"""

DEADLETTER_HEADERS = (
    "riskgate.errors.topic",
    "riskgate.errors.partition",
    "riskgate.errors.offset",
    "riskgate.errors.exception",
    "riskgate.errors.message",
)


def bad_records(
    outcomes: str, fills: str, control: str, ts: int
) -> dict[str, tuple[Raw, set[str]]]:
    """One record per kind of bad input, with the error classes it may be filed under.

    Every one of them would change alpha/BTCUSDT (or create state) if it were applied.
    """

    def json(text: str) -> bytes:
        return text.replace("TS", str(ts)).encode()

    loss = '"outcome_id":"bad-{n}","bot":"alpha","symbol":"BTCUSDT"'
    enc = msgspec.json.encode
    halt = ControlCommand("halt", "alpha", None, "unsigned", "mallory", ts)
    forged = msgspec.structs.replace(
        signed(halt, b"not the secret"), reason="forged", issued_by="mallory"
    )
    return {
        "not JSON": (Raw(outcomes, b"alpha", b"gross_pnl=-500 (not json)"), {"malformed_json"}),
        "wrong types": (
            Raw(
                outcomes,
                b"alpha",
                json("{" + loss.format(n=1) + ',"gross_pnl":"-500","fee":0,"ts":TS}'),
            ),
            {"invalid_message"},
        ),
        "missing field": (
            Raw(
                outcomes,
                b"alpha",
                json('{"bot":"alpha","symbol":"BTCUSDT","gross_pnl":-500,"fee":0,"ts":TS}'),
            ),
            {"invalid_message"},
        ),
        "NaN token": (
            Raw(
                outcomes,
                b"alpha",
                json("{" + loss.format(n=2) + ',"gross_pnl":NaN,"fee":0,"ts":TS}'),
            ),
            {"malformed_json", "invalid_message"},
        ),
        "1e400": (
            Raw(
                outcomes,
                b"alpha",
                json("{" + loss.format(n=3) + ',"gross_pnl":-1e400,"fee":0,"ts":TS}'),
            ),
            {"malformed_json", "invalid_message"},
        ),
        "qty <= 0": (
            Raw(
                fills,
                b"alpha",
                enc(Fill("bad-f1", "alpha", "BTCUSDT", "buy", 1.0, 100.0, 0.0, ts)).replace(
                    b'"qty":1.0', b'"qty":0.0'
                ),
            ),
            {"invalid_message"},
        ),
        "key != bot": (
            Raw(outcomes, b"beta", enc(outcome("alpha", "BTCUSDT", -500.0, ts=ts))),
            {"key_mismatch"},
        ),
        "unknown bot": (
            Raw(outcomes, b"ghost", enc(outcome("ghost", "BTCUSDT", -500.0, ts=ts))),
            {"unknown_bot"},
        ),
        "symbol not in the bot's list": (
            Raw(outcomes, b"alpha", enc(outcome("alpha", "DOGEUSDT", -500.0, ts=ts))),
            {"unknown_symbol"},
        ),
        "outcome for a fills-booked bot": (
            Raw(outcomes, b"fb", enc(outcome("fb", "BTCUSDT", -500.0, ts=ts))),
            {"pnl_source"},
        ),
        "oversize": (
            Raw(
                outcomes,
                b"alpha",
                enc(outcome("alpha", "BTCUSDT", -500.0, ts=ts))[:-1]
                + b',"note":"'
                + b"x" * 4096
                + b'"}',
                [("trace-id", b"oversize-1")],
            ),
            {"oversize"},
        ),
        "unsigned control command": (Raw(control, b"alpha", enc(halt)), {"bad_signature"}),
        "wrongly signed control command": (Raw(control, b"alpha", enc(forged)), {"bad_signature"}),
    }


def _deadletter_counts(registry: object) -> dict[str, float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "riskgate_deadletters"
        for s in family.samples
        if s.name == "riskgate_deadletters_total"
    }


async def test_each_kind_of_bad_input_is_dead_lettered_and_changes_nothing(
    kafka_bootstrap: str,
) -> None:
    config = make_config(kafka_bootstrap, BODY)
    topics = config.topics
    await create_topics(config)
    ts = clock() - MIN_MS
    bad = bad_records(topics.outcomes, topics.fills, topics.control, ts)

    async with running_worker(config) as running:
        engine = running.worker.engine
        first = outcome("alpha", "BTCUSDT", -5.0, 0.1, ts=ts)
        baseline = await produce_events(config, [first])
        await wait_processed(config, baseline, alive=running.check_alive)
        snapshots_before = await latest(config.kafka, topics.snapshots)
        gates_before = decoded(await latest(config.kafka, topics.gates))
        state_before = engine.bots["alpha"].symbols["BTCUSDT"].snapshot()

        produced = await produce(config.kafka, [raw for raw, _ in bad.values()])
        # Still alive and processing: a good message after all the bad ones.
        last = outcome("alpha", "ETHUSDT", 7.0, ts=ts)
        good = await produce(config.kafka, [as_raw(config, last)])
        await wait_processed(config, produced + good, alive=running.check_alive)

        assert engine.bots["alpha"].symbols["BTCUSDT"].snapshot() == state_before
        assert engine.bots["alpha"].manual_halt is None
        assert "ghost" not in engine.bots
        assert not engine.bots.get("fb") or not engine.bots["fb"].symbols
        assert set(engine.bots["alpha"].symbols) == {"BTCUSDT", "ETHUSDT"}
        assert engine.bots["alpha"].symbols["ETHUSDT"].session.net_pnl == 7.0
        reasons = _deadletter_counts(running.worker.metrics.registry)
        assert sum(reasons.values()) == len(bad)

    # Dead letters: one per bad record, original key/value/headers, KIP-1034 style headers.
    dead = await read_topic(config.kafka, topics.deadletter)
    assert len(dead) == len(bad)
    by_origin = {}
    for record in dead:
        headers = dict(record.headers)
        assert all(headers.get(h) for h in DEADLETTER_HEADERS), record.headers
        origin = (
            headers["riskgate.errors.topic"].decode(),
            int(headers["riskgate.errors.partition"]),
            int(headers["riskgate.errors.offset"]),
        )
        by_origin[origin] = record
    for (kind, (raw, classes)), where in zip(bad.items(), produced, strict=True):
        record = by_origin.pop((where.topic, where.partition, where.offset))
        assert (record.key, record.value) == (raw.key, raw.value), kind
        headers = dict(record.headers)
        assert headers["riskgate.errors.exception"].decode() in classes, kind
        for name, value in raw.headers or ():
            assert headers[name] == value, f"{kind}: original header {name} lost"
    assert not by_origin

    # Outputs and snapshots: only the good message's keys changed, to the model's state
    # of the good messages alone.
    snapshots_after = await latest(config.kafka, topics.snapshots)
    expected = reference(config, [first, last], clock())
    assert persisted_snapshots(snapshots_after) == expected_snapshots(expected)
    assert persisted_portfolios(snapshots_after) == expected_portfolios(expected) == {}
    # (alpha's portfolio record holds its recent outcome ids: the good outcome joined them.)
    touched = {"alpha/risk/ETHUSDT", "alpha/portfolio"}
    assert {k: r.value for k, r in snapshots_after.items() if k not in touched} == {
        k: r.value for k, r in snapshots_before.items() if k not in touched
    }
    gates_after = decoded(await latest(config.kafka, topics.gates))
    symbol_gates = {k for k in gates_after if k.count("/") == 2}
    assert symbol_gates == {"alpha/gate/BTCUSDT", "alpha/gate/ETHUSDT"}
    assert gates_after["alpha/gate/BTCUSDT"] == gates_before["alpha/gate/BTCUSDT"]
    # Configured bots get their account record at assignment; the unknown one gets nothing.
    assert {k for k in gates_after if k.count("/") == 1} == {"alpha/gate", "fb/gate"}
    assert await read_topic(config.kafka, topics.halts) == []  # the unsigned halt did nothing
