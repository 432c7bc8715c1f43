"""Help for running riskgate inside your own integration tests.

* the pytest plugin (:mod:`worker.testing.plugin`, loaded by pytest through the
  ``pytest11`` entry point): fixtures ``riskgate_kafka`` and ``riskgate_worker``;
* :class:`RiskgateWorker` / :class:`RiskgateIO`: produce fills, outcomes and
  intents, await halt events, decisions and gate states with a timeout;
* :class:`~worker.testing.container.RiskgateContainer`: the riskgate image as a
  testcontainers module (import it from ``worker.testing.container``).

Names are imported on first use: pytest imports this package in every run of
an environment where riskgate is installed, used or not.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ANY": "worker.testing.io",
    "RiskgateIO": "worker.testing.io",
    "RiskgateWorker": "worker.testing.running",
    "WorkerDied": "worker.testing.running",
    "worker_config": "worker.testing.config",
}

__all__ = ["ANY", "RiskgateIO", "RiskgateWorker", "WorkerDied", "worker_config"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
