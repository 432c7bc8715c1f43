"""A riskgate worker running for one test, in a thread with its own event loop.

Started the way ``riskgate run`` starts it (``worker.service.serve``; the
signals stay the test process's) so a test exercises what production runs.
The thread and its loop keep the worker independent of the test's own loop:
a test may block or have no event loop at all and the worker still polls, and
the fixture can stop it after the test's loop has closed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Protocol, Self

from worker.clock import wall_clock_ms
from worker.config import Config
from worker.testing.io import RiskgateIO

STOP_GRACE_S = 15.0
"""How long stopping may take beyond the worker's own shutdown bound."""


class _Worker(Protocol):
    """What this module uses of the service's Worker (wherever that class lives)."""

    @property
    def ready(self) -> bool: ...
    @property
    def shutdown_bound_s(self) -> float: ...
    def stop(self) -> None: ...


class _Http(Protocol):
    port: int


class WorkerDied(RuntimeError):
    """The worker under test stopped on its own (or failed); the cause is chained."""


class RiskgateWorker(RiskgateIO):
    """One worker under test; :class:`RiskgateIO` has the produce and wait helpers."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        delete_topics: bool = False,
    ) -> None:
        super().__init__(config, clock=clock, alive=self.check_alive)
        self._delete_topics = delete_topics
        self._thread = threading.Thread(target=self._run, name="riskgate-worker", daemon=True)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: _Worker | None = None
        self._http: _Http | None = None
        self._stop_requested = False
        self._error: BaseException | None = None

    def start(self, ready_timeout: float = 30.0) -> Self:
        """Create the topics, start the worker, and block until it is ready."""
        self._thread.start()
        deadline = time.monotonic() + ready_timeout
        while not self.ready:
            self.check_alive()
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"riskgate worker not ready within {ready_timeout:g} s")
            time.sleep(0.02)
        return self

    @property
    def ready(self) -> bool:
        """What ``/readyz`` answers: assigned, restored, talking to the broker."""
        worker = self._worker
        return worker is not None and worker.ready

    @property
    def metrics_url(self) -> str:
        """``/metrics`` of this worker (``/healthz`` and ``/readyz`` are beside it)."""
        if self._http is None:
            raise RuntimeError("the worker is not serving HTTP yet")
        return f"http://{self.config.http.host}:{self._http.port}/metrics"

    def check_alive(self) -> None:
        """Raise :class:`WorkerDied` if the worker ended without being asked to."""
        if self._stop_requested or self._thread.ident is None or self._thread.is_alive():
            return
        raise WorkerDied(f"the riskgate worker stopped by itself: {self._error!r}") from (
            self._error
        )

    def stop(self) -> None:
        """Stop the worker (finish the batch, persist, commit, leave the group), delete
        its topics when they were its own, and re-raise whatever the worker raised."""
        with self._lock:
            self._stop_requested = True
            worker, loop = self._worker, self._loop
        if worker is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(worker.stop)
        if self._thread.ident is not None:
            bound = worker.shutdown_bound_s if worker is not None else 0.0
            self._thread.join(bound + STOP_GRACE_S)
            if self._thread.is_alive():
                raise AssertionError("the riskgate worker did not stop in time")
        if self._error is not None:
            raise WorkerDied(f"the riskgate worker failed: {self._error!r}") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by check_alive() and stop()
            self._error = exc

    async def _main(self) -> None:
        from worker.kafka.topics import admin_client, ensure_topics, topic_policies
        from worker.service import serve

        config = self.config
        self._loop = asyncio.get_running_loop()
        await ensure_topics(config.kafka, config.topics)
        try:
            await serve(config, clock=self.clock, install_signals=False, on_start=self._serving)
        finally:
            if self._delete_topics:
                async with admin_client(config.kafka) as admin:
                    await admin.delete_topics(list(topic_policies(config.topics)))

    def _serving(self, worker: _Worker, http: _Http) -> None:
        with self._lock:
            self._worker, self._http = worker, http
            if self._stop_requested:
                worker.stop()
