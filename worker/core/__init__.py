"""Risk primitives: plain state machines over explicit event/wall-clock times.

Nothing here reads a clock, logs or does I/O: every method that depends on time
takes it as an argument, so the same code serves live processing, replay and
tests (the clock is injected one layer up, in the engine's caller).
"""

from worker.core.breaker import CircuitBreaker, CircuitBreakerSnapshot
from worker.core.portfolio import PortfolioRisk, PortfolioRiskSnapshot, Reservation
from worker.core.position import Position, PositionSnapshot, RoundTrip
from worker.core.session import SessionPnl, SessionPnlSnapshot, utc_day

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerSnapshot",
    "PortfolioRisk",
    "PortfolioRiskSnapshot",
    "Position",
    "PositionSnapshot",
    "Reservation",
    "RoundTrip",
    "SessionPnl",
    "SessionPnlSnapshot",
    "utc_day",
]
