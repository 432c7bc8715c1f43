"""Prometheus metrics, one registry per worker (so tests can run several in-process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    """Every ``riskgate_*`` family; the shell updates them, the core never sees them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "riskgate_events_consumed",
            "Input records consumed, by topic and result (applied, skipped, deadletter).",
            ["topic", "result"],
            registry=r,
        )
        self.deadletters = Counter(
            "riskgate_deadletters",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.halts = Counter(
            "riskgate_halts",
            "Halt/resume events published, by gate and kind.",
            ["gate", "kind"],
            registry=r,
        )
        self.decisions = Counter(
            "riskgate_decisions",
            "Gate decisions published, by gate (none = allowed).",
            ["gate"],
            registry=r,
        )
        self.marks_ignored = Counter(
            "riskgate_marks_ignored",
            "Mark records skipped (not applied, not dead-lettered: every worker reads every "
            "mark), by reason.",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "riskgate_batch_records", "Records per processed batch.", buckets=_SIZES, registry=r
        )
        self.batch_seconds = Histogram(
            "riskgate_batch_seconds",
            "The loop's own time per batch: apply it and send its outputs"
            " (acks and commits overlap the next batch).",
            buckets=_FAST,
            registry=r,
        )
        self.output_seconds = Histogram(
            "riskgate_output_send_seconds",
            "Time until gate/halt/decision/dead-letter records of a batch are acknowledged.",
            buckets=_FAST,
            registry=r,
        )
        self.snapshot_seconds = Histogram(
            "riskgate_snapshot_send_seconds",
            "Time until the snapshots of a batch are acknowledged.",
            buckets=_FAST,
            registry=r,
        )
        self.snapshot_writes = Counter(
            "riskgate_snapshot_writes", "Snapshot records written.", registry=r
        )
        self.commit_seconds = Histogram(
            "riskgate_commit_seconds", "Offset commit latency.", buckets=_FAST, registry=r
        )
        self.commit_failures = Counter(
            "riskgate_commit_failures", "Offset commits that failed (replayed safely).", registry=r
        )
        self.send_retries = Counter(
            "riskgate_send_retries", "Output flushes retried after a broker error.", registry=r
        )
        self.lag = Gauge(
            "riskgate_consumer_lag",
            "Records behind the partition end.",
            ["topic", "partition"],
            registry=r,
        )
        self.restore_seconds = Histogram(
            "riskgate_restore_seconds",
            "Time to restore assigned snapshot partitions.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.restore_records = Counter(
            "riskgate_restore_records",
            "Snapshot records read during restores, by result.",
            ["result"],
            registry=r,
        )
        self.symbols = Gauge("riskgate_symbols", "Symbols held in state.", registry=r)
        self.bots = Gauge("riskgate_bots", "Bots held in state.", registry=r)
        self.reservations = Gauge("riskgate_reservations", "Outstanding reservations.", registry=r)
        self.assigned_partitions = Gauge(
            "riskgate_assigned_partitions", "Input partitions assigned to this worker.", registry=r
        )
        self.ready = Gauge(
            "riskgate_ready",
            "1 when assigned, restored, talking to the broker and committing what it owes.",
            registry=r,
        )
        self.started = Gauge(
            "riskgate_started",
            "1 once the worker completed its first broker round trip (0: still starting).",
            registry=r,
        )
        self.last_progress = Gauge(
            "riskgate_loop_last_progress_timestamp_seconds",
            "Wall time the poll loop last completed an iteration or a bounded broker wait.",
            registry=r,
        )
        self.stalled_partitions = Gauge(
            "riskgate_stalled_input_partitions",
            "Owned input partitions not fetched, or not consumed while behind, since the last "
            "heartbeat (their bots' gate heartbeats are withheld).",
            registry=r,
        )
        self.offset_resets = Counter(
            "riskgate_input_offset_resets",
            "Input partitions whose log end fell to or below an offset already applied "
            "(topic recreated or truncated: new events there are skipped by the watermarks).",
            ["topic", "partition"],
            registry=r,
        )
