"""The console's HTTP surface without a broker: auth, roles, CSRF, the audit trail.

The app runs on aiohttp's test server over a real Board (a GateView that is
never started: it shows nothing, and fails closed) and real Actions whose
producer is a fake recording every record, so what is audited and what is
sent can be read back exactly.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaConnectionError

from tests.support.harness import PROJECT_ROOT
from tests.support.ops import make_pki, openssl_available
from worker.client import GateView
from worker.config import Config, ConfigError, load_config
from worker.console.actions import ACTIONS, Actions
from worker.console.auth import Authenticator, Principal
from worker.console.live import Board
from worker.console.server import ConsoleServer, tls_context
from worker.messages import ControlCommand
from worker.signing import command_digest, verify

SECRET = "console-test-secret"
NOW_MS = 1_800_000_000_000
TOKENS = {"olga": "operator-token-0123456789", "vic": "viewer-token-0123456789"}


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


CONFIG = f"""
[control]
secret = "{SECRET}"
[bots.b1]
symbols = ["S1", "S2"]
[console.users.olga]
role = "operator"
token_sha256 = "{sha(TOKENS["olga"])}"
[console.users.vic]
role = "viewer"
token_sha256 = "{sha(TOKENS["vic"])}"
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A producer fake: records ``(topic, key, decoded value)``; ``fail`` makes a topic refuse."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []
        self.fail: set[str] = set()

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> object:
        if topic in self.fail:
            raise KafkaConnectionError(f"{topic} unavailable")
        self.sent.append((topic, key, msgspec.json.decode(value)))
        return None

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [value for t, _, value in self.sent if t == topic]


class Env(msgspec.Struct):
    config: Config
    client: TestClient[Any, Any]
    producer: Recorder
    auth: Authenticator

    async def login(self, user: str) -> dict[str, Any]:
        """Log in through the form; returns ``/api/me`` (the CSRF token included)."""
        response = await self.client.post(
            "/login", data={"token": TOKENS[user]}, allow_redirects=False
        )
        assert response.status == 303, await response.text()
        me = await self.client.get("/api/me")
        assert me.status == 200
        return dict(await me.json())

    @property
    def audit(self) -> list[dict[str, Any]]:
        return self.producer.on(self.config.topics.audit)

    @property
    def commands(self) -> list[ControlCommand]:
        values = self.producer.on(self.config.topics.control)
        return [msgspec.convert(v, ControlCommand) for v in values]


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    config = load_config(text=CONFIG, env={})
    # Not Secure: aiohttp's client cookie jar keeps no Secure cookie over http://.
    console = msgspec.structs.replace(config.console, secure_cookies=False)
    auth = Authenticator(console, key=b"k" * 32)
    producer = Recorder()
    board = Board(GateView(config.kafka, config.topics), timeline_size=10)
    actions = Actions(config, producer, SECRET.encode(), clock=lambda: NOW_MS)
    server = ConsoleServer(auth, board, actions, host="127.0.0.1", port=0)
    client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
    await client.start_server()
    try:
        yield Env(config, client, producer, auth)
    finally:
        await client.close()


def halt_body(**overrides: Any) -> dict[str, Any]:
    return {
        "action": "halt",
        "bot": "b1",
        "symbol": "S1",
        "reason": "exchange incident",
    } | overrides


# -- unauthenticated requests see nothing ------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/state", "/api/events", "/api/me"])
async def test_console_unauthenticated_api_read_is_refused(env: Env, path: str) -> None:
    response = await env.client.get(path)
    assert response.status == 401
    assert await response.json() == {"error": "not authenticated"}


async def test_console_unauthenticated_page_is_only_the_login_form(env: Env) -> None:
    response = await env.client.get("/")
    text = await response.text()
    assert response.status == 200
    assert 'action="/login"' in text
    assert "app.js" not in text


async def test_console_unauthenticated_action_is_refused_and_sends_nothing(env: Env) -> None:
    response = await env.client.post("/api/actions", json=halt_body())
    assert response.status == 401
    assert env.producer.sent == []


