"""The wheel users install: ``python -m build`` gives an sdist and a wheel named riskgate,
and ``riskgate demo`` runs from that wheel installed in a fresh venv.

Built from a copy of the files the package is made of (the checkout is shared
and must not get build/ or egg-info litter), without build isolation (no
download of a build backend each run: ``setuptools`` and ``wheel`` are dev
extras). The wheel goes into a new venv without its dependencies
(``--no-deps``); the venv then sees this venv's site-packages through a
``.pth`` line, which adds the directory but runs none of its ``.pth`` files,
so the editable install of the checkout stays invisible. ``venv
--system-site-packages`` would not do: it exposes the base interpreter's
packages, not this venv's. Every command runs from an empty directory, and
the test checks that ``worker`` is imported from the new venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FILES = ("pyproject.toml", "README.md")


def run(args: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("RISKGATE_")
    }
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
WHEEL = f"riskgate-{VERSION}-py3-none-any.whl"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` of a copy of the package's files: the dist directory."""
    tmp = tmp_path_factory.mktemp("wheel")
    source, dist, elsewhere = tmp / "src", tmp / "dist", tmp / "elsewhere"
    source.mkdir()
    elsewhere.mkdir()
    for name in PACKAGE_FILES:
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "worker", source / "worker", ignore=shutil.ignore_patterns("__pycache__")
    )
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source], elsewhere, 120)
    return dist


def wheel_names(dist: Path) -> set[str]:
    with zipfile.ZipFile(dist / WHEEL) as archive:
        return set(archive.namelist())


def test_build_gives_an_sdist_and_a_wheel_named_riskgate(built: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == [WHEEL, f"riskgate-{VERSION}.tar.gz"]
    with zipfile.ZipFile(built / WHEEL) as archive:
        entry_points = archive.read(f"riskgate-{VERSION}.dist-info/entry_points.txt").decode()
    assert "[pytest11]\nriskgate = worker.testing.plugin" in entry_points
    assert "[console_scripts]\nriskgate = worker.cli:main" in entry_points
    names = wheel_names(built)
    assert {"worker/cli.py", "worker/kafka/broker.py", "worker/testing/plugin.py"} <= names
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_lacked_the_console_static_files_the_demo_serves(built: Path) -> None:
    """Regression: a wheel without package data crashed `riskgate demo` at start
    (aiohttp: '.../worker/console/static' does not exist)."""
    static = {
        str(p.relative_to(ROOT)) for p in (ROOT / "worker/console/static").iterdir() if p.is_file()
    }
    assert static
    assert static <= wheel_names(built)


def test_installed_wheel_runs_the_demo_on_the_embedded_broker(built: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], elsewhere, 60)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    run([*pip, str(built / WHEEL)], elsewhere, 120)
    # Only now: pip must not see the checkout's editable riskgate while installing.
    where_site = run([python, "-c", "import site; print(site.getsitepackages()[0])"], elsewhere, 30)
    site = Path(where_site.stdout.strip())
    (site / "riskgate-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = run([python, "-c", "import worker; print(worker.__file__)"], elsewhere, 30)
    assert Path(where.stdout.strip()) == site / "worker" / "__init__.py"

    demo = run([venv / "bin" / "riskgate", "demo", "--duration", "5"], elsewhere, 90)
    assert re.search(r"demo finished: \d+ symbols, \d+ halt events published", demo.stdout), (
        demo.stdout + demo.stderr
    )
