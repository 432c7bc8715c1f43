"""Per-module mutation score from mutmut's own result files (``mutants/**/*.py.meta``).

``mutmut export-cicd-stats`` gives one total over every configured module, counting
mutants a filtered run never checked as not killed; this splits it by module and
keeps "not checked" apart, so a partial run (``make mutate MUTANTS=...``) reads
right. Usage: ``python -m tests.support.mutation_score [worker.core.gates* ...]`` (the
mutant-name patterns of ``mutmut run``, or none for every module).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 152, 255, 37}
"""mutmut's exit codes for a killed mutant (a test failed, pytest error, timeout, type check)."""


def scores(root: Path) -> dict[str, dict[str, int]]:
    """killed / survived / not_checked / other counts per module path under ``root``."""
    out: dict[str, dict[str, int]] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        row = out.setdefault(str(meta.relative_to(root))[: -len(".meta")], {})
        for code in codes.values():
            kind = (
                "not_checked"
                if code is None
                else "killed"
                if code in KILLED
                else "survived"
                if code == 0
                else "other"
            )
            row[kind] = row.get(kind, 0) + 1
    return out


def main(argv: list[str]) -> None:
    rows = scores(Path("mutants"))
    wanted = [p.rstrip("*").rstrip(".").replace(".", "/") for p in argv]
    total: dict[str, int] = {}
    for path, row in rows.items():
        if wanted and not any(path.startswith(w) for w in wanted):
            continue
        print(_line(path, row))
        for kind, n in row.items():
            total[kind] = total.get(kind, 0) + n
    print(_line("total", total))


def _line(name: str, row: dict[str, int]) -> str:
    killed, survived, other = row.get("killed", 0), row.get("survived", 0), row.get("other", 0)
    checked = killed + survived + other
    share = f"{100 * killed / checked:.1f}%" if checked else "-"
    return (
        f"{name}: {killed}/{checked} checked killed ({share}), {survived} survived, "
        f"{other} other (no tests, suspicious), {row.get('not_checked', 0)} not checked"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
