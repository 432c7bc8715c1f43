"""Helpers for the operations tests (``test_ops_*.py``); the worker helpers live in ``harness``.

- HTTP: probe ``/healthz`` ``/readyz``, scrape and parse ``/metrics``;
- :func:`served`: ``serve(config, install_signals=False)`` as a task on this loop;
- logs: the JSON lines a ``riskgate run`` subprocess wrote;
- security: a throwaway PKI made with the ``openssl`` CLI, and :class:`Gateway`,
  a TLS- and/or SASL-terminating TCP proxy in front of the embedded broker
  (Tansu can serve neither: its ``--cert``/``--key`` flags are mutually
  exclusive in the shipped build, and its SASL needs users that only an
  authenticated client can create).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import clock
from worker.config import Config
from worker.http import HttpServer
from worker.kafka.broker import EmbeddedBroker
from worker.runtime import Clock, Worker
from worker.service import serve

# -- HTTP ----------------------------------------------------------------------------


async def http_get(port: int, path: str, within: float = 5.0) -> tuple[int, str] | None:
    """``(status, body)`` of ``GET http://127.0.0.1:port/path``; None when nothing answers."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def http_status(port: int, path: str) -> int | None:
    got = await http_get(port, path)
    return None if got is None else got[0]


class Samples(dict[tuple[str, tuple[tuple[str, str], ...]], float]):
    """Parsed ``/metrics``: (sample name, sorted labels) → value."""

    def value(self, name: str, **labels: str) -> float | None:
        return self.get((name, tuple(sorted(labels.items()))))

    def matching(self, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return {
            key_labels: v
            for (sample, key_labels), v in self.items()
            if sample == name and wanted <= set(key_labels)
        }

    def names(self) -> set[str]:
        return {name for name, _ in self}


def parse_metrics(text: str) -> Samples:
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def scrape(port: int) -> Samples:
    got = await http_get(port, "/metrics")
    assert got is not None and got[0] == 200, f"/metrics answered {got!r}"
    return parse_metrics(got[1])


# -- the service, in-process -------------------------------------------------------------


@dataclass
class Served:
    worker: Worker
    http: HttpServer
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        return self.http.port

    def check_alive(self) -> None:
        if self.task.done():
            error = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"serve() ended unexpectedly: {error!r}")


@contextlib.asynccontextmanager
async def served(config: Config, *, clock: Clock = clock) -> AsyncIterator[Served]:
    """``serve(config, install_signals=False)`` on this loop, stopped (and awaited) on exit."""
    started: asyncio.Future[tuple[Worker, HttpServer]] = asyncio.get_running_loop().create_future()

    def on_start(worker: Worker, http: HttpServer) -> None:
        started.set_result((worker, http))

    task = asyncio.create_task(
        serve(config, clock=clock, install_signals=False, on_start=on_start), name="riskgate-serve"
    )
    try:
        async with asyncio.timeout(30):
            while not started.done():
                if task.done():
                    raise AssertionError(f"serve() ended before listening: {task.exception()!r}")
                await asyncio.sleep(0.01)
        worker, http = started.result()
        yield Served(worker, http, task)
    finally:
        # Like SIGTERM: finish the batch, persist, commit, leave the group; then the
        # HTTP endpoints stop. An exception inside serve() fails the test here.
        if started.done():
            started.result()[0].stop()
        try:
            async with asyncio.timeout(30):
                await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


