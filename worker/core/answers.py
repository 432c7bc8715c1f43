"""Intents answered without the gates, and remembered after them (SPEC §4, R2-R4).

An intent too old for its reservation is refused (R4); one whose id the bot
decided already gets the first answer again when it is the same intent, and a
refusal when the id is reused for another (R3). Every judged intent is
remembered in the bot's intent window; an allowed one reserves what it may
fill until its TTL (R1, R2).
"""

from __future__ import annotations

from worker.core.gates import ALLOWED, REUSED_ID, Verdict, decision
from worker.core.intents import Seen, content_digest
from worker.core.portfolio import PortfolioRisk
from worker.messages import GateDecision, OrderIntent


def recall(
    portfolio: PortfolioRisk, i: OrderIntent, now_ms: int, ttl_ms: int, key: int
) -> GateDecision | None:
    """The answer to an intent that needs no gate: too old, a repeat, or a reused id;
    None when the gates must judge it. ``key``: ``id_digest(i.intent_id)``, hashed once
    per decision for this and :func:`settle`."""
    age = now_ms - i.ts
    if age > ttl_ms:
        reason = f"intent is {age} ms old; reservations last {ttl_ms} ms"
        return decision(i, "expired", reason, now_ms)
    seen = portfolio.intents.get(key)
    if seen is not None:
        if seen.content == content_digest(i):
            return _repeat(i, seen, ttl_ms)
        return decision(i, "duplicate_intent_id", REUSED_ID, now_ms)
    if i.intent_id in portfolio.reservations:  # remembered no more, still reserved
        return decision(i, "duplicate_intent_id", REUSED_ID, now_ms)
    return None


def _repeat(i: OrderIntent, seen: Seen, ttl_ms: int) -> GateDecision:
    """The same intent again: the first decision again, reserving nothing more.

    Rebuilt from the compact window entry, so it reads the same live and
    after a restore; a denial's reason names its gate, not the first text.
    """
    ts = i.ts + seen.delay
    if seen.gate is not None:
        return decision(i, seen.gate, f"repeat of an intent denied by {seen.gate}", ts)
    return decision(i, None, ALLOWED[i.action], ts, ts + ttl_ms)


def settle(
    portfolio: PortfolioRisk,
    i: OrderIntent,
    verdict: Verdict,
    now_ms: int,
    ttl_ms: int,
    *,
    key: int,
) -> GateDecision:
    """Remember a judged intent under ``key`` (its id digest, as :func:`recall` was
    given); an allowed one reserves until ``now + ttl``."""
    gate, reason = verdict
    expires = None
    if gate is None:
        expires = now_ms + ttl_ms
        close = i.action == "close"
        notional = 0.0 if close else i.notional
        portfolio.reserve(i.intent_id, i.symbol, notional, expires, qty=i.qty, close=close)
    portfolio.intents.remember(key, content_digest(i), now_ms - i.ts, gate)
    return decision(i, gate, reason, now_ms, expires)
