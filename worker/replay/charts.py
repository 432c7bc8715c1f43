"""Static SVG charts for the replay report, drawn as text.

Why SVG and no plotting library: the report must open offline from one file,
forever. Inline SVG is part of HTML itself: no JavaScript to inline or to
break (a console error is a test failure), no CDN, no version drift, a few
kilobytes per chart, crisp at any zoom and printable. Hover text comes from
SVG ``<title>`` elements, which every browser shows natively. The cost is
no zoom/pan; the exact numbers are in the tables and in ``report.json``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape

from worker.messages import Gate

GATE_COLOURS: dict[str, str] = {
    "manual_halt": "#7b3294",
    "session_halt": "#d7301f",
    "circuit_breaker": "#fc8d59",
    "portfolio_daily_loss": "#b30000",
}
_ACTUAL = "#4575b4"
_KEPT = "#1a9850"


def fmt_time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_money(x: float) -> str:
    return f"{x:,.2f}"


class _Scale:
    """Linear map of a data range onto pixels (a flat range maps to the middle)."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float) -> None:
        self.lo, self.hi, self.p0, self.p1 = lo, hi, p0, p1

    def __call__(self, v: float) -> float:
        if self.hi == self.lo:
            return (self.p0 + self.p1) / 2
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def equity_chart(
    ts: Sequence[int],
    actual: Sequence[float],
    kept: Sequence[float],
    markers: Sequence[tuple[int, int, str, str]],
    span: tuple[int, int],
    *,
    width: int = 920,
    height: int = 260,
) -> str:
    """Two equity curves (actual, with the limits) with a band per halt (start, end, gate, what)."""
    left, right, top, bottom = 70, 10, 10, 28
    t0, t1 = span
    values = [0.0, *actual, *kept]
    x = _Scale(t0, t1, left, width - right)
    y = _Scale(min(values), max(values), height - bottom, top)
    parts = [_svg_open("equity", width, height, "equity curve")]
    for start, end, gate, what in markers:
        x0, x1 = x(start), x(end)
        colour = GATE_COLOURS.get(gate, "#999")
        parts.append(
            f'<rect class="halt" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1.5):.1f}" '
            f'height="{height - top - bottom}" fill="{colour}" fill-opacity="0.15">'
            f"<title>{escape(what)}</title></rect>"
            f'<line class="halt-start" x1="{x0:.1f}" x2="{x0:.1f}" y1="{top}" '
            f'y2="{height - bottom}" stroke="{colour}" stroke-width="1"/>'
        )
    zero = y(0.0)
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{zero:.1f}" y2="{zero:.1f}" '
        'stroke="#bbb" stroke-dasharray="3 3"/>'
    )
    for series, colour, name in ((actual, _ACTUAL, "actual"), (kept, _KEPT, "with-limits")):
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(ts, series, strict=True))
        parts.append(
            f'<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="1.6" '
            f'points="{points}"><title>{name}</title></polyline>'
        )
    lo, hi = min(values), max(values)
    parts.append(_axes(left, width - right, top, height - bottom, span=(t0, t1), values=(lo, hi)))
    parts.append("</svg>")
    return "".join(parts)


def timeline_chart(
    rows: Sequence[tuple[str, Sequence[tuple[int, int, Gate, str]]]],
    span: tuple[int, int],
    *,
    width: int = 920,
    row_height: int = 18,
) -> str:
    """One row per holder (``bot/symbol``), a bar per gate block."""
    left, right, top, bottom = 170, 10, 6, 28
    height = top + bottom + row_height * max(len(rows), 1)
    x = _Scale(span[0], span[1], left, width - right)
    parts = [_svg_open("timeline", width, height, "gate timeline")]
    for i, (label, blocks) in enumerate(rows):
        y0 = top + i * row_height
        parts.append(
            f'<text x="{left - 6}" y="{y0 + row_height * 0.7:.1f}" text-anchor="end" '
            f'font-size="11">{escape(label)}</text>'
        )
        for start, end, gate, what in blocks:
            x0, x1 = x(start), x(end)
            parts.append(
                f'<rect class="block" x="{x0:.1f}" y="{y0 + 2}" width="{max(x1 - x0, 1.5):.1f}" '
                f'height="{row_height - 4}" fill="{GATE_COLOURS.get(gate, "#999")}">'
                f"<title>{escape(what)}</title></rect>"
            )
    parts.append(_axes(left, width - right, top, height - bottom, span=span, values=None))
    parts.append("</svg>")
    return "".join(parts)


