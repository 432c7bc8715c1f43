"""The worker's link to its broker: connect, fetch, commit, probe, close — each bounded.

Every call that reaches the broker reports to :class:`~worker.health.Health`:
a retried connect or commit is *alive* (a missing broker never fails
liveness); a successful round trip ends *starting* and feeds *ready*; only a
successful offset commit pays the commit debt readiness watches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from worker.config import Config
from worker.health import Health
from worker.kafka.fetch import Fetched, fetch
from worker.kafka.options import RETRY_BACKOFF_MAX_MS
from worker.metrics import Metrics
from worker.runtime.checkpoint import Checkpoint, Offsets
from worker.runtime.lifecycle import CLOSE_STEP_MAX_S, close_clients
from worker.runtime.publish import Publisher
from worker.runtime.transport import Connection, Consumer, Rebalance, Transport

log = structlog.get_logger("riskgate.worker")


class BrokerLink:
    """The connected clients and the bounded broker calls the loop makes besides fetch/send."""

    def __init__(
        self,
        config: Config,
        *,
        transport: Transport,
        health: Health,
        metrics: Metrics,
        checkpoint: Checkpoint,
        publisher: Publisher,
    ) -> None:
        self._config = config
        self._transport = transport
        self._health = health
        self._metrics = metrics
        self._checkpoint = checkpoint
        self._publisher = publisher
        self.consumer: Consumer | None = None
        self._fetching: asyncio.Future[Fetched] | None = None
        """The loop's fetch in flight; ``cancel_fetch()`` ends it (a join may never finish)."""

    async def connect(
        self, topics: Collection[str], rebalance: Rebalance, stopping: asyncio.Event
    ) -> Connection | None:
        """Connect, retrying while the broker is absent; None if ``stopping`` came first."""
        kafka = self._config.kafka
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((KafkaError, OSError, asyncio.TimeoutError)),
            wait=wait_exponential(multiplier=0.5, max=RETRY_BACKOFF_MAX_MS / 1000),
            before_sleep=self._log_connect_retry,
        ):
            with attempt:
                self._health.tick()
                if stopping.is_set():
                    return None
                connection = await self._transport.connect(topics, rebalance)
        self.consumer, self._publisher.producer = connection.consumer, connection.producer
        self.round_trip(commit=False)  # the topic check was a broker round trip
        log.info(
            "worker started",
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=kafka.group_id,
            security_protocol=kafka.security_protocol,
            sasl_mechanism=kafka.sasl_mechanism,  # never the credentials
        )
        return connection

    def _log_connect_retry(self, state: Any) -> None:
        self._health.tick()  # retrying with a bounded backoff is alive, not stuck
        log.warning(
            "broker not reachable; retrying",
            bootstrap_servers=self._config.kafka.bootstrap_servers,
            attempt=state.attempt_number,
            error=repr(state.outcome.exception()) if state.outcome else None,
        )

    async def fetch(self) -> Fetched:
        """One bounded fetch; empty when it times out or :meth:`cancel_fetch` ends it.

        aiokafka's ``getmany`` waits without a bound while the group is
        (re)joining; the bound keeps the loop ticking (alive, not ready).
        """
        consumer = self.consumer
        assert consumer is not None
        cfg = self._config
        self._fetching = asyncio.ensure_future(
            fetch(consumer, cfg.worker.poll_timeout_ms, cfg.worker.max_batch_records)
        )
        bound_s = (cfg.worker.poll_timeout_ms + cfg.kafka.request_timeout_ms) / 1000
        try:
            async with asyncio.timeout(bound_s):
                return await self._fetching
        except (TimeoutError, asyncio.CancelledError):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the loop itself is cancelled, not just this fetch
            return Fetched({}, [])
        except KafkaError as exc:
            # Per-partition fetch errors are retried inside aiokafka; what reaches
            # us here (authorization, a reset refused) is logged and re-fetched.
            log.warning("fetch failed", error=repr(exc))
            return Fetched({}, [])
        finally:
            self._fetching = None

    def cancel_fetch(self) -> None:
        """``stop()``: a fetch waiting for a group join that never completes ends now."""
        if self._fetching is not None:
            self._fetching.cancel()

    async def commit(self, owned: Offsets) -> None:
        """Commit ``owned`` (see :meth:`Ownership.committable`), bounded; failures are logged."""
        consumer = self.consumer
        assert consumer is not None
        if not owned:
            return
        started = time.perf_counter()
        self._health.tick()
        try:
            # Bounded: aiokafka waits forever for an unknown group coordinator.
            async with asyncio.timeout(self._config.kafka.request_timeout_ms / 1000):
                await consumer.commit(owned)
        except (KafkaError, TimeoutError) as exc:
            # Nothing is lost: the next commit covers these offsets, or a new
            # owner replays them and the watermarks drop what was applied.
            self._metrics.commit_failures.inc()
            log.warning("offset commit failed", error=repr(exc))
            return
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        self.round_trip(commit=True)

    async def probe(self) -> None:
        """An idle loop still proves the broker answers (readiness); never counts as a commit."""
        consumer = self.consumer
        assert consumer is not None
        try:
            async with asyncio.timeout(self._config.kafka.request_timeout_ms / 1000):
                await consumer.topics()
        except (KafkaError, TimeoutError) as exc:
            log.warning("broker probe failed", error=repr(exc))
            return
        self.round_trip(commit=False)

    def round_trip(self, *, commit: bool) -> None:
        """A broker round trip succeeded; ``commit``: a successful offset commit.

        A commit pays what was owed when it was taken; offsets applied since
        (in flight, or waiting for the next persist) stay owed.
        """
        self._health.round_trip(commit=commit, still_owed=self._checkpoint.owed())

    async def close(self) -> None:
        """Stop the clients, each within a bound: a frozen broker must not hold shutdown."""
        bound_s = min(self._config.kafka.request_timeout_ms / 1000, CLOSE_STEP_MAX_S)
        # The consumer leaves the group (unless static membership); the producer flushes.
        await close_clients(
            (("consumer", self.consumer), ("producer", self._publisher.producer)), bound_s
        )
