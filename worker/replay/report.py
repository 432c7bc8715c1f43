"""The replay's outputs: ``report.json`` (every number), ``report.html`` (one offline file)
and the one-screen terminal summary. The JSON schema is documented in docs/replay.md.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import msgspec

from worker.replay.charts import equity_chart, fmt_money, fmt_time, heatmap, timeline_chart
from worker.replay.counterfactual import RULE, Book, Segment
from worker.replay.run import ReplayResult

SCHEMA = "riskgate.replay.report/1"
MAX_POINTS = 2000
"""Equity points kept per bot in the report (the curves, not the numbers, are downsampled)."""
MAX_TIMELINE_ROWS = 80


def summary(book: Book, halted: Iterable[str], segments: Iterable[Segment]) -> dict[str, Any]:
    """The counterfactual numbers of one book (a bot, or everyone)."""
    halts: Counter[str] = Counter(halted)
    halted_ms: Counter[str] = Counter()
    for seg in segments:
        halted_ms[seg.gate] += (seg.end_ms or seg.start_ms) - seg.start_ms
    return {
        "trades": book.trades,
        "blocked_trades": book.blocked_trades,
        "net_pnl_actual": book.actual,
        "net_pnl_with_limits": book.kept,
        "pnl_avoided": book.avoided,
        "pnl_forgone": book.forgone,
        "effect": book.kept - book.actual,
        "halts": dict(sorted(halts.items())),
        "halted_ms": dict(sorted(halted_ms.items())),
        "worst_intraday_drawdown_actual": book.dd_actual.worst,
        "worst_intraday_drawdown_with_limits": book.dd_kept.worst,
    }


def build(
    result: ReplayResult,
    *,
    config_path: str,
    sources: Sequence[str],
    overrides: Mapping[str, str] | None = None,
    sweep: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the HTML shows, as plain JSON values."""
    ledger = result.ledger
    segments = ledger.blocks.segments
    halted_gates: dict[str, list[str]] = {}
    for h in result.halts:
        if h.kind == "halted":
            halted_gates.setdefault(h.bot, []).append(h.gate)
    bots = sorted(set(ledger.books) | set(halted_gates) | set(result.decisions))
    per_bot = {
        bot: summary(
            ledger.books.get(bot) or Book(keep_series=False),
            halted_gates.get(bot, ()),
            (s for s in segments if s.bot == bot),
        )
        for bot in bots
    }
    return {
        "schema": SCHEMA,
        "config": {"path": config_path, "overrides": dict(overrides or {})},
        "input": {
            "sources": list(sources),
            "records": result.total,
            "replayed": result.seen,
            "applied": result.applied,
            "duplicates": result.duplicates,
            "rejected": dict(sorted(result.rejected.items())),
            "start_ms": result.start_ms,
            "end_ms": result.end_ms,
            "complete": not result.interrupted,
        },
        "rule": list(RULE),
        "overall": summary(
            ledger.overall, [g for gs in halted_gates.values() for g in gs], segments
        ),
        "bots": per_bot,
        "decisions": {
            bot: dict(sorted(counts.items())) for bot, counts in sorted(result.decisions.items())
        },
        "halts": [msgspec.to_builtins(h) for h in result.halts],  # as the worker publishes
        "timeline": [
            {
                "bot": s.bot,
                "symbol": s.symbol,
                "gate": s.gate,
                "start_ms": s.start_ms,
                "end_ms": s.end_ms,
                "open": s.open,
            }
            for s in segments
        ],
        "equity": {bot: _downsample(book.series) for bot, book in sorted(ledger.books.items())},
        "sweep": dict(sweep) if sweep is not None else None,
    }


