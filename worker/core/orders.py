"""Order-level pre-trade checks and their state (issue 11, "Order-level checks").

SEC Rule 15c3-5's erroneous-order checks, NautilusTrader's order throttle and
a daily notional budget. The stateless checks (:func:`size_check`,
:func:`collar_check`) judge one intent; the stateful ones keep what they need
to judge the next intent as plain data with ``snapshot``/``restore``, so a
restored worker judges exactly as the uninterrupted one.

Determinism: the order rate and the duplicate window run on the intents'
*record time* (the Kafka record timestamp the shell passes as ``record_ts``),
never on the wall clock, so a replay of the same records decides the same.
They remember only **allowed** intents: a denied intent changes nothing (like
N3), so a bot retrying after a denial is judged afresh. The daily notional
rolls with the wall clock only (``tick`` from sweep/restore, decision T1).
"""

from __future__ import annotations

import hashlib
import struct
from bisect import insort
from typing import NamedTuple

import msgspec

from worker.config import OrdersConfig
from worker.core.session import utc_day
from worker.messages import Gate, OrderIntent

RATE_WINDOW_MS = 1_000
"""``max_orders_per_sec`` counts allowed intents in the second before an intent."""
MAX_RECENT_ORDERS = 1_000
"""Orders remembered per bot for ``duplicate_window_ms`` (16 bytes each in the
portfolio snapshot). A duplicate of an order more than this many distinct allowed
orders ago is not caught."""
MAX_DUPLICATE_WINDOW_MS = 86_400_000
"""The largest ``duplicate_window_ms``: entries older than this are dropped."""
_RELATIVE = 1e-9
"""Float tolerance of limit comparisons: a value on the limit is within it."""

_encode = msgspec.json.Encoder().encode
_ENTRY = struct.Struct("<Qq")


class Denial(NamedTuple):
    """A check that blocks: its gate and a human reason (not a contract)."""

    gate: Gate
    reason: str


def _exceeds(value: float, cap: float) -> bool:
    """``value > cap`` beyond float residue (``0.1 + 0.2`` does not exceed ``0.3``)."""
    return value - cap > _RELATIVE * max(abs(value), abs(cap))


def size_check(cfg: OrdersConfig, intent: OrderIntent) -> Denial | None:
    """``max_qty`` then ``max_notional`` of one order (0 = off)."""
    if cfg.max_qty and _exceeds(intent.qty, cfg.max_qty):
        return Denial("max_order_qty", f"qty {intent.qty:g} exceeds max_qty {cfg.max_qty:g}")
    notional = intent.notional
    if cfg.max_notional and _exceeds(notional, cfg.max_notional):
        return Denial(
            "max_order_notional",
            f"notional {notional:g} exceeds max_notional {cfg.max_notional:g}",
        )
    return None


def collar_check(cfg: OrdersConfig, price: float, mark: float | None) -> Denial | None:
    """Deny a price further than ``price_collar_bps`` from ``mark`` (a *fresh* mark, or None).

    Without a fresh mark the collar cannot be judged and fails closed.
    """
    bps = cfg.price_collar_bps
    if not bps:
        return None
    if mark is None:
        return Denial("stale_mark", f"no mark fresher than {cfg.mark_max_age_ms} ms")
    if _exceeds(abs(price - mark) * 10_000, bps * mark):
        deviation = abs(price - mark) / mark * 10_000
        return Denial(
            "price_collar",
            f"price {price:g} is {deviation:.1f} bps from mark {mark:g} (collar {bps:g} bps)",
        )
    return None