async def test_console_wrong_token_gets_no_cookie(env: Env) -> None:
    response = await env.client.post("/login", data={"token": "guess"}, allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/?login=failed")
    assert env.auth.cookie_name not in response.cookies
    assert (await env.client.get("/api/state")).status == 401


async def test_console_forged_cookie_is_not_a_login(env: Env) -> None:
    genuine = env.auth.new_cookie("olga")
    body, _, mac = genuine.partition(".")
    forged = f"{body}.{'0' * len(mac)}"
    response = await env.client.get("/api/state", cookies={env.auth.cookie_name: forged})
    assert response.status == 401


# -- logged in ------------------------------------------------------------------------------------


async def test_console_login_shows_the_page_and_the_board(env: Env) -> None:
    me = await env.login("vic")
    assert (me["user"], me["role"], me["actions"]) == ("vic", "viewer", [])
    page = await (await env.client.get("/")).text()
    assert "/static/app.js" in page
    state = await (await env.client.get("/api/state")).json()
    # A view that has read nothing yet fails closed: nothing is shown as active.
    assert (state["caught_up"], state["bots"], state["timeline"]) == (False, [], [])


async def test_console_session_cookie_is_httponly_strict(env: Env) -> None:
    response = await env.client.post(
        "/login", data={"token": TOKENS["olga"]}, allow_redirects=False
    )
    morsel = response.cookies[env.auth.cookie_name]
    assert (morsel["httponly"], morsel["samesite"], morsel["path"]) == (True, "Strict", "/")


def test_console_secure_cookie_uses_the_host_prefix() -> None:
    console = load_config(text=CONFIG, env={}).console
    auth = Authenticator(console)
    assert (auth.cookie_name, auth.cookie_secure) == ("__Host-riskgate", True)


def test_console_cookie_expires_after_the_session_ttl() -> None:
    console = load_config(text=CONFIG, env={}).console
    clock = Clock(1_000_000.0)
    auth = Authenticator(console, key=b"k" * 32, clock=clock)
    cookie = auth.new_cookie("olga")
    clock.now += console.session_ttl_s - 1
    principal = auth.cookie(cookie)
    assert principal is not None
    assert (principal.name, principal.role, principal.via) == ("olga", "operator", "cookie")
    clock.now += 1
    assert auth.cookie(cookie) is None


def test_console_cookie_of_a_removed_user_is_refused() -> None:
    config = load_config(text=CONFIG, env={})
    key = b"k" * 32
    cookie = Authenticator(config.console, key=key).new_cookie("vic")
    without_vic = msgspec.structs.replace(
        config.console, users={"olga": config.console.users["olga"]}
    )
    assert Authenticator(without_vic, key=key).cookie(cookie) is None


def test_console_user_token_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-abcdef\n")
    text = f'[console.users.fran]\nrole = "operator"\ntoken_file = "{token_file}"\n'
    auth = Authenticator(load_config(text=text, env={}).console)
    assert auth.user_for_token("file-token-abcdef") == "fran"
    assert auth.bearer("Bearer file-token-abcdef") == Principal("fran", "operator", "bearer")


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, r"cannot read console\.users\.fran\.token_file"),
        (" \n\t", r"console\.users\.fran\.token_file .* is empty"),
    ],
)
def test_console_token_file_unreadable_or_blank_is_a_config_error(
    tmp_path: Path, content: str | None, error: str
) -> None:
    """A blank token file must not register the empty token (anybody could log in)."""
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    text = f'[console.users.fran]\nrole = "operator"\ntoken_file = "{token_file}"\n'
    with pytest.raises(ConfigError, match=error):
        Authenticator(load_config(text=text, env={}).console)


def test_console_user_without_a_token_is_a_config_error() -> None:
    text = '[console.users.nobody]\nrole = "operator"\n'
    with pytest.raises(ConfigError, match="set token_sha256 or token_file"):
        Authenticator(load_config(text=text, env={}).console)


# -- roles ----------------------------------------------------------------------------------------


async def test_console_viewer_action_is_refused_and_audited(env: Env) -> None:
    me = await env.login("vic")
    response = await env.client.post(
        "/api/actions", json=halt_body(), headers={"X-CSRF-Token": me["csrf"]}
    )
    assert response.status == 403
    assert (await response.json())["error"] == "vic is a viewer: only operators may act"
    assert env.commands == []
    [record] = env.audit
    assert record == {
        "ts": NOW_MS,
        "user": "vic",
        "role": "viewer",
        "via": "cookie",
        "remote": "127.0.0.1",
        "action": "halt",
        "bot": "b1",
        "symbol": "S1",
        "reason": "exchange incident",
        "outcome": "refused",
        "detail": "vic is a viewer: only operators may act",
        "event_id": None,
        "command_digest": None,
    }


async def test_console_viewer_bearer_action_is_refused(env: Env) -> None:
    response = await env.client.post(
        "/api/actions",
        json=halt_body(),
        headers={"Authorization": f"Bearer {TOKENS['vic']}"},
    )
    assert response.status == 403
    assert env.commands == []


