"""Issue 11's controls as the bot and each symbol hold them: kill switch, unreadable
state, order checks, daily notional, drawdown and the after-loss cooldown.

The gate policy (:mod:`worker.core.gates`) asks these objects; the engine's
event paths feed them. Each holder keeps its controls in one object with one
persisted Struct (an optional field of the bot's portfolio record and of each
symbol record: snapshots written before it restore with everything off).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from worker.config import BotSettings, CooldownConfig, OrdersConfig
from worker.core.losscontrols import Drawdown, DrawdownSnapshot, LossCooldown
from worker.core.marks import MarkTable, unrealised_pnl
from worker.core.orders import (
    DailyNotional,
    Denial,
    OrderRate,
    RecentOrders,
    collar_check,
    size_check,
)
from worker.messages import Block, ControlCommand, OrderIntent

if TYPE_CHECKING:
    from worker.core.position import Position


class Kill(msgspec.Struct, frozen=True):
    """An operator's kill switch: every intent is denied, closes included, until ``resume``."""

    reason: str
    issued_by: str
    ts: int


def kill_from(c: ControlCommand) -> Kill:
    return Kill(reason=c.reason, issued_by=c.issued_by, ts=c.ts)


def kill_block(kill: Kill) -> Block:
    return Block("kill_switch", f"killed by {kill.issued_by}: {kill.reason}", None)


UNREADABLE_BLOCK = Block(
    "unreadable_state",
    "the bot's saved state could not be read; an operator must `riskgate reset-state`",
    None,
)


class BotControlsSnapshot(msgspec.Struct, kw_only=True, omit_defaults=True):
    kill: Kill | None = None
    unreadable: bool = False
    drawdown: DrawdownSnapshot | None = None
    order_times: list[int] = []
    """Record times of the latest allowed intents (``max_orders_per_sec``)."""
    recent_orders: bytes = b""
    """``duplicate_window_ms``: 16 bytes an order (digest, record time), base64 in JSON."""
    notional_day: int = 0
    notional_total: float = 0.0


class BotControls:
    """The bot-level controls of one bot."""

    __slots__ = ("drawdown", "kill", "notional", "rate", "recent", "unreadable")

    def __init__(self, settings: BotSettings, day: int) -> None:
        self.kill: Kill | None = None
        self.unreadable = False
        """Set at restore when ``on_unreadable_state = "halt"`` met an unreadable record."""
        self.drawdown = Drawdown(settings.portfolio.max_drawdown, day)
        self.rate = OrderRate(settings.orders.max_orders_per_sec)
        self.recent = RecentOrders()
        self.notional = DailyNotional(settings.portfolio.max_daily_notional, day)

    def sanity(
        self, i: OrderIntent, cfg: OrdersConfig, mark: float | None, record_ts: int
    ) -> Denial | None:
        """The order sanity checks in contract order; ``mark``: a fresh mark or None."""
        return (
            size_check(cfg, i)
            or collar_check(cfg, i.price, mark)
            or self.rate.check(record_ts)
            or self.recent.check(i, record_ts, cfg.duplicate_window_ms)
        )

    def allowed(self, i: OrderIntent, cfg: OrdersConfig, record_ts: int) -> None:
        """``i`` was allowed: it takes its place in the rate, duplicate and notional counts."""
        self.rate.record(record_ts)
        self.recent.record(i, record_ts, cfg.duplicate_window_ms)
        if i.action == "open":
            self.notional.record(i.notional)

    def blocks(self) -> list[Block]:
        """Bot-level blocks of these controls, in gate order (kill first, drawdown last)."""
        out = self.state_blocks()
        drawdown = self.drawdown_block()
        if drawdown is not None:
            out.append(drawdown)
        return out

    def state_blocks(self) -> list[Block]:
        """The kill switch and the unreadable-state block (what an operator lifts)."""
        out: list[Block] = []
        if self.kill is not None:
            out.append(kill_block(self.kill))
        if self.unreadable:
            out.append(UNREADABLE_BLOCK)
        return out

    def drawdown_block(self) -> Block | None:
        dd = self.drawdown
        if not dd.halted:
            return None
        return Block(
            "drawdown", f"equity fell {dd.limit:g} below the day's peak {dd.peak:.2f}", dd.until_ts
        )

    def tick(self, now_ms: int, opening_equity: float) -> bool:
        """The wall clock's UTC rollover (drawdown latch, notional budget); True if rolled."""
        rolled = self.drawdown.tick(now_ms, opening_equity)
        return self.notional.tick(now_ms) or rolled

    def snapshot(self) -> BotControlsSnapshot:
        day, total = self.notional.snapshot()
        return BotControlsSnapshot(
            kill=self.kill,
            unreadable=self.unreadable,
            drawdown=self.drawdown.snapshot(),
            order_times=self.rate.snapshot(),
            recent_orders=self.recent.snapshot(),
            notional_day=day,
            notional_total=total,
        )

    def restore(self, snap: BotControlsSnapshot) -> None:
        self.kill = snap.kill
        self.unreadable = snap.unreadable
        if snap.drawdown is not None:
            self.drawdown.restore(snap.drawdown)
        self.rate.restore(snap.order_times)
        self.recent.restore(snap.recent_orders)
        if snap.notional_day:
            self.notional.restore(snap.notional_day, snap.notional_total)


class SymbolControlsSnapshot(msgspec.Struct, kw_only=True, omit_defaults=True):
    kill: Kill | None = None
    cooldown_until_ms: int | None = None


class SymbolControls:
    """The symbol-level controls: its kill switch and its after-loss cooldown."""

    __slots__ = ("cooldown", "kill")

    def __init__(self, cooldown: CooldownConfig) -> None:
        self.kill: Kill | None = None
        self.cooldown = LossCooldown(cooldown.after_loss_secs)

    def cooldown_block(self) -> Block | None:
        until = self.cooldown.until_ms
        if until is None:
            return None
        return Block(
            "loss_cooldown", f"cooling down {self.cooldown.secs}s after a losing trade", until
        )

    def snapshot(self) -> SymbolControlsSnapshot | None:
        if self.kill is None and self.cooldown.until_ms is None:
            return None
        return SymbolControlsSnapshot(kill=self.kill, cooldown_until_ms=self.cooldown.until_ms)

    def restore(self, snap: SymbolControlsSnapshot | None) -> None:
        self.kill = None if snap is None else snap.kill
        self.cooldown.until_ms = None if snap is None else snap.cooldown_until_ms


def position_unrealised(symbol: str, position: Position, marks: MarkTable) -> float:
    """The position at its latest mark; 0 without a mark (valued at entry)."""
    held = marks.latest(symbol)
    if held is None or position.qty == 0.0:
        return 0.0
    return unrealised_pnl(position.qty, position.avg_price, position.contract_value, held.price)


def total_unrealised(positions: Iterable[tuple[str, Position]], marks: MarkTable) -> float:
    return sum(position_unrealised(symbol, p, marks) for symbol, p in positions)