def _downsample(
    series: tuple[list[int], list[float], list[float]] | None,
) -> dict[str, list[Any]]:
    if series is None:
        return {"t": [], "actual": [], "with_limits": []}
    ts, actual, kept = series
    step = max(1, -(-len(ts) // MAX_POINTS))
    idx = list(range(0, len(ts), step))
    if ts and idx[-1] != len(ts) - 1:
        idx.append(len(ts) - 1)
    return {
        "t": [ts[i] for i in idx],
        "actual": [actual[i] for i in idx],
        "with_limits": [kept[i] for i in idx],
    }


def write(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``report.json`` and ``report.html`` in ``out_dir`` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    html_path = out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    html_path.write_text(render_html(report))
    return json_path, html_path


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 9px;border-bottom:1px solid #eee;
text-align:right}th:first-child,td:first-child{text-align:left}.partial{background:#fee;
padding:8px;border:1px solid #d73027}.legend span{margin-right:14px}.rule li{margin:3px 0}
svg.chart{display:block;margin:6px 0;background:#fcfcfc;border:1px solid #eee}
"""

_ROWS = (
    # (summary key, label in the HTML table, short label in the terminal, type)
    ("trades", "trades", "trades", int),
    ("blocked_trades", "trades prevented", "prevented", int),
    ("net_pnl_actual", "net PnL, actual", "net actual", float),
    ("net_pnl_with_limits", "net PnL with the limits", "net w/ limits", float),
    ("pnl_avoided", "losses avoided", "avoided", float),
    ("pnl_forgone", "wins forgone", "forgone", float),
    ("effect", "effect (with - actual)", "effect", float),
    ("worst_intraday_drawdown_actual", "worst intraday drawdown, actual", "worst DD", float),
    (
        "worst_intraday_drawdown_with_limits",
        "worst intraday drawdown with the limits",
        "worst DD w/ lim",
        float,
    ),
)
"""The counterfactual rows, once for both renderings, so the HTML report and the
terminal summary cannot list different figures."""


def _figure(value: Any, kind: type) -> str:
    """One cell of a counterfactual row, formatted the same in both renderings."""
    return fmt_money(value) if kind is float else f"{value:,}"


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: inline CSS and SVG, no script, no external resource."""
    inp = report["input"]
    span = (inp["start_ms"] or 0, inp["end_ms"] or inp["start_ms"] or 0)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>riskgate replay report</title><style>",
        _CSS,
        "</style></head><body><h1>riskgate replay</h1>",
        f"<p>Config <code>{escape(report['config']['path'])}</code>",
        _overrides(report["config"]["overrides"]),
        f"; {inp['replayed']:,} of {inp['records']:,} records from "
        f"{escape(', '.join(inp['sources']))}; {fmt_time(span[0])} → {fmt_time(span[1])} UTC. "
        f"Applied {inp['applied']:,}, duplicates {inp['duplicates']:,}, rejected "
        f"{sum(inp['rejected'].values()):,} {escape(json.dumps(inp['rejected']))}.</p>",
    ]
    if not inp["complete"]:
        parts.append("<p class='partial'>Partial report: the replay was interrupted.</p>")
    parts.append(_counterfactual_table(report))
    parts.append("<h2>Equity per bot</h2><p class='legend'>")
    parts.append(
        "<span style='color:#4575b4'>━ actual</span>"
        "<span style='color:#1a9850'>━ with the limits</span>"
        "<span>shaded: a gate blocking the bot (hover for which)</span></p>"
    )
    by_bot: dict[str, list[tuple[int, int, str, str]]] = {}
    for seg in report["timeline"]:
        by_bot.setdefault(seg["bot"], []).append(_block(seg))
    for bot, series in report["equity"].items():
        parts.append(f"<h3>{escape(bot)}</h3>")
        parts.append(
            equity_chart(
                series["t"], series["actual"], series["with_limits"], by_bot.get(bot, []), span
            )
        )
    parts.append(_timeline(report, span))
    if report["sweep"]:
        parts.append(_sweep(report["sweep"]))
    parts.append("<h2>The counterfactual rule</h2><ul class='rule'>")
    parts.extend(f"<li>{escape(line)}</li>" for line in report["rule"])
    parts.append("</ul><p>Every number here is in <code>report.json</code> (schema ")
    parts.append(f"<code>{SCHEMA}</code>, docs/replay.md).</p></body></html>\n")
    return "".join(parts)


def _overrides(overrides: Mapping[str, str]) -> str:
    if not overrides:
        return ""
    return " with " + escape(", ".join(f"{k}={v}" for k, v in overrides.items()))


def _block(seg: Mapping[str, Any]) -> tuple[int, int, str, str]:
    holder = f"{seg['bot']}/{seg['symbol'] or '*'}"
    end = "still blocking at the end" if seg["open"] else f"until {fmt_time(seg['end_ms'])}"
    what = f"{holder} {seg['gate']} from {fmt_time(seg['start_ms'])} {end}"
    return seg["start_ms"], seg["end_ms"], seg["gate"], what


def _counterfactual_table(report: Mapping[str, Any]) -> str:
    columns = [("overall", report["overall"]), *report["bots"].items()]
    head = "".join(f"<th>{escape(name)}</th>" for name, _ in columns)
    rows = [f"<h2>Counterfactual</h2><table class='counterfactual'><tr><th></th>{head}</tr>"]
    for key, label, _, kind in _ROWS:
        cells = "".join(f"<td>{_figure(s[key], kind)}</td>" for _, s in columns)
        rows.append(f"<tr><td>{label}</td>{cells}</tr>")
    gates = sorted({g for _, s in columns for g in s["halts"]})
    for gate in gates:
        cells = "".join(
            f"<td>{s['halts'].get(gate, 0)} / {s['halted_ms'].get(gate, 0) / 3_600_000:.2f} h</td>"
            for _, s in columns
        )
        rows.append(f"<tr><td>{gate}: halts / time halted</td>{cells}</tr>")
    rows.append("</table>")
    if report["decisions"]:
        rows.append("<table class='decisions'><tr><th>bot</th><th>intent decisions</th></tr>")
        rows.extend(
            f"<tr><td>{escape(bot)}</td><td>{escape(json.dumps(counts))}</td></tr>"
            for bot, counts in report["decisions"].items()
        )
        rows.append("</table>")
    return "".join(rows)


def _timeline(report: Mapping[str, Any], span: tuple[int, int]) -> str:
    rows: dict[str, list[tuple[int, int, Any, str]]] = {}
    for seg in report["timeline"]:
        rows.setdefault(f"{seg['bot']}/{seg['symbol'] or '*'}", []).append(_block(seg))
    shown = sorted(rows.items())[:MAX_TIMELINE_ROWS]
    more = len(rows) - len(shown)
    note = f"<p>{more} more holders in report.json.</p>" if more > 0 else ""
    if not shown:
        return "<h2>Gate timeline</h2><p>No gate blocked during the replay.</p>"
    return "<h2>Gate timeline</h2>" + timeline_chart(shown, span) + note


def _sweep(sweep: Mapping[str, Any]) -> str:
    keys = sweep["keys"]
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    parts = [
        f"<h2>Sweep: {len(sweep['rows'])} combinations, ranked by {escape(sweep['metric'])}</h2>",
        f"<table class='sweep'><tr><th>rank</th>{head}<th>net with limits</th><th>effect</th>"
        "<th>avoided</th><th>forgone</th><th>halts</th><th>worst DD with limits</th></tr>",
    ]
    for row in sweep["rows"]:
        s = row["overall"]
        cells = "".join(f"<td>{escape(str(row['params'][k]))}</td>" for k in keys)
        parts.append(
            f"<tr><td>{row['rank']}</td>{cells}<td>{fmt_money(s['net_pnl_with_limits'])}</td>"
            f"<td>{fmt_money(s['effect'])}</td><td>{fmt_money(s['pnl_avoided'])}</td>"
            f"<td>{fmt_money(s['pnl_forgone'])}</td><td>{sum(s['halts'].values())}</td>"
            f"<td>{fmt_money(s['worst_intraday_drawdown_with_limits'])}</td></tr>"
        )
    parts.append("</table>")
    hm = sweep.get("heatmap")
    if hm:
        parts.append(
            heatmap(
                x_key=hm["x_key"],
                y_key=hm["y_key"],
                xs=hm["x"],
                ys=hm["y"],
                z=hm["z"],
                metric=sweep["metric"],
            )
        )
    return "".join(parts)


TERMINAL_BOTS = 4
"""Bots shown beside the overall column (those the limits changed most): one screen wide."""


def terminal_summary(report: Mapping[str, Any]) -> Any:
    """The one-screen summary (a rich renderable): overall, the most affected bots, the
    sweep's top five."""
    from rich.console import Group
    from rich.table import Table

    inp = report["input"]
    title = "riskgate replay" + ("" if inp["complete"] else " (PARTIAL: interrupted)")
    table = Table(title=title, caption=_caption(report))
    table.add_column("")
    bots = sorted(report["bots"].items(), key=lambda kv: -abs(kv[1]["effect"]))
    columns = [("overall", report["overall"]), *bots[:TERMINAL_BOTS]]
    for name, _ in columns:
        table.add_column(name, justify="right")
    for key, _, label, kind in _ROWS:
        table.add_row(
            label,
            *(_figure(s[key], kind) for _, s in columns),
        )
    table.add_row("halts", *(str(sum(s["halts"].values())) for _, s in columns))
    sweep = report.get("sweep")
    if not sweep:
        return table
    ranking = Table(title=f"sweep: best of {len(sweep['rows'])} by {sweep['metric']}")
    ranking.add_column("rank", justify="right")
    for key in sweep["keys"]:
        ranking.add_column(key, justify="right")
    ranking.add_column("net w/ limits", justify="right")
    ranking.add_column("effect", justify="right")
    for row in sweep["rows"][:5]:
        s = row["overall"]
        ranking.add_row(
            str(row["rank"]),
            *(str(row["params"][k]) for k in sweep["keys"]),
            fmt_money(s["net_pnl_with_limits"]),
            fmt_money(s["effect"]),
        )
    return Group(table, ranking)


def _caption(report: Mapping[str, Any]) -> str:
    inp = report["input"]
    more = len(report["bots"]) - TERMINAL_BOTS
    rejected = sum(inp["rejected"].values())
    return (
        f"{inp['replayed']:,} records, {rejected:,} rejected, {inp['duplicates']:,} duplicates"
        + (f"; {more} more bots in report.json" if more > 0 else "")
    )
