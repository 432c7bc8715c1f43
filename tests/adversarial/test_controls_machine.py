"""Issue 11 under random interleavings: marks, equity limits, drawdown and the kill switch.

A hypothesis state machine drives one bot with random long fills (positions only
grow, so the average entry is a plain weighted mean computed here), random marks
(in and out of order), kill/halt/resume commands on the bot or a symbol, intents
of both actions, and the wall clock. It keeps its own account of what the
contract says and checks after every step:

- a killed bot or symbol never gets an allowed intent, closes included;
- equity = realised (0: nothing closes) + sum of qty * (latest mark - average entry);
  once an event leaves it at or below ``max_daily_loss`` the bot is latched
  (``portfolio_daily_loss``) for the rest of the UTC day, whatever the marks do
  next, and it is never blocked by it while equity stayed above the limit (the
  gate is checked live and latched: a carried position can block a new day);
- the drawdown latches exactly when equity fell ``max_drawdown`` below the day's
  running peak after some event, and holds for the day;
- the wall clock's rollover releases both latches and nothing else does;
- the last ``portfolio_daily_loss`` halt event published says ``halted`` exactly when
  the account record lists that block (decision H10-1: the gate is "latched or
  breached live"), after every step, wall-clock rollovers included: a losing
  position carried past midnight gets no ``resumed`` while it keeps the bot blocked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from worker.config import load_config
from worker.core import Effects, RiskEngine
from worker.messages import AccountGateState, ControlCommand, Fill, Mark, OrderIntent

BOT = "alpha"
SYMBOLS = ("BTC", "ETH")
DAY_MS = 86_400_000
DAILY_LOSS = -100.25
DRAWDOWN = 60.25
"""Off the grid of reachable equities (multiples of 0.5 here), so the float residue
of an average entry price never decides a tie."""
START = 20_254 * DAY_MS + 9 * 3_600_000
CONFIG = f"""
[bots.{BOT}]
pnl_source = "fills"
symbols = ["BTC", "ETH"]
[bots.{BOT}.session]
loss_limit = -1e12
[bots.{BOT}.portfolio]
max_daily_loss = {DAILY_LOSS}
max_drawdown = {DRAWDOWN}
[bots.{BOT}.orders]
mark_max_age_ms = 86400000
[worker]
reservation_ttl_ms = 86400000
"""


@dataclass
class Held:
    qty: float = 0.0
    cost: float = 0.0
    mark: float | None = None
    mark_ts: int = -1

    def unrealised(self) -> float:
        if self.mark is None or self.qty == 0.0:
            return 0.0
        return self.qty * self.mark - self.cost


@dataclass
class Expected:
    held: dict[str, Held] = field(default_factory=lambda: {s: Held() for s in SYMBOLS})
    day: int = START // DAY_MS
    peak: float = 0.0
    loss_latched: bool = False
    drawdown_latched: bool = False
    killed: set[str | None] = field(default_factory=set)
    """``None``: the bot; else a symbol."""

    def equity(self) -> float:
        return sum(h.unrealised() for h in self.held.values())

    def observe(self) -> None:
        """After an event of today: the latches judge the equity (T1: they only engage)."""
        equity = self.equity()
        if equity <= DAILY_LOSS:
            self.loss_latched = True
        if not self.drawdown_latched:
            self.peak = max(self.peak, equity)
            if self.peak - equity >= DRAWDOWN:
                self.drawdown_latched = True


prices = st.sampled_from([100.0, 90.0, 80.0, 120.0, 60.0, 40.0, 150.0, 70.0])
qtys = st.sampled_from([0.5, 1.0, 2.0])
symbols = st.sampled_from(SYMBOLS)
targets = st.sampled_from([None, *SYMBOLS])


class ControlsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = RiskEngine(load_config(text=CONFIG, env={}))
        self.now = START
        self.expected = Expected()
        self.ids = 0
        self.last_command_ts = START
        self.loss_shown = False
        """Whether the last ``portfolio_daily_loss`` event published said ``halted``."""

    def _published(self, out: Effects) -> None:
        for h in out.halts:
            if h.gate == "portfolio_daily_loss":
                assert h.kind == ("resumed" if self.loss_shown else "halted"), h
                self.loss_shown = h.kind == "halted"

    @initialize()
    def start(self) -> None:
        self._published(self.engine.sweep(self.now))

    def _id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}-{self.ids}"

    def _tick(self) -> int:
        self.now += 1
        return self.now

    @rule(symbol=symbols, qty=qtys, price=prices)
    def fill(self, symbol: str, qty: float, price: float) -> None:
        ts = self._tick()
        self._published(
            self.engine.apply(Fill(self._id("f"), BOT, symbol, "buy", qty, price, 0.0, ts), ts)
        )
        held = self.expected.held[symbol]
        held.qty += qty
        held.cost += qty * price
        self.expected.observe()

    @rule(symbol=symbols, price=prices, back=st.sampled_from([0, 0, 5_000]))
    def mark(self, symbol: str, price: float, back: int) -> None:
        ts = self._tick() - back
        self._published(self.engine.apply_mark(Mark(symbol, price, ts)))
        held = self.expected.held[symbol]
        if ts < held.mark_ts:
            return  # an older mark changes nothing
        changed = (price, ts) != (held.mark, held.mark_ts)
        held.mark, held.mark_ts = price, ts
        late = ts // DAY_MS < self.expected.day  # stamped before today's rollover
        if changed and held.qty and not late:
            self.expected.observe()

    @rule(where=targets, command=st.sampled_from(["kill", "kill", "halt", "resume"]))
    def command(self, where: str | None, command: str) -> None:
        ts = self._tick()
        self.last_command_ts = ts
        cmd = ControlCommand(command, BOT, where, "fuzz", "ops", ts)  # type: ignore[arg-type]
        self._published(self.engine.apply(cmd, ts))
        if command == "kill":
            self.expected.killed.add(where)
        elif command == "resume":
            self.expected.killed.discard(where)

    @rule(symbol=symbols, action=st.sampled_from(["open", "close"]), qty=qtys)
    def intent(self, symbol: str, action: str, qty: float) -> None:
        ts = self._tick()
        side = "buy" if action == "open" else "sell"
        i = OrderIntent(self._id("i"), BOT, symbol, action, side, qty, 100.0, ts)  # type: ignore[arg-type]
        out = self.engine.apply(i, ts)
        self._published(out)
        (decision,) = out.decisions
        killed = self.expected.killed & {None, symbol}
        event(f"intent: {'killed' if killed else decision.gate or 'allowed'}")
        if killed:
            assert (decision.allowed, decision.gate) == (False, "kill_switch")
        e = self.expected
        latched = e.loss_latched or e.drawdown_latched or e.equity() <= DAILY_LOSS
        if action == "open" and latched:
            assert not decision.allowed

    @rule(hours=st.sampled_from([1, 6, 20]))
    def wall_clock(self, hours: int) -> None:
        self.now += hours * 3_600_000
        self._published(self.engine.sweep(self.now, Effects()))
        if self.now // DAY_MS > self.expected.day:
            e = self.expected
            e.day = self.now // DAY_MS
            e.loss_latched = e.drawdown_latched = False
            e.peak = e.equity()  # the day opens at the carried positions' equity

    @invariant()
    def latches_match(self) -> None:
        blocks = {b.gate for b in self._account().blocks}
        e = self.expected
        live = e.equity() <= DAILY_LOSS  # "checked live and latched"
        assert ("portfolio_daily_loss" in blocks) == (e.loss_latched or live), (
            self.expected.equity(),
            blocks,
        )
        assert ("drawdown" in blocks) == self.expected.drawdown_latched, (
            self.expected.peak,
            self.expected.equity(),
            blocks,
        )
        assert ("kill_switch" in blocks) == (None in self.expected.killed)

    @invariant()
    def halts_topic_matches_the_account_record(self) -> None:
        blocked = "portfolio_daily_loss" in {b.gate for b in self._account().blocks}
        assert self.loss_shown == blocked, (self.expected.equity(), self.expected.loss_latched)

    @invariant()
    def equity_matches(self) -> None:
        account = self._account()
        assert account.equity is not None
        assert abs(account.equity - self.expected.equity()) <= 1e-6

    def _account(self) -> AccountGateState:
        dirty = Effects()
        dirty.dirty_bots.add(BOT)
        if BOT not in self.engine.bot_ids():
            self.engine.bot(BOT, self.now)
        (state,) = self.engine.gate_states(dirty, self.now)
        assert isinstance(state, AccountGateState)
        return state


ControlsMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("RISKGATE_FUZZ_EXAMPLES", "100")),
    stateful_step_count=int(os.environ.get("RISKGATE_FUZZ_STEPS", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_controls_machine = ControlsMachine.TestCase
