"""The config a plugin-started worker runs with (worker.testing.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import ConfigError
from worker.testing.config import TEST_DEFAULTS, TOPIC_FIELDS, config_text, worker_config

BOT = '[bots.bot1]\nsymbols = ["BTCUSDT"]\n'


def test_keys_the_file_leaves_out_get_the_test_defaults() -> None:
    config = worker_config(BOT, "127.0.0.1:1234")
    got = {(s, k): str(getattr(getattr(config, s), k)) for s, k in TEST_DEFAULTS}
    assert got == TEST_DEFAULTS
    assert config.kafka.bootstrap_servers == "127.0.0.1:1234"
    assert config.bots["bot1"].symbols == ["BTCUSDT"]


def test_keys_the_file_sets_are_kept_except_the_bootstrap_servers() -> None:
    text = (
        '[kafka]\nbootstrap_servers = "prod:9092"\nsession_timeout_ms = 6000\n'
        "heartbeat_interval_ms = 2000\n[topics]\npartitions = 3\n"
        '[log]\nlevel = "DEBUG"\n' + BOT
    )
    config = worker_config(text, "127.0.0.1:1234")
    assert (
        config.kafka.bootstrap_servers,
        config.kafka.session_timeout_ms,
        config.kafka.heartbeat_interval_ms,
        config.topics.partitions,
        config.log.level,
        config.log.format,
    ) == ("127.0.0.1:1234", 6000, 2000, 3, "DEBUG", "json")


def test_a_prefix_isolates_every_topic_and_the_group() -> None:
    text = '[kafka]\ngroup_id = "desk"\n[topics]\nfills = "desk.fills"\n' + BOT
    config = worker_config(text, "b:1", prefix="rgabc")
    plain = worker_config(text, "b:1")
    assert {f: getattr(config.topics, f) for f in TOPIC_FIELDS} == {
        f: f"rgabc.{getattr(plain.topics, f)}" for f in TOPIC_FIELDS
    }
    assert config.topics.fills == "rgabc.desk.fills"
    assert config.kafka.group_id == "rgabc.desk"
    assert plain.kafka.group_id == "desk"


def test_topic_fields_are_every_topic_name_of_the_topics_table() -> None:
    assert {"fills", "outcomes", "intents", "control", "halts", "decisions"} <= set(TOPIC_FIELDS)
    assert "partitions" not in TOPIC_FIELDS
    assert "replication_factor" not in TOPIC_FIELDS


def test_config_is_read_from_a_path_object_or_an_existing_file_name(tmp_path: Path) -> None:
    path = tmp_path / "riskgate.toml"
    path.write_text(BOT)
    assert config_text(path) == BOT
    assert config_text(str(path)) == BOT
    assert config_text(BOT) == BOT
    assert config_text("[bots.x]") == "[bots.x]"  # no such file: the text itself


def test_bad_toml_and_bad_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config <text>"):
        worker_config("[bots.bot1\n", "b:1")
    with pytest.raises(ConfigError, match=r"session_timeout_ms"):
        worker_config("[kafka]\nsession_timeout_ms = -1\n", "b:1")
    with pytest.raises(ConfigError, match="cannot read config"):
        worker_config(tmp_path / "missing.toml", "b:1")