async def test_console_operator_halt_is_audited_then_sent_signed(env: Env) -> None:
    me = await env.login("olga")
    assert me["actions"] == list(ACTIONS)
    response = await env.client.post(
        "/api/actions", json=halt_body(), headers={"X-CSRF-Token": me["csrf"]}
    )
    assert response.status == 202, await response.text()
    answer = await response.json()
    [cmd] = env.commands
    assert (cmd.command, cmd.bot, cmd.symbol, cmd.reason, cmd.issued_by, cmd.ts) == (
        "halt",
        "b1",
        "S1",
        "exchange incident",
        "olga",
        NOW_MS,
    )
    assert verify(cmd, SECRET.encode(), NOW_MS, 1) is None
    event_id = f"b1/S1/manual_halt/cmd-{command_digest(cmd)}"
    assert answer == {
        "action": "halt",
        "bot": "b1",
        "symbol": "S1",
        "event_id": event_id,
        "command_digest": command_digest(cmd),
        "signed": True,
    }
    # The audit record is written first, then the command.
    assert [t for t, _, _ in env.producer.sent] == [
        env.config.topics.audit,
        env.config.topics.control,
    ]
    [record] = env.audit
    assert (record["user"], record["outcome"], record["event_id"]) == ("olga", "issued", event_id)
    assert SECRET not in str(answer) and SECRET not in str(record)


async def test_console_operator_kill_sends_a_signed_bot_wide_kill(env: Env) -> None:
    response = await env.client.post(
        "/api/actions",
        json=halt_body(action="kill", symbol=None, reason="runaway order loop"),
        headers={"Authorization": f"Bearer {TOKENS['olga']}"},
    )
    assert response.status == 202, await response.text()
    [cmd] = env.commands
    assert (cmd.command, cmd.bot, cmd.symbol, cmd.reason, cmd.issued_by) == (
        "kill",
        "b1",
        None,
        "runaway order loop",
        "olga",
    )
    assert verify(cmd, SECRET.encode(), NOW_MS, 1) is None
    assert (await response.json())["event_id"] == f"b1/*/kill_switch/cmd-{command_digest(cmd)}"
    [record] = env.audit
    assert (record["user"], record["outcome"]) == ("olga", "issued")


async def test_console_operator_bearer_acts_without_csrf(env: Env) -> None:
    response = await env.client.post(
        "/api/actions",
        json=halt_body(action="reset-breaker", symbol=None),
        headers={"Authorization": f"Bearer {TOKENS['olga']}"},
    )
    assert response.status == 202, await response.text()
    [cmd] = env.commands
    assert (cmd.command, cmd.symbol, cmd.issued_by) == ("reset_breaker", None, "olga")
    assert env.audit[0]["via"] == "bearer"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (halt_body(reason="   "), "a reason is required"),
        (halt_body(action="launch"), "unknown action 'launch'"),
        (halt_body(bot="ghost"), "the worker would reject this command (unknown_bot)"),
        (halt_body(symbol="S9"), "the worker would reject this command (unknown_symbol)"),
    ],
)
async def test_console_invalid_operator_action_is_refused_and_audited(
    env: Env, body: dict[str, Any], error: str
) -> None:
    me = await env.login("olga")
    response = await env.client.post(
        "/api/actions", json=body, headers={"X-CSRF-Token": me["csrf"]}
    )
    assert response.status == 400
    assert error in (await response.json())["error"]
    assert env.commands == []
    assert [(r["outcome"], error in r["detail"]) for r in env.audit] == [("refused", True)]


async def test_console_action_is_not_sent_when_the_audit_cannot_be_written(env: Env) -> None:
    me = await env.login("olga")
    env.producer.fail.add(env.config.topics.audit)
    response = await env.client.post(
        "/api/actions", json=halt_body(), headers={"X-CSRF-Token": me["csrf"]}
    )
    assert response.status == 503
    assert "nothing sent" in (await response.json())["error"]
    assert env.producer.sent == []


async def test_console_failed_send_is_audited(env: Env) -> None:
    me = await env.login("olga")
    env.producer.fail.add(env.config.topics.control)
    response = await env.client.post(
        "/api/actions", json=halt_body(), headers={"X-CSRF-Token": me["csrf"]}
    )
    assert response.status == 503
    assert [r["outcome"] for r in env.audit] == ["issued", "send_failed"]


# -- CSRF -----------------------------------------------------------------------------------------


async def test_console_cookie_action_without_csrf_token_is_refused(env: Env) -> None:
    await env.login("olga")
    response = await env.client.post("/api/actions", json=halt_body())
    assert response.status == 403
    assert await response.json() == {"error": "missing or wrong CSRF token"}
    assert env.producer.sent == []


async def test_console_cookie_action_with_a_wrong_csrf_token_is_refused(env: Env) -> None:
    me = await env.login("olga")
    wrong = me["csrf"][:-1] + ("0" if me["csrf"][-1] != "0" else "1")
    response = await env.client.post(
        "/api/actions", json=halt_body(), headers={"X-CSRF-Token": wrong}
    )
    assert response.status == 403
    assert env.producer.sent == []


