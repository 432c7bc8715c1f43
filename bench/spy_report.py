"""Where the time went: a summary of a ``py-spy record --format raw`` profile.

The end-to-end benches take ``--py-spy OUT`` and record the worker process
(``--idle``: waiting in ``select`` counts too, so the loop's idle share shows).
This reads the collapsed stacks and prints, as a share of all samples:

- by area: the file a sample's innermost *interesting* frame belongs to,
  grouped (riskgate's modules one by one; aiokafka, asyncio, msgspec, ... whole);
- the top functions by self time (the leaf frame) and by inclusive time (on
  the stack at all, counted once per sample).

    .venv/bin/python -m bench.spy_report OUT [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
_AREAS = (
    ("aiokafka/", "aiokafka"),
    ("asyncio/", "asyncio"),
    ("msgspec", "msgspec"),
    ("prometheus_client/", "prometheus_client"),
    ("structlog/", "structlog"),
    ("tenacity/", "tenacity"),
    ("selectors.py", "select (idle)"),
    ("aiohttp/", "aiohttp"),
)


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """(frames outermost first as (function, file), samples) per collapsed stack line."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw.strip())
            frames.append((m["func"], m["file"]) if m else (raw.strip(), "?"))
        stacks.append((frames, int(count)))
    return stacks


def area(file: str) -> str:
    for needle, name in _AREAS:
        if needle in file:
            return name
    if "/worker/" in file or file.startswith("worker/"):
        return "worker/" + file.rsplit("/worker/", 1)[-1].removeprefix("worker/")
    return "other: " + file.rsplit("/", 1)[-1]


def label(frame: tuple[str, str]) -> str:
    func, file = frame
    short = file.rsplit("/worker/", 1)[-1] if "/worker/" in file else file.rsplit("/", 1)[-1]
    return f"{func} ({short})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    stacks = parse(args.profile)
    total = sum(n for _, n in stacks)
    if not total:
        raise SystemExit("no samples")
    areas: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        areas[area(frames[-1][1])] += n
        own[label(frames[-1])] += n
        for name in {label(f) for f in frames}:
            inclusive[name] += n
    print(f"{total:,} samples")
    print("by area (innermost frame's file):")
    for name, n in areas.most_common():
        print(f"  {n / total:6.1%}  {name}")
    print(f"top {args.top} by self time:")
    for name, n in own.most_common(args.top):
        print(f"  {n / total:6.1%}  {name}")
    print(f"top {args.top} by inclusive time:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {n / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
