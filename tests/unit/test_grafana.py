"""The Grafana dashboard (deploy/grafana/riskgate.json) against what the worker exports.

A dashboard that names a metric the worker does not export, or groups by a
label the metric does not carry, shows an empty panel and nobody notices until
the day it was needed. So every PromQL query is checked against the worker's
own registry (``worker.metrics.Metrics``), with the names Prometheus really
scrapes: ``<name>_total`` for counters, ``_bucket``/``_sum``/``_count`` for
histograms, the bare name for gauges. The alert rules get the same check in
test_deploy.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "riskgate.json"
TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""
GRAFANA_VARIABLES = frozenset({"__rate_interval", "__interval", "__range"})

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
_NAME = re.compile(r"\briskgate_[a-z_]+")
_SELECTOR = re.compile(r"\b(riskgate_[a-z_]+)\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")

Obj = dict[str, Any]


def exported() -> dict[str, frozenset[str]]:
    """Every sample name the worker's registry exposes → the labels it carries."""
    samples: dict[str, frozenset[str]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            # prometheus_client keeps a family's type and label names on the wrapper.
            for suffix in _SUFFIXES[str(metric._type)]:
                extra = {"le"} if suffix == "_bucket" else set()
                samples[metric._name + suffix] = frozenset({*metric._labelnames, *extra})
    return samples


def _dashboard() -> Obj:
    dashboard: Obj = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(dashboard: Obj) -> Iterator[Obj]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def _targets(dashboard: Obj) -> list[tuple[str, Obj]]:
    return [
        (panel["title"], target)
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def _labels(matchers: str) -> set[str]:
    return {m.split("=")[0].rstrip("!~ ").strip() for m in matchers.split(",") if m.strip()}


def _grouped(expr: str) -> set[str]:
    return {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")} - {""}


def test_dashboard_queries_name_metrics_the_worker_exports() -> None:
    samples = exported()
    targets = _targets(_dashboard())
    assert len(targets) == 28
    for title, target in targets:
        names = set(_NAME.findall(target["expr"]))
        assert names, f"{title!r}: query names no riskgate metric: {target['expr']}"
        assert names <= samples.keys(), f"{title!r}: not exported: {names - samples.keys()}"


def test_dashboard_filters_and_groups_by_labels_the_metrics_carry() -> None:
    samples = exported()
    for title, target in _targets(_dashboard()):
        expr = target["expr"]
        for name, matchers in _SELECTOR.findall(expr):
            unknown = _labels(matchers) - samples[name] - TARGET_LABELS
            assert not unknown, f"{title!r}: {name} has no label {unknown}"
        carried = set().union(*(samples[n] for n in _NAME.findall(expr))) | TARGET_LABELS
        assert _grouped(expr) <= carried, f"{title!r}: grouped by {_grouped(expr) - carried}"
        shown = set(_LEGEND.findall(target.get("legendFormat", "")))
        assert shown <= (_grouped(expr) or carried), f"{title!r}: legend shows {shown}"


@pytest.mark.parametrize(
    ("sample", "grouping"),
    [
        ("riskgate_events_consumed_total", {"topic", "result"}),  # throughput by topic, result
        ("riskgate_consumer_lag", {"topic"}),
        ("riskgate_batch_seconds_bucket", {"le"}),  # batch latency quantiles
        ("riskgate_halts_total", {"gate", "kind"}),
        ("riskgate_decisions_total", {"gate"}),
        ("riskgate_deadletters_total", {"reason"}),
        ("riskgate_restore_seconds_sum", {"instance"}),  # restore time per replica
        ("riskgate_ready", {"instance"}),  # readiness per replica
    ],
)
def test_dashboard_shows_what_operators_asked_for(sample: str, grouping: set[str]) -> None:
    """Issue 14's list: each is a query on that sample grouped by those labels."""
    exprs = [t["expr"] for _, t in _targets(_dashboard())]
    assert any(sample in _NAME.findall(e) and _grouped(e) == grouping for e in exprs), sample


def test_dashboard_is_a_consistent_grafana_model() -> None:
    """Unique panel ids, one data-source variable for every query, every variable defined,
    panels on the 24-column grid without overlapping."""
    dashboard = _dashboard()
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    assert defined == {"datasource", "job", "instance"}
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']!r} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            used = {a or b for a, b in _VARIABLE.findall(target["expr"])}
            assert used - GRAFANA_VARIABLES <= defined, f"{panel['title']!r}: {used}"
            assert '{job=~"$job", instance=~"$instance"}' in target["expr"], panel["title"]


def test_deploy_readme_lists_the_dashboard() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "`grafana/riskgate.json`" in readme