# -- logs ----------------------------------------------------------------------------------


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON log; fails naming the first line that is not a JSON object."""
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"{path.name}:{number} is not a JSON object: {line!r}"
        entries.append(entry)
    return entries


def logged(path: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log entries whose event is ``event`` (tolerates a line being written)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        if f'"{event}"' not in line:
            continue
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if entry.get("event") == event:
                out.append(entry)
    return out


# -- a throwaway PKI ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing here: trusting it instead of ``ca`` must fail."""

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args))} failed:\n{result.stderr}")


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", cert, "-days", "2",
        "-subj", f"/CN=riskgate test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _issue(
    directory: Path, name: str, ca: tuple[Path, Path], *, cn: str, extensions: str
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("pem", "key", "csr"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={cn}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext_file,
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    """A CA, a server cert for 127.0.0.1/localhost, a client cert, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "ca")
    server = _issue(
        directory,
        "server",
        ca,
        cn="localhost",
        extensions="subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client = _issue(
        directory,
        "client",
        ca,
        cn="riskgate-worker",
        extensions="extendedKeyUsage=clientAuth\n",
    )
    other_ca, _ = _make_ca(directory, "other-ca")
    for key in directory.glob("*.key"):
        os.chmod(key, 0o600)
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)


# -- a TLS / SASL terminating gateway ----------------------------------------------------------

_API_VERSIONS = 18
_SASL_HANDSHAKE = 17
_SASL_AUTHENTICATE = 36
_UNSUPPORTED_SASL_MECHANISM = 33
_SASL_AUTHENTICATION_FAILED = 58
_SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_SCRAM_ITERATIONS = 4096


class _AuthFailed(Exception):
    pass


def _kafka_string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _kafka_bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


class _Scram:
    """The server side of RFC 5802 for one connection."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self._hash = _SCRAM_HASHES[mechanism]
        self._users = users
        self._salt = os.urandom(16)
        self._first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._user: str | None = None

    def first(self, message: str) -> str:
        gs2, _, bare = message.partition(",,")  # "n,," : no channel binding, no authzid
        if gs2 != "n" or not bare:
            raise _AuthFailed("unsupported SCRAM gs2 header")
        params = dict(part.split("=", 1) for part in bare.split(","))
        self._user = params["n"].replace("=2C", ",").replace("=3D", "=")
        self._first_bare = bare
        self._nonce = params["r"] + base64.b64encode(os.urandom(18)).decode()
        salt = base64.b64encode(self._salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={_SCRAM_ITERATIONS}"
        return self._server_first

    def final(self, message: str) -> tuple[str, str]:
        without_proof, _, proof_b64 = message.rpartition(",p=")
        params = dict(part.split("=", 1) for part in without_proof.split(","))
        password = self._users.get(self._user or "")
        if params.get("r") != self._nonce or password is None:
            raise _AuthFailed("authentication failed")
        salted = hashlib.pbkdf2_hmac(self._hash, password.encode(), self._salt, _SCRAM_ITERATIONS)
        client_key = hmac.digest(salted, b"Client Key", self._hash)
        stored_key = hashlib.new(self._hash, client_key).digest()
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, self._hash)
        proof = base64.b64decode(proof_b64)
        candidate = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self._hash, candidate).digest(), stored_key):
            raise _AuthFailed("authentication failed")
        server_key = hmac.digest(salted, b"Server Key", self._hash)
        verifier = base64.b64encode(hmac.digest(server_key, auth_message, self._hash)).decode()
        assert self._user is not None
        return f"v={verifier}", self._user


@dataclass
class GatewayStats:
    connections: int = 0
    tls_sessions: int = 0
    tls_failures: list[str] = field(default_factory=list)
    client_subjects: list[str] = field(default_factory=list)
    """Common names of the client certificates presented (mTLS)."""
    authenticated: list[tuple[str, str]] = field(default_factory=list)
    """(user, mechanism) of every successful SASL authentication."""
    auth_failures: list[str] = field(default_factory=list)
    forwarded_bytes: int = 0