class OrderRate:
    """``max_orders_per_sec`` per bot on record time.

    Keeps the record times of the ``limit`` latest-stamped allowed intents,
    sorted. An intent at ``ts`` is denied when ``limit`` allowed intents have
    a record time after ``ts - 1000``; as only times at or below the smallest
    kept one were dropped, the smallest kept one decides exactly.
    """

    __slots__ = ("limit", "times")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.times: list[int] = []

    def check(self, record_ts: int) -> Denial | None:
        limit = self.limit
        if limit and len(self.times) >= limit and self.times[0] > record_ts - RATE_WINDOW_MS:
            return Denial("order_rate", f"{limit} orders allowed within the last second")
        return None

    def record(self, record_ts: int) -> None:
        """An intent at ``record_ts`` was allowed."""
        if not self.limit:
            return
        insort(self.times, record_ts)
        if len(self.times) > self.limit:
            del self.times[: len(self.times) - self.limit]

    def snapshot(self) -> list[int]:
        return list(self.times)

    def restore(self, times: list[int]) -> None:
        self.times = []
        for ts in times:
            self.record(ts)


def order_digest(intent: OrderIntent) -> int:
    """What makes two orders duplicates: symbol, side, qty and price (64 bits, stable)."""
    fields = _encode((intent.symbol, intent.side, intent.qty, intent.price))
    return int.from_bytes(hashlib.blake2b(fields, digest_size=8).digest(), "little")


class RecentOrders:
    """``duplicate_window_ms``: the record time of recently allowed orders, by content.

    At most :data:`MAX_RECENT_ORDERS` entries, oldest allowed first out. The
    window itself is the caller's (it resolves per symbol).
    """

    __slots__ = ("_last", "_seen")

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}
        """order digest -> record time it was last allowed, in the order allowed."""
        self._last: tuple[OrderIntent, int] | None = None
        """The intent last digested and its digest: a decision checks, then records, the
        same (frozen) intent, which is hashed once (issue 10's decision cost)."""

    def _digest(self, intent: OrderIntent) -> int:
        last = self._last
        if last is not None and last[0] is intent:
            return last[1]
        digest = order_digest(intent)
        self._last = (intent, digest)
        return digest

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, intent: OrderIntent, record_ts: int, window_ms: int) -> Denial | None:
        if not window_ms:
            return None
        seen = self._seen.get(self._digest(intent))
        if seen is not None and record_ts - seen < window_ms:
            return Denial(
                "duplicate_order",
                f"same {intent.symbol} {intent.side} {intent.qty:g} @ {intent.price:g} "
                f"allowed {record_ts - seen} ms earlier (window {window_ms} ms)",
            )
        return None

    def record(self, intent: OrderIntent, record_ts: int, window_ms: int) -> None:
        """``intent`` at ``record_ts`` was allowed (kept only while a window is set)."""
        if not window_ms:
            return
        seen = self._seen
        digest = self._digest(intent)
        seen.pop(digest, None)
        seen[digest] = record_ts
        cutoff = record_ts - MAX_DUPLICATE_WINDOW_MS
        while seen:  # oldest allowed first: over the cap, or older than any window
            old, ts = next(iter(seen.items()))
            if len(seen) <= MAX_RECENT_ORDERS and ts > cutoff:
                break
            del seen[old]

    def snapshot(self) -> bytes:
        return b"".join(_ENTRY.pack(d, ts) for d, ts in self._seen.items())

    def restore(self, data: bytes) -> None:
        self._seen = {d: ts for d, ts in _ENTRY.iter_unpack(data)}


class DailyNotional:
    """``max_daily_notional``: notional of the opens allowed in the bot's UTC day."""

    __slots__ = ("cap", "day", "total")

    def __init__(self, cap: float, day: int) -> None:
        self.cap = cap
        self.day = day
        self.total = 0.0

    def check(self, notional: float) -> Denial | None:
        cap = self.cap
        if cap and _exceeds(self.total + notional, cap):
            return Denial(
                "daily_notional",
                f"{self.total:g} allowed today + {notional:g} would exceed {cap:g}",
            )
        return None

    def record(self, notional: float) -> None:
        self.total += notional

    def tick(self, now_ms: int) -> bool:
        """The wall clock's UTC rollover restarts the budget; True if it rolled."""
        day = utc_day(now_ms)
        if day <= self.day:
            return False
        self.day, self.total = day, 0.0
        return True

    def snapshot(self) -> tuple[int, float]:
        return self.day, self.total

    def restore(self, day: int, total: float) -> None:
        self.day, self.total = day, total
