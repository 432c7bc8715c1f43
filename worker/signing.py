"""HMAC-SHA256 signatures for operator commands.

The signature covers a canonical encoding of every field but ``sig`` (JSON with
sorted keys, no whitespace), so a producer in any language can reproduce it.
A ``ts`` window around the record's timestamp bounds how long a captured command
stays usable; the engine also drops a command older than the last one applied to
its target, or already applied (:func:`command_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import json

import msgspec

from worker.messages import ControlCommand


def canonical_bytes(command: ControlCommand) -> bytes:
    """What the signature covers: every field but ``sig``."""
    fields = msgspec.to_builtins(command)
    fields.pop("sig", None)
    return _canonical(fields)


def _canonical(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def command_digest(command: ControlCommand) -> str:
    """16 hex digits of sha256 over the canonical bytes *including* ``sig``.

    Names one command forever: the engine remembers applied ones by it (a
    replayed command changes nothing) and derives the ``event_id`` of the halt
    event a command causes from it, so the id does not depend on how control
    and data records interleave.
    """
    return hashlib.sha256(_canonical(msgspec.to_builtins(command))).hexdigest()[:16]


def sign(command: ControlCommand, secret: bytes) -> str:
    return hmac.new(secret, canonical_bytes(command), hashlib.sha256).hexdigest()


def signed(command: ControlCommand, secret: bytes) -> ControlCommand:
    return msgspec.structs.replace(command, sig=sign(command, secret))


def verify(
    command: ControlCommand, secret: bytes, record_ts: int, replay_window_ms: int
) -> str | None:
    """None when the command is authentic and fresh, else why it is not.

    Freshness is judged against the Kafka record's timestamp, not the time it is
    processed: a command read late (consumer lag, a restart) or replayed after a
    crash is judged exactly as when it was appended.
    """
    if not command.sig:
        return "unsigned control command"
    # Compared as bytes: compare_digest raises TypeError for a str with any
    # non-ASCII character, and ``sig`` is untrusted input (a poison record).
    if not hmac.compare_digest(command.sig.encode(), sign(command, secret).encode()):
        return "control command signature does not match"
    if abs(record_ts - command.ts) > replay_window_ms:
        return f"control command ts is outside the {replay_window_ms} ms replay window"
    return None
