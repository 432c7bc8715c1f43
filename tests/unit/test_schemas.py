"""The checked-in JSON Schema files match the message types (``python -m worker.schemas``)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from worker import schemas
from worker.messages import SCHEMA_TYPES, Fill

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
FIX = "schemas are stale: run `python -m worker.schemas` and commit schemas/"


def test_every_schema_type_has_a_checked_in_file() -> None:
    expected = {f"{kind.__name__}.json" for kind in SCHEMA_TYPES}
    present = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert expected - present == set(), FIX
    assert present - expected == set(), f"stray schema files; {FIX}"


@pytest.mark.parametrize("kind", SCHEMA_TYPES, ids=lambda k: k.__name__)
def test_checked_in_schema_matches_the_code(kind: type[msgspec.Struct]) -> None:
    path = SCHEMA_DIR / f"{kind.__name__}.json"
    assert path.exists(), FIX
    assert path.read_text(encoding="utf-8") == schemas.schema_text(kind), FIX


def test_generated_files_are_stable_and_pretty(tmp_path: Path) -> None:
    first = schemas.write(tmp_path)
    contents = {p.name: p.read_text() for p in first}
    assert schemas.main([str(tmp_path)]) == 0
    assert {p.name: p.read_text() for p in tmp_path.glob("*.json")} == contents
    text = contents["Fill.json"]
    assert text.endswith("}\n")
    doc = json.loads(text)
    assert json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text


def test_schema_describes_the_constraints() -> None:
    doc = json.loads((SCHEMA_DIR / "Fill.json").read_text())
    fill = doc["$defs"]["Fill"]
    assert set(fill["required"]) == {
        "fill_id",
        "bot",
        "symbol",
        "side",
        "qty",
        "price",
        "fee",
        "ts",
    }
    assert fill["properties"]["qty"]["exclusiveMinimum"] == 0.0
    assert fill["properties"]["fee"]["minimum"] == 0.0
    assert fill["properties"]["side"]["enum"] == ["buy", "sell"]
    assert msgspec.json.schema(Fill) == doc


def test_drift_is_detected(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    (tmp_path / "Fill.json").write_text((tmp_path / "Fill.json").read_text().replace("qty", "q"))
    rendered = schemas.render()
    stale = [n for n, text in rendered.items() if (tmp_path / n).read_text() != text]
    assert stale == ["Fill.json"]