def heatmap(
    *,
    x_key: str,
    y_key: str,
    xs: Sequence[str],
    ys: Sequence[str],
    z: Sequence[Sequence[float | None]],
    metric: str,
) -> str:
    """A value per (x, y) combination, red (worst) to green (best), the value printed in it."""
    cell_w, cell_h, left, top = 110, 36, 150, 40
    width = left + cell_w * len(xs) + 10
    height = top + cell_h * len(ys) + 10
    values = [v for row in z for v in row if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    parts = [_svg_open("heatmap", width, height, f"{metric} by {x_key} and {y_key}")]
    parts.append(
        f'<text x="{left}" y="14" font-size="12">{escape(x_key)} →</text>'
        f'<text x="4" y="{top - 6}" font-size="12">{escape(y_key)} ↓</text>'
    )
    for i, label in enumerate(xs):
        parts.append(
            f'<text x="{left + cell_w * (i + 0.5):.0f}" y="{top - 8}" text-anchor="middle" '
            f'font-size="12">{escape(label)}</text>'
        )
    for j, label in enumerate(ys):
        yc = top + cell_h * j
        parts.append(
            f'<text x="{left - 8}" y="{yc + cell_h * 0.62:.0f}" text-anchor="end" '
            f'font-size="12">{escape(label)}</text>'
        )
        for i, value in enumerate(z[j]):
            share = 0.5 if value is None or hi == lo else (value - lo) / (hi - lo)
            fill = "#eee" if value is None else _red_to_green(share)
            text = "—" if value is None else fmt_money(value)
            parts.append(
                f'<rect class="cell" x="{left + cell_w * i}" y="{yc}" width="{cell_w - 2}" '
                f'height="{cell_h - 2}" fill="{fill}"><title>{escape(x_key)}={escape(xs[i])}, '
                f"{escape(y_key)}={escape(label)}: {text}</title></rect>"
                f'<text x="{left + cell_w * (i + 0.5):.0f}" y="{yc + cell_h * 0.62:.0f}" '
                f'text-anchor="middle" font-size="12">{text}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _red_to_green(share: float) -> str:
    """#d73027 (0) → #ffffbf (0.5) → #1a9850 (1)."""
    stops = ((0xD7, 0x30, 0x27), (0xFF, 0xFF, 0xBF), (0x1A, 0x98, 0x50))
    if share < 0.5:
        a, b, f = stops[0], stops[1], share * 2
    else:
        a, b, f = stops[1], stops[2], share * 2 - 1
    r, g, bl = (round(a[k] + (b[k] - a[k]) * f) for k in range(3))
    return f"#{r:02x}{g:02x}{bl:02x}"


def _svg_open(kind: str, width: int, height: int, label: str) -> str:
    return (
        f'<svg class="chart {kind}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}">'
    )


def _axes(
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    *,
    span: tuple[int, int],
    values: tuple[float, float] | None,
) -> str:
    parts = [
        f'<line x1="{x0}" x2="{x1}" y1="{y1}" y2="{y1}" stroke="#333"/>',
        f'<text x="{x0}" y="{y1 + 16}" font-size="11">{fmt_time(span[0])}</text>',
        f'<text x="{x1}" y="{y1 + 16}" font-size="11" text-anchor="end">{fmt_time(span[1])}</text>',
    ]
    if values is not None:
        lo, hi = values
        parts += [
            f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="#333"/>',
            f'<text x="{x0 - 4}" y="{y0 + 10}" font-size="11" text-anchor="end">'
            f"{fmt_money(hi)}</text>",
            f'<text x="{x0 - 4}" y="{y1}" font-size="11" text-anchor="end">{fmt_money(lo)}</text>',
        ]
    return "".join(parts)
