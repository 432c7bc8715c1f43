"""Let Debian's kcat (librdkafka 2.0.2) talk to the embedded Tansu broker.

librdkafka before 2.2.0 skips a KIP-482 tagged field one byte short (fixed by
confluentinc/librdkafka#4278), so it cannot parse a response carrying a tagged
field longer than one byte. Tansu writes every tagged field of its ApiVersions
v3 response, defaults included (``FinalizedFeaturesEpoch = -1`` is 8 bytes),
and Debian 12's kcat 1.7.1 fails every connection with ``ApiVersionRequest
failed: Local: Read underflow``. Nothing else it answers trips the bug.

:class:`TaglessApiVersions` is a loopback TCP proxy that re-encodes ApiVersions
v3+ responses without tagged fields (the supported-features fields librdkafka
2.0.2 never reads; a real Kafka omits them when they hold their defaults) and
forwards every other byte untouched. The broker behind it must advertise the
proxy's port (``EmbeddedBroker(advertised_port=...)``) so the clients' node and
coordinator connections come through it too. Threads, not asyncio: blocking
clients (confluent-kafka, a kcat subprocess) may use it from any thread.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

from worker.kafka.broker import EmbeddedBroker

API_VERSIONS = 18


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        data = sock.recv(size - len(chunks))
        if not data:
            return None
        chunks += data
    return bytes(chunks)


def _read_frame(sock: socket.socket) -> bytes | None:
    header = _read_exact(sock, 4)
    if header is None:
        return None
    return _read_exact(sock, struct.unpack(">i", header)[0])


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _uvarint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _skip_tags(data: bytes, at: int) -> int:
    count, at = _uvarint(data, at)
    for _ in range(count):
        _tag, at = _uvarint(data, at)
        size, at = _uvarint(data, at)
        at += size
    return at


def untagged_api_versions(frame: bytes) -> bytes:
    """An ApiVersions v3+ response (header v0 + body) re-encoded with no tagged fields.

    Body: error code, compact array of (api key, min, max, tags), throttle time, tags.
    """
    correlation_and_error = frame[:6]
    entries, at = _uvarint(frame, 6)
    out = bytearray(correlation_and_error)
    out += _uvarint_bytes(entries)
    for _ in range(entries - 1):
        out += frame[at : at + 6] + b"\x00"
        at = _skip_tags(frame, at + 6)
    out += frame[at : at + 4] + b"\x00"  # throttle time, then no tagged fields
    return bytes(out)


class TaglessApiVersions:
    """The proxy (see the module docstring); ``bootstrap_servers`` is its address."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.upstream: tuple[str, int] | None = None
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="kcat-shim", daemon=True).start()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self._closed = True
        with self._lock:
            sockets = [self._listener, *self._sockets]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            assert self.upstream is not None, "set upstream before clients connect"
            try:
                broker = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()  # the client sees the broker down, as it would directly
                continue
            broker.settimeout(None)
            self._track(client)
            self._track(broker)
            asked: dict[int, tuple[int, int]] = {}
            threading.Thread(
                target=self._requests, args=(client, broker, asked), daemon=True
            ).start()
            threading.Thread(
                target=self._responses, args=(broker, client, asked), daemon=True
            ).start()

    def _requests(
        self, client: socket.socket, broker: socket.socket, asked: dict[int, tuple[int, int]]
    ) -> None:
        with contextlib.suppress(OSError):
            while (frame := _read_frame(client)) is not None:
                api_key, api_version, correlation_id = struct.unpack(">hhi", frame[:8])
                asked[correlation_id] = (api_key, api_version)
                broker.sendall(struct.pack(">i", len(frame)) + frame)
        self._drop(client, broker)

    def _responses(
        self, broker: socket.socket, client: socket.socket, asked: dict[int, tuple[int, int]]
    ) -> None:
        with contextlib.suppress(OSError):
            while (frame := _read_frame(broker)) is not None:
                api_key, api_version = asked.pop(struct.unpack(">i", frame[:4])[0], (-1, -1))
                if api_key == API_VERSIONS and api_version >= 3:
                    frame = untagged_api_versions(frame)
                client.sendall(struct.pack(">i", len(frame)) + frame)
        self._drop(client, broker)

    def _drop(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(sock)
            sock.close()


@contextlib.contextmanager
def broker_behind_shim() -> Iterator[TaglessApiVersions]:
    """A private embedded broker every client (kcat included) reaches through the shim."""
    shim = TaglessApiVersions()
    try:
        with EmbeddedBroker(advertised_port=shim.port) as broker:
            shim.upstream = (broker.host, broker.port)
            yield shim
    finally:
        shim.close()
