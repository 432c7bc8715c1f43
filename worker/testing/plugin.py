"""The riskgate pytest plugin (entry point ``pytest11: riskgate``).

Fixtures, all named ``riskgate_*`` so they cannot clash with a suite's own:

``riskgate_kafka``
    Bootstrap servers of the session's Kafka-protocol broker:
    ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a testcontainers Kafka when a
    Docker engine answers, else the embedded broker (``riskgate[embedded]``).
``riskgate_worker``
    A factory: ``riskgate_worker(config_text_or_path)`` starts a worker on
    that broker, waits until it is ready and returns a
    :class:`~worker.testing.running.RiskgateWorker` (produce and wait helpers);
    every worker it started is stopped, and its topics deleted, after the test.

pytest loads this module in every run of an environment where riskgate is
installed, so it imports nothing beyond pytest until a fixture is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from worker.testing.running import RiskgateWorker

KAFKA_USED = pytest.StashKey[str]()
"""What ``riskgate_kafka`` started in this session (for a run's summary line)."""


@pytest.fixture(scope="session")
def riskgate_kafka(request: pytest.FixtureRequest) -> Iterator[str]:
    """Bootstrap servers of the session's broker, whichever kind is available."""
    from worker.testing.kafka import session_kafka

    with session_kafka() as kafka:
        request.config.stash[KAFKA_USED] = kafka.description
        yield kafka.bootstrap_servers


StartWorker = Callable[..., "RiskgateWorker"]


@pytest.fixture
def riskgate_worker(riskgate_kafka: str) -> Iterator[StartWorker]:
    """``riskgate_worker(config, *, isolate=True, clock=None, ready_timeout=30.0)``.

    ``config`` is TOML text or a path. With ``isolate`` the worker gets topics
    and a group of its own (deleted after the test); without, it uses the
    config's names as they are. ``clock`` (epoch ms) replaces the wall clock
    for the worker and the helpers' timestamps.
    """
    from worker.testing.config import new_prefix, worker_config
    from worker.testing.running import RiskgateWorker

    started: list[RiskgateWorker] = []

    def start(
        config: str | os.PathLike[str],
        *,
        isolate: bool = True,
        clock: Callable[[], int] | None = None,
        ready_timeout: float = 30.0,
    ) -> RiskgateWorker:
        prefix = new_prefix() if isolate else None
        worker = RiskgateWorker(
            worker_config(config, riskgate_kafka, prefix=prefix),
            delete_topics=isolate,
            **({} if clock is None else {"clock": clock}),
        )
        # A worker that fails to start has already raised and stopped: only
        # the started ones are stopped after the test (which re-raises).
        started.append(worker.start(ready_timeout))
        return worker

    yield start
    failures: list[BaseException] = []
    for worker in reversed(started):
        try:
            worker.stop()
        except Exception as exc:  # stop every worker, then report the first failure
            failures.append(exc)
    if failures:
        raise failures[0]
