"""The configuration a test's worker runs with: the user's TOML, made test-friendly.

Three kinds of change, each for a reason a test run has and production does not:

* the bootstrap servers are always the test session's broker;
* with a ``prefix``, every topic name and the group id get it, so each worker
  gets topics of its own: no state restored from an earlier test, no halts or
  decisions of another test to wait past;
* settings the file leaves out default to values that keep a test fast (a
  short group session, since Tansu holds a join for about half of it; a
  frequent account heartbeat, so a client's staleness check passes soon; one
  partition; HTTP on a free loopback port; quiet JSON logs). Whatever the file
  sets is kept.
"""

from __future__ import annotations

import os
import tomllib
import uuid
from pathlib import Path
from typing import Any

import msgspec

from worker.config import Config, ConfigError, TopicsConfig, load_config

TEST_DEFAULTS: dict[tuple[str, str], str] = {
    ("kafka", "session_timeout_ms"): "1000",
    ("kafka", "heartbeat_interval_ms"): "250",
    ("worker", "heartbeat_interval_ms"): "500",
    ("worker", "sweep_interval_ms"): "250",
    ("topics", "partitions"): "1",
    ("http", "host"): "127.0.0.1",
    ("http", "port"): "0",
    ("log", "format"): "json",
    ("log", "level"): "WARNING",
}
"""(section, key) → value used when the user's file does not set that key."""

TOPIC_FIELDS = tuple(f.name for f in msgspec.structs.fields(TopicsConfig) if f.type is str)
"""The topic names of ``[topics]`` (its other keys are counts)."""


def new_prefix() -> str:
    """A topic and group prefix no other worker of this broker uses."""
    return f"rg{uuid.uuid4().hex[:12]}"


def config_text(source: str | os.PathLike[str]) -> str:
    """The TOML of ``source``: a path object or the name of an existing file is read;
    any other string is the TOML itself (a file name never spans lines)."""
    if isinstance(source, os.PathLike) or ("\n" not in source and Path(source).is_file()):
        try:
            return Path(source).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {source}: {exc}") from exc
    return source


def worker_config(
    source: str | os.PathLike[str], bootstrap_servers: str, *, prefix: str | None = None
) -> Config:
    """The Config a test worker runs with (see the module docstring)."""
    text = config_text(source)
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read config <text>: {exc}") from exc
    env = {
        f"RISKGATE_{section.upper()}__{key.upper()}": value
        for (section, key), value in TEST_DEFAULTS.items()
        if key not in data.get(section, {})
    }
    env["RISKGATE_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap_servers
    config = load_config(text=text, env=env)
    return config if prefix is None else isolated(config, prefix)


def isolated(config: Config, prefix: str) -> Config:
    """``config`` with every topic and the group id under ``prefix``."""
    topics = msgspec.structs.replace(
        config.topics,
        **{name: f"{prefix}.{getattr(config.topics, name)}" for name in TOPIC_FIELDS},
    )
    kafka = msgspec.structs.replace(config.kafka, group_id=f"{prefix}.{config.kafka.group_id}")
    return msgspec.structs.replace(config, topics=topics, kafka=kafka)
