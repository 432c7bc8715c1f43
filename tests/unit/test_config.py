"""Configuration: the SPEC §7 contract, env overrides, errors naming the key."""

from __future__ import annotations

import math
import re
from pathlib import Path

import msgspec
import pytest

from worker.config import (
    BotConfig,
    BotSettings,
    BreakerConfig,
    Config,
    ConfigError,
    DefaultsConfig,
    OrdersConfig,
    SessionConfig,
    SymbolOverride,
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
            "RISKGATE_BOTS__alpha__PORTFOLIO__MAX_DAILY_LOSS": "-250.5",
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
    ("text", "path"),
    [
        ("[defaults.session]\nloss_limit = nan\n", "defaults.session.loss_limit"),
        ("[bots.alpha.session]\nloss_limit = nan\n", "bots.alpha.session.loss_limit"),
        ("[bots.alpha.portfolio]\nmax_daily_loss = nan\n", "bots.alpha.portfolio.max_daily_loss"),
        (
            "[bots.alpha.portfolio]\nmax_gross_exposure = nan\n",
            "bots.alpha.portfolio.max_gross_exposure",
        ),
        (
            "[bots.alpha.overrides.BTCUSDT.session]\nloss_limit = nan\n",
            "bots.alpha.overrides.BTCUSDT.session.loss_limit",
        ),
    ],
)
def test_nan_limits_are_rejected(text: str, path: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(path)):
        load_config(text=text, env={})


# Every limit a config can set, with the key path, a valid value and its invalid ones.
_LIMIT_CASES = [
    ("defaults.session.loss_limit", "-1.0", ["0.0", "5.0", "inf", "nan"]),
    ("bots.alpha.session.loss_limit", "-1.0", ["0.0", "5.0", "inf", "nan"]),
    ("bots.alpha.overrides.BTCUSDT.session.loss_limit", "-1.0", ["0.0", "1.0", "inf", "nan"]),
    ("defaults.portfolio.max_daily_loss", "-1.0", ["0.0", "500.0", "inf", "nan"]),
    ("bots.alpha.portfolio.max_daily_loss", "-1.0", ["0.0", "500.0", "inf", "nan"]),
    ("defaults.portfolio.max_gross_exposure", "1.0", ["0.0", "-1.0", "inf", "-inf", "nan"]),
    ("bots.alpha.portfolio.max_gross_exposure", "1.0", ["0.0", "-1.0", "inf", "-inf", "nan"]),
    ("defaults.portfolio.max_concurrent_positions", "1", ["-1", "1.5"]),
    ("bots.alpha.portfolio.max_concurrent_positions", "1", ["-1", "1.5"]),
    ("defaults.breaker.loss_limit", "1", ["-1", "1.5"]),
    ("bots.alpha.breaker.window_secs", "1", ["0", "-1"]),
    ("bots.alpha.overrides.BTCUSDT.breaker.cooldown_secs", "0", ["-1"]),
]


def _set(path: str, literal: str) -> str:
    table, _, key = path.rpartition(".")
    return f"[{table}]\n{key} = {literal}\n"


@pytest.mark.parametrize(("path", "valid", "invalid"), _LIMIT_CASES)
def test_config_validates_signs_and_finiteness_of_every_limit(
    path: str, valid: str, invalid: list[str]
) -> None:
    """Issue 9 (suspected): a positive loss limit or an infinite cap was accepted."""
    load_config(text=_set(path, valid), env={})
    for literal in invalid:
        with pytest.raises(ConfigError, match=re.escape(path)):
            load_config(text=_set(path, literal), env={})
        env = {_env_name(path): literal}
        with pytest.raises(ConfigError, match=re.escape(path)):
            load_config(text="[bots.alpha]\n", env=env)


def _env_name(path: str) -> str:
    """The override variable for ``path``; bot and symbol names keep their case."""
    names = {"alpha", "BTCUSDT"}
    return "RISKGATE_" + "__".join(p if p in names else p.upper() for p in path.split("."))


