"""System programs the tests drive (Debian packages ``make system-deps`` installs).

A missing one skips the tests that need it on a developer's machine, and fails
them in CI (``CI=true``): coverage must not disappear without anyone noticing,
as with the security tests (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_program(name: str, *, package: str) -> str:
    """The path of ``name`` on PATH; else a skip here, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (`make system-deps` installs Debian's {package})"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path
