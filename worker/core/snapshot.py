"""Snapshot keys and values on the compacted ``risk.snapshots`` topic.

A symbol snapshot keeps the seed's JSON shape field for field (``version``,
``session_pnl``, ``circuit_breaker``) so a Rust bot can read it; this project's
extra fields come after and are ignored by serde. Decoding never guesses: an
unknown version or a value that does not decode is reported, not misread.
"""

from __future__ import annotations

import msgspec

from worker.core.breaker import CircuitBreakerSnapshot
from worker.core.controls import BotControlsSnapshot, SymbolControlsSnapshot
from worker.core.dedupe import IdWindowSnapshot
from worker.core.idlog import IdChunk, IdLogRef
from worker.core.portfolio import Reservation
from worker.core.position import PositionSnapshot
from worker.core.session import SessionPnlSnapshot

SNAPSHOT_VERSION = 1
"""Bump on any incompatible change; other versions are ignored on restore."""


class ManualHalt(msgspec.Struct, frozen=True):
    """An operator halt: blocks entries (never exits) until ``resume``."""

    reason: str
    issued_by: str
    ts: int


class SymbolSnapshot(msgspec.Struct, kw_only=True):
    """``<bot>/risk/<symbol>``: the seed's shape plus position, halt and replay guards."""

    version: int = SNAPSHOT_VERSION
    session_pnl: SessionPnlSnapshot
    circuit_breaker: CircuitBreakerSnapshot
    position: PositionSnapshot | None = None
    manual_halt: ManualHalt | None = None
    applied_offsets: dict[str, int] = {}
    """Per input partition (``topic/partition``): the last offset applied to this state."""
    recent_outcome_ids: list[str] = []
    """Written by older versions (a window per symbol): restore adopts them into the
    bot's window (``PortfolioSnapshot.outcome_ids``); no longer written."""
    recent_fill_ids: list[str] = []
    """The same for fill ids."""
    halt_seq: int = 0
    """Halt/resume events emitted in all."""
    gate_seq: int = 0
    halt_seqs: dict[str, int] | None = None
    """Per gate, the number of its last halt/resume event (the end of its ``event_id``).
    Absent (None) in snapshots written before numbering was per gate."""
    halt_seq_base: int = 0
    """Where the numbering of a gate not in ``halt_seqs`` continues from."""
    last_command_ts: int | None = None
    """``ts`` of the last operator command applied to this target (stale ones are refused)."""
    command_digests: list[str] = []
    """Digests of the commands applied at ``last_command_ts`` (replays are refused)."""
    born: dict[str, int] = {}
    """The bot's watermarks when the symbol was created (decision D2): a bot-wide
    reset at or below them, replayed after a crash, predates the symbol."""
    controls: SymbolControlsSnapshot | None = None
    """The symbol's kill switch and after-loss cooldown (issue 11); absent when off."""


class PortfolioSnapshot(msgspec.Struct, kw_only=True):
    """``<bot>/portfolio``: the daily-loss latch, bot-level halt and reservations."""

    version: int = SNAPSHOT_VERSION
    halted: bool
    last_reset_day: int
    manual_halt: ManualHalt | None = None
    reservations: dict[str, Reservation] = {}
    """Outstanding reservations by intent id (``qty`` absent in older snapshots)."""
    intent_ids: bytes = b""
    """The bot's window of recently decided intents (:mod:`worker.core.intents`),
    fixed-size binary entries oldest first, base64 in JSON: 21 bytes an entry."""
    applied_offsets: dict[str, int] = {}
    halt_seq: int = 0
    gate_seq: int = 0
    halt_seqs: dict[str, int] | None = None
    """As in :class:`SymbolSnapshot`."""
    halt_seq_base: int = 0
    last_command_ts: int | None = None
    command_digests: list[str] = []
    outcome_ids: IdWindowSnapshot | None = None
    """The bot's window of recent outcome ids (absent in older snapshots)."""
    fill_ids: IdWindowSnapshot | None = None
    """The same for fill ids."""
    id_logs: dict[str, IdLogRef] | None = None
    """Written instead of the three windows above (then empty): per window (``outcomes``,
    ``fills``, ``intents``) its chunk records and unsealed tail (:mod:`worker.core.idlog`)."""
    controls: BotControlsSnapshot | None = None
    """Kill switch, unreadable flag, drawdown, order rate/duplicate windows and the
    day's notional (issue 11); absent in older snapshots (everything off)."""


class SnapshotError(ValueError):
    """A snapshot record that must be ignored (corrupt, unknown version, bad key)."""


class _VersionProbe(msgspec.Struct):
    version: int


_probe = msgspec.json.Decoder(_VersionProbe)
_symbol_decoder = msgspec.json.Decoder(SymbolSnapshot)
_portfolio_decoder = msgspec.json.Decoder(PortfolioSnapshot)
_chunk_decoder = msgspec.json.Decoder(IdChunk)
encode = msgspec.json.Encoder().encode


def symbol_key(bot: str, symbol: str) -> str:
    """The seed's ``state_key``: ``<bot>/risk/<symbol>``."""
    return f"{bot}/risk/{symbol}"


def portfolio_key(bot: str) -> str:
    return f"{bot}/portfolio"


def chunk_key(bot: str, window: str, number: int) -> str:
    """``<bot>/ids/<window>/<n>``: one sealed chunk of an id window (:mod:`worker.core.idlog`)."""
    return f"{bot}/ids/{window}/{number}"


def parse_chunk_key(key: str) -> tuple[str, str, int] | None:
    """``(bot, window, n)`` of a chunk key; None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[1] != "ids" or not parts[0] or not parts[3].isdigit():
        return None
    return parts[0], parts[2], int(parts[3])


def decode_chunk(value: bytes) -> bytes:
    """A chunk's entries; raises SnapshotError when the record must be ignored."""
    try:
        return _chunk_decoder.decode(value).entries
    except msgspec.DecodeError as exc:
        raise SnapshotError(f"corrupt id chunk: {exc}") from exc


def parse_key(key: str) -> tuple[str, str | None]:
    """``(bot, symbol)`` for a symbol key, ``(bot, None)`` for a portfolio key."""
    parts = key.split("/")
    if len(parts) == 3 and parts[1] == "risk" and parts[0] and parts[2]:
        return parts[0], parts[2]
    if len(parts) == 2 and parts[1] == "portfolio" and parts[0]:
        return parts[0], None
    raise SnapshotError(f"not a snapshot key: {key!r}")


def decode_snapshot(
    key: str, value: bytes
) -> tuple[str, str | None, SymbolSnapshot | PortfolioSnapshot]:
    """Decode one record; raises SnapshotError when it must be ignored.

    One full decode in the common case; the version is checked before the value
    is used, and a record of another version that does not even decode as ours
    is still reported as that version, not as corrupt.
    """
    bot, symbol = parse_key(key)
    decoder = _symbol_decoder if symbol is not None else _portfolio_decoder
    try:
        snap = decoder.decode(value)
    except msgspec.DecodeError as exc:
        try:
            version = _probe.decode(value).version
        except msgspec.DecodeError:
            raise SnapshotError(f"corrupt snapshot: {exc}") from exc
        if version == SNAPSHOT_VERSION:
            raise SnapshotError(f"corrupt snapshot: {exc}") from exc
        raise _unknown_version(version) from exc
    if snap.version != SNAPSHOT_VERSION:
        raise _unknown_version(snap.version)
    return bot, symbol, snap


def _unknown_version(version: int) -> SnapshotError:
    return SnapshotError(f"unknown snapshot version {version} (expected {SNAPSHOT_VERSION})")
