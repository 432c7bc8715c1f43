"""``riskgate replay``: report.json numbers against an independent hand computation.

Each history is small and generated here with its halts at known points; the
expected numbers are worked out in the test from the counterfactual rule
(docs/replay.md), never read back from the engine or the replay.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from worker.config import load_config
from worker.messages import Fill, TradeOutcome
from worker.replay import report
from worker.replay.command import _ctrl_c, replay_command
from worker.replay.inputs import in_time_order, read_file
from worker.replay.run import replay
from worker.replay.sweep import parse_sweep, run_sweep

DAY = 86_400_000
HOUR = 3_600_000
MIN = 60_000
D0 = 20_254 * DAY  # 2025-06-15 00:00 UTC

CONFIG = """
[defaults.session]
loss_limit = {session}
[defaults.breaker]
loss_limit = {breaker}
window_secs = 3600
cooldown_secs = 600
[worker]
sweep_interval_ms = 1000
[bots.a]
[bots.f]
pnl_source = "fills"
"""


def config_file(tmp_path: Path, session: str = "-50.0", breaker: int = 0) -> Path:
    path = tmp_path / "riskgate.toml"
    path.write_text(CONFIG.format(session=session, breaker=breaker))
    return path


def out(bot: str, n: int, gross: float, ts: int, symbol: str = "X") -> dict[str, Any]:
    o = TradeOutcome(
        outcome_id=f"{bot}-{n}", bot=bot, symbol=symbol, gross_pnl=gross, fee=0.0, ts=ts
    )
    return {"type": "outcome", **msgspec.to_builtins(o)}


def fill(n: int, side: str, qty: float, price: float, ts: int) -> dict[str, Any]:
    f = Fill(fill_id=f"f-{n}", bot="f", symbol="Y", side=side, qty=qty, price=price, fee=0.0, ts=ts)  # type: ignore[arg-type]
    return {"type": "fill", **msgspec.to_builtins(f)}


def write_jsonl(path: Path, rows: list[dict[str, Any]], extra: list[bytes] = ()) -> Path:  # type: ignore[assignment]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b"".join(extra))
    return path


def run_report(tmp_path: Path, rows: list[dict[str, Any]], **cfg: Any) -> dict[str, Any]:
    cfg_path = config_file(tmp_path, **cfg)
    history = write_jsonl(tmp_path / "history.jsonl", rows)
    result = replay(load_config(cfg_path, env={}), in_time_order([read_file(history)]))
    return report.build(result, config_path=str(cfg_path), sources=[str(history)])


def test_a_session_halt_at_a_known_point_prevents_the_trades_after_it(tmp_path: Path) -> None:
    t0 = D0 + 10 * HOUR
    grosses = [-20.0, -20.0, -20.0, 30.0, -10.0]  # net -60 after the 3rd: halted from then on
    rows = [out("a", i, g, t0 + i * MIN) for i, g in enumerate(grosses)]
    rep = run_report(tmp_path, rows)
    bot = rep["bots"]["a"]
    prevented = grosses[3:]
    assert bot["trades"] == 5
    assert bot["blocked_trades"] == 2
    assert bot["net_pnl_actual"] == sum(grosses) == -40.0
    assert bot["net_pnl_with_limits"] == sum(grosses[:3]) == -60.0
    assert bot["pnl_avoided"] == -sum(g for g in prevented if g < 0) == 10.0
    assert bot["pnl_forgone"] == sum(g for g in prevented if g > 0) == 30.0
    assert bot["effect"] == -20.0
    assert bot["halts"] == {"session_halt": 1}
    assert bot["halted_ms"] == {"session_halt": 2 * MIN}  # from the 3rd record to the end
    assert bot["worst_intraday_drawdown_actual"] == 60.0
    assert bot["worst_intraday_drawdown_with_limits"] == 60.0
    assert rep["overall"] == bot
    assert [(h["kind"], h["gate"], h["ts"], h["until_ts"]) for h in rep["halts"]] == [
        ("halted", "session_halt", t0 + 2 * MIN, D0 + DAY)
    ]
    assert rep["timeline"] == [
        {
            "bot": "a",
            "symbol": "X",
            "gate": "session_halt",
            "start_ms": t0 + 2 * MIN,
            "end_ms": t0 + 4 * MIN,
            "open": True,
        }
    ]
    assert rep["input"]["complete"] is True


def test_a_breaker_trip_blocks_until_its_cooldown_ends_on_the_event_clock(tmp_path: Path) -> None:
    t0 = D0 + 9 * HOUR
    history = [  # (seconds after t0, gross)
        (0, -1.0),
        (60, -1.0),
        (120, -1.0),  # 3 losses in the window: trip at 120 s
        (300, 5.0),
        (400, -2.0),  # during the 600 s cooldown: prevented
        (800, 7.0),  # after it ended at 720 s: kept
    ]
    rows = [out("a", i, g, t0 + s * 1000) for i, (s, g) in enumerate(history)]
    rep = run_report(tmp_path, rows, session="-inf", breaker=3)
    bot = rep["bots"]["a"]
    assert [(h["kind"], h["gate"], h["ts"]) for h in rep["halts"]] == [
        ("halted", "circuit_breaker", t0 + 120_000),
        ("resumed", "circuit_breaker", t0 + 720_000),  # woken at until_ts, no record then
    ]
    assert bot["trades"] == 6
    assert bot["blocked_trades"] == 2
    assert bot["net_pnl_actual"] == -3 + 5 - 2 + 7
    assert bot["net_pnl_with_limits"] == -3 + 7
    assert (bot["pnl_avoided"], bot["pnl_forgone"]) == (2.0, 5.0)
    assert bot["halts"] == {"circuit_breaker": 1}
    assert bot["halted_ms"] == {"circuit_breaker": 600_000}
    # actual equity 0,-1,-2,-3,2,0,7: the worst fall from a peak is 3 (0 → -3)
    assert bot["worst_intraday_drawdown_actual"] == 3.0
    assert bot["worst_intraday_drawdown_with_limits"] == 3.0


def test_a_day_rollover_lifts_the_session_halt_at_midnight(tmp_path: Path) -> None:
    late = D0 + 23 * HOUR
    rows = [
        out("a", 0, -60.0, late),  # halts: net -60 <= -50
        out("a", 1, -5.0, late + 30 * MIN),  # prevented (avoided 5)
        out("a", 2, 10.0, D0 + DAY + 10 * MIN),  # next day: the session rolled over, kept
        # fills bot f: a -60 round trip halts it; the next round trip opens while halted and
        # closes the next day (+20, forgone as a whole); a third is kept (+10)
        fill(0, "buy", 1.0, 100.0, late + MIN),
        fill(1, "sell", 1.0, 40.0, late + 2 * MIN),
        fill(2, "buy", 1.0, 50.0, late + 3 * MIN),
        fill(3, "sell", 1.0, 70.0, D0 + DAY + 20 * MIN),
        fill(4, "buy", 2.0, 70.0, D0 + DAY + 30 * MIN),
        fill(5, "sell", 2.0, 75.0, D0 + DAY + 40 * MIN),
    ]
    rep = run_report(tmp_path, rows)
    a, f = rep["bots"]["a"], rep["bots"]["f"]
    resumes = [(h["bot"], h["gate"], h["ts"]) for h in rep["halts"] if h["kind"] == "resumed"]
    assert resumes == [("a", "session_halt", D0 + DAY), ("f", "session_halt", D0 + DAY)]
    assert (a["net_pnl_actual"], a["net_pnl_with_limits"]) == (-55.0, -50.0)
    assert (a["pnl_avoided"], a["pnl_forgone"], a["blocked_trades"]) == (5.0, 0.0, 1)
    assert a["halted_ms"] == {"session_halt": HOUR}  # 23:00 → 00:00
    assert a["worst_intraday_drawdown_actual"] == 65.0  # day 1: 0 → -65; day 2 starts at 0
    assert a["worst_intraday_drawdown_with_limits"] == 60.0
    assert (f["trades"], f["blocked_trades"]) == (3, 1)
    assert f["net_pnl_actual"] == -60.0 + 20.0 + 2 * 5.0
    assert f["net_pnl_with_limits"] == -60.0 + 2 * 5.0
    assert (f["pnl_avoided"], f["pnl_forgone"]) == (0.0, 20.0)
    assert f["halted_ms"] == {"session_halt": HOUR - 2 * MIN}
    overall = rep["overall"]
    assert overall["net_pnl_actual"] == a["net_pnl_actual"] + f["net_pnl_actual"]
    assert overall["halts"] == {"session_halt": 2}
    assert overall["halted_ms"] == {"session_halt": 2 * HOUR - 2 * MIN}


def test_bad_rows_and_duplicate_ids_are_counted_never_booked(tmp_path: Path) -> None:
    t0 = D0 + 10 * HOUR
    rows = [out("a", 0, -10.0, t0), out("a", 0, -10.0, t0 + MIN), out("zzz", 1, 5.0, t0 + MIN)]
    cfg = config_file(tmp_path)
    history = write_jsonl(
        tmp_path / "h.jsonl", rows, [b'{"type": "outcome", "bot": \n', b"not json\n"]
    )
    result = replay(load_config(cfg, env={}), in_time_order([read_file(history)]))
    rep = report.build(result, config_path=str(cfg), sources=[])
    assert rep["input"]["rejected"] == {"malformed_json": 2, "unknown_bot": 1}
    assert (rep["input"]["applied"], rep["input"]["duplicates"]) == (2, 1)
    assert rep["bots"]["a"]["net_pnl_actual"] == -10.0
    assert [r.raw for r in result.bad_records[:2]] == [b'{"type": "outcome", "bot": ', b"not json"]


def test_csv_and_parquet_read_the_same_events_as_jsonl(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    t0 = D0 + 10 * HOUR
    rows = [out("a", i, g, t0 + i * MIN) for i, g in enumerate([-20.0, -40.0, 5.0])]
    jsonl = read_file(write_jsonl(tmp_path / "x.jsonl", rows))
    fields = [k for k in rows[0] if k != "type"]
    csv_path = tmp_path / "outcomes.csv"
    csv_path.write_text(
        ",".join(fields) + "\n" + "".join(",".join(str(r[k]) for k in fields) + "\n" for r in rows)
    )
    parquet_path = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_path)
    events = [r.event for r in jsonl]
    assert [r.event for r in read_file(csv_path)] == events
    assert [r.event for r in read_file(parquet_path)] == events
    assert [r.time for r in read_file(parquet_path)] == [t0, t0 + MIN, t0 + 2 * MIN]


def test_a_bot_wide_command_in_csv_has_an_empty_symbol_cell(tmp_path: Path) -> None:
    path = tmp_path / "control.csv"
    path.write_text(
        "command,bot,symbol,reason,issued_by,ts\n"
        f"halt,a,,desk,op,{D0 + HOUR}\nresume,a,X,ok,op,{D0 + 2 * HOUR}\n"
    )
    events = [r.event for r in read_file(path)]
    assert [(e.command, e.symbol) for e in events] == [("halt", None), ("resume", "X")]  # type: ignore[union-attr]


def test_a_stopped_replay_reports_what_it_replayed_as_partial(tmp_path: Path) -> None:
    t0 = D0 + 10 * HOUR
    rows = [out("a", i, 1.0, t0 + i) for i in range(10_000)]
    cfg = load_config(config_file(tmp_path), env={})
    records = in_time_order([read_file(write_jsonl(tmp_path / "h.jsonl", rows))])
    result = replay(cfg, records, stop=lambda: True)
    rep = report.build(result, config_path="c", sources=[])
    assert (rep["input"]["replayed"], rep["input"]["complete"]) == (4096, False)
    assert rep["bots"]["a"]["net_pnl_actual"] == 4096.0
    assert rep["input"]["end_ms"] == t0 + 4095


def test_an_empty_input_reports_nothing_and_no_time(tmp_path: Path) -> None:
    result = replay(load_config(config_file(tmp_path), env={}), [])
    rep = report.build(result, config_path="c", sources=[])
    assert (rep["input"]["start_ms"], rep["input"]["end_ms"], rep["halts"]) == (None, None, [])
    assert "riskgate replay" in report.render_html(rep)


def test_ctrl_c_sets_the_stop_flag_instead_of_raising() -> None:
    with _ctrl_c() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def sweep_rows(t0: int) -> list[dict[str, Any]]:
    """Four losses of 20 a minute apart, then a win of 100."""
    return [out("a", i, g, t0 + i * MIN) for i, g in enumerate([-20.0] * 4 + [100.0])]


def test_a_sweep_ranks_every_combination_and_maps_two_keys(tmp_path: Path) -> None:
    t0 = D0 + 10 * HOUR
    cfg = config_file(tmp_path)
    records = in_time_order([read_file(write_jsonl(tmp_path / "h.jsonl", sweep_rows(t0)))])
    spec = parse_sweep(["defaults.session.loss_limit=-30,-1000", "defaults.breaker.loss_limit=0,2"])
    base, section, _ = run_sweep(cfg, records, spec, workers=2)
    # Independent: with session -30 the 2nd loss (-40) halts; the breaker at 2 trips at the 2nd
    # loss too. Either way the rest (-40 and +100) is prevented: with = -40. With neither
    # limit, nothing is prevented: with = actual = 20.
    expected = {
        ("-30", "0"): -40.0,
        ("-30", "2"): -40.0,
        ("-1000", "0"): 20.0,
        ("-1000", "2"): -40.0,
    }
    got = {
        (r["params"]["defaults.session.loss_limit"], r["params"]["defaults.breaker.loss_limit"]): r[
            "overall"
        ]["net_pnl_with_limits"]
        for r in section["rows"]
    }
    assert got == expected
    assert section["rows"][0]["params"] == {
        "defaults.session.loss_limit": "-1000",
        "defaults.breaker.loss_limit": "0",
    }
    assert [r["rank"] for r in section["rows"]] == [1, 2, 3, 4]
    assert section["heatmap"] == {
        "x_key": "defaults.session.loss_limit",
        "y_key": "defaults.breaker.loss_limit",
        "x": ["-30", "-1000"],
        "y": ["0", "2"],
        "z": [[-40.0, 20.0], [-40.0, -40.0]],
    }
    # the base config (session -50, no breaker) halts at the 3rd loss (-60)
    assert (base["overall"]["net_pnl_actual"], base["overall"]["net_pnl_with_limits"]) == (
        20.0,
        -60.0,
    )


def test_a_stopped_sweep_returns_every_combination_partial(tmp_path: Path) -> None:
    t0 = D0 + 10 * HOUR
    rows = [out("a", i, 1.0, t0 + i) for i in range(10_000)]
    records = in_time_order([read_file(write_jsonl(tmp_path / "h.jsonl", rows))])
    spec = parse_sweep(["defaults.session.loss_limit=-30,-1000"])
    base, section, _ = run_sweep(
        config_file(tmp_path), records, spec, workers=2, should_stop=lambda: True
    )
    assert (base["input"]["complete"], base["input"]["replayed"]) == (False, 4096)
    assert section["complete"] is False
    assert [r["overall"]["net_pnl_actual"] for r in section["rows"]] == [4096.0, 4096.0]


def test_the_command_writes_both_reports_and_the_dead_letters(tmp_path: Path) -> None:
    t0 = D0 + 10 * HOUR
    cfg = config_file(tmp_path)
    stranger = out("zzz", 9, 1.0, t0)  # an unknown bot: refused by the engine, not the decoder
    history = write_jsonl(tmp_path / "h.jsonl", [*sweep_rows(t0), stranger], [b"garbage\n"])
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(
        replay_command,
        [
            "--config",
            str(cfg),
            "--input",
            str(history),
            "--out",
            str(out_dir),
            "--sweep",
            "defaults.session.loss_limit=-30,-1000",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    rep = json.loads((out_dir / "report.json").read_text())
    assert rep["schema"] == report.SCHEMA
    assert rep["input"]["rejected"] == {"malformed_json": 1, "unknown_bot": 1}
    dead = [json.loads(line) for line in (out_dir / "deadletters.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["original"], d["reencoded"]) for d in dead] == [
        ("malformed_json", "garbage", False),
        (
            "unknown_bot",
            json.dumps({k: v for k, v in stranger.items() if k != "type"}, separators=(",", ":")),
            True,
        ),
    ]
    assert [r["params"] for r in rep["sweep"]["rows"]] == [
        {"defaults.session.loss_limit": "-1000"},
        {"defaults.session.loss_limit": "-30"},
    ]
    assert rep["sweep"]["heatmap"] is None
    html = (out_dir / "report.html").read_text()
    assert "<script" not in html and "http" not in html.split("</style>")[0]
    assert "net PnL with the limits" in html


def test_docs_state_the_counterfactual_rule_word_for_word() -> None:
    from worker.replay.counterfactual import RULE

    docs = (Path(__file__).resolve().parents[2] / "docs" / "replay.md").read_text()
    assert [line for line in RULE if f"- {line}\n" not in docs] == []
