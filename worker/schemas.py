"""JSON Schema files for the wire messages (SPEC §3), generated into ``schemas/``.

Run ``python -m worker.schemas [DIR]`` after changing :mod:`worker.messages`; the
files are checked in and a unit test fails when they drift from the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from worker.messages import SCHEMA_TYPES

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "schemas"


def schema_text(kind: type[msgspec.Struct]) -> str:
    """One type's schema: pretty-printed, sorted keys, trailing newline."""
    schema: dict[str, Any] = msgspec.json.schema(kind)
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """File name -> content for every type in ``SCHEMA_TYPES``."""
    return {f"{kind.__name__}.json": schema_text(kind) for kind in SCHEMA_TYPES}


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else DEFAULT_DIR
    for path in write(directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