def test_minus_infinity_disables_loss_limits() -> None:
    cfg = load_config(
        text="[defaults.portfolio]\nmax_daily_loss = -inf\n"
        "[bots.alpha.session]\nloss_limit = -inf\n",
        env={},
    )
    alpha = bot_settings(cfg, "alpha")
    assert alpha is not None
    assert alpha.portfolio.max_daily_loss == -math.inf
    assert alpha.session.loss_limit == -math.inf


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


# -- field-by-field merge of every section (issue 9 item 7) --------------------

# Per section of [defaults] a bot can override: field -> (default's value, bot's value).
_SECTION_VALUES: dict[str, dict[str, tuple[str, str]]] = {
    "session": {"loss_limit": ("-11.0", "-22.0"), "include_unrealised": ("true", "false")},
    "breaker": {
        "loss_limit": ("7", "9"),
        "window_secs": ("111", "222"),
        "cooldown_secs": ("33", "44"),
    },
    "portfolio": {
        "max_daily_loss": ("-500.0", "-250.0"),
        "max_concurrent_positions": ("5", "2"),
        "max_gross_exposure": ("1000.0", "2000.0"),
        "include_unrealised": ("false", "true"),
        "max_drawdown": ("300.0", "150.0"),
        "max_daily_notional": ("9000.0", "0.0"),
    },
    "orders": {
        "max_qty": ("5.0", "0.0"),
        "max_notional": ("500.0", "700.0"),
        "price_collar_bps": ("50.0", "25.0"),
        "max_orders_per_sec": ("100", "3"),
        "duplicate_window_ms": ("1000", "2500"),
        "mark_max_age_ms": ("60000", "5000"),
    },
    "cooldown": {"after_loss_secs": ("600", "120")},
}
_DEFAULT_TABLES = "".join(
    f"[defaults.{section}]\n" + "".join(f"{k} = {v[0]}\n" for k, v in fields.items())
    for section, fields in _SECTION_VALUES.items()
)
_EVERY_FIELD = [(s, f) for s, fields in _SECTION_VALUES.items() for f in fields]


def _struct_sections(cls: type[msgspec.Struct]) -> set[str]:
    return {
        f.name
        for f in msgspec.inspect.type_info(cls).fields  # type: ignore[attr-defined]
        if isinstance(f.type, msgspec.inspect.StructType)
    }


def test_the_merge_walk_covers_every_section_and_field() -> None:
    """The walk below must grow with the config: a new section or field fails here."""
    assert _struct_sections(DefaultsConfig) == set(_SECTION_VALUES)
    assert _struct_sections(BotConfig) == set(_SECTION_VALUES)
    for section, fields in _SECTION_VALUES.items():
        cls = type(getattr(DefaultsConfig(), section))
        assert set(cls.__struct_fields__) == set(fields), section


def _expected(section: str, field: str, value: str) -> dict[str, object]:
    """Every section as the defaults set it, with ``section.field`` replaced."""
    cfg = load_config(text=_DEFAULT_TABLES, env={})
    sections: dict[str, object] = {s: getattr(cfg.defaults, s) for s in _SECTION_VALUES}
    sections[section] = msgspec.structs.replace(
        sections[section],  # type: ignore[type-var]
        **{field: tomllib_value(value)},
    )
    return sections


def tomllib_value(literal: str) -> object:
    import tomllib

    return tomllib.loads(f"v = {literal}")["v"]


@pytest.mark.parametrize(("section", "field"), _EVERY_FIELD)
@pytest.mark.parametrize("source", ["file", "env creates the table", "env, bot only in env"])
def test_bot_sections_merge_field_by_field_over_defaults(
    section: str, field: str, source: str
) -> None:
    """Issue 9 item 7: `[bots.X.portfolio]` replaced the defaults instead of merging."""
    value = _SECTION_VALUES[section][field][1]
    if source == "file":
        text, env = _DEFAULT_TABLES + f"[bots.alpha.{section}]\n{field} = {value}\n", {}
    else:
        text = _DEFAULT_TABLES + ("[bots.alpha]\n" if source == "env creates the table" else "")
        env = {f"RISKGATE_BOTS__alpha__{section.upper()}__{field.upper()}": value}
    alpha = bot_settings(load_config(text=text, env=env), "alpha")
    assert alpha is not None
    got = {s: getattr(alpha, s) for s in _SECTION_VALUES}
    assert got == _expected(section, field, value)


