"""What the core returns instead of doing I/O: where an event came from, what it produced."""

from __future__ import annotations

from typing import NamedTuple

from worker.messages import GateDecision, HaltEvent


class Origin(NamedTuple):
    """Where an event came from: ``topic/partition`` and its offset."""

    source: str
    offset: int


class Effects:
    """What applying events produced; one instance can collect a whole batch.

    The dirty keys say which gate records to publish and which snapshots to
    write; building them afterwards is a pure read (``RiskEngine.gate_states``).
    """

    __slots__ = ("decisions", "dirty_bots", "dirty_symbols", "halts", "skipped")

    def __init__(self) -> None:
        self.halts: list[HaltEvent] = []
        self.decisions: list[GateDecision] = []
        self.dirty_symbols: set[tuple[str, str]] = set()
        self.dirty_bots: set[str] = set()
        self.skipped = 0
        """Events dropped as replays (offset at or below a watermark) or duplicate ids."""
