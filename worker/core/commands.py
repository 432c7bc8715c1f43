"""Operator commands on a bot or one of its symbols (SPEC §6, decisions C1-C3).

A command is refused (Rejected, changing nothing) when it is stale or
replayed. Its halt event is named after the command (C3) and published only
when a gate starts or stops blocking, or for a ``halt`` (the operator's
verdict): a reset or resume of something not blocked publishes nothing (C2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker import signing
from worker.core.controls import kill_from
from worker.core.effects import Effects, Origin
from worker.core.gates import command_transition
from worker.core.halt_events import BOT_GATES
from worker.core.replay import Holder
from worker.core.symbol import SYMBOL_GATES, SymbolRisk, command_gate, halt_from
from worker.messages import ControlCommand, Gate

if TYPE_CHECKING:
    from worker.core.bot import BotRisk


def control(bot: BotRisk, c: ControlCommand, origin: Origin | None, out: Effects) -> None:
    """Apply one command; Rejected, changing nothing, when stale or replayed (C1)."""
    digest = signing.command_digest(c)
    if c.symbol is None:
        _control_bot(bot, c, digest, origin, out)
        return
    sym = bot.symbols.get(c.symbol)
    if sym is not None:
        if sym.replayed(origin):
            out.skipped += 1
            return
        sym.check_command(c, digest)
    else:
        sym = bot.symbol(c.symbol)
    sym.fresh(origin)
    sym.record_command(c, digest)
    before = sym.signature()
    sym.apply_command(c)
    bot.account.resum()
    sym.gate_seq += 1
    sym.touch(out)
    for gate in _command_gates(c, SYMBOL_GATES, before, sym.signature()):
        _emit(bot, sym, sym.symbol, gate, c, digest=digest, out=out)
    # The portfolio's own watermark moves too (the portfolio record goes with the
    # symbol's): a replay that finds the latch persisted must not judge it again (D3).
    if bot.fresh(origin) and c.command == "reset_session":
        _latch_on_reset(bot, c, digest, out)


def _control_bot(
    bot: BotRisk, c: ControlCommand, digest: str, origin: Origin | None, out: Effects
) -> None:
    # The bot's watermark guards every bot-level command, so a replayed reset
    # is skipped instead of re-emitting its HaltEvent; each symbol's own
    # watermark guards what the reset does to it (D2).
    replayed = bot.replayed(origin)
    if not replayed:
        bot.check_command(c, digest)
    bot.fresh(origin)
    if c.command in ("halt", "resume", "kill", "reset_state"):
        if replayed:
            out.skipped += 1
            return
        before = bot.signature()
        _apply_to_bot(bot, c)
        gates = _command_gates(c, BOT_GATES, before, bot.signature())
    else:
        bot.account.resum()
        changed = False
        for sym in bot.symbols.values():
            if _born_before(sym, origin) and sym.fresh(origin):
                before = sym.signature()
                sym.apply_command(c)
                changed = changed or sym.signature() != before
                sym.gate_seq += 1
                sym.touch(out)
        if replayed:
            out.skipped += 1
            return
        gates = [command_gate(c)] if changed else []
    bot.record_command(c, digest)
    bot.gate_seq += 1
    bot.touch(out)
    for gate in gates:
        _emit(bot, bot, None, gate, c, digest=digest, out=out)
    # No latch judgement: a bot-wide ``reset_session`` zeroes every session of
    # today, so the account is at 0, above any limit (limits are negative).


def _apply_to_bot(bot: BotRisk, c: ControlCommand) -> None:
    """A bot-level ``halt``, ``kill``, ``resume`` (lifts both) or ``reset_state``."""
    if c.command == "halt":
        bot.manual_halt = halt_from(c)
    elif c.command == "kill":
        bot.controls.kill = kill_from(c)
    elif c.command == "resume":
        bot.manual_halt = None
        bot.controls.kill = None
    else:
        bot.controls.unreadable = False


def _command_gates(
    c: ControlCommand, gates: tuple[Gate, ...], before: tuple[bool, ...], after: tuple[bool, ...]
) -> list[Gate]:
    """The gates a command's events name: a ``halt`` or ``kill`` always (the operator's
    acknowledgement, also when already on); otherwise each gate it stopped (C2)."""
    if c.command in ("halt", "kill"):
        return [command_gate(c)]
    return [g for g, was, now in zip(gates, before, after, strict=True) if was and not now]


def _born_before(sym: SymbolRisk, origin: Origin | None) -> bool:
    """Did ``sym`` exist when the event at ``origin`` was first applied? (``events._created``)"""
    return origin is None or sym.born.get(origin.source, -1) < origin.offset


def _latch_on_reset(bot: BotRisk, c: ControlCommand, digest: str, out: Effects) -> None:
    """Latch the daily loss if a ``reset_session`` took the account to the limit.

    Resetting one *winning* session lowers the account net. Left to the live
    check alone, the bot would be blocked only while breached and trade again
    the same day once the account recovered: a bypass of the latch (findings
    E1-1; SPEC §4.4 "checked live and latched"). Judged on the exact sum and
    whatever the command's ``ts``: the reset cleared a session of today. The
    event is the command's (C3: ``cmd-<digest>``, at its ``ts``); callers run
    this only above the portfolio's own watermark, so a replay after a crash
    neither re-latches nor publishes it twice (D3).
    """
    before = bot.signature()
    if bot.account.latch_exact():
        bot.gate_seq += 1
        bot.emit(bot, before, c.ts, out, cause=(c.issued_by, digest))


def _emit(
    bot: BotRisk,
    holder: Holder,
    symbol: str | None,
    gate: Gate,
    c: ControlCommand,
    *,
    digest: str,
    out: Effects,
) -> None:
    """The command's own event, named after it (C3)."""
    t = command_transition(c, gate)
    out.halts.append(holder.halt_event(bot.bot, symbol, t, c.ts, (c.issued_by, digest)))
    holder.touch(out)