def _symbol_fields() -> list[tuple[str, str]]:
    """Fields a symbol override may set (``max_orders_per_sec`` is the bot's alone)."""
    sections = msgspec.inspect.type_info(SymbolOverride).fields  # type: ignore[attr-defined]
    settable = {f.name: set(f.type.cls.__struct_fields__) for f in sections}
    return [(s, f) for s, f in _EVERY_FIELD if f in settable.get(s, ())]


def _per_symbol(settings: BotSettings, symbol: str) -> dict[str, object]:
    session, breaker = settings.risk_for(symbol)
    return {
        "session": session,
        "breaker": breaker,
        "orders": settings.orders_for(symbol),
        "cooldown": settings.cooldown_for(symbol),
    }


@pytest.mark.parametrize(("section", "field"), _symbol_fields())
@pytest.mark.parametrize("source", ["file", "env"])
def test_symbol_overrides_merge_field_by_field_over_defaults(
    section: str, field: str, source: str
) -> None:
    """Issue 9 item 7, per symbol: one overridden key keeps every other inherited one."""
    value = _SECTION_VALUES[section][field][1]
    if source == "file":
        text = _DEFAULT_TABLES + f"[bots.alpha.overrides.BTCUSDT.{section}]\n{field} = {value}\n"
        env: dict[str, str] = {}
    else:
        text = _DEFAULT_TABLES + "[bots.alpha]\n"
        env = {
            f"RISKGATE_BOTS__alpha__OVERRIDES__BTCUSDT__{section.upper()}__{field.upper()}": value
        }
    alpha = bot_settings(load_config(text=text, env=env), "alpha")
    assert alpha is not None
    expected = _expected(section, field, value)
    assert _per_symbol(alpha, "BTCUSDT") == {s: expected[s] for s in _per_symbol(alpha, "X")}
    defaults = _expected(section, field, _SECTION_VALUES[section][field][0])
    assert _per_symbol(alpha, "ETHUSDT") == {s: defaults[s] for s in _per_symbol(alpha, "X")}


def test_a_symbol_override_cannot_set_the_bot_order_rate() -> None:
    """The order rate is per bot: a per-symbol rate would be a second, unshared window."""
    text = "[bots.alpha.overrides.BTCUSDT.orders]\nmax_orders_per_sec = 5\n"
    with pytest.raises(ConfigError, match="max_orders_per_sec"):
        load_config(text=text, env={})


def test_order_rate_above_the_persisted_window_bound_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\$\.defaults\.orders\.max_orders_per_sec"):
        load_config(text="[defaults.orders]\nmax_orders_per_sec = 1001\n", env={})


def test_new_controls_are_off_by_default_and_unreadable_state_starts_fresh() -> None:
    cfg = Config()
    assert cfg.defaults.orders == OrdersConfig(
        max_qty=0.0,
        max_notional=0.0,
        price_collar_bps=0.0,
        max_orders_per_sec=0,
        duplicate_window_ms=0,
        mark_max_age_ms=60_000,
    )
    assert (cfg.defaults.portfolio.max_drawdown, cfg.defaults.portfolio.max_daily_notional) == (
        0.0,
        0.0,
    )
    assert cfg.defaults.portfolio.include_unrealised is True
    assert cfg.defaults.session.include_unrealised is False
    assert cfg.defaults.cooldown.after_loss_secs == 0
    assert cfg.worker.on_unreadable_state == "fresh"
    assert cfg.topics.marks == "trading.marks"
    assert cfg.topics.marks not in cfg.topics.inputs()


