"""The console in a real browser (headless Debian chromium) against a real worker and broker.

One worker and one console serve the module; each test opens its own browser
(a fresh cookie jar) and works on its own bot. The stale-bot test runs its own
worker, which it stops. Waits have deadlines (the worker publishes within a
batch, the console pushes within a tick); a failed test leaves a screenshot
and the page source in ``test-artifacts/console/`` (``tests/support/browser.py``).

Selenium blocks, while the worker and the console run on the test's event
loop: :class:`Page` runs every browser call in a thread so the loop keeps
serving them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import msgspec
import pytest
import pytest_asyncio
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.support.browser import console_errors, headless_chrome
from tests.support.harness import (
    PROJECT_ROOT,
    clock,
    config_text,
    create_topics,
    outcome,
    produce_events,
    read_topic,
    running_worker,
)
from worker.config import Config, load_config
from worker.console import open_console

pytestmark = pytest.mark.broker
T = TypeVar("T")

SECRET = "console-browser-secret"
TOKENS = {"olga": f"olga-{uuid.uuid4().hex}", "vic": f"vic-{uuid.uuid4().hex}"}
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "console"
SEEN_WITHIN_S = 10.0
"""How long a change may take to reach the page: a worker batch, then a console tick."""


def body(bots: str, *, staleness_ms: int = 60_000) -> str:
    users = "".join(
        f'[console.users.{name}]\nrole = "{role}"\n'
        f'token_sha256 = "{hashlib.sha256(TOKENS[name].encode()).hexdigest()}"\n'
        for name, role in (("olga", "operator"), ("vic", "viewer"))
    )
    return (
        f'[control]\nsecret = "{SECRET}"\n'
        "[defaults.session]\nloss_limit = -10.0\n"
        "[worker]\nheartbeat_interval_ms = 300\n"
        f'[console]\nhost = "127.0.0.1"\nport = 0\nstaleness_ms = {staleness_ms}\n' + users + bots
    )


def console_config(bootstrap: str, bots: str, *, staleness_ms: int = 60_000) -> Config:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    text = config_text(bootstrap, body(bots, staleness_ms=staleness_ms), prefix=prefix)
    return load_config(text=text, env={"RISKGATE_TOPICS__AUDIT": f"{prefix}.risk.audit"})


class Stack(msgspec.Struct):
    config: Config
    url: str


@pytest_asyncio.fixture(scope="module")
async def stack(kafka_bootstrap: str) -> AsyncIterator[Stack]:
    bots = (
        '[bots.calm]\nsymbols = ["S1"]\n'
        '[bots.loser]\nsymbols = ["S1"]\n'
        '[bots.ops]\nsymbols = ["S1", "S2"]\n'
        '[bots.watched]\nsymbols = ["S1"]\n'
        '[bots.sorted]\nsymbols = ["S1", "S2"]\n'
    )
    config = console_config(kafka_bootstrap, bots)
    await create_topics(config)
    async with running_worker(config), open_console(config) as console:
        yield Stack(config, console.url)


@contextlib.contextmanager
def browser(name: str) -> Iterator[Page]:
    """A fresh headless chromium; whatever fails inside leaves its screenshot."""
    with headless_chrome(ARTIFACTS, width=1400, name=name) as driver:
        yield Page(driver)


async def login(page: Page, url: str, user: str) -> Page:
    """Log in the way `riskgate demo` links do (token in the fragment); the page then shows."""
    await page.get(f"{url}#token={TOKENS[user]}")
    await page.wait(f"logged in as {user}", lambda d: user in d.find_element("id", "who").text, 10)
    return page


class Page:
    """Async access to a WebDriver: each call runs in a thread."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def by_id(self, element_id: str) -> WebElement:
        """An element that is never re-rendered (the header, the action dialog)."""
        return self.driver.find_element("id", element_id)

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


def row(key: str, state: str | None = None) -> str:
    selector = f'#rows tr[data-key="{key}"]'
    return selector + (f'[data-state="{state}"]' if state else "")


async def timeline(page: Page) -> list[list[str]]:
    """Every timeline row: its event id, then its cells' text."""
    rows: list[list[str]] = await page.script(
        "return [...document.querySelectorAll('#tl-rows tr')]"
        ".map(r => [r.dataset.event, ...[...r.cells].map(c => c.textContent)])"
    )
    return rows


