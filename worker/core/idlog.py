"""Id windows persisted incrementally: sealed chunk records plus a tail in the portfolio.

A bot's id windows (outcome and fill ids, decisions D1; intent ids, R3) hold up
to 10,000 entries each. Persisted whole inside the ``<bot>/portfolio`` record,
they made it ~740 KB at worst, and since the portfolio is rewritten whenever
any symbol of the bot is (D3), every persist of an active bot rewrote hundreds
of KB of ids that had not changed (measured: e2e throughput fell by ~40%).

So every entry gets a sequence number (``total``: entries ever inserted) and
entries are grouped in chunks of ``CHUNK_ENTRIES``: chunk ``n`` holds sequence
numbers ``[n * C, (n + 1) * C)``. A chunk is written once, as the immutable
record ``<bot>/ids/<window>/<n>``, when it is full (*sealed*); the unsealed
newest entries (fewer than C) ride in the portfolio record itself, with
``total`` and ``count`` (:class:`IdLogRef`). The window is then the last
``count`` entries of chunks ``(total - count) // C .. total // C - 1`` plus the
tail. A persist writes, per bot and on its one partition:

1. the chunks sealed since the last persist,
2. the portfolio record (which references them),
3. the symbol records (D3),
4. tombstones of the chunks that fell out of the window.

A crash leaves a prefix. Before 2, the last portfolio on the topic references
only chunks written before it, never rewritten with other content (chunk
numbers only grow) and not yet tombstoned (tombstones come after a portfolio
that no longer references them): restore rebuilds exactly the window that
portfolio held, atomically with its watermark — what judged replays need
(:mod:`worker.core.dedupe`). Chunks written without their portfolio are
unreferenced and written again (same numbers) when the window gets there.

A window that must be written again from scratch (restored from the older
whole-window format, legacy ids adopted, or chunks fenced as a zombie's) is
*renumbered* above every chunk number used so far: its chunks are written
afresh before the next portfolio, and the old ones are tombstoned after it —
never overwritten while a portfolio on the topic may still reference them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import msgspec

CHUNK_ENTRIES = 256
"""Entries per chunk: a sealed outcome/fill chunk is 3 KB (4 KB as base64 JSON), an
intent chunk 5.4 KB (7.2 KB); the tail in the portfolio is at most one chunk less an entry."""


class IdLogRef(msgspec.Struct, kw_only=True):
    """In the portfolio record: which entries make the window, and the unsealed tail."""

    total: int
    """Entries ever inserted: the next entry's sequence number."""
    count: int
    """Entries in the window: sequence numbers ``[total - count, total)``."""
    tail: bytes = b""
    """The entries of the unsealed chunk that are in the window, oldest first."""


class IdChunk(msgspec.Struct, kw_only=True):
    """The value of ``<bot>/ids/<window>/<n>``: sealed entries, oldest first."""

    entries: bytes


class Window(Protocol):
    """What a persisted id window offers (:class:`~worker.core.dedupe.IdWindow`,
    :class:`~worker.core.intents.IntentWindow`): fixed-size entries numbered by insertion."""

    entry_bytes: int
    total: int

    @property
    def entries(self) -> int: ...

    def segment(self, first: int, end: int) -> bytes:
        """The persisted bytes of entries ``[first, end)`` (all in the window), oldest first."""
        ...

    def load_segment(self, data: bytes, total: int) -> None:
        """Replace the window by ``data`` (the newest entries, the last one ``total - 1``)."""
        ...


Chunks = list[tuple[int, bytes]]


class ChunkedLog:
    """Which chunks of one window are on the snapshots topic."""

    __slots__ = ("_dropped", "_written", "window")

    def __init__(self, window: Window) -> None:
        self.window = window
        self._written = 0
        """Chunks below this number that the window still holds are on the topic."""
        self._dropped = 0
        """Chunks below this number are tombstoned (or were never written)."""

    def persist(self) -> tuple[Chunks, IdLogRef, list[int]]:
        """The chunks to write before the portfolio, its reference, the chunks to tombstone after.

        Marks them written: the shell sends every record it is given, or stops.
        """
        size = CHUNK_ENTRIES
        window = self.window
        total = window.total
        start = total - window.entries
        first, sealed = start // size, total // size
        chunks = [
            (n, window.segment(max(n * size, start), (n + 1) * size))
            for n in range(max(self._written, first), sealed)
        ]
        self._written = max(self._written, sealed)
        drops = list(range(self._dropped, min(first, self._written)))
        self._dropped = max(self._dropped, first)
        tail = window.segment(max(sealed * size, start), total)
        return chunks, IdLogRef(total=total, count=total - start, tail=tail), drops

    def restore(self, ref: IdLogRef, chunks: Mapping[int, bytes]) -> list[int]:
        """Rebuild the window a portfolio record references; returns the chunks found missing.

        A missing or torn chunk (never written by :meth:`persist`) keeps the newest
        entries after it: the window is shorter, never misaligned. Chunks found
        below the window (a crash before their tombstones) are tombstoned next time.
        """
        size, width = CHUNK_ENTRIES, self.window.entry_bytes
        start = ref.total - ref.count
        first, sealed = start // size, ref.total // size
        parts = [ref.tail]
        missing: list[int] = []
        for n in range(sealed - 1, first - 1, -1):
            data = chunks.get(n)
            whole = data is not None and len(data) == size * width
            if data is None or not (whole or (n == first and len(data) % width == 0)):
                missing.append(n)
                break
            parts.append(data)
        parts.reverse()
        data = b"".join(parts)
        self.window.load_segment(data[max(0, len(data) - ref.count * width) :], ref.total)
        self._written = sealed
        self._dropped = min([first, *(n for n in chunks if n < first)])
        return missing

    def renumber(self) -> None:
        """Write the whole window again, as chunks numbered above every number used so far."""
        size = CHUNK_ENTRIES
        above = max(self._written, self.window.total // size + 1)
        self.window.total = above * size + self.window.entries
        self._written = above