# -- env override names (issue 15 item 6) ----------------------------------------


def test_env_overrides_preserve_case_of_bot_and_symbol_names() -> None:
    text = '[bots.DeskBot]\nsymbols = ["BtcUsdt"]\n'
    cfg = load_config(
        text=text,
        env={
            "RISKGATE_BOTS__DeskBot__PORTFOLIO__MAX_DAILY_LOSS": "-250",
            "RISKGATE_BOTS__DeskBot__OVERRIDES__BtcUsdt__BREAKER__LOSS_LIMIT": "2",
        },
    )
    assert set(cfg.bots) == {"DeskBot"}
    desk = bot_settings(cfg, "DeskBot")
    assert desk is not None
    assert desk.portfolio.max_daily_loss == -250.0
    assert desk.risk_for("BtcUsdt")[1].loss_limit == 2
    assert set(desk.overrides) == {"BtcUsdt"}


def test_env_override_with_the_wrong_case_of_a_configured_bot_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"RISKGATE_BOTS__DESKBOT__.*`DeskBot`"):
        load_config(
            text="[bots.DeskBot]\n",
            env={"RISKGATE_BOTS__DESKBOT__PORTFOLIO__MAX_DAILY_LOSS": "-250"},
        )


@pytest.mark.parametrize("name", ["RISKGATE___", "RISKGATE_KAFKA__", "RISKGATE_BOTS____X"])
def test_malformed_env_override_names_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{re.escape(name)}: malformed override name"):
        load_config(text="", env={name: "x"})


def test_env_values_are_strings_except_arrays_and_inline_tables() -> None:
    """What deploy/riskgate.toml says about env values (test_deploy checks the comment)."""
    cfg = load_config(
        text="",
        env={
            "RISKGATE_CONTROL__SECRET": "123",
            "RISKGATE_WORKER__SWEEP_INTERVAL_MS": "250",
            "RISKGATE_BOTS__alpha__SYMBOLS": '["BTCUSDT", "ETHUSDT"]',
        },
    )
    assert cfg.control.secret == "123"
    assert cfg.worker.sweep_interval_ms == 250
    assert cfg.bots["alpha"].symbols == ["BTCUSDT", "ETHUSDT"]


# -- empty control secrets (issue 9 minor) ----------------------------------------


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_empty_or_blank_control_secret_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    """Issue 9 minor: a blank secret file gave an empty HMAC key anybody could sign with."""
    from worker.core import RiskEngine

    secret = tmp_path / "control-secret"
    secret.write_text(content)
    cfg = load_config(text=f"[control]\nsecret_file = '{secret}'\n", env={})
    with pytest.raises(ConfigError, match=r"control\.secret_file .* is empty"):
        cfg.control.resolved_secret()
    with pytest.raises(ConfigError, match=r"control\.secret_file .* is empty"):
        RiskEngine(cfg)  # the worker's start


def test_unreadable_control_secret_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = load_config(text=f"[control]\nsecret_file = '{tmp_path / 'missing'}'\n", env={})
    with pytest.raises(ConfigError, match=r"cannot read control\.secret_file"):
        cfg.control.resolved_secret()


@pytest.mark.parametrize("secret", ["", "   "])
def test_empty_or_blank_control_secret_is_a_config_error(secret: str) -> None:
    with pytest.raises(ConfigError, match=r"\$\.control\.secret"):
        load_config(text="", env={"RISKGATE_CONTROL__SECRET": secret})
    with pytest.raises(ConfigError, match=r"\$\.control\.secret"):
        load_config(text=f"[control]\nsecret = '{secret}'\n", env={})


def test_control_secret_file_is_stripped_and_wins(tmp_path: Path) -> None:
    secret = tmp_path / "control-secret"
    secret.write_text("s3cret\n")
    cfg = load_config(text=f"[control]\nsecret = 'other'\nsecret_file = '{secret}'\n", env={})
    assert cfg.control.resolved_secret() == b"s3cret"