async def audit_records(config: Config) -> list[dict[str, Any]]:
    records = await read_topic(config.kafka, config.topics.audit)
    return [msgspec.json.decode(r.value) for r in records if r.value is not None]


async def test_console_page_loads_with_every_configured_bot_live(stack: Stack) -> None:
    with browser("page_loads_with_every_configured_bot_live") as page:
        await login(page, stack.url, "olga")
        for bot in ("calm", "loser", "ops", "watched"):
            await page.wait_css(row(f"{bot}/*", "active"), SEEN_WITHIN_S)
        assert await page.text("#link") == "live"
        assert await page.text(row("calm/*") + " td.state") == "ACTIVE"
        assert console_errors(page.driver) == []


async def test_console_shows_a_bot_the_worker_halts_without_a_reload(stack: Stack) -> None:
    with browser("shows_a_bot_the_worker_halts_without_a_reload") as page:
        await login(page, stack.url, "vic")
        await page.wait_css(row("loser/*", "active"), SEEN_WITHIN_S)
        await page.script("window.sameDocument = 'yes'")
        now = clock()
        losses = [
            outcome("loser", "S1", -6.0, ts=now - 2_000),
            outcome("loser", "S1", -6.0, ts=now),
        ]
        await produce_events(stack.config, losses)

        halted = await page.wait_css(row("loser/S1", "reducing"), SEEN_WITHIN_S)
        blocks = await page.call(lambda: halted.find_element("css selector", "td.blocks").text)
        assert blocks.startswith("session_halt: session net PnL -12.00 reached loss limit -10")
        assert await page.text(row("loser/S1") + " td:nth-child(5)") == "-12.00"
        assert await page.script("return window.sameDocument") == "yes"  # pushed, not reloaded
        events = [r for r in await timeline(page) if r[0] == "loser/S1/session_halt/1"]
        assert [r[2:6] for r in events] == [["halted", "loser", "S1", "session_halt"]]


async def test_console_operator_halts_a_symbol_through_the_ui(stack: Stack) -> None:
    with browser("operator_halts_a_symbol_through_the_ui") as page:
        await login(page, stack.url, "olga")
        await page.wait_css(row("ops/*", "active"), SEEN_WITHIN_S)
        # The table re-renders on every push: click in one script, never on a held element.
        await page.script("document.querySelector('button[data-act=\"ops/*\"]').click()")
        await page.wait_css("dialog#act[open]")
        await page.call(lambda: Select(page.by_id("act-action")).select_by_value("halt"))
        await page.call(page.by_id("act-symbol").send_keys, "S2")
        await page.call(page.by_id("act-reason").send_keys, "exchange incident")
        await page.call(page.by_id("act-submit").click)

        halted = await page.wait_css(row("ops/S2", "reducing"), SEEN_WITHIN_S)
        blocks = await page.call(lambda: halted.find_element("css selector", "td.blocks").text)
        assert blocks == "manual_halt: halted by olga: exchange incident"
        assert await page.text(row("ops/*") + " td.state") == "ACTIVE"  # only the symbol
        await page.wait(
            "the toast saying the worker applied it",
            lambda d: "applied by the worker" in d.find_element("id", "toast").text,
            SEEN_WITHIN_S,
        )
        [event] = [r for r in await timeline(page) if r[3] == "ops"]
        event_id, cells = event[0], event[2:]
        assert cells == [
            "halted",
            "ops",
            "S2",
            "manual_halt",
            "halt by olga: exchange incident",
            "",
            "olga",
        ]
        assert event_id.startswith("ops/S2/manual_halt/cmd-")

        [record] = [r for r in await audit_records(stack.config) if r["bot"] == "ops"]
        assert {k: record[k] for k in ("user", "role", "via", "action", "symbol", "reason")} == {
            "user": "olga",
            "role": "operator",
            "via": "cookie",
            "action": "halt",
            "symbol": "S2",
            "reason": "exchange incident",
        }
        assert (record["outcome"], record["event_id"]) == ("issued", event_id)


