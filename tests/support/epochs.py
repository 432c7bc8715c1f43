"""Epochs: a crash-loop stream in which the wall clock expires state, yet compares exactly.

The worker ends cooldowns, evicts breaker losses and expires reservations only
when its wall clock passes them, at sweeps the test cannot schedule
(``docs/spec.md`` §5), and a worker killed mid-stream re-applies records later
on the clock than it first did. With a cooldown of seconds, whether a loss is
applied before or after the sweep that ends a trip would change the state, and
the reference model could not know which happened.

So the stream is cut into epochs, each stamped at the wall time it starts:

1. its data records (fills, outcomes, intents, halt/resume commands) are sent
   and the driver waits until the worker has committed all of them (no record is
   ever applied again after that, whatever gets killed);
2. the *barrier* commands - signed ``reset_breaker`` / ``reset_session`` on a bot
   or one symbol, plus a replayed, a stale and a badly signed command - are sent
   and committed the same way; they sit between data and clock, so a reset meets
   the trips and session halts the epoch's data caused;
3. the driver waits until the wall clock is past every boundary the epoch set
   (all of them are ``expiry`` after its records: first event + window,
   trip + cooldown, decision + TTL) plus two sweep intervals, and notes that time.

If step 1 and 2 finish before the epoch's earliest boundary (first event +
``expiry``; :attr:`Epoch.late` says when they did not), no sweep during them
changes anything, and every sweep after them (or a restore's) meets the same
state and the same passed boundaries. The model then applies each epoch's
records and sweeps once at the noted time: the result is the worker's, exactly.
Only the ``ts`` of a clock-caused halt event (the sweep's wall time) cannot be
known; :func:`reference` lists those events with the earliest ``ts`` allowed.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from tests.support.compare import HaltView
from tests.support.harness import expected_halts
from tests.support.model import Halt, Model, Rejected, canonical_command, limits_from_config
from tests.support.reliability import BotSpec
from worker.config import Config
from worker.messages import ControlCommand, Event, OrderIntent

SECRET = "chaos-control-secret"
"""The crash loop's ``[control] secret``: every command it sends is signed with it."""


@dataclass
class Epoch:
    """One epoch as sent: records, barrier commands and the wall times that place them."""

    start_ms: int
    """Wall time the epoch began: its first record's ``ts``."""
    events: list[Event] = field(default_factory=list)
    barrier: list[Event] = field(default_factory=list)
    committed_ms: int = 0
    """Wall time the worker had committed every record of the epoch."""
    swept_ms: int = 0
    """Wall time the driver waited for: past every boundary; the model sweeps here."""

    def late(self, expiry_ms: int) -> bool:
        """True if a record may have been applied after the clock passed a boundary."""
        return self.committed_ms >= self.start_ms + expiry_ms

    @property
    def records(self) -> list[Event]:
        return [*self.events, *self.barrier]


