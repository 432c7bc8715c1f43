"""``riskgate console``: the operators' web page, served with aiohttp (as ``/metrics`` is).

Routes (everything under ``/api/`` needs a login; unauthenticated requests get
401 and no data, the page itself is only the login form):

- ``GET /`` — the console page when logged in, else the login form;
  ``POST /login`` (form field ``token``) sets the session cookie;
  ``POST /logout`` clears it.
- ``GET /api/me`` — the user, role, CSRF token and the actions allowed.
- ``GET /api/state`` — the board (:mod:`worker.console.live`) as JSON;
  ``GET /api/events`` — the same as server-sent events: ``event: rows`` (the
  table, pushed on every change) and ``event: timeline`` (pushed when a halt
  event arrives), with a keep-alive comment every 15 s.
- ``POST /api/actions`` — ``{"action", "bot", "symbol", "reason"}`` →
  202 with the halt event id to watch for (:mod:`worker.console.actions`).

Every state-changing request authenticated by cookie must carry the CSRF token
and, when the browser sends an ``Origin``, come from this origin. Responses
carry a strict Content-Security-Policy (no inline script, nothing from other
origins) and are never cached.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import structlog
from aiohttp import web

from worker.config import ConfigError, ConsoleConfig
from worker.console.actions import ActionRefused, ActionRequest, Actions
from worker.console.auth import Authenticator, Principal
from worker.console.live import Board

log = structlog.get_logger("riskgate.console")

STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
MAX_ACTION_BYTES = 4096
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_PRINCIPAL = web.RequestKey("principal", Principal)
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tls_context(console: ConsoleConfig) -> ssl.SSLContext | None:
    """The server's TLS context when ``tls_certfile`` and ``tls_keyfile`` are set."""
    cert, key = console.tls_certfile, console.tls_keyfile
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("console: set both tls_certfile and tls_keyfile, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"console TLS: {exc}") from exc
    return context


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
    return urlsplit(origin).netloc == request.host


class ConsoleServer:
    """The aiohttp app over a Board and Actions; ``port=0`` binds a free port."""

    def __init__(
        self,
        auth: Authenticator,
        board: Board,
        actions: Actions,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._auth = auth
        self._board = board
        self._actions = actions
        self._host = host
        self._tls = tls
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}/"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", self._index)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/api/me", self._me)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/actions", self._act)
        app.router.add_static("/static/", STATIC, show_index=False)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port, ssl_context=self._tls)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._closing = True
        self._board.wake()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- plumbing ------------------------------------------------------------------

    def principal(self, request: web.Request) -> Principal | None:
        return self._auth.bearer(request.headers.get("Authorization")) or self._auth.cookie(
            request.cookies.get(self._auth.cookie_name)
        )

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        who = self.principal(request)
        if who is None:
            return _error(401, "not authenticated")
        if request.method not in _SAFE and not (
            self._auth.csrf_ok(who, request.headers.get("X-CSRF-Token"))
            and (who.via == "bearer" or _same_origin(request))
        ):
            log.warning("console CSRF check failed", user=who.name, path=request.path)
            return _error(403, "missing or wrong CSRF token")
        request[_PRINCIPAL] = who
        return await handler(request)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        if self._tls is not None:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"

    # -- pages and login -------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        page = "index.html" if self.principal(request) is not None else "login.html"
        return web.FileResponse(STATIC / page)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not _same_origin(request):
            return _error(403, "cross-origin login refused")
        form = await request.post()
        token = form.get("token")
        name = self._auth.user_for_token(token) if isinstance(token, str) else None
        if name is None:
            log.warning("console login refused", remote=request.remote)
            raise web.HTTPSeeOther("/?login=failed")
        log.info("console login", user=name, remote=request.remote)
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            self._auth.cookie_name,
            self._auth.new_cookie(name),
            max_age=self._auth.ttl_s,
            path="/",
            secure=self._auth.cookie_secure,
            httponly=True,
            samesite="Strict",
        )
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        who = self.principal(request)
        if who is not None and not (
            self._auth.csrf_ok(who, request.headers.get("X-CSRF-Token")) and _same_origin(request)
        ):
            return _error(403, "missing or wrong CSRF token")
        if who is not None:
            self._auth.revoke(who)
            log.info("console logout", user=who.name, remote=request.remote)
        response = web.HTTPSeeOther("/")
        response.del_cookie(self._auth.cookie_name, path="/")
        raise response

    # -- the API -------------------------------------------------------------------------

    async def _me(self, request: web.Request) -> web.Response:
        who = request[_PRINCIPAL]
        return web.json_response(
            {
                "user": who.name,
                "role": who.role,
                "csrf": self._auth.csrf_token(who),
                "actions": self._actions.names(who),
            }
        )

    async def _state(self, _: web.Request) -> web.Response:
        body = msgspec.json.encode(self._board.state())
        return web.Response(body=body, content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Push the board on every change; ends when the login ends or the server stops."""
        board = self._board
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        sent = dict.fromkeys(board.DOCUMENTS, 0)
        try:
            while not self._closing and self.principal(request) is not None:
                version = board.version
                for name in board.DOCUMENTS:
                    if board.versions[name] != sent[name]:
                        sent[name] = board.versions[name]
                        event = b"event: %s\ndata: %s\n\n" % (name.encode(), board.documents[name])
                        await response.write(event)
                if not await board.wait_change(version, KEEPALIVE_S):
                    await response.write(b": keep-alive\n\n")
        except ConnectionError:
            pass  # the page went away
        return response

    async def _act(self, request: web.Request) -> web.Response:
        body = await request.content.read(MAX_ACTION_BYTES + 1)
        if len(body) > MAX_ACTION_BYTES:
            return _error(413, "request too large")
        try:
            action = msgspec.json.decode(body, type=ActionRequest)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"bad request: {exc}")
        try:
            result = await self._actions.perform(
                request[_PRINCIPAL], action, remote=request.remote or ""
            )
        except ActionRefused as exc:
            return _error(exc.status, str(exc))
        return web.json_response(msgspec.to_builtins(result), status=202)
