"""deploy/riskgate.toml shows every key issue 11 added, as a commented example that loads.

The example ships with the new controls commented out (all are off by default),
so nothing else would notice a key missing from it, misspelt or of the wrong type.
Here the issue-11 examples are uncommented and loaded; every field of the new
tables must be among them, with the values the comments promise.
"""

from __future__ import annotations

import re
from pathlib import Path

from worker.config import Config, CooldownConfig, OrdersConfig, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "riskgate.toml"
TABLES = re.compile(
    r"^# \[(defaults\.(portfolio|orders|cooldown)|bots\.alpha\.overrides\.BTCUSDT\.orders)\]$"
)
"""The commented tables of issue 11's controls: uncommented down to the next blank line."""
SINGLE_KEYS = ('# marks = "trading.marks"', "# include_unrealised = false")
"""Issue 11's commented keys inside tables that are set ([topics], [defaults.session])."""
PORTFOLIO_KEYS = {"include_unrealised", "max_drawdown", "max_daily_notional"}


def uncommented() -> tuple[str, dict[str, set[str]]]:
    """The example with issue 11's examples uncommented, and the keys each table shows."""
    lines: list[str] = []
    shown: dict[str, set[str]] = {}
    table: str | None = None
    for raw in EXAMPLE.read_text().splitlines():
        header = TABLES.match(raw)
        if header:
            table = header.group(1)
            shown[table] = set()
        elif not raw.strip():
            table = None
        line = raw
        if table is not None or raw.split("  ")[0].strip() in SINGLE_KEYS:
            line = raw.removeprefix("# ")
            if table is not None and "=" in line:
                shown[table].add(line.split("=")[0].strip())
        lines.append(line)
    return "\n".join(lines) + "\n", shown


def test_every_issue_11_key_has_a_commented_example_in_deploy_riskgate_toml() -> None:
    _, shown = uncommented()
    assert shown["defaults.orders"] == set(OrdersConfig.__struct_fields__)
    assert shown["defaults.cooldown"] == set(CooldownConfig.__struct_fields__)
    assert shown["defaults.portfolio"] == PORTFOLIO_KEYS
    assert shown["bots.alpha.overrides.BTCUSDT.orders"] == {"max_qty", "price_collar_bps"}


def test_the_uncommented_examples_load_with_the_values_they_document() -> None:
    text, _ = uncommented()
    cfg: Config = load_config(text=text, env={})
    assert cfg.topics.marks == "trading.marks"
    assert cfg.defaults.session.include_unrealised is False
    p = cfg.defaults.portfolio
    assert (p.include_unrealised, p.max_drawdown, p.max_daily_notional) == (True, 400.0, 1e6)
    assert cfg.defaults.orders == OrdersConfig(
        max_qty=50.0,
        max_notional=250_000.0,
        price_collar_bps=200.0,
        max_orders_per_sec=100,
        duplicate_window_ms=1000,
        mark_max_age_ms=60_000,
    )
    assert cfg.defaults.cooldown == CooldownConfig(after_loss_secs=900)
    btc = cfg.bots["alpha"].overrides["BTCUSDT"].orders
    assert (btc.max_qty, btc.price_collar_bps) == (2.0, 50.0)
    assert cfg.worker.on_unreadable_state == "halt"  # the deploy blocks unreadable state


def test_the_shipped_example_as_is_keeps_every_order_check_off() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg.defaults.orders == OrdersConfig()
    assert (cfg.defaults.portfolio.max_drawdown, cfg.defaults.cooldown.after_loss_secs) == (0, 0)
