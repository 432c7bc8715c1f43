"""Replay guards and event numbering: why a replay after a crash changes nothing.

Every state holder (a symbol, a bot's portfolio) remembers per input partition
the last offset applied to it (its *watermark*) and skips anything at or below
it. Each bot remembers its recent fill and outcome ids (:mod:`worker.core.dedupe`),
persisted as chunk records beside its portfolio (:mod:`worker.core.idlog`), so
an event re-sent by a producer under a new offset counts once. Operator commands
are guarded per target: one older than the last applied, or applied already,
is refused (decision C1).

Numbering lives here too, so that it happens where state changes and never when
a record is built: halt/resume ``event_id`` numbers per gate (C3), and the
``seq`` of a key's gate record, which counts the changes of what it shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.core.dedupe import IdWindow
from worker.core.effects import Effects, Origin
from worker.core.gates import Transition
from worker.core.idlog import ChunkedLog, IdLogRef
from worker.core.intents import IntentWindow
from worker.core.snapshot import PortfolioSnapshot, SymbolSnapshot, chunk_key
from worker.errors import Rejected
from worker.messages import ControlCommand, Gate, HaltEvent

MAX_SAME_TS_COMMANDS = 64
"""Digests remembered of commands applied at a target's latest command ``ts``."""
Cause = tuple[str, str] | None
"""``(issued_by, command digest)`` of the operator command behind an event (None: data or clock)."""
IdChunkOut = tuple[str, int, bytes]
"""A chunk record to write: window name, chunk number, entries (:mod:`worker.core.idlog`)."""


class Holder:
    """Watermarks, the command guard and event numbering of one symbol or one bot."""

    __slots__ = (
        "applied",
        "command_digests",
        "gate_seq",
        "halt_seq",
        "halt_seqs",
        "last_command_ts",
        "seq_base",
    )

    def __init__(self) -> None:
        self.applied: dict[str, int] = {}
        """Per input partition (``topic/partition``): the last offset applied here."""
        self.last_command_ts: int | None = None
        """``ts`` of the last operator command applied to this target."""
        self.command_digests: dict[str, None] = {}
        """Digests of the commands applied at ``last_command_ts``. Any earlier command is
        refused as stale by its ``ts``, so only these can be replayed undetected."""
        self.halt_seq = 0
        """Halt/resume events emitted in all (what snapshots of older versions numbered by)."""
        self.halt_seqs: dict[str, int] = {}
        """Per gate, the sequence number in the ``event_id`` of its last halt/resume event."""
        self.seq_base = 0
        """Where every gate's numbering starts: after the holder-wide ``halt_seq`` of a
        snapshot written before numbering was per gate, so no id is ever reused."""
        self.gate_seq = 0
        """The ``seq`` of this key's gate record: counts the changes of what the record
        shows, bumped where they happen (never when a record is built: that is a pure
        read). Whether events come one by one or in a batch, and replayed duplicates,
        leave it alone; a replay after a crash counts again what it applies again."""

    def fresh(self, origin: Origin | None) -> bool:
        """False for an event at or below this holder's watermark; else record it."""
        if origin is None:
            return True
        last = self.applied.get(origin.source)
        if last is not None and origin.offset <= last:
            return False
        self.applied[origin.source] = origin.offset
        return True

    def replayed(self, origin: Origin | None) -> bool:
        """True for an event at or below this holder's watermark (changes nothing)."""
        if origin is None:
            return False
        last = self.applied.get(origin.source)
        return last is not None and origin.offset <= last

    def touch(self, out: Effects) -> None:
        """Mark this key dirty in ``out``: its gate record and snapshot are written."""
        raise NotImplementedError

    def check_command(self, c: ControlCommand, digest: str) -> None:
        """Refuse a command applied already, or older than the last one applied here (C1).

        A captured signed ``resume`` re-appended after a later ``halt`` must not
        undo it, whatever its signature window says.
        """
        if digest in self.command_digests:
            raise Rejected("replayed_command", f"command {digest} was applied already")
        last = self.last_command_ts
        if last is not None and c.ts < last:
            raise Rejected(
                "stale_command", f"command ts {c.ts} is older than the last applied ({last})"
            )

    def record_command(self, c: ControlCommand, digest: str) -> None:
        if self.last_command_ts is None or c.ts > self.last_command_ts:
            self.last_command_ts = c.ts
            self.command_digests.clear()
        if len(self.command_digests) < MAX_SAME_TS_COMMANDS:
            self.command_digests[digest] = None

    def next_halt_seq(self, gate: Gate) -> int:
        """The next ``event_id`` number of a data- or clock-driven transition, per gate.

        Only fills/outcomes and the clock advance it (one ordered source per gate);
        a command's event is named after the command (``cmd-<digest>``). So a
        replay after a crash numbers events as the first run did, however it
        interleaves control and data topics. A shared count did not: a replay
        could give ``.../circuit_breaker/1`` to a ``resumed`` that the first run
        had published as a ``halted``, and a consumer dropping duplicate ids
        (SPEC §3) would keep the wrong one.
        """
        self.halt_seq += 1
        seq = self.halt_seqs.get(gate, self.seq_base) + 1
        self.halt_seqs[gate] = seq
        return seq

    def halt_event(
        self, bot: str, symbol: str | None, t: Transition, ts_ms: int, cause: Cause = None
    ) -> HaltEvent:
        """The event of one transition; ``cause``: the operator and the digest of the
        command that caused it, which names it (C3), else the gate's next number."""
        gate = t.gate
        tail = f"cmd-{cause[1]}" if cause is not None else self.next_halt_seq(gate)
        return HaltEvent(
            event_id=f"{bot}/{symbol or '*'}/{gate}/{tail}",
            bot=bot,
            symbol=symbol,
            kind=t.kind,
            gate=gate,
            reason=t.reason,
            ts=ts_ms,
            until_ts=t.until_ts,
            issued_by=cause[0] if cause is not None else None,
            cancel_open_orders=t.kind == "killed",
        )

    def numbering(self) -> dict[str, Any]:
        """Snapshot fields every holder has: watermarks, numbering and the command guard."""
        return {
            "applied_offsets": dict(self.applied),
            "halt_seq": self.halt_seq,
            "halt_seqs": dict(self.halt_seqs),
            "halt_seq_base": self.seq_base,
            "gate_seq": self.gate_seq,
            "last_command_ts": self.last_command_ts,
            "command_digests": list(self.command_digests),
        }

    def restore_numbering(self, snap: SymbolSnapshot | PortfolioSnapshot) -> None:
        self.applied = dict(snap.applied_offsets)
        self.halt_seq = snap.halt_seq
        self.gate_seq = snap.gate_seq
        self.last_command_ts = snap.last_command_ts
        self.command_digests = dict.fromkeys(snap.command_digests)
        if snap.halt_seqs is None:  # written before numbering was per gate
            self.halt_seqs = {}
            self.seq_base = snap.halt_seq
        else:
            self.halt_seqs = dict(snap.halt_seqs)
            self.seq_base = snap.halt_seq_base


