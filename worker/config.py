"""Configuration: the TOML contract of SPEC §7 plus ``RISKGATE_*`` overrides.

The file is decoded with msgspec into frozen Structs that forbid unknown keys,
so a typo fails at start with the path of the bad key (``$.bots.alpha.portfolio
.max_daily_los``) instead of being silently ignored. Environment overrides use
``__`` as the path separator: ``RISKGATE_KAFKA__BOOTSTRAP_SERVERS=host:9092``.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

ENV_PREFIX = "RISKGATE_"

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
_MAX_CAP = 1e15
LossLimit = Annotated[float, msgspec.Meta(lt=0.0)]
"""A loss threshold: negative; ``-inf`` disables it. NaN, 0, positive and ``+inf``
fail the bound (a NaN limit would silently disable its gate: every comparison
with it is false; a positive one would halt on a winning day)."""
Cap = Annotated[float, msgspec.Meta(gt=0.0, le=_MAX_CAP)]
"""A positive, finite cap (NaN and ``inf`` fail the bounds)."""
OffCap = Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_CAP)]
"""A finite, non-negative cap where 0 means off, so a bot or symbol table can lift a
default (``None`` in an override means "inherit", never "off")."""
OrderRate = Annotated[int, msgspec.Meta(ge=0, le=1_000)]
"""Allowed intents per second per bot; 0 = off. At most 1,000: the window of the last
that many record times is persisted with the bot."""
DayMs = Annotated[int, msgspec.Meta(ge=0, le=86_400_000)]
UnreadableState = Literal["fresh", "halt"]
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
    audit: str = "risk.audit"
    """Who did what, why and when through ``riskgate console`` (the worker never reads it)."""
    marks: str = "trading.marks"
    """Mark prices, key = symbol. Market-wide: every worker reads all its partitions
    outside the consumer group, so it is not one of :meth:`inputs`."""
    partitions: PositiveInt = 8
    """Partition count used by ``riskgate topics`` for every topic (co-partitioning)."""
    replication_factor: PositiveInt = 1

    def inputs(self) -> tuple[str, str, str, str]:
        return (self.fills, self.outcomes, self.intents, self.control)


class SessionConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    loss_limit: LossLimit = -50.0
    """Net PnL at or below which the symbol halts for the UTC day; ``-inf`` disables."""
    include_unrealised: bool = False
    """Judge ``loss_limit`` on net PnL plus the open position's unrealised PnL at its
    mark. Off by default: the seed's session is realised-only."""


class BreakerConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    loss_limit: NonNegativeInt = 4
    """Losses inside the window that trip the breaker; 0 disables it."""
    window_secs: PositiveInt = 14_400
    cooldown_secs: NonNegativeInt = 3_600


class SessionOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    loss_limit: LossLimit | None = None
    include_unrealised: bool | None = None


class BreakerOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    loss_limit: NonNegativeInt | None = None
    window_secs: PositiveInt | None = None
    cooldown_secs: NonNegativeInt | None = None


class OrdersConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-order sanity checks (SEC 15c3-5 erroneous-order checks); each is 0 = off.

    They apply to every intent, closes included: a fat-fingered close is still
    an erroneous order.
    """

    max_qty: OffCap = 0.0
    """Largest quantity of one order (gate ``max_order_qty``)."""
    max_notional: OffCap = 0.0
    """Largest ``qty * price * contract_value`` of one order (``max_order_notional``)."""
    price_collar_bps: OffCap = 0.0
    """Deny an order priced further than this from a fresh mark (``price_collar``;
    without a fresh mark: ``stale_mark``)."""
    max_orders_per_sec: OrderRate = 0
    """Allowed intents per bot in any second of record time (``order_rate``). A bot
    setting: a symbol override cannot change it."""
    duplicate_window_ms: DayMs = 0
    """Deny an order with the same symbol, side, qty and price as one allowed this
    recently (record time; ``duplicate_order``)."""
    mark_max_age_ms: PositiveInt = 60_000
    """A mark older than this (its ``ts`` against the decision's wall clock) is stale:
    a check that needs it fails closed for opens (``stale_mark``). Here, not in
    ``[worker]``, because how often a mark ticks is a property of the instrument, so
    it resolves per symbol like the checks that use it."""


class SymbolOrdersOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[bots.X.overrides.SYM.orders]``: everything but the per-bot order rate."""

    max_qty: OffCap | None = None
    max_notional: OffCap | None = None
    price_collar_bps: OffCap | None = None
    duplicate_window_ms: DayMs | None = None
    mark_max_age_ms: PositiveInt | None = None


class OrdersOverride(SymbolOrdersOverride, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A bot's ``[bots.X.orders]``: keys set here replace the default's. The symbol
    override's keys plus the order rate, which only a bot can set (one window per bot)."""

    max_orders_per_sec: OrderRate | None = None


class CooldownConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    after_loss_secs: NonNegativeInt = 0
    """After a losing trade on a symbol, block entries on it this long from the
    trade's time (freqtrade's CooldownPeriod; gate ``loss_cooldown``); 0 = off."""


class CooldownOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    after_loss_secs: NonNegativeInt | None = None


class SymbolOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    session: SessionOverride = SessionOverride()
    breaker: BreakerOverride = BreakerOverride()
    orders: SymbolOrdersOverride = SymbolOrdersOverride()
    cooldown: CooldownOverride = CooldownOverride()


class PortfolioConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Account-wide limits; each is off unless set."""

    max_daily_loss: LossLimit | None = None
    """Negative; ``-inf`` disables it (also to lift a default for one bot)."""
    max_concurrent_positions: NonNegativeInt = 0
    """0 = unlimited."""
    max_gross_exposure: Cap | None = None
    include_unrealised: bool = True
    """Judge ``max_daily_loss`` on equity (realised net + unrealised PnL at the marks),
    so a losing open position trips it before it is closed."""
    max_drawdown: OffCap = 0.0
    """Latch the bot for the UTC day when its equity falls this far below the day's
    peak (gate ``drawdown``); 0 = off."""
    max_daily_notional: OffCap = 0.0
    """Total notional of allowed opens per UTC day (``daily_notional``); 0 = off."""


class PortfolioOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A bot's ``[bots.X.portfolio]``: each key set here replaces the default's, the
    rest are inherited (a bot that sets only a concurrency cap keeps the default
    daily-loss limit)."""

    max_daily_loss: LossLimit | None = None
    max_concurrent_positions: NonNegativeInt | None = None
    max_gross_exposure: Cap | None = None
    include_unrealised: bool | None = None
    max_drawdown: OffCap | None = None
    max_daily_notional: OffCap | None = None


class DefaultsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    session: SessionConfig = SessionConfig()
    breaker: BreakerConfig = BreakerConfig()
    portfolio: PortfolioConfig = PortfolioConfig()
    orders: OrdersConfig = OrdersConfig()
    cooldown: CooldownConfig = CooldownConfig()
    pnl_source: PnlSource = "outcomes"
    accept_unknown_bots: bool = False


class BotConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    symbols: list[str] | None = None
    """Symbols this bot may trade; ``None`` means any symbol, with the defaults."""
    pnl_source: PnlSource | None = None
    session: SessionOverride = SessionOverride()
    breaker: BreakerOverride = BreakerOverride()
    portfolio: PortfolioOverride = PortfolioOverride()
    orders: OrdersOverride = OrdersOverride()
    cooldown: CooldownOverride = CooldownOverride()
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
    dedupe_ids_per_bot: NonNegativeInt = 10_000
    """Recent ids remembered per bot and input topic (fills, outcomes) to drop producer
    re-sends at new offsets: a re-sent run of up to this many events counts nothing
    twice. Persisted in the portfolio snapshot at 12 bytes an id (base64: 16); 0 turns
    it off (offset watermarks still drop replays of the same offset)."""
    max_message_bytes: PositiveInt = 64 * 1024
    max_future_skew_ms: PositiveInt = 5 * 60_000
    """Events stamped further than this in the future (wall clock) are bad input."""
    heartbeat_interval_ms: PositiveInt = 5_000
    """How often account gate records are re-published so clients can detect staleness."""
    stuck_after_ms: PositiveInt = 30_000
    """``/healthz`` fails when the poll loop has not completed an iteration for this long."""
    ready_commit_max_age_ms: PositiveInt = 60_000
    on_unreadable_state: UnreadableState = "fresh"
    """A bot whose snapshot is corrupt or of an unknown version: ``fresh`` starts it
    from nothing (the seed's behaviour); ``halt`` starts it blocked by
    ``unreadable_state`` until an operator ``reset-state`` (fail closed)."""


def read_secret_file(path: str, field: str) -> bytes:
    """The secret in the file at ``path`` (config key ``field``), surrounding ASCII
    whitespace stripped.

    Read when a component starts, never when the config loads, so tools that do not
    need the secret work without its mount. An unreadable or blank file is a
    ConfigError: it is a deployment mistake (an unpopulated secret mount), and an
    empty key or token is one anybody can present.
    """
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {field}: {exc}") from exc
    if not secret:
        raise ConfigError(f"{field} {path!r} is empty")
    return secret


class ControlConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    secret: Annotated[str, msgspec.Meta(pattern=r"\S")] | None = None
    """A blank secret is an error, not "unsigned": an empty HMAC key is one anybody can use."""
    secret_file: str | None = None
    """Wins over ``secret``. Read when the worker starts (``resolved_secret``), not when
    the config loads, so operator tools work on a machine without the secret mount."""
    replay_window_ms: PositiveInt = 300_000

    def __repr__(self) -> str:
        return f"ControlConfig(signed={self.secret is not None or self.secret_file is not None})"

    def resolved_secret(self) -> bytes | None:
        """The HMAC key, or None when commands are unsigned.

        An empty or blank key is a ConfigError, never "no key": an empty HMAC key
        is one anybody can sign with, and a blank ``secret_file`` is a deployment
        mistake (an unpopulated secret mount) that must stop the start.
        """
        if self.secret_file is not None:
            return read_secret_file(self.secret_file, "control.secret_file")
        return self.secret.encode() if self.secret is not None else None


class HttpConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "0.0.0.0"
    port: NonNegativeInt = 9464
    """0 picks a free port (tests)."""


ConsoleRole = Literal["viewer", "operator"]
"""``viewer`` sees everything; only ``operator`` may act (halt, resume, resets)."""


class ConsoleUser(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One console login: a role and a bearer token, given as its hash or in a file.

    Tokens are long random strings, so a plain SHA-256 of one is safe to keep
    in a config file (nothing to brute-force); ``token_file`` holds the token
    itself (a secret mount) and wins when both are set.
    """

    role: ConsoleRole = "viewer"
    token_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    token_file: str | None = None

    def __repr__(self) -> str:
        return f"ConsoleUser(role={self.role!r})"


class ConsoleConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``riskgate console``: the operators' web page (``worker/console``)."""

    host: str = "127.0.0.1"
    port: NonNegativeInt = 8787
    """0 picks a free port (tests)."""
    users: dict[str, ConsoleUser] = {}
    """Nobody can log in until a user is configured."""
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    secure_cookies: bool = True
    """The session cookie's ``Secure`` flag. Browsers keep Secure cookies from
    ``http://127.0.0.1``/``localhost``; turn it off only for plain HTTP elsewhere."""
    session_ttl_s: PositiveInt = 12 * 3600
    staleness_ms: PositiveInt = 15_000
    """A bot not heard from for this long (its worker's heartbeat) shows as stale, blocked."""
    timeline_size: PositiveInt = 2_000
    """Halt/resume events kept for the timeline (latest first)."""


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
    console: ConsoleConfig = ConsoleConfig()


def _env_value(raw: str) -> Any:
    """Env values stay strings (msgspec converts them to the field's type), except
    TOML arrays and inline tables, so a numeric-looking password stays a string."""
    if raw.startswith(("[", "{")):
        try:
            return tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            return raw
    return raw


def _env_path(name: str) -> list[str]:
    """The config path an override names, with the case of every part restored.

    Section and key names are matched case-insensitively (they are all lower
    case); table keys the user chose - bot ids and symbols - keep their case,
    because ``DeskBot`` and ``deskbot`` are different bots. The walk follows the
    Config types, so a new table of user-chosen keys needs no change here.
    """
    parts = name[len(ENV_PREFIX) :].split("__")
    if any(not part for part in parts):
        raise ConfigError(
            f"{name}: malformed override name; use {ENV_PREFIX}<SECTION>__<KEY>, e.g. "
            f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS (an empty part between '__')"
        )
    path: list[str] = []
    info: msgspec.inspect.Type | None = msgspec.inspect.type_info(Config)
    for part in parts:
        info = _unwrap(info)
        if isinstance(info, msgspec.inspect.DictType):
            path.append(part)
            info = info.value_type
        elif isinstance(info, msgspec.inspect.StructType):
            key = part.lower()
            path.append(key)
            info = next((f.type for f in info.fields if f.name == key), None)
        else:  # a scalar or an unknown key: conversion names the bad path
            path.append(part.lower())
            info = None
    return path


def _unwrap(info: msgspec.inspect.Type | None) -> msgspec.inspect.Type | None:
    """``X | None`` → ``X`` (optional tables are still tables)."""
    if isinstance(info, msgspec.inspect.UnionType):
        types = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        return types[0] if len(types) == 1 else None
    return info


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        # Only SECTION__KEY names: Kubernetes injects RISKGATE_<SERVICE>_PORT & co.
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = _env_path(name)
        node = data
        for part in path[:-1]:
            _check_case(name, node, part)
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: `{part}` is not a table")
            node = child
        node[path[-1]] = _env_value(raw)


def _check_case(name: str, node: dict[str, Any], part: str) -> None:
    """An override for ``DESKBOT`` when the file has ``DeskBot`` is a typo, not a new bot."""
    if part in node:
        return
    near = [key for key in node if isinstance(key, str) and key.lower() == part.lower()]
    if near:
        raise ConfigError(
            f"{name}: `{part}` is not in the config, but `{near[0]}` is; "
            "bot and symbol names are case-sensitive in overrides"
        )


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
    orders: OrdersConfig = OrdersConfig()
    cooldown: CooldownConfig = CooldownConfig()

    def orders_for(self, symbol: str) -> OrdersConfig:
        """The order checks of ``symbol``: its override over the bot's (rate: the bot's)."""
        override = self.overrides.get(symbol)
        return self.orders if override is None else _merge(self.orders, override.orders)

    def cooldown_for(self, symbol: str) -> CooldownConfig:
        override = self.overrides.get(symbol)
        return self.cooldown if override is None else _merge(self.cooldown, override.cooldown)

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
        portfolio=_merge(defaults.portfolio, spec.portfolio),
        overrides=spec.overrides,
        orders=_merge(defaults.orders, spec.orders),
        cooldown=_merge(defaults.cooldown, spec.cooldown),
    )
