"""The console in a real browser (headless Debian chromium) against a real worker and broker.

One worker and one console serve the module; each test opens its own browser
(a fresh cookie jar) and works on its own bot. The stale-bot test runs its own
worker, which it stops. Waits have deadlines (the worker publishes within a
batch, the console pushes within a tick); a failed test leaves a screenshot
(see ``tests/support/browser_console.py``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.support.browser_console import Page, browser_session
from tests.support.harness import (
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

SECRET = "console-browser-secret"
TOKENS = {"olga": f"olga-{uuid.uuid4().hex}", "vic": f"vic-{uuid.uuid4().hex}"}
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
    )
    config = console_config(kafka_bootstrap, bots)
    await create_topics(config)
    async with running_worker(config), open_console(config) as console:
        yield Stack(config, console.url)


@pytest.fixture
def driver(request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    with browser_session(request) as session:
        yield session


async def login(driver: WebDriver, url: str, user: str) -> Page:
    """Log in the way `riskgate demo` links do (token in the fragment); the page then shows."""
    page = Page(driver)
    await page.get(f"{url}#token={TOKENS[user]}")
    await page.wait(f"logged in as {user}", lambda d: user in d.find_element("id", "who").text, 10)
    return page


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


async def test_console_page_loads_with_every_configured_bot_live(
    stack: Stack, driver: WebDriver
) -> None:
    page = await login(driver, stack.url, "olga")
    for bot in ("calm", "loser", "ops", "watched"):
        await page.wait_css(row(f"{bot}/*", "active"), SEEN_WITHIN_S)
    assert await page.text("#link") == "live"
    assert await page.text(row("calm/*") + " td.state") == "ACTIVE"
    assert page.severe_console_messages() == []


async def test_console_shows_a_bot_the_worker_halts_without_a_reload(
    stack: Stack, driver: WebDriver
) -> None:
    page = await login(driver, stack.url, "vic")
    await page.wait_css(row("loser/*", "active"), SEEN_WITHIN_S)
    await page.script("window.sameDocument = 'yes'")
    now = clock()
    losses = [outcome("loser", "S1", -6.0, ts=now - 2_000), outcome("loser", "S1", -6.0, ts=now)]
    await produce_events(stack.config, losses)

    halted = await page.wait_css(row("loser/S1", "reducing"), SEEN_WITHIN_S)
    blocks = await page.call(lambda: halted.find_element("css selector", "td.blocks").text)
    assert blocks.startswith("session_halt: session net PnL -12.00 reached loss limit -10")
    assert await page.text(row("loser/S1") + " td:nth-child(5)") == "-12.00"
    assert await page.script("return window.sameDocument") == "yes"  # pushed, not reloaded
    events = [r for r in await timeline(page) if r[0] == "loser/S1/session_halt/1"]
    assert [r[2:6] for r in events] == [["halted", "loser", "S1", "session_halt"]]


async def test_console_operator_halts_a_symbol_through_the_ui(
    stack: Stack, driver: WebDriver
) -> None:
    page = await login(driver, stack.url, "olga")
    await page.wait_css(row("ops/*", "active"), SEEN_WITHIN_S)
    # The table re-renders on every push: click in one script, never on a held element.
    await page.script("document.querySelector('button[data-act=\"ops/*\"]').click()")
    await page.wait_css("dialog#act[open]")
    await page.call(lambda: Select(driver.find_element("id", "act-action")).select_by_value("halt"))
    await page.call(lambda: driver.find_element("id", "act-symbol").send_keys("S2"))
    await page.call(lambda: driver.find_element("id", "act-reason").send_keys("exchange incident"))
    await page.call(lambda: driver.find_element("id", "act-submit").click())

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


async def test_console_viewer_action_is_refused(stack: Stack, driver: WebDriver) -> None:
    page = await login(driver, stack.url, "vic")
    await page.wait_css(row("watched/*", "active"), SEEN_WITHIN_S)
    assert await page.css("button.act") == []  # a viewer is offered no action
    # Forged from the page itself, with the viewer's own session and CSRF token:
    answer = await page.async_script(
        """
        const done = arguments[arguments.length - 1];
        const me = await (await fetch('/api/me')).json();
        const response = await fetch('/api/actions', {method: 'POST',
          headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf},
          body: JSON.stringify({action: 'halt', bot: 'watched', symbol: null, reason: 'sneaky'})});
        done([response.status, await response.json()]);
        """
    )
    assert answer == [403, {"error": "vic is a viewer: only operators may act"}]
    assert await page.text(row("watched/*") + " td.state") == "ACTIVE"
    [record] = [r for r in await audit_records(stack.config) if r["bot"] == "watched"]
    assert (record["user"], record["outcome"], record["event_id"]) == ("vic", "refused", None)


async def test_console_marks_a_stale_bot_blocked(kafka_bootstrap: str, driver: WebDriver) -> None:
    config = console_config(kafka_bootstrap, '[bots.solo]\nsymbols = ["S1"]\n', staleness_ms=2_000)
    await create_topics(config)
    async with open_console(config) as console:
        async with running_worker(config):
            await produce_events(config, [outcome("solo", "S1", 3.0, ts=clock())])
            page = await login(driver, console.url, "vic")
            await page.wait_css(row("solo/S1", "active"), SEEN_WITHIN_S)
            assert "stale: 0" in await page.text("#counts")
        # The worker has stopped: no more heartbeats.
        await page.wait_css(row("solo/*", "stale"), SEEN_WITHIN_S)
        await page.wait_css(row("solo/S1", "stale"))
        blocks = await page.text(row("solo/*") + " td.blocks")
        assert blocks == "stale: no heartbeat from its worker within 2 s — blocked"
        counts = await page.text("#counts")
        assert counts == "1 bots · 1 symbols · blocked: 1 bots, 1 symbols · stale: 1"