class IdWindows:
    """A bot's recent-id windows and how they are persisted (decisions D1, R3).

    One window per input topic (outcomes, fills): each is filled in that
    topic's offset order, which replays reproduce exactly whatever the
    interleaving. The intent window belongs to the portfolio (it answers
    repeats); it is persisted the same way, so it is logged here too.
    """

    __slots__ = ("fills", "logs", "outcomes")

    def __init__(self, keep: int, intents: IntentWindow) -> None:
        self.outcomes = IdWindow(keep)
        self.fills = IdWindow(keep)
        self.logs = {
            "outcomes": ChunkedLog(self.outcomes),
            "fills": ChunkedLog(self.fills),
            "intents": ChunkedLog(intents),
        }
        """How the windows are persisted: chunk records beside the portfolio record."""

    def load(self, snap: PortfolioSnapshot) -> None:
        """The whole windows of a portfolio record of the older format, when it has them."""
        if snap.outcome_ids is not None:
            self.outcomes.load(snap.outcome_ids)
        if snap.fill_ids is not None:
            self.fills.load(snap.fill_ids)

    def persist(self) -> tuple[list[IdChunkOut], dict[str, IdLogRef], list[tuple[str, int]]]:
        """The chunks to write before the portfolio record, its references, and the chunks
        to tombstone after it (:mod:`worker.core.idlog`): the record stays small, and the
        ids that did not change are not written again."""
        chunks: list[IdChunkOut] = []
        drops: list[tuple[str, int]] = []
        refs: dict[str, IdLogRef] = {}
        for name, log in self.logs.items():
            sealed, refs[name], dropped = log.persist()
            chunks.extend((name, n, data) for n, data in sealed)
            drops.extend((name, n) for n in dropped)
        return chunks, refs, drops

    def restore(
        self, bot: str, refs: Mapping[str, IdLogRef], chunks: Mapping[str, Mapping[int, bytes]]
    ) -> list[str]:
        """The windows a portfolio record references; returns the keys of missing chunks."""
        missing: list[str] = []
        for name, ref in refs.items():
            log = self.logs.get(name)
            if log is not None:
                lost = log.restore(ref, chunks.get(name, {}))
                missing.extend(chunk_key(bot, name, n) for n in lost)
        return missing

    def adopt(self, snap: SymbolSnapshot) -> None:
        """Ids an older symbol record kept per symbol join the bot's windows, which are then
        written afresh (entries added before the oldest)."""
        self.outcomes.adopt(snap.recent_outcome_ids)
        self.fills.adopt(snap.recent_fill_ids)
        self.renumber()

    def renumber(self) -> None:
        """Write every window again under new chunk numbers (see ``ChunkedLog.renumber``)."""
        for log in self.logs.values():
            log.renumber()