class Gateway:
    """A TCP proxy to the broker that terminates TLS and/or requires SASL, like a real listener.

    With ``ssl_context`` it speaks TLS to clients (and, if the context requires
    them, checks client certificates). With ``users`` every connection must
    authenticate (SaslHandshake v1 + SaslAuthenticate: PLAIN, SCRAM-SHA-256/512)
    before anything but ApiVersions is forwarded, as a broker's SASL listener
    does; a wrong password or mechanism closes the connection with Kafka's error.
    The broker behind it must advertise the gateway's port (``advertised_port``).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
        mechanisms: Iterable[str] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = 0
        self.upstream: tuple[str, int] | None = None
        self._ssl = ssl_context
        self._users = users
        self._mechanisms = list(mechanisms)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.stats = GatewayStats()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- per connection ---------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.stats.connections += 1
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            if self._ssl is not None and not await self._handshake(writer):
                return
            assert self.upstream is not None, "set Gateway.upstream before clients connect"
            up_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(upstream_writer)
            if self._users is not None and not await self._authenticate(
                reader, writer, up_reader, upstream_writer
            ):
                return
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # close(): end quietly (3.11's start_server callback chokes on a cancelled task)
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _handshake(self, writer: asyncio.StreamWriter) -> bool:
        assert self._ssl is not None
        try:
            async with asyncio.timeout(10):
                await writer.start_tls(self._ssl)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self.stats.tls_failures.append(repr(exc))
            return False
        self.stats.tls_sessions += 1
        peer = writer.get_extra_info("peercert")
        if peer:
            for rdn in peer.get("subject", ()):
                for name, value in rdn:
                    if name == "commonName":
                        self.stats.client_subjects.append(value)
        return True

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.stats.forwarded_bytes += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        """Serve the SASL exchange; True once the client authenticated."""
        users = self._users or {}
        mechanism: str | None = None
        scram: _Scram | None = None
        while True:
            request = await _read_frame(reader)
            api_key, api_version, correlation_id = struct.unpack(">hhi", request[:8])
            if api_key == _API_VERSIONS:  # allowed before authentication, as on Kafka
                up_writer.write(_frame(request))
                await up_writer.drain()
                writer.write(_frame(await _read_frame(up_reader)))
                await writer.drain()
                continue
            client_id_len = struct.unpack(">h", request[8:10])[0]
            body = request[10 + max(client_id_len, 0) :]
            header = struct.pack(">i", correlation_id)
            if api_key == _SASL_HANDSHAKE and mechanism is None and api_version >= 1:
                size = struct.unpack(">h", body[:2])[0]
                wanted = body[2 : 2 + size].decode()
                error = 0 if wanted in self._mechanisms else _UNSUPPORTED_SASL_MECHANISM
                listed = b"".join(_kafka_string(m) for m in self._mechanisms)
                writer.write(
                    _frame(header + struct.pack(">hi", error, len(self._mechanisms)) + listed)
                )
                await writer.drain()
                if error:
                    self.stats.auth_failures.append(f"unsupported mechanism {wanted}")
                    return False
                mechanism = wanted
                if mechanism in _SCRAM_HASHES:
                    scram = _Scram(mechanism, users)
                continue
            if api_key == _SASL_AUTHENTICATE and mechanism is not None:
                size = struct.unpack(">i", body[:4])[0]
                token = body[4 : 4 + size]
                tail = struct.pack(">q", 0) if api_version >= 1 else b""
                try:
                    reply, user = self._step(mechanism, scram, token, users)
                except (_AuthFailed, ValueError, KeyError, UnicodeDecodeError) as exc:
                    message = f"Authentication failed during authentication due to: {exc}"
                    writer.write(
                        _frame(
                            header
                            + struct.pack(">h", _SASL_AUTHENTICATION_FAILED)
                            + _kafka_string(message)
                            + _kafka_bytes(b"")
                            + tail
                        )
                    )
                    await writer.drain()
                    self.stats.auth_failures.append(f"{mechanism}: {exc}")
                    return False
                writer.write(
                    _frame(header + struct.pack(">h", 0) + _kafka_string(None) + reply + tail)
                )
                await writer.drain()
                if user is not None:
                    self.stats.authenticated.append((user, mechanism))
                    return True
                continue
            # Anything else before authentication: a SASL listener drops the connection.
            self.stats.auth_failures.append(f"unexpected api {api_key} before authentication")
            return False

    @staticmethod
    def _step(
        mechanism: str, scram: _Scram | None, token: bytes, users: dict[str, str]
    ) -> tuple[bytes, str | None]:
        """The reply bytes (Kafka BYTES) and the user once authenticated."""
        if mechanism == "PLAIN":
            _authzid, user, password = token.decode().split("\0")
            if users.get(user) is None or not hmac.compare_digest(users[user], password):
                raise _AuthFailed(f"invalid credentials for user {user}")
            return _kafka_bytes(b""), user
        assert scram is not None
        message = token.decode()
        if message.startswith("n,"):
            return _kafka_bytes(scram.first(message).encode()), None
        verifier, user = scram.final(message)
        return _kafka_bytes(verifier.encode()), user


@contextlib.asynccontextmanager
async def behind_gateway(
    *,
    ssl_context: ssl.SSLContext | None = None,
    users: dict[str, str] | None = None,
    mechanisms: Iterable[str] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
) -> AsyncIterator[Gateway]:
    """A private embedded broker reachable only through a :class:`Gateway` (which it advertises).

    Use ``gateway.bootstrap_servers`` as the clients' bootstrap: every connection,
    including those to the node and the group coordinator, goes through the gateway.
    """
    gateway = Gateway(ssl_context=ssl_context, users=users, mechanisms=mechanisms)
    await gateway.start()
    broker = EmbeddedBroker(advertised_port=gateway.port)
    try:
        await broker.start_async()
        gateway.upstream = (broker.host, broker.port)
        yield gateway
    finally:
        await gateway.close()
        await broker.stop_async()
