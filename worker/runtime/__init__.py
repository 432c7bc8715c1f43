"""The runtime shell around the pure engine: transport, ownership, checkpoint, the loop.

``from worker.runtime import Worker`` is the entry point; see
``docs/architecture.md`` for how the modules fit together.
"""

from worker.runtime.ownership import home_partition
from worker.runtime.publish import PublishRefused
from worker.runtime.transport import KafkaTransport, Transport
from worker.runtime.worker import Clock, Worker

__all__ = ["Clock", "KafkaTransport", "PublishRefused", "Transport", "Worker", "home_partition"]
