"""Configuration: the TOML contract of SPEC §7 plus ``RISKGATE_*`` overrides.

The file is decoded with msgspec into frozen Structs that forbid unknown keys,
so a typo fails at start with the path of the bad key (``$.bots.alpha.portfolio
.max_daily_los``) instead of being silently ignored. Environment overrides use
``__`` as the path separator: ``RISKGATE_KAFKA__BOOTSTRAP_SERVERS=host:9092``.
"""

from __future__ import annotations

import copy
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

ENV_PREFIX = "RISKGATE_"

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PnlSource = Literal["outcomes", "fills"]


_S = TypeVar("_S", bound="_Section")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class KafkaConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "riskgate"
    client_id: str = "riskgate"
    group_instance_id: str | None = None
    """Static membership: set per replica so rolling restarts do not rebalance."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    sasl_password_file: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: PositiveInt = 10_000
    heartbeat_interval_ms: PositiveInt = 3_000
    max_poll_interval_ms: PositiveInt = 60_000
    request_timeout_ms: PositiveInt = 15_000
    fetch_max_wait_ms: PositiveInt = 20
    """Low: the broker answers a fetch at once when records arrive; this bounds idle polls."""

    def __repr__(self) -> str:
        # Never print credentials, whoever logs the config.
        return (
            f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, group_id={self.group_id!r})"
        )

    def password(self) -> str | None:
        if self.sasl_password_file:
            return Path(self.sasl_password_file).read_text().strip()
        return self.sasl_password


class TopicsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    fills: str = "trading.fills"
    outcomes: str = "trading.outcomes"
    intents: str = "trading.intents"
    control: str = "risk.control"
    snapshots: str = "risk.snapshots"
    gates: str = "risk.gates"
    halts: str = "risk.halts"
    decisions: str = "risk.decisions"
    deadletter: str = "risk.deadletter"
    partitions: PositiveInt = 8
    """Partition count used by ``riskgate topics`` for every topic (co-partitioning)."""
    replication_factor: PositiveInt = 1

    def inputs(self) -> tuple[str, str, str, str]:
        return (self.fills, self.outcomes, self.intents, self.control)


class SessionConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    loss_limit: float = -50.0
    """Net PnL at or below which the symbol halts for the UTC day; ``-inf`` disables."""


class BreakerConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    loss_limit: NonNegativeInt = 4
    """Losses inside the window that trip the breaker; 0 disables it."""
    window_secs: PositiveInt = 14_400
    cooldown_secs: NonNegativeInt = 3_600


class SessionOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    loss_limit: float | None = None


class BreakerOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    loss_limit: NonNegativeInt | None = None
    window_secs: PositiveInt | None = None
    cooldown_secs: NonNegativeInt | None = None


class SymbolOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    session: SessionOverride = SessionOverride()
    breaker: BreakerOverride = BreakerOverride()


class PortfolioConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Account-wide limits; each is off unless set."""

    max_daily_loss: float | None = None
    max_concurrent_positions: NonNegativeInt = 0
    max_gross_exposure: float | None = None


class DefaultsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    session: SessionConfig = SessionConfig()
    breaker: BreakerConfig = BreakerConfig()
    portfolio: PortfolioConfig = PortfolioConfig()
    pnl_source: PnlSource = "outcomes"
    accept_unknown_bots: bool = False


class BotConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    symbols: list[str] | None = None
    """Symbols this bot may trade; ``None`` means any symbol, with the defaults."""
    pnl_source: PnlSource | None = None
    session: SessionOverride = SessionOverride()
    breaker: BreakerOverride = BreakerOverride()
    portfolio: PortfolioConfig | None = None
    overrides: dict[str, SymbolOverride] = {}


class WorkerConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    sweep_interval_ms: PositiveInt = 1_000
    commit_interval_ms: PositiveInt = 100
    """Snapshots and offsets are persisted at most this often (outputs go out every batch);
    a crash replays at most this much, and watermarks make the replay exact."""
    max_unpersisted_keys: PositiveInt = 50_000
    """Persist early when this many keys changed since the last persist."""
    reservation_ttl_ms: PositiveInt = 30_000
    max_reservations_per_bot: PositiveInt = 1_000
    """Opens are denied while this many reservations are outstanding: a runaway bot
    must not grow its portfolio snapshot past the broker's record size."""
    max_batch_records: PositiveInt = 5_000
    poll_timeout_ms: PositiveInt = 100
    dedupe_ids_per_symbol: NonNegativeInt = 32
    """Recent fill/outcome ids remembered per symbol (and persisted) to drop producer
    retries re-sent at a new offset. Replays of the same offset are caught by offset
    watermarks regardless. Each id costs snapshot bytes and restore time."""
    max_message_bytes: PositiveInt = 64 * 1024
    max_future_skew_ms: PositiveInt = 5 * 60_000
    """Events stamped further than this in the future (wall clock) are bad input."""
    heartbeat_interval_ms: PositiveInt = 5_000
    """How often account gate records are re-published so clients can detect staleness."""
    stuck_after_ms: PositiveInt = 30_000
    """``/healthz`` fails when the poll loop has not completed an iteration for this long."""
    ready_commit_max_age_ms: PositiveInt = 60_000


class ControlConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    secret: str | None = None
    secret_file: str | None = None
    replay_window_ms: PositiveInt = 300_000

    def __repr__(self) -> str:
        return f"ControlConfig(signed={self.resolved_secret() is not None})"

    def resolved_secret(self) -> bytes | None:
        if self.secret_file:
            return Path(self.secret_file).read_bytes().strip()
        return self.secret.encode() if self.secret else None


class HttpConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "0.0.0.0"
    port: NonNegativeInt = 9464
    """0 picks a free port (tests)."""


class LogConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    bots: dict[str, BotConfig] = {}
    worker: WorkerConfig = WorkerConfig()
    control: ControlConfig = ControlConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()

    def __post_init__(self) -> None:
        # TOML has ``nan``; a NaN limit would silently disable its gate (every
        # comparison with it is false), so reject it wherever a limit can be set.
        for path, value in self._limits():
            if value is not None and math.isnan(value):
                raise ValueError(f"{path} must not be NaN")

    def _limits(self) -> list[tuple[str, float | None]]:
        limits: list[tuple[str, float | None]] = [
            ("defaults.session.loss_limit", self.defaults.session.loss_limit),
            *_portfolio_limits("defaults.portfolio", self.defaults.portfolio),
        ]
        for name, bot in self.bots.items():
            limits.append((f"bots.{name}.session.loss_limit", bot.session.loss_limit))
            if bot.portfolio is not None:
                limits.extend(_portfolio_limits(f"bots.{name}.portfolio", bot.portfolio))
            for symbol, override in bot.overrides.items():
                path = f"bots.{name}.overrides.{symbol}.session.loss_limit"
                limits.append((path, override.session.loss_limit))
        return limits


def _portfolio_limits(path: str, p: PortfolioConfig) -> list[tuple[str, float | None]]:
    return [
        (f"{path}.max_daily_loss", p.max_daily_loss),
        (f"{path}.max_gross_exposure", p.max_gross_exposure),
    ]


def _env_value(raw: str) -> Any:
    """Env values stay strings (msgspec converts them to the field's type), except
    TOML arrays and inline tables, so a numeric-looking password stays a string."""
    if raw.startswith(("[", "{")):
        try:
            return tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            return raw
    return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        # Only SECTION__KEY names: Kubernetes injects RISKGATE_<SERVICE>_PORT & co.
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: `{part}` is not a table")
            node = child
        node[path[-1]] = _env_value(raw)


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    text: str | None = None,
) -> Config:
    """Load a Config from a TOML file (or ``text``), then apply env overrides."""
    try:
        if text is not None:
            data = tomllib.loads(text)
        elif path is not None:
            data = tomllib.loads(Path(path).read_text())
        else:
            data = {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path or '<text>'}: {exc}") from exc
    _apply_env(data, os.environ if env is None else env)
    try:
        # strict=False lets env strings become ints/floats/bools; bad values still fail.
        return msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {_name_keys(data, str(exc))}") from exc
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc


_AT = " - at `"


def _name_keys(data: dict[str, Any], message: str) -> str:
    """Replace the ``[...]`` msgspec writes for a dict key with the actual key.

    ``$.bots[...].portfolio`` becomes ``$.bots.alpha.portfolio``: the offending
    key is found by elimination, converting with one entry of that table at a
    time until the same error comes back. Runs only on the error path.
    """
    head, sep, path = message.partition(_AT)
    if not sep or "[...]" not in path:
        return message
    trial = copy.deepcopy(data)
    resolved = "$"
    rest = path.rstrip("`")[1:]
    base: Any = trial
    while "[...]" in rest:
        before, _, rest = rest.partition("[...]")
        node: Any = base
        for part in before.split("."):
            if part:
                node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return message
        for key, value in list(node.items()):
            node.clear()
            node[key] = value
            try:
                msgspec.convert(trial, Config, strict=False)
            except (msgspec.ValidationError, ValueError) as exc:
                if str(exc) == message:
                    resolved += f"{before}.{key}"
                    base = value
                    break
        else:
            return message
    return f"{head}{_AT}{resolved}{rest}`"


# -- resolution of effective per-bot / per-symbol settings ---------------------


def _merge(base: _S, override: msgspec.Struct) -> _S:
    changes = {
        field: value
        for field in override.__struct_fields__
        if (value := getattr(override, field)) is not None
    }
    return msgspec.structs.replace(base, **changes) if changes else base


class BotSettings(msgspec.Struct, frozen=True):
    """A bot's effective settings, with defaults already folded in."""

    bot: str
    symbols: frozenset[str] | None
    pnl_source: PnlSource
    session: SessionConfig
    breaker: BreakerConfig
    portfolio: PortfolioConfig
    overrides: dict[str, SymbolOverride]

    def risk_for(self, symbol: str) -> tuple[SessionConfig, BreakerConfig]:
        """Per-symbol override over the bot's defaults (the seed's ``risk_for``)."""
        override = self.overrides.get(symbol)
        if override is None:
            return self.session, self.breaker
        return _merge(self.session, override.session), _merge(self.breaker, override.breaker)


def bot_settings(config: Config, bot: str) -> BotSettings | None:
    """Effective settings for ``bot``; ``None`` when the bot is unknown and not accepted."""
    defaults = config.defaults
    spec = config.bots.get(bot)
    if spec is None:
        if not defaults.accept_unknown_bots:
            return None
        spec = BotConfig()
    return BotSettings(
        bot=bot,
        symbols=frozenset(spec.symbols) if spec.symbols is not None else None,
        pnl_source=spec.pnl_source or defaults.pnl_source,
        session=_merge(defaults.session, spec.session),
        breaker=_merge(defaults.breaker, spec.breaker),
        portfolio=spec.portfolio or defaults.portfolio,
        overrides=spec.overrides,
    )
