"""The per-bot window of recently decided intent ids (SPEC §4, decisions R3).

An ``intent_id`` names one order. Re-sending the same intent (a client retry)
must get the same answer without reserving twice, and re-using an id for a
*different* order must never ride on the first one's decision (that skipped
every gate). So each bot remembers, for its last ``keep`` decided intents, a
64-bit digest of the id, a 64-bit digest of the whole intent, when it was
decided (relative to the intent's own ``ts``) and how (allowed, or the denying gate).

The window is persisted incrementally beside the bot's portfolio snapshot
(:mod:`worker.core.idlog`): entries live in one ``bytearray`` of fixed-size
records (a ring once full) whose slices are the persisted form as is — 21
bytes an entry, 210 KB in memory for the default 10,000.
Forgetting an old id is safe: an intent whose id is no longer remembered is
simply judged afresh by every gate.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

import msgspec

from worker.messages import GATES, Gate, OrderIntent

DEFAULT_KEEP = 10_000
"""Intent ids remembered per bot (decisions R3)."""

_ENTRY = struct.Struct("<QQiB")
"""id digest, content digest, delay (decision ts - intent ts, ms), outcome code."""
ENTRY_BYTES = _ENTRY.size
_KEY = struct.Struct(f"<Q{ENTRY_BYTES - 8}x")
"""Just the id digest of an entry: restore indexes a full window in a few ms."""
_DELAY_MIN, _DELAY_MAX = -(2**31), 2**31 - 1

_encode = msgspec.json.Encoder().encode


def id_digest(intent_id: str) -> int:
    """Stable across processes (unlike ``hash``): the window is persisted."""
    return int.from_bytes(hashlib.blake2b(intent_id.encode(), digest_size=8).digest(), "little")


def content_digest(intent: OrderIntent) -> int:
    """Digest of every field the engine reads (unknown wire fields are not part of it)."""
    return int.from_bytes(hashlib.blake2b(_encode(intent), digest_size=8).digest(), "little")


def outcome_code(gate: Gate | None) -> int:
    """0 for allowed, else 1 + the gate's index in ``GATES`` (append-only, so codes persist)."""
    return 0 if gate is None else GATES.index(gate) + 1


def outcome_gate(code: int) -> Gate | None:
    return None if code == 0 else GATES[code - 1]


class Seen(NamedTuple):
    """How a remembered intent was decided."""

    content: int
    delay: int
    """Decision ts - intent ts (ms), clamped to 32 bits (an intent ~25 days ahead of the
    wall clock would be answered with a shifted ``ts``; nothing else depends on it)."""
    gate: Gate | None
    """None when it was allowed."""


class IntentWindow:
    """The last ``keep`` decided intents of one bot, oldest evicted first."""

    __slots__ = ("_buf", "_head", "_slots", "keep", "total")

    entry_bytes = ENTRY_BYTES

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self.keep = keep
        self._buf = bytearray()
        self._slots: dict[int, int] = {}
        """id digest -> index of its entry in ``_buf``."""
        self._head = 0
        """Once the ring is full: the slot of the oldest entry (overwritten next)."""
        self.total = 0
        """Intents ever remembered: the newest entry is number ``total - 1`` (its chunk's
        place, :mod:`worker.core.idlog`)."""

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def entries(self) -> int:
        return len(self._buf) // ENTRY_BYTES

    def get(self, key: int) -> Seen | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        _, content, delay, code = _ENTRY.unpack_from(self._buf, slot * ENTRY_BYTES)
        return Seen(content, delay, outcome_gate(code))

    def remember(self, key: int, content: int, delay: int, gate: Gate | None) -> None:
        """Record a new id (the caller checked it is not remembered)."""
        delay = min(max(delay, _DELAY_MIN), _DELAY_MAX)
        entry = _ENTRY.pack(key, content, delay, outcome_code(gate))
        self.total += 1
        count = len(self._buf) // ENTRY_BYTES
        if count < self.keep:
            self._buf += entry
            self._slots[key] = count
            return
        slot = self._head
        offset = slot * ENTRY_BYTES
        (evicted,) = _KEY.unpack_from(self._buf, offset)
        if self._slots.get(evicted) == slot:
            del self._slots[evicted]
        self._buf[offset : offset + ENTRY_BYTES] = entry
        self._slots[key] = slot
        self._head = (slot + 1) % self.keep

    def segment(self, first: int, end: int) -> bytes:
        """Entries ``[first, end)`` in the persisted form, oldest first (the ring may wrap)."""
        count = len(self._buf) // ENTRY_BYTES
        if end <= first:
            return b""
        at = (self._head + first - (self.total - count)) % count
        stop = at + end - first
        buf = self._buf
        if stop <= count:
            return bytes(buf[at * ENTRY_BYTES : stop * ENTRY_BYTES])
        return bytes(buf[at * ENTRY_BYTES :] + buf[: (stop - count) * ENTRY_BYTES])

    def load_segment(self, data: bytes, total: int) -> None:
        """Replace the window by persisted entries, the newest being number ``total - 1``."""
        self.load(data)
        self.total = total

    def dump(self) -> bytes:
        """Entries oldest first: the persisted form."""
        head = self._head * ENTRY_BYTES
        return bytes(self._buf[head:] + self._buf[:head])

    def load(self, data: bytes) -> None:
        """Replace the window by a dumped one (the newest ``keep`` entries of it).

        A truncated trailing entry (never written by :meth:`dump`) is ignored.
        """
        usable = len(data) - len(data) % ENTRY_BYTES
        start = max(0, usable - self.keep * ENTRY_BYTES)
        self._buf = bytearray(data[start:usable])
        self._head = 0
        keys = [key for (key,) in _KEY.iter_unpack(self._buf)]
        self._slots = dict(zip(keys, range(len(keys)), strict=True))
        self.total = len(keys)
