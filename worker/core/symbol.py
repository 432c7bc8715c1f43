"""One (bot, symbol): session PnL, circuit breaker, position, halts and issue 11's controls.

Its blocks are the symbol-level gates in SPEC order; its wall-clock changes
(UTC rollover, cooldown end, window eviction) happen only in :meth:`SymbolRisk.tick`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from worker.config import BotSettings
from worker.core.breaker import CircuitBreaker
from worker.core.controls import SymbolControls, kill_block, kill_from
from worker.core.effects import Effects
from worker.core.marks import MarkTable, unrealised_pnl
from worker.core.position import Position
from worker.core.replay import Holder
from worker.core.session import MS_PER_DAY, SessionPnl
from worker.core.snapshot import ManualHalt, SymbolSnapshot
from worker.messages import Block, ControlCommand, Gate, GateState

UNBORN: Mapping[str, int] = MappingProxyType({})
"""``SymbolRisk.born`` of a symbol restored or built without watermarks (64 bytes a
symbol less than an empty dict each)."""

SYMBOL_GATES: tuple[Gate, ...] = (
    "kill_switch",
    "manual_halt",
    "session_halt",
    "circuit_breaker",
    "loss_cooldown",
)
"""The symbol-level gates, in the order :meth:`SymbolRisk.signature` reports them."""


def manual_block(halt: ManualHalt) -> Block:
    return Block("manual_halt", f"halted by {halt.issued_by}: {halt.reason}", None)


def halt_from(c: ControlCommand) -> ManualHalt:
    return ManualHalt(reason=c.reason, issued_by=c.issued_by, ts=c.ts)


def command_gate(c: ControlCommand) -> Gate:
    """The gate a command acts on (its HaltEvent's ``gate``, decision C3)."""
    if c.command == "reset_breaker":
        return "circuit_breaker"
    if c.command == "reset_session":
        return "session_halt"
    if c.command == "kill":
        return "kill_switch"
    if c.command == "reset_state":
        return "unreadable_state"
    return "manual_halt"


def _mark_max_age(settings: BotSettings, symbol: str) -> int | None:
    """How fresh this symbol's mark must be for an open to be judged while it holds a
    position: when a loss limit values the position at it (the bot's equity limits, or
    the symbol's session with ``include_unrealised``); None when none does."""
    portfolio = settings.portfolio
    equity_limits = portfolio.max_daily_loss is not None or portfolio.max_drawdown > 0.0
    session, _ = settings.risk_for(symbol)
    if (portfolio.include_unrealised and equity_limits) or session.include_unrealised:
        return settings.orders_for(symbol).mark_max_age_ms
    return None


class SymbolRisk(Holder):
    """Session PnL, breaker, position and manual halt of one (bot, symbol)."""

    __slots__ = (
        "booked_net",
        "born",
        "breaker",
        "controls",
        "key",
        "manual_halt",
        "mark_max_age_ms",
        "marks",
        "position",
        "session",
        "symbol",
    )

    def __init__(
        self, symbol: str, settings: BotSettings, day: int, marks: MarkTable | None = None
    ) -> None:
        super().__init__()
        self.born: Mapping[str, int] = UNBORN
        """The bot's watermarks when this symbol was created live (see ``events._created``);
        replaced, never changed in place, so symbols without any share one empty mapping."""
        session_cfg, breaker_cfg = settings.risk_for(symbol)
        self.symbol = symbol
        self.key = (settings.bot, symbol)
        """``(bot, symbol)``, as it goes into ``Effects.dirty_symbols``."""
        self.session = SessionPnl(session_cfg)
        self.session.last_reset_day = day
        self.breaker = CircuitBreaker(breaker_cfg)
        self.position = Position()
        self.manual_halt: ManualHalt | None = None
        self.controls = SymbolControls(settings.cooldown_for(symbol))
        self.marks = marks if marks is not None else MarkTable()
        """The engine's mark table (shared by every bot)."""
        self.mark_max_age_ms = _mark_max_age(settings, symbol)
        self.booked_net = 0.0
        """The session net the bot's account last summed for this symbol (0.0: none);
        kept here, not in a dict of the account's, so booking an event costs no lookup."""

    def unrealised(self) -> float:
        """The position at the symbol's latest mark (0 when flat or without a mark)."""
        held = self.marks.latest(self.symbol)
        p = self.position
        if held is None or p.qty == 0.0:
            return 0.0
        return unrealised_pnl(p.qty, p.avg_price, p.contract_value, held.price)

    def judge_unrealised(self, ts_ms: int) -> bool:
        """``[session] include_unrealised``: halt when net + unrealised reached the limit
        after an event of the session's day; True if this halted it."""
        session = self.session
        if (
            not session.config.include_unrealised
            or session.halted
            or ts_ms // MS_PER_DAY < session.last_reset_day
            or session.net_pnl + self.unrealised() > session.config.loss_limit
        ):
            return False
        session.halted = True
        return True

    def touch(self, out: Effects) -> None:
        out.dirty_symbols.add(self.key)

    def signature(self) -> tuple[bool, ...]:
        """Which symbol-level gates block, in ``SYMBOL_GATES`` order."""
        return (
            self.controls.kill is not None,
            self.manual_halt is not None,
            self.session.halted,
            self.breaker.tripped_at is not None,
            self.controls.cooldown.until_ms is not None,
        )

    def blocks(self) -> list[Block]:
        blocks: list[Block] = []
        if self.controls.kill is not None:
            blocks.append(kill_block(self.controls.kill))
        if self.manual_halt is not None:
            blocks.append(manual_block(self.manual_halt))
        if self.session.halted:
            s = self.session
            blocks.append(
                Block(
                    "session_halt",
                    f"session net PnL {s.net_pnl:.2f} reached loss limit {s.config.loss_limit:g}",
                    (s.last_reset_day + 1) * MS_PER_DAY,
                )
            )
        until = self.breaker.until_secs
        if until is not None:
            cfg = self.breaker.config
            blocks.append(
                Block(
                    "circuit_breaker",
                    f"{cfg.loss_limit} losses within {cfg.window_secs}s; "
                    f"cooling down for {cfg.cooldown_secs}s",
                    until * 1000,
                )
            )
        cooldown = self.controls.cooldown_block()
        if cooldown is not None:
            blocks.append(cooldown)
        return blocks

    def gate_state(self, now_ms: int) -> GateState:
        """The symbol's own gates (the bot-wide ones are in the account record); a pure read."""
        blocks = self.blocks()
        return GateState(
            bot=self.key[0],
            symbol=self.symbol,
            entries_allowed=not blocks,
            blocks=blocks,
            net_pnl=self.session.net_pnl,
            trades=self.session.trades,
            recent_losses=len(self.breaker.recent_losses),
            position_qty=self.position.qty,
            updated_ts=now_ms,
            seq=self.gate_seq,
            unrealised_pnl=self.unrealised(),
            mark=mark.price if (mark := self.marks.latest(self.symbol)) is not None else None,
        )

    def apply_command(self, c: ControlCommand) -> Gate:
        """What an operator command does to this symbol; returns the gate it acts on."""
        if c.command == "halt":
            self.manual_halt = halt_from(c)
        elif c.command == "kill":
            self.controls.kill = kill_from(c)
        elif c.command == "resume":  # lifts the halt and the kill switch alike
            self.manual_halt = None
            self.controls.kill = None
        elif c.command == "reset_breaker":
            self.breaker.reset()
        elif c.command == "reset_session":
            self.session.reset()
        # ``reset_state`` addresses a bot only (``RiskEngine.validate`` refuses it here).
        return command_gate(c)

    def tick(self, now_ms: int) -> tuple[bool, bool]:
        """Rollover, cooldown end and window eviction at the wall clock ``now_ms``.

        Returns (the session rolled over, anything changed).
        """
        losses = len(self.breaker.recent_losses)
        rolled = self.session.tick(now_ms)
        reset = self.breaker.tick(now_ms // 1000)
        cooled = self.controls.cooldown.tick(now_ms)
        changed = rolled or reset or cooled or len(self.breaker.recent_losses) != losses
        return rolled, changed

    def wake(self, deadline: int) -> int:
        """``deadline``, or earlier when the trip ends or the oldest loss leaves the window.

        Evicting on time (not only on the next loss) keeps ``recent_losses`` in
        the gate record current and makes state independent of restart timing.
        """
        breaker = self.breaker
        config = breaker.config
        if breaker.tripped_at is not None:
            deadline = min(deadline, (breaker.tripped_at + config.cooldown_secs) * 1000)
        if breaker.recent_losses:
            deadline = min(deadline, (breaker.recent_losses[0] + config.window_secs) * 1000)
        cooldown_until = self.controls.cooldown.until_ms
        if cooldown_until is not None:
            deadline = min(deadline, cooldown_until)
        return deadline

    def snapshot(self) -> SymbolSnapshot:
        return SymbolSnapshot(
            session_pnl=self.session.snapshot(),
            circuit_breaker=self.breaker.snapshot(),
            position=self.position.snapshot(),
            manual_halt=self.manual_halt,
            born=dict(self.born),
            controls=self.controls.snapshot(),
            **self.numbering(),
        )

    def restore(self, snap: SymbolSnapshot) -> None:
        self.session.restore(snap.session_pnl)
        self.breaker.restore(snap.circuit_breaker)
        if snap.position is not None:
            self.position.restore(snap.position)
        self.manual_halt = snap.manual_halt
        self.born = snap.born or UNBORN  # the decoded dict: a restore owns it
        self.controls.restore(snap.controls)
        self.restore_numbering(snap)
