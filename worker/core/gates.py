"""The gate policy as data and pure functions (SPEC §4, decisions R1-R5, C2-C3).

:func:`evaluate` is the gate order: given what the bot, the symbol and the
account look like, the first gate that blocks answers, as a named
:class:`Verdict`. :func:`transitions` is the one diff from "which gates block"
before and after a change to the halt/resume events to publish, used alike for
a symbol's gates and a bot's. Nothing here changes state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from worker.core.portfolio import QTY_TOLERANCE
from worker.messages import Block, ControlCommand, Gate, GateDecision, HaltKind, OrderIntent

if TYPE_CHECKING:
    from worker.core.account import Account
    from worker.core.bot import BotRisk
    from worker.core.symbol import SymbolRisk

ALLOWED = {"open": "entries allowed", "close": "reduce-only exit: bypasses entry gates"}
REUSED_ID = "intent_id already used for a different intent"
RESUME_REASONS: dict[Gate, str] = {
    "manual_halt": "manual halt lifted",
    "session_halt": "session rolled over at 00:00 UTC",
    "circuit_breaker": "breaker cooldown elapsed",
    "portfolio_daily_loss": "portfolio latch cleared at 00:00 UTC",
    "drawdown": "drawdown latch cleared at 00:00 UTC",
    "loss_cooldown": "after-loss cooldown elapsed",
    "kill_switch": "kill switch lifted",
    "unreadable_state": "state reset by an operator",
}


class Verdict(NamedTuple):
    """What the gates say of an intent: ``gate`` None when it is allowed."""

    gate: Gate | None
    reason: str


class Transition(NamedTuple):
    """A gate that started (``halted``) or stopped (``resumed``) blocking."""

    kind: HaltKind
    gate: Gate
    reason: str
    until_ts: int | None


def evaluate(
    i: OrderIntent, bot: BotRisk, sym: SymbolRisk | None, now_ms: int, record_ts: int
) -> Verdict:
    """Gate order of SPEC §4.7; the first block answers. ``sym`` None: never touched (N3).

    ``kill_switch`` → the order sanity checks (every intent, closes included) →
    a reducing close bypasses the rest → ``manual_halt`` → ``unreadable_state`` →
    ``session_halt`` → ``circuit_breaker`` → ``loss_cooldown`` → (``stale_mark``)
    → ``portfolio_daily_loss`` → ``drawdown`` → ``daily_notional`` →
    ``max_concurrent_positions`` → ``gross_exposure``. ``record_ts``: the intent's
    record time, which the order rate and duplicate window run on (deterministic).
    """
    killed = kill_verdict(bot, sym)
    if killed is not None:
        return killed
    controls = bot.controls
    cfg = bot.settings.orders_for(i.symbol)
    mark = bot.marks.fresh(i.symbol, now_ms, cfg.mark_max_age_ms) if cfg.price_collar_bps else None
    denial = controls.sanity(i, cfg, mark, record_ts)
    if denial is not None:
        return Verdict(*denial)
    account = bot.account
    if i.action == "close":
        return _evaluate_close(i, sym, account)
    blocks = [*bot.bot_blocks(), *(sym.blocks() if sym is not None else ())]
    if blocks:
        first = min(blocks, key=lambda b: _STATE_ORDER.get(b.gate, 0))
        return Verdict(first.gate, first.reason)
    return _evaluate_open(i, bot, account, now_ms)


_HOLDER_GATES: tuple[Gate, ...] = (
    "kill_switch",
    "manual_halt",
    "unreadable_state",
    "session_halt",
    "circuit_breaker",
    "loss_cooldown",
)
_STATE_ORDER: dict[Gate, int] = {gate: n for n, gate in enumerate(_HOLDER_GATES)}
"""The holders' own blocks in contract order (the bot's manual halt before the
symbol's: blocks are listed bot first and ``min`` keeps the first of equals). The
account's latches are judged after them, live (:func:`_evaluate_open`)."""