async def test_console_cross_origin_action_is_refused_even_with_the_token(env: Env) -> None:
    me = await env.login("olga")
    response = await env.client.post(
        "/api/actions",
        json=halt_body(),
        headers={"X-CSRF-Token": me["csrf"], "Origin": "https://evil.example"},
    )
    assert response.status == 403
    assert env.producer.sent == []


async def test_console_cross_origin_login_is_refused(env: Env) -> None:
    response = await env.client.post(
        "/login",
        data={"token": TOKENS["olga"]},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert response.status == 403
    assert env.auth.cookie_name not in response.cookies


async def test_console_csrf_token_of_another_session_is_refused(env: Env) -> None:
    other = await env.login("olga")
    await env.login("olga")  # a new session: a new cookie, a new CSRF token
    response = await env.client.post(
        "/api/actions", json=halt_body(), headers={"X-CSRF-Token": other["csrf"]}
    )
    assert response.status == 403
    assert env.producer.sent == []


async def test_console_responses_forbid_framing_and_inline_script(env: Env) -> None:
    response = await env.client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"


def test_console_deploy_example_parses_when_uncommented() -> None:
    """The commented [console] tables of deploy/riskgate.toml are a valid config."""
    lines = (PROJECT_ROOT / "deploy" / "riskgate.toml").read_text().splitlines()
    start = lines.index("# [console]")
    toml = re.compile(r"^# (\[[\w.]+\]|\w+ = )")  # the settings, not the prose around them
    block = [line.removeprefix("# ") for line in lines[start:] if toml.match(line)]
    text = "\n".join(block).replace("<64 hex digits>", "0" * 64)
    console = load_config(text=text, env={}).console
    assert (console.port, console.tls_keyfile, sorted(console.users)) == (
        8787,
        "/etc/riskgate-secrets/console.key",
        ["alice", "noc"],
    )
    assert (console.users["alice"].role, console.users["noc"].role) == ("operator", "viewer")


async def test_console_events_stream_pushes_the_rows_then_the_timeline(env: Env) -> None:
    await env.login("vic")
    async with env.client.get("/api/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        rows = await response.content.readuntil(b"\n\n")
        timeline = await response.content.readuntil(b"\n\n")
    assert rows.startswith(b'event: rows\ndata: {"caught_up":false,')
    assert timeline == b"event: timeline\ndata: []\n\n"


@pytest.mark.security
async def test_console_serves_https_when_tls_is_configured(tmp_path: Path) -> None:
    if not openssl_available():
        pytest.skip("no openssl CLI to make a test certificate")
    pki = make_pki(tmp_path / "pki")
    config = load_config(text=CONFIG, env={})
    console = msgspec.structs.replace(
        config.console, tls_certfile=str(pki.server_cert), tls_keyfile=str(pki.server_key)
    )
    board = Board(GateView(config.kafka, config.topics), timeline_size=10)
    actions = Actions(config, Recorder(), SECRET.encode(), clock=lambda: NOW_MS)
    server = ConsoleServer(
        Authenticator(console), board, actions, host="127.0.0.1", port=0, tls=tls_context(console)
    )
    await server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(pki.ca))
        headers = {"Authorization": f"Bearer {TOKENS['vic']}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}api/me", ssl=trust, headers=headers) as response:
                assert (response.status, (await response.json())["user"]) == (200, "vic")
                assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
            with pytest.raises(aiohttp.ServerDisconnectedError):  # plain HTTP is not served
                await session.get(server.url.replace("https", "http"), ssl=False)
    finally:
        await server.stop()


def test_console_tls_needs_both_files() -> None:
    console = load_config(text=CONFIG, env={}).console
    half = msgspec.structs.replace(console, tls_certfile="/etc/cert.pem")
    with pytest.raises(ConfigError, match="set both tls_certfile and tls_keyfile"):
        tls_context(half)


async def test_console_logout_revokes_the_session_cookie(env: Env) -> None:
    me = await env.login("olga")
    cookie = env.client.session.cookie_jar.filter_cookies(env.client.make_url("/"))
    value = cookie[env.auth.cookie_name].value
    response = await env.client.post(
        "/logout", headers={"X-CSRF-Token": me["csrf"]}, allow_redirects=False
    )
    assert response.status == 303
    # Even a copy of the cookie kept from before the logout is refused.
    stolen = await env.client.get("/api/state", cookies={env.auth.cookie_name: value})
    assert stolen.status == 401


async def test_console_logout_without_csrf_token_keeps_the_session(env: Env) -> None:
    await env.login("olga")
    response = await env.client.post("/logout", allow_redirects=False)
    assert response.status == 403
    assert (await env.client.get("/api/me")).status == 200
