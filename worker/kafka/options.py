"""Connection options shared by every aiokafka client the worker creates.

One function builds them so the consumer, the producer and the admin client
can never disagree on TLS or SASL settings. The result holds the SASL password:
pass it to a client constructor, never to a logger.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from worker.config import ConfigError, KafkaConfig

_SASL = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_TLS = frozenset({"SSL", "SASL_SSL"})


def client_kwargs(kafka: KafkaConfig) -> dict[str, Any]:
    """Keyword arguments common to AIOKafkaConsumer, AIOKafkaProducer and the admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol in _TLS:
        if kafka.ssl_keyfile and not kafka.ssl_certfile:
            raise ConfigError("kafka.ssl_keyfile is set without kafka.ssl_certfile")
        try:
            context = create_ssl_context(
                cafile=kafka.ssl_cafile,
                certfile=kafka.ssl_certfile,
                keyfile=kafka.ssl_keyfile,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load kafka.ssl_cafile / ssl_certfile / ssl_keyfile: {exc}"
            ) from exc
        context.check_hostname = kafka.ssl_check_hostname
        kwargs["ssl_context"] = context
    if kafka.security_protocol in _SASL:
        if kafka.sasl_mechanism is None:
            raise ConfigError(
                f"kafka.sasl_mechanism is required with security_protocol {kafka.security_protocol}"
            )
        try:
            password = kafka.password()
        except OSError as exc:
            raise ConfigError(f"cannot read kafka.sasl_password_file: {exc}") from exc
        if not kafka.sasl_username or not password:  # an empty secret file is a mistake
            # Name the keys, never the values.
            raise ConfigError(
                f"kafka.sasl_username and kafka.sasl_password (or sasl_password_file) "
                f"are required with sasl_mechanism {kafka.sasl_mechanism}"
            )
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = password
    return kwargs


def redacted(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` safe to log: the password masked, the SSL context reduced to a flag."""
    safe = dict(kwargs)
    if "sasl_plain_password" in safe:
        safe["sasl_plain_password"] = "***"
    if "ssl_context" in safe:
        safe["ssl_context"] = "<tls>"
    return safe