async def test_console_viewer_action_is_refused(stack: Stack) -> None:
    with browser("viewer_action_is_refused") as page:
        await login(page, stack.url, "vic")
        await page.wait_css(row("watched/*", "active"), SEEN_WITHIN_S)
        assert await page.css("button.act") == []  # a viewer is offered no action
        # Forged from the page itself, with the viewer's own session and CSRF token:
        answer = await page.async_script(
            """
            const done = arguments[arguments.length - 1];
            const me = await (await fetch('/api/me')).json();
            const response = await fetch('/api/actions', {method: 'POST',
              headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf},
              body: JSON.stringify(
                {action: 'halt', bot: 'watched', symbol: null, reason: 'sneaky'})});
            done([response.status, await response.json()]);
            """
        )
        assert answer == [403, {"error": "vic is a viewer: only operators may act"}]
        assert await page.text(row("watched/*") + " td.state") == "ACTIVE"
        [record] = [r for r in await audit_records(stack.config) if r["bot"] == "watched"]
        assert (record["user"], record["outcome"], record["event_id"]) == ("vic", "refused", None)


async def test_console_marks_a_stale_bot_blocked(kafka_bootstrap: str) -> None:
    with browser("marks_a_stale_bot_blocked") as page:
        config = console_config(
            kafka_bootstrap, '[bots.solo]\nsymbols = ["S1"]\n', staleness_ms=2_000
        )
        await create_topics(config)
        async with open_console(config) as console:
            async with running_worker(config):
                await produce_events(config, [outcome("solo", "S1", 3.0, ts=clock())])
                await login(page, console.url, "vic")
                await page.wait_css(row("solo/S1", "active"), SEEN_WITHIN_S)
                assert "stale: 0" in await page.text("#counts")
            # The worker has stopped: no more heartbeats.
            await page.wait_css(row("solo/*", "halted"), SEEN_WITHIN_S)
            await page.wait_css(row("solo/S1", "halted"))
            blocks = await page.text(row("solo/*") + " td.blocks")
            assert blocks == "stale: no heartbeat from its worker within 2 s — blocked"
            counts = await page.text("#counts")
            assert counts == "1 bots · 1 symbols · blocked: 1 bots, 1 symbols · stale: 1"


async def visible_keys(page: Page) -> list[str]:
    keys: list[str] = await page.script(
        "return [...document.querySelectorAll('#rows tr')].map(r => r.dataset.key)"
    )
    return keys


async def choose(page: Page, select_id: str, value: str) -> None:
    """Pick an option the way a user does (fires the input event the page listens to)."""
    await page.call(lambda: Select(page.by_id(select_id)).select_by_value(value))


async def test_console_filters_sorts_and_opens_a_bots_detail(stack: Stack) -> None:
    with browser("filters_sorts_and_opens_a_bots_detail") as page:
        await login(page, stack.url, "vic")
        now = clock()
        trades = [outcome("sorted", "S1", 5.0, ts=now), outcome("sorted", "S2", -20.0, ts=now)]
        await produce_events(stack.config, trades)
        await page.wait_css(row("sorted/S2", "reducing"), SEEN_WITHIN_S)

        await page.call(page.by_id("filter").send_keys, "sorted")
        assert await visible_keys(page) == ["sorted/*", "sorted/S1", "sorted/S2"]
        await choose(page, "sort", "pnl")  # worst first, the bot's row stays on top
        assert await visible_keys(page) == ["sorted/*", "sorted/S2", "sorted/S1"]
        await choose(page, "state-filter", "blocked")
        assert await visible_keys(page) == ["sorted/S2"]

        await choose(page, "tl-bot", "sorted")
        await choose(page, "tl-gate", "session_halt")
        assert [r[2:6] for r in await timeline(page)] == [
            ["halted", "sorted", "S2", "session_halt"]
        ]

        await choose(page, "state-filter", "")
        await page.script("document.querySelector('tr[data-key=\"sorted/*\"] a').click()")
        await page.wait_css("#detail:not([hidden])")
        assert await page.text("#detail-title") == "sorted — active"
        detail_rows = await page.css("#detail-body table:first-of-type tbody tr")
        assert len(detail_rows) == 2


async def test_console_page_greys_out_when_its_server_goes_away(stack: Stack) -> None:
    with browser("page_greys_out_when_its_server_goes_away") as page:
        async with open_console(stack.config) as second:
            await login(page, second.url, "vic")
            await page.wait_css(row("calm/*", "active"), SEEN_WITHIN_S)
            assert await page.css("body.offline") == []
        # Rows that no longer update must not look live.
        await page.wait_css("body.offline", SEEN_WITHIN_S)
        assert (await page.text("#link")).startswith("connection lost")
