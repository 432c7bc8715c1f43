"""The per-bot, per-input-topic window of recent event ids (decisions D1).

A producer that retries re-sends events under new offsets, so offset
watermarks alone count them twice. Each bot remembers the ids of its last
``keep`` fill and outcome events (one window per input topic: each is filled in
that topic's offset order, which a replay reproduces exactly). A duplicate hit
neither inserts nor evicts, so re-sending any run of up to ``keep`` events
counts nothing twice, and re-sent ids never push out the ones still to be
checked (the cascade of a window that evicts on every lookup).

The window is persisted in the bot's portfolio snapshot and judged replays
must agree with the first pass whatever was persisted when a worker died: the
window may be *ahead* of a symbol's state (its snapshot landed, the symbol's did
not). So each entry keeps the (low 32 bits of the) offset that inserted it and
the window keeps its own watermark: a record at or below the watermark was
judged already, and it was a first occurrence exactly when the entry of its id
was inserted by that very offset (or has been evicted since, when the symbol's
own watermark decides).

Entries are one ``bytearray`` of fixed 12-byte records (a ring once full) that
is the persisted form as is: 64-bit blake2b digest of the id, offset. 10,000
ids cost 120 KB (160 KB as base64 JSON) per topic in the snapshot.
"""

from __future__ import annotations

import hashlib
import struct

import msgspec

_ENTRY = struct.Struct("<QI")
"""id digest, low 32 bits of the inserting offset."""
ENTRY_BYTES = _ENTRY.size
_LOW = 0xFFFFFFFF
_HALF = 1 << 31

Origin = tuple[str, int]
"""``(topic/partition, offset)`` of a record (the engine's ``Origin``)."""

_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


class IdWindowSnapshot(msgspec.Struct, kw_only=True):
    """A persisted window: entries oldest first (base64 in JSON) and its watermarks."""

    entries: bytes = b""
    seen: dict[str, int] = {}
    """Per input partition, the last offset the window judged."""


def digest(event_id: str) -> int:
    """Stable across processes (unlike ``hash``): the window is persisted."""
    return _from_bytes(_blake2b(event_id.encode(), digest_size=8).digest(), "little")


class IdWindow:
    """The last ``keep`` distinct event ids of one bot and input topic."""

    __slots__ = ("_buf", "_head", "_slots", "keep", "seen")

    def __init__(self, keep: int) -> None:
        self.keep = keep
        """Ids remembered (``[worker] dedupe_ids_per_bot``); 0 remembers none."""
        self._buf = bytearray()
        self._slots: dict[int, int] = {}
        """id digest -> index of its entry in ``_buf``."""
        self._head = 0
        """Once the ring is full: the slot of the oldest entry (overwritten next)."""
        self.seen: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def first(self, event_id: str, origin: Origin | None) -> bool:
        """True for the first occurrence of ``event_id`` (to apply), False for a re-send.

        Hot path: one digest and one dict lookup for a new record.
        """
        key = _from_bytes(_blake2b(event_id.encode(), digest_size=8).digest(), "little")
        offset = 0
        if origin is not None:
            source, offset = origin
            seen = self.seen
            last = seen.get(source)
            if last is not None and offset <= last:
                return self._judged(key, offset)
            seen[source] = offset
        if key in self._slots:
            return False
        if self.keep:
            self._insert(key, offset & _LOW)
        return True

    def _judged(self, key: int, offset: int) -> bool:
        """A record the window judged before (a replay): what did it say then?

        The entry of its id was inserted by an earlier offset: it was a re-send.
        Inserted by this offset, or evicted since: it was a first occurrence (an
        evicted entry cannot tell; the symbol's watermark then decides alone).
        Offsets compare modulo 2**32: a replay spans far fewer records.
        """
        slot = self._slots.get(key)
        if slot is None:
            return True
        _, low = _ENTRY.unpack_from(self._buf, slot * ENTRY_BYTES)
        return not 0 < ((offset - low) & _LOW) < _HALF

    def _insert(self, key: int, low: int) -> None:
        entry = _ENTRY.pack(key, low)
        buf = self._buf
        count = len(buf) // ENTRY_BYTES
        if count < self.keep:
            buf += entry
            self._slots[key] = count
            return
        slot = self._head
        at = slot * ENTRY_BYTES
        (evicted,) = struct.unpack_from("<Q", buf, at)
        slots = self._slots
        if slots.get(evicted) == slot:
            del slots[evicted]
        buf[at : at + ENTRY_BYTES] = entry
        slots[key] = slot
        self._head = (slot + 1) % self.keep

    def adopt(self, event_ids: list[str]) -> None:
        """Remember ids of an older snapshot format as the oldest entries, while room is left.

        They come without offsets and never displace a newer id.
        """
        room = self.keep - len(self._slots)
        if room <= 0:
            return
        old = bytearray()
        known = set(self._slots)
        for event_id in event_ids[-room:]:
            key = digest(event_id)
            if key not in known:
                known.add(key)
                old += _ENTRY.pack(key, 0)
        if old:
            self.load(IdWindowSnapshot(entries=bytes(old) + self.dump().entries, seen=self.seen))

    def dump(self) -> IdWindowSnapshot:
        """Entries oldest first: the persisted form."""
        head = self._head * ENTRY_BYTES
        return IdWindowSnapshot(
            entries=bytes(self._buf[head:] + self._buf[:head]), seen=dict(self.seen)
        )

    def load(self, snap: IdWindowSnapshot) -> None:
        """Replace the window by a dumped one (its newest ``keep`` entries).

        A truncated trailing entry (never written by :meth:`dump`) is ignored.
        """
        data = snap.entries
        usable = len(data) - len(data) % ENTRY_BYTES
        start = max(0, usable - self.keep * ENTRY_BYTES)
        self._buf = bytearray(data[start:usable])
        self._head = 0
        self._slots = {key: slot for slot, (key, _) in enumerate(_ENTRY.iter_unpack(self._buf))}
        self.seen = dict(snap.seen)
