"""The pure core: risk state machines over explicit event and wall-clock times.

Nothing here reads a clock, logs or does I/O: every method that depends on time
takes it as an argument, so the same code serves live processing, replay and
tests. The shell (``worker.runtime``, ``worker.kafka``) uses :class:`RiskEngine`
and the :class:`Effects` it returns; docs/architecture.md maps the modules.
"""

from worker.core.breaker import CircuitBreaker, CircuitBreakerSnapshot
from worker.core.effects import Effects, Origin
from worker.core.engine import RiskEngine
from worker.core.portfolio import PortfolioRisk, Reservation
from worker.core.position import Position, PositionSnapshot, RoundTrip
from worker.core.session import SessionPnl, SessionPnlSnapshot, utc_day

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerSnapshot",
    "Effects",
    "Origin",
    "PortfolioRisk",
    "Position",
    "PositionSnapshot",
    "Reservation",
    "RiskEngine",
    "RoundTrip",
    "SessionPnl",
    "SessionPnlSnapshot",
    "utc_day",
]