def _evaluate_open(i: OrderIntent, bot: BotRisk, account: Account, now_ms: int) -> Verdict:
    """The gates an open meets once no state gate blocks: marks, limits, the reservation cap."""
    portfolio = account.portfolio
    config = portfolio.config
    stale = account.stale_mark(now_ms)
    if stale is not None:
        return Verdict("stale_mark", f"the {stale} mark is too old to value the open position")
    if portfolio.blocked_by_daily_loss(account.decision_net(now_ms)):
        return Verdict(
            "portfolio_daily_loss", f"account reached max daily loss {config.max_daily_loss:g}"
        )
    drawdown = bot.controls.drawdown_block()
    if drawdown is not None:
        return Verdict(drawdown.gate, drawdown.reason)
    denial = bot.controls.notional.check(i.notional)
    if denial is not None:
        return Verdict(*denial)
    if portfolio.concurrency_blocks(account.open_symbols(), i.symbol):
        cap = config.max_concurrent_positions
        return Verdict("max_concurrent_positions", f"{cap} positions already open or reserved")
    if portfolio.exposure_blocks(account.gross_exposure(), i.notional):
        return Verdict(
            "gross_exposure",
            f"notional {i.notional:g} would exceed {config.max_gross_exposure:g}",
        )
    return _reservation_cap(account) or Verdict(None, ALLOWED["open"])


def _evaluate_close(i: OrderIntent, sym: SymbolRisk | None, account: Account) -> Verdict:
    """A close bypasses the gates only for what it reduces, net of other closes (R1)."""
    held = sym.position.qty if sym is not None else 0.0
    if held == 0.0:
        return Verdict("no_position", f"no open {i.symbol} position to close")
    if (held > 0.0) != (i.side == "sell"):
        return Verdict("no_position", f"a {i.side} does not reduce the open position")
    reducible = abs(held) - account.portfolio.reserved_close_qty(i.symbol)
    if i.qty - reducible > QTY_TOLERANCE * max(abs(held), i.qty):
        return Verdict(
            "reduce_only_exceeds_position",
            f"close of {i.qty:g} exceeds the {max(reducible, 0.0):g} of the position "
            "not already being closed",
        )
    return _reservation_cap(account) or Verdict(None, ALLOWED["close"])


def _reservation_cap(account: Account) -> Verdict | None:
    """Outstanding reservations are capped: they are all in the portfolio snapshot."""
    portfolio = account.portfolio
    if not portfolio.full(account.max_reservations):
        return None
    held = len(portfolio.reservations)
    return Verdict(
        "max_concurrent_positions",
        f"{held} reservations outstanding; report fills with their intent_id",
    )


def kill_verdict(bot: BotRisk, sym: SymbolRisk | None) -> Verdict | None:
    """The kill switch of the bot or of the symbol, when one is on: it answers every
    intent first, closes and repeats of an allowed intent included (a retried intent
    after a kill would be an order after it)."""
    kill = bot.controls.kill or (sym.controls.kill if sym is not None else None)
    if kill is None:
        return None
    return Verdict("kill_switch", f"killed by {kill.issued_by}: {kill.reason}")


def decision(
    i: OrderIntent, gate: Gate | None, reason: str, ts: int, expires: int | None = None
) -> GateDecision:
    """The answer to ``i`` (allowed when ``gate`` is None), echoing what it answers (R5)."""
    return GateDecision(
        intent_id=i.intent_id,
        bot=i.bot,
        symbol=i.symbol,
        allowed=gate is None,
        gate=gate,
        reason=reason,
        ts=ts,
        reservation_expires_ts=expires,
        action=i.action,
        side=i.side,
        qty=i.qty,
        price=i.price,
    )


def transitions(
    gates: Sequence[Gate],
    before: Sequence[bool],
    after: Sequence[bool],
    blocks: Iterable[Block],
) -> list[Transition]:
    """The gates that flipped between two signatures, in ``gates`` order.

    ``blocks``: the holder's blocks now (they give a new halt its reason and end).
    """
    if tuple(after) == tuple(before):
        return []
    now_blocking = {b.gate: b for b in blocks}
    out: list[Transition] = []
    for gate, was, now in zip(gates, before, after, strict=True):
        if was == now:
            continue
        block = now_blocking.get(gate)
        if now and block is not None:
            out.append(Transition("halted", gate, block.reason, block.until_ts))
        else:
            out.append(Transition("resumed", gate, RESUME_REASONS[gate], None))
    return out


def command_transition(c: ControlCommand, gate: Gate) -> Transition:
    """The event of an operator command itself (published when it changed a gate, C2)."""
    kinds: dict[str, HaltKind] = {"halt": "halted", "kill": "killed"}
    kind = kinds.get(c.command, "resumed")
    return Transition(kind, gate, f"{c.command} by {c.issued_by}: {c.reason}", None)
