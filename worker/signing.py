"""HMAC-SHA256 signatures for operator commands.

The signature covers a canonical encoding of every field but ``sig`` (JSON with
sorted keys, no whitespace), so a producer in any language can reproduce it.
A ``ts`` window bounds replays of a captured command.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import msgspec

from worker.messages import ControlCommand


def canonical_bytes(command: ControlCommand) -> bytes:
    fields = msgspec.to_builtins(command)
    fields.pop("sig", None)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(command: ControlCommand, secret: bytes) -> str:
    return hmac.new(secret, canonical_bytes(command), hashlib.sha256).hexdigest()


def signed(command: ControlCommand, secret: bytes) -> ControlCommand:
    return msgspec.structs.replace(command, sig=sign(command, secret))


def verify(
    command: ControlCommand, secret: bytes, now_ms: int, replay_window_ms: int
) -> str | None:
    """None when the command is authentic and fresh, else why it is not."""
    if not command.sig:
        return "unsigned control command"
    # Compared as bytes: compare_digest raises TypeError for a str with any
    # non-ASCII character, and ``sig`` is untrusted input (a poison record).
    if not hmac.compare_digest(command.sig.encode(), sign(command, secret).encode()):
        return "control command signature does not match"
    if abs(now_ms - command.ts) > replay_window_ms:
        return f"control command ts is outside the {replay_window_ms} ms replay window"
    return None
