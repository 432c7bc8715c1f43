"""Sweep: the same history under every combination of swept limits, in parallel processes.

``--sweep defaults.breaker.loss_limit=3,4,5`` names a config key by its dotted
path and the values to try; several ``--sweep`` give their product. Each
combination is the config file plus that combination as ``RISKGATE_*``
overrides (the same path as environment overrides, so every key the config
accepts can be swept and bad values fail the same way, before any work).

Processes, not threads: a replay is pure Python CPU work, so only processes
use several cores. The records are read once in the parent and inherited by
forked workers (no pickling of a million events); a worker sends back only
the combination's summaries. Each worker ignores Ctrl-C and polls a shared stop
flag instead, so an interrupted sweep still returns every partial result.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from worker.config import ENV_PREFIX, Config, ConfigError, load_config
from worker.replay import report
from worker.replay.inputs import InputRecord
from worker.replay.run import replay

METRIC = "net_pnl_with_limits"

SweepSpec = list[tuple[str, list[str]]]


def parse_sweep(args: Sequence[str]) -> SweepSpec:
    """``KEY=V1,V2,...`` arguments → ``[(key, [values])]``, in the order given."""
    spec: SweepSpec = []
    for arg in args:
        key, sep, values = arg.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not items:
            raise ConfigError(
                f"--sweep {arg!r}: use KEY=V1,V2,... (e.g. defaults.breaker.loss_limit=3,4)"
            )
        if any(key.strip() == k for k, _ in spec):
            raise ConfigError(f"--sweep {key.strip()!r} given twice")
        spec.append((key.strip(), items))
    return spec


def combinations(spec: SweepSpec) -> list[dict[str, str]]:
    keys = [k for k, _ in spec]
    return [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*(v for _, v in spec))
    ]


def load_with(
    config_path: Path, overrides: Mapping[str, str], env: Mapping[str, str] | None = None
) -> Config:
    """The config file plus ``overrides`` (dotted keys) on top of the environment's overrides."""
    merged = dict(os.environ if env is None else env)
    for key, value in overrides.items():
        merged[ENV_PREFIX + "__".join(key.split("."))] = value
    return load_config(config_path, env=merged)


# -- the worker processes ---------------------------------------------------------------

_records: Sequence[InputRecord] = ()
_stop: Any = None
_done: Any = None


def _init(stop: Any, done: Any) -> None:
    global _stop, _done
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; we poll ``_stop``
    _stop, _done = stop, done


def _job(
    config_path: Path, overrides: dict[str, str], with_origin: bool, end_ms: int | None, full: bool
) -> dict[str, Any]:
    last = 0

    def progress(seen: int) -> None:
        nonlocal last
        with _done.get_lock():
            _done.value += seen - last
        last = seen

    result = replay(
        load_with(config_path, overrides),
        _records,
        with_origin=with_origin,
        end_ms=end_ms,
        stop=_stop.is_set,
        progress=progress,
    )
    built = report.build(result, config_path=str(config_path), sources=[], overrides=overrides)
    if full:
        return {"report": built, "dead_letters": result.dead_letters()}
    return {
        "params": overrides,
        "overall": built["overall"],
        "bots": built["bots"],
        "complete": built["input"]["complete"],
    }


def run_sweep(
    config_path: Path,
    records: Sequence[InputRecord],
    spec: SweepSpec,
    *,
    workers: int,
    with_origin: bool = False,
    end_ms: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Replay the base config and every combination: (base report, sweep section, the base
    run's dead letters).

    ``on_progress(done, total)`` is called from this process a few times a
    second (records replayed over all jobs); ``should_stop`` is polled as often
    and, once true, tells every worker to stop where it is.
    """
    global _records  # noqa: PLW0603 - inherited by the forked workers, see the module doc
    combos = combinations(spec)
    for combo in combos:  # every combination's config is valid before any work starts
        load_with(config_path, combo)
    ctx = mp.get_context("fork")
    stop, done = ctx.Event(), ctx.Value("q", 0)
    if should_stop():  # asked before any work: every job stops at its first look
        stop.set()
    _records = records
    total = len(records) * (len(combos) + 1)
    gc.freeze()  # the inherited records stay shared: no child's collector writes to their pages
    try:
        with ctx.Pool(max(1, workers), initializer=_init, initargs=(stop, done)) as pool:
            base = pool.apply_async(_job, (config_path, {}, with_origin, end_ms, True))
            jobs = [
                pool.apply_async(_job, (config_path, combo, with_origin, end_ms, False))
                for combo in combos
            ]
            while not all(j.ready() for j in (base, *jobs)):
                if should_stop():
                    stop.set()
                if on_progress is not None:
                    on_progress(done.value, total)
                time.sleep(0.1)
            if on_progress is not None:
                on_progress(done.value, total)
            base_out = base.get()
            rows = [j.get() for j in jobs]
    finally:
        _records = ()
        gc.unfreeze()
    return base_out["report"], section(spec, rows), base_out["dead_letters"]


def section(spec: SweepSpec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``sweep``: rows ranked best first, and a heatmap for two keys."""
    ranked = sorted(
        rows,
        key=lambda r: (
            -r["overall"][METRIC],
            r["overall"]["worst_intraday_drawdown_with_limits"],
        ),
    )
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    keys = [k for k, _ in spec]
    out: dict[str, Any] = {
        "keys": keys,
        "metric": METRIC,
        "complete": all(r["complete"] for r in rows),
        "rows": ranked,
        "heatmap": None,
    }
    if len(spec) == 2:
        (x_key, xs), (y_key, ys) = spec
        value = {(r["params"][x_key], r["params"][y_key]): r["overall"][METRIC] for r in rows}
        out["heatmap"] = {
            "x_key": x_key,
            "y_key": y_key,
            "x": xs,
            "y": ys,
            "z": [[value.get((x, y)) for x in xs] for y in ys],
        }
    return out
