"""The topic layout of SPEC §2: creation (``riskgate topics``) and the start-up check.

Every topic gets ``topics.partitions`` partitions so a snapshot lands on the
same partition number as the input partition that owns the bot
(co-partitioning); the snapshot and gate topics are compacted because only the
latest value per key matters on restore. The worker refuses to run on a layout
that would silently lose state: a missing topic, or a snapshot topic with fewer
partitions than an input topic (some input partitions would have nowhere to
persist), or input topics whose partition counts differ.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from worker.config import KafkaConfig, TopicsConfig
from worker.kafka.options import client_kwargs

COMPACT = "compact"
DELETE = "delete"


class TopicLayoutError(RuntimeError):
    """The broker's topics do not match what the worker needs; the message says why."""


def topic_policies(topics: TopicsConfig) -> dict[str, str]:
    """Every topic the worker uses, mapped to its ``cleanup.policy``."""
    policies = dict.fromkeys(topics.inputs(), DELETE)
    policies.update(
        {
            topics.snapshots: COMPACT,
            topics.gates: COMPACT,
            topics.halts: DELETE,
            topics.decisions: DELETE,
            topics.deadletter: DELETE,
        }
    )
    return policies


@asynccontextmanager
async def admin_client(kafka: KafkaConfig) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, closed on exit."""
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def ensure_topics(kafka: KafkaConfig, topics: TopicsConfig) -> list[str]:
    """Create the missing topics of SPEC §2 and the audit topic; return the names created
    (idempotent)."""
    new_topics = [
        NewTopic(
            name,
            num_partitions=topics.partitions,
            replication_factor=topics.replication_factor,
            topic_configs={"cleanup.policy": policy},
        )
        # The console's audit trail and the marks too; the worker's start-up check
        # (topic_policies) requires neither: nobody may publish marks.
        for name, policy in (
            topic_policies(topics) | {topics.audit: DELETE, topics.marks: DELETE}
        ).items()
    ]
    async with admin_client(kafka) as admin:
        existing = set(await admin.list_topics())
        wanted = [topic for topic in new_topics if topic.name not in existing]
        if not wanted:
            return []
        response = await admin.create_topics(wanted)
    created: list[str] = []
    failures: list[str] = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code == 0:
            created.append(name)
        elif code != TopicAlreadyExistsError.errno:  # lost a race with another creator
            message = entry[2] if len(entry) > 2 and entry[2] else for_code(code).__name__
            failures.append(f"{name}: {message} (error {code})")
    if failures:
        raise TopicLayoutError("could not create topics: " + "; ".join(failures))
    return created


async def topic_partitions(kafka: KafkaConfig) -> dict[str, int]:
    """Partition count of every topic on the cluster.

    Reads the full metadata rather than naming topics, so a broker with
    ``auto.create.topics.enable`` does not create the topics being checked.
    """
    async with admin_client(kafka) as admin:
        described: list[dict[str, Any]] = await admin.describe_topics(None)
    return {
        entry["topic"]: len(entry["partitions"])
        for entry in described
        if entry["error_code"] == 0 or entry["partitions"]
    }


async def check_topics(kafka: KafkaConfig, topics: TopicsConfig) -> int:
    """The input topics' partition count; ``TopicLayoutError`` unless the layout is sound.

    Every topic must exist, every input topic must have the same partition count
    (a bot's fills and outcomes would otherwise hash to different partition
    numbers, and its state would be held by two owners), and the snapshot topic
    must have at least that many partitions.
    """
    partitions = await topic_partitions(kafka)
    missing = sorted(name for name in topic_policies(topics) if name not in partitions)
    if missing:
        raise TopicLayoutError(
            f"missing topics: {', '.join(missing)} "
            f"(create them with `riskgate topics --config FILE`)"
        )
    counts = {name: partitions[name] for name in topics.inputs()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{name} has {count}" for name, count in counts.items())
        raise TopicLayoutError(
            f"input topics have different partition counts ({detail}): a bot's events "
            f"would land on different partition numbers; give every input topic the same count"
        )
    snapshot_count = partitions[topics.snapshots]
    short = {
        name: partitions[name] for name in topics.inputs() if partitions[name] > snapshot_count
    }
    if short:
        detail = ", ".join(f"{name} has {count}" for name, count in sorted(short.items()))
        raise TopicLayoutError(
            f"snapshot topic {topics.snapshots} has {snapshot_count} partitions but {detail}: "
            f"state of the input partitions beyond {snapshot_count - 1} could not be "
            f"co-partitioned; give {topics.snapshots} at least as many partitions as "
            f"every input topic"
        )
    return counts[topics.fills]


async def cleanup_policies(kafka: KafkaConfig, names: Iterable[str]) -> dict[str, str | None]:
    """``cleanup.policy`` of each topic as the broker reports it (None when not reported).

    Needs DescribeConfigs, which some brokers or ACLs refuse; used by tests and
    diagnostics, never as a start-up condition.
    """
    names = list(names)
    # No config-name filter: Tansu 0.6 cannot decode a DescribeConfigs request
    # that names configs and drops the connection (KafkaProtocol(StringWithoutLength)).
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    async with admin_client(kafka) as admin:
        responses = await admin.describe_configs(resources)
    policies: dict[str, str | None] = dict.fromkeys(names)
    for response in responses:
        for resource in response.resources:
            error_code, resource_name, entries = resource[0], resource[3], resource[4]
            if error_code != 0:
                raise TopicLayoutError(
                    f"cannot describe {resource_name}: {for_code(error_code).__name__}"
                )
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    policies[resource_name] = entry[1]
    return policies
