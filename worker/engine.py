"""TEMPORARY alias of :mod:`worker.core` while imports move (removed before the final commit)."""

from worker.core.bot import BotRisk
from worker.core.effects import Effects, Origin
from worker.core.engine import RiskEngine
from worker.core.symbol import SymbolRisk
from worker.core.symbol import command_gate as _command_gate
from worker.errors import Rejected

__all__ = ["BotRisk", "Effects", "Origin", "Rejected", "RiskEngine", "SymbolRisk", "_command_gate"]
