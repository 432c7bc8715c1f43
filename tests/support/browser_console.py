"""A real browser for the console's tests: Debian's chromium, headless, through Selenium.

The browser and its driver are the system's (``/usr/bin/chromium``,
``/usr/bin/chromedriver``, installed by ``make test``) and are passed to
Selenium explicitly, so Selenium Manager never downloads anything. Where they
are missing the tests skip saying so, and fail under CI.

Selenium blocks, while the console and the worker under test run on the
test's event loop: :class:`Page` runs every browser call in a thread
(``await page.call(...)``) so the loop keeps serving them. A failing test
leaves a screenshot and the page's HTML in ``test-artifacts/console/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"

T = TypeVar("T")


def require_browser() -> None:
    """Skip (fail under CI) when the system browser or driver is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    reason = f"missing {', '.join(missing)}: `make test` installs chromium and chromium-driver"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def headless_chromium(width: int = 1400, height: int = 900) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def save_artifacts(driver: WebDriver, name: str) -> Path:
    """Screenshot and HTML of the page now; returns the screenshot's path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = ARTIFACTS / re.sub(r"[^\w.-]+", "_", name)
    with contextlib.suppress(WebDriverException):
        stem.with_suffix(".html").write_text(driver.page_source)
    driver.save_screenshot(str(stem.with_suffix(".png")))
    return stem.with_suffix(".png")


@contextlib.contextmanager
def browser_session(request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """A fresh headless browser; on a failed test, its screenshot (path printed)."""
    require_browser()
    driver = headless_chromium()
    failed_before = request.session.testsfailed
    try:
        yield driver
    finally:
        if request.session.testsfailed > failed_before:
            print(f"console screenshot: {save_artifacts(driver, request.node.name)}")
        driver.quit()


class Page:
    """Async access to a WebDriver: each call runs in a thread."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def get(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, source, *args)

    async def async_script(self, source: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_async_script, source, *args)

    async def css(self, selector: str) -> list[WebElement]:
        return await self.call(self.driver.find_elements, "css selector", selector)

    async def text(self, selector: str) -> str:
        found = await self.css(selector)
        return found[0].text if found else ""

    async def wait(self, what: str, condition: Callable[[WebDriver], T], within: float) -> T:
        """Until ``condition(driver)`` is truthy; fails naming ``what`` after ``within`` s."""

        def poll() -> T:
            try:
                return WebDriverWait(self.driver, within, poll_frequency=0.1).until(condition)
            except TimeoutException:
                raise AssertionError(f"timed out after {within:g}s waiting for {what}") from None

        return await self.call(poll)

    async def wait_css(self, selector: str, within: float = 10.0) -> WebElement:
        def found(driver: WebDriver) -> WebElement | bool:
            elements = driver.find_elements("css selector", selector)
            return elements[0] if elements else False

        element = await self.wait(selector, found, within)
        assert isinstance(element, WebElement)
        return element

    def severe_console_messages(self) -> list[str]:
        """The page's console errors since the last call (read from the driver's log)."""
        return [
            m["message"]
            for m in self.driver.get_log("browser")  # type: ignore[no-untyped-call]
            if m["level"] == "SEVERE"
        ]
