"""Operator actions from the console: checked, signed server-side, audited, sent.

An action becomes exactly the control command ``riskgate halt|resume|reset-*``
would send: :func:`worker.operator.make_command` checks it against the config
and the message types and signs it with the control secret, which stays in
this process (the browser never sees it). The command's ``issued_by`` is the
logged-in user, so the worker's halt event names who acted.

Every attempt is audited — who, what, on which bot/symbol, why, when, and what
came of it — as one JSON record on ``[topics] audit`` (key = bot) and one log
line. The record is written *before* the command is sent: when it cannot be
written, nothing is sent (no unaudited action). A refused attempt (a viewer,
a missing reason, a bot the worker would reject) is audited too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, Protocol

import msgspec
import structlog
from aiokafka.errors import KafkaError

from worker.clock import wall_clock_ms
from worker.config import Config
from worker.console.auth import Principal
from worker.messages import Command, ControlCommand
from worker.operator import OperatorError, command_event_id, make_command
from worker.signing import command_digest

log = structlog.get_logger("riskgate.console")

ACTIONS: Mapping[str, Command] = {
    "halt": "halt",
    "resume": "resume",
    "reset-breaker": "reset_breaker",
    "reset-session": "reset_session",
    "kill": "kill",
}
"""Console action name → control command; the page lists whatever ``/api/me``
returns from this table. ``kill`` denies every intent, closes included, and the
worker's ``killed`` event tells execution services to cancel working orders;
``resume`` lifts it. ``reset_state`` is left to the CLI: it discards a bot's
unreadable snapshot, a deliberate act an operator takes with the files at hand."""

Outcome = Literal["refused", "issued", "send_failed"]


class ActionRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /api/actions``."""

    action: str
    bot: str
    reason: str
    symbol: str | None = None


class AuditRecord(msgspec.Struct, frozen=True):
    """One line of the audit trail (``[topics] audit``, key = bot)."""

    ts: int
    user: str
    role: str
    via: str
    remote: str
    action: str
    bot: str
    symbol: str | None
    reason: str
    outcome: Outcome
    detail: str
    event_id: str | None = None
    """The HaltEvent the worker will publish for it (issued actions only)."""
    command_digest: str | None = None


class ActionResult(msgspec.Struct, frozen=True):
    """What the page is told about an issued action (it then watches for ``event_id``)."""

    action: str
    bot: str
    symbol: str | None
    event_id: str
    command_digest: str
    signed: bool


class ActionRefused(Exception):
    """Not sent; ``status`` is the HTTP status the console answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Sender(Protocol):
    """The part of AIOKafkaProducer used here (an ``acks=all`` producer)."""

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> object: ...


class Actions:
    """Performs actions for authenticated users; ``secret`` is the control secret or None."""

    def __init__(
        self,
        config: Config,
        producer: Sender,
        secret: bytes | None,
        *,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._config = config
        self._producer = producer
        self._secret = secret
        self._clock = clock

    def names(self, who: Principal) -> list[str]:
        """The actions ``who`` may take (none for a viewer)."""
        return list(ACTIONS) if who.can_act else []

    async def perform(self, who: Principal, request: ActionRequest, remote: str) -> ActionResult:
        """Audit, then send; ActionRefused (audited) when it is not sent."""
        now = self._clock()
        try:
            cmd = self._command(who, request, now)
        except ActionRefused as exc:
            await self._audit(
                self._record(who, request, remote, now, outcome="refused", detail=str(exc))
            )
            raise
        event_id, digest = command_event_id(cmd), command_digest(cmd)
        issued = self._record(
            who, request, remote, now, outcome="issued", detail="sent to the control topic"
        )
        await self._audit(
            msgspec.structs.replace(issued, event_id=event_id, command_digest=digest),
            required=True,
        )
        try:
            await self._producer.send_and_wait(
                self._config.topics.control, msgspec.json.encode(cmd), key=cmd.bot.encode()
            )
        except KafkaError as exc:
            failed = self._record(
                who, request, remote, now, outcome="send_failed", detail=repr(exc)
            )
            await self._audit(msgspec.structs.replace(failed, command_digest=digest))
            raise ActionRefused(503, f"the command could not be sent: {exc!r}") from exc
        return ActionResult(
            request.action, cmd.bot, cmd.symbol, event_id, digest, signed=cmd.sig is not None
        )

    def _command(self, who: Principal, request: ActionRequest, now: int) -> ControlCommand:
        """The signed command, or ActionRefused saying why there is none."""
        if not who.can_act:
            raise ActionRefused(403, f"{who.name} is a {who.role}: only operators may act")
        command = ACTIONS.get(request.action)
        if command is None:
            raise ActionRefused(
                400, f"unknown action {request.action!r}; one of {', '.join(ACTIONS)}"
            )
        if not request.reason.strip():
            raise ActionRefused(400, "a reason is required")
        try:
            return make_command(
                self._config,
                command,
                bot=request.bot,
                symbol=request.symbol or None,
                reason=request.reason.strip(),
                issued_by=who.name,
                secret=self._secret,
                now_ms=now,
            )
        except OperatorError as exc:
            raise ActionRefused(400, str(exc)) from exc

    def _record(
        self,
        who: Principal,
        request: ActionRequest,
        remote: str,
        now: int,
        *,
        outcome: Outcome,
        detail: str,
    ) -> AuditRecord:
        return AuditRecord(
            ts=now,
            user=who.name,
            role=who.role,
            via=who.via,
            remote=remote,
            action=request.action[:64],
            bot=request.bot[:64],
            symbol=request.symbol[:64] if request.symbol is not None else None,
            reason=request.reason[:256],
            outcome=outcome,
            detail=detail[:1024],
        )

    async def _audit(self, record: AuditRecord, *, required: bool = False) -> None:
        """Log and publish ``record``.

        ``required``: the action waits on it, so a record the topic cannot take
        stops the action (ActionRefused 503). Otherwise (a refusal, a failed
        send) the log line is the trail and the answer stays the refusal's.
        """
        fields = msgspec.to_builtins(record)
        log.info("console action", **fields)
        try:
            await self._producer.send_and_wait(
                self._config.topics.audit, msgspec.json.encode(record), key=record.bot.encode()
            )
        except KafkaError as exc:
            log.exception("audit record not written", **fields)
            if required:
                raise ActionRefused(
                    503, f"the audit record could not be written, nothing sent: {exc!r}"
                ) from exc
