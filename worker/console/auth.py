"""Who may see the console and who may act: tokens, session cookies, CSRF.

Two ways in, both ending in a :class:`Principal` (a configured user and role):

- ``Authorization: Bearer <token>`` on every request (scripts, curl). A
  browser never adds that header by itself, so such requests need no CSRF
  token.
- A session cookie, set by ``POST /login`` with the same token. It is signed
  (HMAC-SHA256 with a key of this process), ``HttpOnly``, ``SameSite=Strict``
  and ``Secure`` (unless ``[console] secure_cookies = false``); it names the
  user, not the role, so a role changed or a user removed in the config takes
  effect at the next start without waiting for cookies to expire. Every
  state-changing request made with the cookie must also carry the session's
  CSRF token in ``X-CSRF-Token``, which only a page of this origin can read
  (from ``/api/me``).

Tokens are never stored: the config holds each token's SHA-256 (a long random
token needs no slow hash) or the path of a file holding the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import msgspec

from worker.config import ConfigError, ConsoleConfig, ConsoleRole, read_secret_file

Via = Literal["bearer", "cookie"]
MAX_USER_NAME = 64
"""A user name becomes a command's ``issued_by`` (1..64 characters)."""


class Principal(NamedTuple):
    """An authenticated request's user; ``session`` keys the CSRF token of a cookie login."""

    name: str
    role: ConsoleRole
    via: Via
    session: str = ""

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


class _Session(msgspec.Struct, frozen=True):
    user: str
    expires: int
    """Epoch seconds."""
    sid: str


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.strip().encode()).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _user_digests(console: ConsoleConfig) -> dict[str, bytes]:
    """Each configured user's token digest; ConfigError for a user who could never log in."""
    digests: dict[str, bytes] = {}
    for name, user in console.users.items():
        if not 1 <= len(name) <= MAX_USER_NAME or not name.isprintable() or " " in name:
            raise ConfigError(
                f"console.users.{name!r}: a user name is 1..{MAX_USER_NAME} printable "
                "characters without spaces (it signs commands as issued_by)"
            )
        if user.token_file is not None:
            token = read_secret_file(user.token_file, f"console.users.{name}.token_file")
            digests[name] = hashlib.sha256(token).digest()
        elif user.token_sha256 is not None:
            digests[name] = bytes.fromhex(user.token_sha256)
        else:
            raise ConfigError(f"console.users.{name}: set token_sha256 or token_file")
    return digests


class Authenticator:
    """Checks tokens and cookies against the configured users.

    ``key`` signs cookies and derives CSRF tokens; by default a fresh random one
    per process, so a restart logs every browser out (tokens still work).
    ``clock`` returns epoch seconds (inject one in tests).
    """

    def __init__(
        self,
        console: ConsoleConfig,
        *,
        key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._roles: Mapping[str, ConsoleRole] = {n: u.role for n, u in console.users.items()}
        self._digests = _user_digests(console)
        self._key = key if key is not None else secrets.token_bytes(32)
        self._clock = clock
        self.ttl_s = console.session_ttl_s
        self.cookie_secure = console.secure_cookies
        # The __Host- prefix makes the browser refuse the cookie unless it is Secure,
        # host-only and for path /: nothing on a sibling domain can plant or read it.
        self.cookie_name = "__Host-riskgate" if console.secure_cookies else "riskgate"
        self._revoked: dict[str, int] = {}
        """Logged-out session ids -> when their cookie would have expired (epoch s)."""

    @property
    def users(self) -> int:
        return len(self._digests)

    def user_for_token(self, token: str) -> str | None:
        """The user a token belongs to (compared in constant time against every user)."""
        digest = token_digest(token)
        found = None
        for name, expected in self._digests.items():
            if hmac.compare_digest(digest, expected):
                found = name
        return found

    def bearer(self, header: str | None) -> Principal | None:
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        name = self.user_for_token(token)
        return None if name is None else Principal(name, self._roles[name], "bearer")

    def new_cookie(self, user: str) -> str:
        """A signed session cookie value for ``user`` (who just gave a valid token)."""
        session = _Session(user, int(self._clock()) + self.ttl_s, secrets.token_hex(16))
        body = _b64(msgspec.json.encode(session))
        return f"{body}.{self._sign(body)}"

    def cookie(self, value: str | None) -> Principal | None:
        """The principal of a session cookie; None when forged, expired or its user is gone."""
        if not value:
            return None
        body, _, mac = value.partition(".")
        if not hmac.compare_digest(mac.encode(), self._sign(body).encode()):
            return None
        try:
            session = msgspec.json.decode(_unb64(body), type=_Session)
        except (msgspec.DecodeError, ValueError):
            return None
        if (
            session.expires <= self._clock()
            or session.user not in self._digests
            or session.sid in self._revoked
        ):
            return None
        return Principal(session.user, self._roles[session.user], "cookie", session.sid)

    def revoke(self, who: Principal) -> None:
        """Log a cookie session out for good: a copy of the cookie is refused from now on.

        Remembered until the cookie would have expired anyway, so the set stays
        as small as the logins of one ``session_ttl_s``.
        """
        if who.via != "cookie":
            return
        now = self._clock()
        for sid in [sid for sid, expires in self._revoked.items() if expires <= now]:
            del self._revoked[sid]
        self._revoked[who.session] = int(now) + self.ttl_s

    def csrf_token(self, who: Principal) -> str:
        """The token a page must echo in ``X-CSRF-Token``; empty for bearer logins."""
        return self._sign(f"csrf:{who.session}") if who.via == "cookie" else ""

    def csrf_ok(self, who: Principal, header: str | None) -> bool:
        if who.via == "bearer":
            return True
        return header is not None and hmac.compare_digest(
            header.encode(), self.csrf_token(who).encode()
        )

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
