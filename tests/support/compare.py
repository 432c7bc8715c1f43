"""Views that compare the worker's records with the reference model's state.

The worker's snapshot, halt and decision records and the model's state are both
turned into plain comparable values here: the same view of each side, floats
compared within 1e-9, untouched state equal to no state. Used by the integration
harness, the chaos suite and the model's differential unit test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from tests.support.model import SYMBOL_GATES, Halt, Model


class Approx(float):
    """A float equal to any other within 1e-9 (relative) or 1e-9 (absolute).

    The model computes in its own order, so its floats may differ from the worker's
    in the last bits; rounding both would still split values across a rounding
    boundary. Python tries a subclass's reflected ``__eq__`` first, so this works
    on either side of ``==``, inside dicts, lists and tuples.
    """

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (int, float)):
            return NotImplemented
        return math.isclose(self, other, rel_tol=1e-9, abs_tol=1e-9)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = float.__hash__


def approx(value: Any) -> Any:
    """Floats (also inside lists and tuples) as :class:`Approx`."""
    if isinstance(value, float):
        return Approx(value)
    if isinstance(value, (list, tuple)):
        return type(value)(approx(v) for v in value)
    return value


def _halt_tuple(halt: Any) -> tuple[str, str, int] | None:
    if halt is None:
        return None
    if isinstance(halt, dict):
        return (halt["reason"], halt["issued_by"], halt["ts"])
    return (halt[0], halt[1], halt[2])


def pristine(view: dict[str, Any]) -> bool:
    """Nothing happened to it: equal to no state at all (which a worker need not persist)."""
    return all(not value for key, value in view.items() if key != "day")


def symbol_view(state: dict[str, Any]) -> dict[str, Any]:
    """What is compared for ``<bot>/risk/<symbol>``: everything that gates an order.

    Session totals and halt, breaker losses and trip, position and the manual
    halt. Not replay guards or sequence numbers, which depend on which offsets a
    worker saw and how often it restarted.
    """
    return {key: approx(value) for key, value in state.items()}


def snapshot_state(value: dict[str, Any]) -> dict[str, Any]:
    """A ``<bot>/risk/<symbol>`` snapshot value (decoded JSON) in the model's terms."""
    s = value["session_pnl"]
    b = value["circuit_breaker"]
    p = value.get("position") or {}
    return {
        "net_pnl": s["realised"] - s["fees"],
        "realised": s["realised"],
        "fees": s["fees"],
        "trades": s["trades"],
        "wins": s["wins"],
        "losses": s["losses"],
        "breakevens": s["breakevens"],
        "halted": s["halted"],
        "day": s["last_reset_day"],
        "recent_losses": sorted(b["recent_losses"]),
        "tripped_at": b["tripped_at_unix_secs"],
        "position_qty": p.get("qty", 0.0),
        "avg_price": p.get("avg_price", 0.0),
        "entry_fees": p.get("entry_fees", 0.0),
        "manual_halt": _halt_tuple(value.get("manual_halt")),
    }


def portfolio_state(value: dict[str, Any]) -> dict[str, Any]:
    """A ``<bot>/portfolio`` snapshot value (decoded JSON) in the model's terms."""
    return {
        "latched": value["halted"],
        "manual_halt": value.get("manual_halt"),
        "reservations": {
            i: (r["symbol"], r["notional"]) for i, r in (value.get("reservations") or {}).items()
        },
    }


def portfolio_view(state: dict[str, Any], *, reservations: bool = True) -> dict[str, Any]:
    """What is compared for ``<bot>/portfolio``: the latch, the bot halt, the reservations.

    Reservations are ``{intent_id: (symbol, remaining notional)}``; leave them out
    (``reservations=False``) where the worker's differ legitimately: they depend on
    when an intent was decided relative to its fill (another topic) and to the TTL.
    """
    view: dict[str, Any] = {
        "latched": state["latched"],
        "manual_halt": _halt_tuple(state["manual_halt"]),
    }
    if reservations:
        view["reservations"] = {i: (r[0], approx(r[-1])) for i, r in state["reservations"].items()}
    return view


def model_symbols(model: Model) -> dict[str, dict[str, Any]]:
    """The model's symbol states (untouched ones left out), keyed like the snapshots."""
    views = {key: symbol_view(state) for key, state in model.symbol_states().items()}
    return {key: view for key, view in views.items() if not pristine(view)}


def snapshot_symbols(values: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``(key, decoded snapshot)`` pairs → the symbol views (portfolio keys skipped)."""
    views = {key: symbol_view(snapshot_state(v)) for key, v in values if "/risk/" in key}
    return {key: view for key, view in views.items() if not pristine(view)}


def model_portfolios(model: Model, *, reservations: bool = True) -> dict[str, dict[str, Any]]:
    views = {
        bot: portfolio_view(state, reservations=reservations)
        for bot, state in model.bot_states().items()
    }
    return {bot: view for bot, view in views.items() if not pristine(view)}


def snapshot_portfolios(
    values: Iterable[tuple[str, dict[str, Any]]], *, reservations: bool = True
) -> dict[str, dict[str, Any]]:
    """``(key, decoded snapshot)`` pairs → the portfolio views by bot (symbol keys skipped)."""
    views = {
        key.split("/")[0]: portfolio_view(portfolio_state(v), reservations=reservations)
        for key, v in values
        if key.endswith("/portfolio")
    }
    return {bot: view for bot, view in views.items() if not pristine(view)}


class HaltView(NamedTuple):
    """A HaltEvent's comparable content: the id and what it says (not the reason's wording)."""

    event_id: str
    bot: str
    symbol: str | None
    kind: str
    gate: str
    ts: int
    until_ts: int | None


def model_halts(model: Model) -> list[HaltView]:
    return [_view_of(h) for h in model.halts]


def _view_of(h: Halt) -> HaltView:
    return HaltView(h.event_id, h.bot, h.symbol, h.kind, h.gate, h.ts, h.until_ts)


def halt_views(values: Iterable[dict[str, Any]]) -> list[HaltView]:
    """Decoded HaltEvent values → views, in order."""
    return [
        HaltView(
            v["event_id"], v["bot"], v["symbol"], v["kind"], v["gate"], v["ts"], v.get("until_ts")
        )
        for v in values
    ]


def total_trades(model: Model) -> int:
    return sum(state["trades"] for state in model.symbol_states().values())


def model_gates(model: Model) -> dict[str, list[str]]:
    """Which gates block, per gate record key (``<bot>/gate/<symbol>``, ``<bot>/gate``).

    In the spec's gate order; untouched symbols left out (a worker need not
    publish them), every bot's account record included.
    """
    out: dict[str, list[str]] = {}
    for bot in model.bots.values():
        account = ["kill_switch"] if bot.killed is not None else []
        if bot.manual_halt is not None:
            account.append("manual_halt")
        if bot.latched or bot.daily_loss_breached():
            account.append("portfolio_daily_loss")
        out[f"{bot.name}/gate"] = account
        states = model.symbol_states()
        for name, sym in bot.symbols.items():
            if not pristine(symbol_view(states[f"{bot.name}/risk/{name}"])):
                blocking = zip(SYMBOL_GATES, sym.blocks(), strict=True)
                killed = ["kill_switch"] if sym.killed is not None else []
                out[f"{bot.name}/gate/{name}"] = killed + [gate for gate, on in blocking if on]
    return out


def record_gates(values: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """``(key, decoded gate record)`` pairs → the blocking gates per key, as published."""
    return {key: [b["gate"] for b in v["blocks"]] for key, v in values}