def split(stream: Sequence[Event], epochs: int) -> list[list[Event]]:
    """``stream`` in ``epochs`` contiguous, nearly equal parts (in order)."""
    n = max(1, epochs)
    bounds = [len(stream) * k // n for k in range(n + 1)]
    return [list(stream[a:b]) for a, b in itertools.pairwise(bounds)]


def sign(command: ControlCommand, secret: str) -> ControlCommand:
    """The HMAC of the spec's canonical command bytes (the model's encoding, not the
    worker's: a signing bug in the worker then shows up as refused commands)."""
    digest = hmac.new(
        secret.encode(), canonical_command(command, with_sig=False), hashlib.sha256
    ).hexdigest()
    return msgspec.structs.replace(command, sig=digest)


def stamp(
    templates: Sequence[Event],
    start_ms: int,
    span_ms: int,
    secret: str | None,
    stamped: dict[int, Event],
) -> list[Event]:
    """The epoch's records, stamped evenly over ``[start_ms, start_ms + span_ms)``.

    A template already stamped in an earlier epoch (a re-sent duplicate, a client
    retrying an intent) keeps its first stamp: it is the same record sent again.
    Commands are signed after stamping (the signature covers ``ts``).
    """
    out: list[Event] = []
    for j, template in enumerate(templates):
        event = stamped.get(id(template))
        if event is None:
            ts = start_ms + j * span_ms // max(1, len(templates))
            event = msgspec.structs.replace(template, ts=ts)
            if isinstance(event, ControlCommand) and secret is not None:
                event = sign(event, secret)
            stamped[id(template)] = event
        out.append(event)
    return out


def barrier_commands(
    rng: random.Random, bots: Sequence[BotSpec], ts: int, secret: str, resets: int = 3
) -> list[ControlCommand]:
    """Signed resets of ``resets`` bots (bot-wide or one symbol), then three refusals.

    Each command gets its own ``ts`` (``ts``, ``ts + 1``, ...), after every data
    record of the epoch. Then the control topic is exercised: the first reset
    appended again (``replayed_command``), a reset for its target one millisecond
    older than it (``stale_command``), and one with a wrong signature
    (``bad_signature``). None of the three may change anything.
    """
    chosen = rng.sample([b for b in bots if not b.intents_only], resets)
    commands = []
    for n, bot in enumerate(chosen):
        command = ControlCommand(
            command=rng.choice(("reset_breaker", "reset_session")),
            bot=bot.name,
            symbol=rng.choice(bot.symbols) if rng.random() < 0.5 else None,
            reason=f"chaos reset {n}",
            issued_by="chaos",
            ts=ts + n,
        )
        commands.append(sign(command, secret))
    first = commands[0]
    stale = sign(msgspec.structs.replace(first, ts=first.ts - 1, reason="stale"), secret)
    forged = msgspec.structs.replace(
        sign(msgspec.structs.replace(first, ts=ts + resets, reason="forged"), secret), sig="0" * 64
    )
    return [*commands, first, stale, forged]


@dataclass
class Reference:
    """The model's view of an epoch run: state, halts and what it refused."""

    model: Model
    halts: list[HaltView]
    clock_halts: dict[str, int]
    """Event id of each clock-caused halt event → the earliest ``ts`` it may carry."""
    rejected: list[tuple[int, str]]
    """(position in send order, reason) of every record the model refused."""
    intents: list[OrderIntent]
    """The intents the model accepted, as sent."""


def reference(config: Config, epochs: Iterable[Epoch]) -> Reference:
    """Each epoch's records through the model, then one sweep at the epoch's swept time.

    A record is applied at its own ``ts`` (its record time too: the stamp is the
    wall time it was sent at), or at the epoch's start if it was stamped in an
    earlier epoch (a retried intent is decided when it arrives, not when first sent).
    """
    model = Model(limits_from_config(config))
    clock: dict[str, int] = {}
    rejected: list[tuple[int, str]] = []
    intents: list[OrderIntent] = []
    position = 0
    for epoch in epochs:
        for event in epoch.records:
            now = max(event.ts, epoch.start_ms)
            try:
                model.apply(event, now, record_ts=event.ts)
            except Rejected as refused:
                rejected.append((position, refused.reason))
            else:
                if isinstance(event, OrderIntent):
                    intents.append(event)
            position += 1
        before = len(model.halts)
        model.sweep(epoch.swept_ms)
        for halt in model.halts[before:]:
            clock[halt.event_id] = _earliest(halt, model.halts[:before])
    return Reference(model, expected_halts(model), clock, rejected, intents)


def _earliest(halt: Halt, earlier: Sequence[Halt]) -> int:
    """When the clock may first cause ``halt``: for a resume, the ``until_ts`` of the
    halt it ends (a cooldown's end, the next UTC midnight); else any time."""
    if halt.kind == "resumed":
        for before in reversed(earlier):
            if (before.bot, before.symbol, before.gate) == (halt.bot, halt.symbol, halt.gate):
                return (before.until_ts or 0) if before.kind == "halted" else 0
    return 0
