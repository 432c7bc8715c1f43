"""A real headless browser for tests: Debian's chromium driven by Selenium 4.

Shared by the replay report test and the web console's tests. The binaries are
passed explicitly (``/usr/bin/chromium``, ``/usr/bin/chromedriver``, installed
by ``make test`` from Debian's ``chromium`` and ``chromium-driver``), so
Selenium Manager never downloads a browser or a driver. Use::

    with headless_chrome(tmp_path) as driver:
        driver.get(url)
        ...assertions...

Whatever fails inside the block (an assertion included) first saves a
screenshot and the page source into the artifacts directory, and the error
names where they are. ``console_errors`` is what a test asserts empty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("RISKGATE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RISKGATE_CHROMEDRIVER", "/usr/bin/chromedriver"))


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (path.is_file() and os.access(path, os.X_OK)) and shutil.which(str(path)) is None:
            return f"{path} not installed (apt-get install chromium chromium-driver: make test)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


def require_browser() -> None:
    """Skip when the browser is missing; in CI that is a failure, not a skip."""
    why = missing()
    if why is None:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"browser tests cannot run in CI: {why}")
    pytest.skip(why)


@contextlib.contextmanager
def headless_chrome(
    artifacts: Path, *, width: int = 1280, height: int = 900, name: str = "failure"
) -> Iterator[Any]:
    """A headless chromium WebDriver with its console log kept; screenshot on any failure."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    require_browser()
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in containers and CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    except BaseException as exc:
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = artifacts / f"{name}.png"
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(shot))
            (artifacts / f"{name}.html").write_text(driver.page_source)
            exc.add_note(f"browser screenshot: {shot} (page source beside it)")
        raise
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """Console entries at SEVERE level (JavaScript errors, failed loads) since the last call."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def full_page_screenshot(driver: Any, path: Path, width: int = 1280) -> Path:
    """Resize the window to the whole page, then screenshot it (for docs and artifacts)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, int(height) + 120)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path
