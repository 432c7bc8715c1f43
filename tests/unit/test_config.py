"""Configuration: the SPEC §7 contract, env overrides, errors naming the key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from worker.config import (
    BreakerConfig,
    Config,
    ConfigError,
    SessionConfig,
    bot_settings,
    load_config,
)

# Verbatim from SPEC §7 (comments included).
SPEC_EXAMPLE = """\
[kafka]
bootstrap_servers = "127.0.0.1:9092"
group_id = "riskgate"

[topics]                      # optional; defaults as in §2
fills = "trading.fills"

[defaults.session]
loss_limit = -50.0
[defaults.breaker]
loss_limit = 4
window_secs = 14400
cooldown_secs = 3600

[bots.alpha]
symbols = ["BTCUSDT", "ETHUSDT"]   # omit = any symbol, with the defaults
pnl_source = "outcomes"            # or "fills"
[bots.alpha.portfolio]
max_daily_loss = -500.0
max_concurrent_positions = 3
max_gross_exposure = 100000.0
[bots.alpha.overrides.BTCUSDT.breaker]
loss_limit = 1
"""


def test_spec_example_parses_exactly_as_written() -> None:
    cfg = load_config(text=SPEC_EXAMPLE, env={})
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert cfg.kafka.group_id == "riskgate"
    assert cfg.topics.fills == "trading.fills"
    assert cfg.topics.outcomes == "trading.outcomes"
    assert cfg.defaults.session.loss_limit == -50.0
    assert cfg.defaults.breaker == BreakerConfig(
        loss_limit=4, window_secs=14400, cooldown_secs=3600
    )

    alpha = bot_settings(cfg, "alpha")
    assert alpha is not None
    assert alpha.symbols == frozenset({"BTCUSDT", "ETHUSDT"})
    assert alpha.pnl_source == "outcomes"
    assert alpha.portfolio.max_daily_loss == -500.0
    assert alpha.portfolio.max_concurrent_positions == 3
    assert alpha.portfolio.max_gross_exposure == 100000.0
    btc_session, btc_breaker = alpha.risk_for("BTCUSDT")
    eth_session, eth_breaker = alpha.risk_for("ETHUSDT")
    assert btc_breaker == BreakerConfig(loss_limit=1, window_secs=14400, cooldown_secs=3600)
    assert eth_breaker.loss_limit == 4
    assert btc_session == eth_session == SessionConfig(loss_limit=-50.0)
    assert bot_settings(cfg, "beta") is None, "a bot not in the file is unknown"


def test_spec_example_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "riskgate.toml"
    path.write_text(SPEC_EXAMPLE)
    assert load_config(path, env={}) == load_config(text=SPEC_EXAMPLE, env={})


def test_empty_config_has_the_documented_defaults() -> None:
    cfg = load_config(text="", env={})
    assert cfg.defaults.session.loss_limit == -50.0
    assert cfg.defaults.breaker == BreakerConfig(
        loss_limit=4, window_secs=14400, cooldown_secs=3600
    )
    assert cfg.defaults.pnl_source == "outcomes"
    assert cfg.worker.reservation_ttl_ms == 30_000
    p = cfg.defaults.portfolio
    assert (p.max_daily_loss, p.max_concurrent_positions, p.max_gross_exposure) == (None, 0, None)
    assert (cfg.topics.snapshots, cfg.topics.gates, cfg.topics.halts) == (
        "risk.snapshots",
        "risk.gates",
        "risk.halts",
    )


def test_env_overrides_bootstrap_servers() -> None:
    cfg = load_config(
        text=SPEC_EXAMPLE, env={"RISKGATE_KAFKA__BOOTSTRAP_SERVERS": "kafka-0:9093,kafka-1:9093"}
    )
    assert cfg.kafka.bootstrap_servers == "kafka-0:9093,kafka-1:9093"
    assert cfg.kafka.group_id == "riskgate"


def test_numeric_env_override() -> None:
    cfg = load_config(text="", env={"RISKGATE_WORKER__SWEEP_INTERVAL_MS": "500"})
    assert cfg.worker.sweep_interval_ms == 500
    assert isinstance(cfg.worker.sweep_interval_ms, int)


def test_env_override_reaches_nested_bot_tables() -> None:
    cfg = load_config(
        text=SPEC_EXAMPLE,
        env={
            "RISKGATE_BOTS__ALPHA__PORTFOLIO__MAX_DAILY_LOSS": "-250.5",
            "RISKGATE_DEFAULTS__SESSION__LOSS_LIMIT": "-10",
        },
    )
    alpha = bot_settings(cfg, "alpha")
    assert alpha is not None
    assert alpha.portfolio.max_daily_loss == -250.5
    assert alpha.session.loss_limit == -10.0
    assert alpha.portfolio.max_concurrent_positions == 3, "the rest of the table is kept"


def test_text_env_values_are_not_reinterpreted() -> None:
    cfg = load_config(
        text="",
        env={"RISKGATE_KAFKA__GROUP_ID": "12345", "RISKGATE_KAFKA__SASL_PASSWORD": "true"},
    )
    assert cfg.kafka.group_id == "12345"
    assert cfg.kafka.sasl_password == "true"


def test_unrelated_environment_is_ignored() -> None:
    cfg = load_config(text="", env={"HOME": "/root", "KAFKA_BOOTSTRAP_SERVERS": "x:1"})
    assert cfg == load_config(text="", env={})


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"worker\.sweep_interval_ms"):
        load_config(text="", env={"RISKGATE_WORKER__SWEEP_INTERVAL_MS": "soon"})


def test_unknown_key_error_names_the_key_path() -> None:
    text = SPEC_EXAMPLE.replace("max_daily_loss", "max_daily_los")
    with pytest.raises(ConfigError) as info:
        load_config(text=text, env={})
    message = str(info.value)
    assert "bots.alpha.portfolio" in message
    assert "max_daily_los" in message


def test_wrong_type_error_names_the_key_path() -> None:
    text = SPEC_EXAMPLE.replace("max_concurrent_positions = 3", 'max_concurrent_positions = "3x"')
    with pytest.raises(ConfigError, match=r"bots\.alpha\.portfolio\.max_concurrent_positions"):
        load_config(text=text, env={})


def test_error_inside_a_symbol_override_names_bot_and_symbol() -> None:
    text = SPEC_EXAMPLE + "[bots.beta]\n[bots.beta.overrides.ETHUSDT.breaker]\nwindow_secs = 0\n"
    with pytest.raises(ConfigError, match=r"bots\.beta\.overrides\.ETHUSDT\.breaker\.window_secs"):
        load_config(text=text, env={})


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("[kafka]\nbootstrap = 'x'\n", "kafka"),
        ("[defaults.breaker]\nloss_limit = -1\n", "defaults.breaker.loss_limit"),
        ("[defaults.breaker]\nwindow_secs = 0\n", "defaults.breaker.window_secs"),
        ("[defaults]\npnl_source = 'trades'\n", "defaults.pnl_source"),
        ("[bots.alpha]\nsymbols = 'BTCUSDT'\n", "bots.alpha.symbols"),
        ("[worker]\nsweep_interval_ms = 0\n", "worker.sweep_interval_ms"),
        ("[toplevel]\nx = 1\n", "toplevel"),
    ],
)
def test_invalid_values_name_their_key(text: str, path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_config(text=text, env={})


@pytest.mark.parametrize(
    "text",
    [
        "[defaults.session]\nloss_limit = nan\n",
        "[bots.alpha.session]\nloss_limit = nan\n",
        "[bots.alpha.portfolio]\nmax_daily_loss = nan\n",
        "[bots.alpha.portfolio]\nmax_gross_exposure = nan\n",
        "[bots.alpha.overrides.BTCUSDT.session]\nloss_limit = nan\n",
    ],
)
def test_nan_limits_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="NaN"):
        load_config(text=text, env={})


def test_minus_infinity_disables_the_session_halt() -> None:
    cfg = load_config(text="[defaults.session]\nloss_limit = -inf\n", env={})
    assert cfg.defaults.session.loss_limit == -math.inf


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(text="[kafka\n", env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})


def test_overrides_merge_field_by_field_over_bot_and_defaults() -> None:
    cfg = load_config(
        text="""
        [defaults.breaker]
        loss_limit = 4
        window_secs = 100
        cooldown_secs = 10
        [defaults.session]
        loss_limit = -50.0
        [bots.alpha.breaker]
        window_secs = 200
        [bots.alpha.session]
        loss_limit = -70.0
        [bots.alpha.overrides.BTCUSDT.breaker]
        cooldown_secs = 20
        [bots.alpha.overrides.BTCUSDT.session]
        loss_limit = -5.0
        """,
        env={},
    )
    alpha = bot_settings(cfg, "alpha")
    assert alpha is not None
    assert alpha.risk_for("ETHUSDT") == (
        SessionConfig(loss_limit=-70.0),
        BreakerConfig(loss_limit=4, window_secs=200, cooldown_secs=10),
    )
    assert alpha.risk_for("BTCUSDT") == (
        SessionConfig(loss_limit=-5.0),
        BreakerConfig(loss_limit=4, window_secs=200, cooldown_secs=20),
    )


def test_unknown_bots_use_defaults_when_accepted() -> None:
    cfg = load_config(text="[defaults]\naccept_unknown_bots = true\npnl_source = 'fills'\n", env={})
    s = bot_settings(cfg, "anyone")
    assert s is not None
    assert s.symbols is None
    assert s.pnl_source == "fills"


def test_bot_without_portfolio_inherits_default_portfolio() -> None:
    cfg = load_config(
        text="[defaults.portfolio]\nmax_concurrent_positions = 7\n[bots.alpha]\n", env={}
    )
    alpha = bot_settings(cfg, "alpha")
    assert alpha is not None
    assert alpha.portfolio.max_concurrent_positions == 7


def test_secrets_are_not_in_repr() -> None:
    cfg = load_config(
        text="[kafka]\nsasl_password = 'hunter2'\n[control]\nsecret = 'topsecret'\n", env={}
    )
    assert "hunter2" not in repr(cfg.kafka)
    assert "topsecret" not in repr(cfg.control)
    assert cfg.control.resolved_secret() == b"topsecret"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.kafka = cfg.kafka  # type: ignore[misc]
