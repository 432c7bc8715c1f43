"""report.html in a real headless browser (Debian's chromium): it renders offline, with no
console error, no network request, and charts that are not empty."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.browser import console_errors, full_page_screenshot, headless_chrome
from worker.config import load_config
from worker.messages import TradeOutcome
from worker.replay import report
from worker.replay.inputs import in_time_order, read_file
from worker.replay.run import replay
from worker.replay.sweep import parse_sweep, section

DAY = 86_400_000
MIN = 60_000
T0 = 20_254 * DAY + 20 * 3_600_000

CONFIG = """
[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 3
window_secs = 3600
cooldown_secs = 900
[bots.a]
[bots.b]
"""


def history(tmp_path: Path) -> Path:
    grosses = [-20.0, -15.0, 10.0, -30.0, 25.0, -5.0, -8.0, -9.0, 40.0, -12.0] * 3
    rows = [
        TradeOutcome(
            outcome_id=f"{bot}{i}",
            bot=bot,
            symbol=sym,
            gross_pnl=g * (1 if bot == "a" else 0.7),
            fee=0.5,
            ts=T0 + i * 17 * MIN + (0 if bot == "a" else 7 * MIN),
        )
        for i, g in enumerate(grosses)
        for bot, sym in (("a", "BTC"), ("b", "ETH"))
    ]
    path = tmp_path / "outcomes.jsonl"
    path.write_text("".join(json.dumps({"type": "outcome", **_fields(r)}) + "\n" for r in rows))
    return path


def _fields(o: TradeOutcome) -> dict[str, Any]:
    return {f: getattr(o, f) for f in o.__struct_fields__}


def test_report_html_renders_offline_without_console_errors_and_with_charts(tmp_path: Path) -> None:
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(CONFIG)
    records = in_time_order([read_file(history(tmp_path))])
    result = replay(load_config(cfg_path, env={}), records)
    built = report.build(result, config_path=str(cfg_path), sources=["outcomes.jsonl"])
    spec = parse_sweep(["defaults.session.loss_limit=-50,-100", "defaults.breaker.loss_limit=0,3"])
    rows = [
        {"params": p, "overall": built["overall"], "bots": built["bots"], "complete": True}
        for p in (
            dict(zip([k for k, _ in spec], v, strict=True))
            for v in [("-50", "0"), ("-50", "3"), ("-100", "0"), ("-100", "3")]
        )
    ]
    built["sweep"] = section(spec, rows)
    _, html = report.write(built, tmp_path / "out")
    assert built["timeline"], "the history must halt something, or the timeline test is empty"

    with headless_chrome(tmp_path / "artifacts") as driver:
        driver.get(html.as_uri())
        assert driver.title == "riskgate replay report"
        assert console_errors(driver) == []
        # self-contained: the page loaded nothing beyond itself
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        curves = driver.find_elements("css selector", "svg.equity polyline.actual")
        assert len(curves) == 2  # one equity chart per bot
        for curve in curves:
            points = curve.get_attribute("points").split()
            assert len(points) == len(built["equity"]["a"]["t"])
            assert curve.size["width"] > 100 and curve.size["height"] > 10
        blocks = driver.find_elements("css selector", "svg.timeline rect.block")
        assert len(blocks) == len(built["timeline"])
        assert all(b.size["width"] >= 1 for b in blocks)
        cells = driver.find_elements("css selector", "svg.heatmap rect.cell")
        assert len(cells) == 4
        ranked = driver.find_elements("css selector", "table.sweep tr")
        assert len(ranked) == 1 + 4
        full_page_screenshot(driver, tmp_path / "artifacts" / "report.png")
        assert (tmp_path / "artifacts" / "report.png").stat().st_size > 10_000
