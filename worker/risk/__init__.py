"""TEMPORARY alias of :mod:`worker.core` while imports move (removed before the final commit)."""

import sys

from worker.core import *  # noqa: F403
from worker.core import breaker, dedupe, idlog, intents, portfolio, position, session

for _m in (breaker, dedupe, idlog, intents, portfolio, position, session):
    sys.modules[f"worker.risk.{_m.__name__.rsplit('.', 1)[1]}"] = _m
