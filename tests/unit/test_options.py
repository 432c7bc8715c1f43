"""Connection options: every aiokafka client gets TLS and SASL from ``client_kwargs``.

No broker: the kwargs themselves are checked (a real TLS/SASL round trip is in
``tests/integration/test_ops_security.py``), and that no secret can reach a log.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
from aiokafka.helpers import create_ssl_context

from worker.config import Config, ConfigError, KafkaConfig, load_config
from worker.kafka import options
from worker.kafka.options import client_kwargs, redacted

PASSWORD = "pw-Zq8#not-in-any-log"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key (usable as CA and as client cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("pki")
    pem, key = directory / "ca.pem", directory / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(pem), "-days", "1",
         "-subj", "/CN=riskgate unit CA"],
        check=True, capture_output=True,
    )  # fmt: skip
    return pem, key


def kafka(**settings: Any) -> KafkaConfig:
    return msgspec.convert({"bootstrap_servers": "broker:9093", **settings}, KafkaConfig)


def test_plaintext_has_connection_basics_and_nothing_secure() -> None:
    kwargs = client_kwargs(kafka(client_id="rg-1", request_timeout_ms=7000))
    assert kwargs == {
        "bootstrap_servers": "broker:9093",
        "client_id": "rg-1",
        "security_protocol": "PLAINTEXT",
        "request_timeout_ms": 7000,
    }


def test_ssl_passes_a_context_with_the_ca_and_client_cert(cert: tuple[Path, Path]) -> None:
    pem, key = cert
    kwargs = client_kwargs(
        kafka(
            security_protocol="SSL",
            ssl_cafile=str(pem),
            ssl_certfile=str(pem),
            ssl_keyfile=str(key),
        )
    )
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert kwargs["security_protocol"] == "SSL"
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert "('commonName', 'riskgate unit CA')" in repr(context.get_ca_certs())
    assert not any(k.startswith("sasl_") for k in kwargs)


def test_ssl_files_reach_the_context_factory(
    cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pem, key = cert
    seen: dict[str, Any] = {}

    def spy(**kw: Any) -> ssl.SSLContext:
        seen.update(kw)
        context: ssl.SSLContext = create_ssl_context(**kw)
        return context

    monkeypatch.setattr(options, "create_ssl_context", spy)
    client_kwargs(
        kafka(
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_username="svc",
            sasl_password=PASSWORD,
            ssl_cafile=str(pem),
            ssl_certfile=str(pem),
            ssl_keyfile=str(key),
        )
    )
    assert seen == {"cafile": str(pem), "certfile": str(pem), "keyfile": str(key)}


def test_hostname_check_can_be_disabled_but_verification_stays(cert: tuple[Path, Path]) -> None:
    context = client_kwargs(
        kafka(security_protocol="SSL", ssl_cafile=str(cert[0]), ssl_check_hostname=False)
    )["ssl_context"]
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_unreadable_tls_files_are_a_config_error_naming_the_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.ssl_cafile"):
        client_kwargs(kafka(security_protocol="SSL", ssl_cafile=str(tmp_path / "absent.pem")))
    with pytest.raises(ConfigError, match=r"kafka\.ssl_keyfile is set without kafka\.ssl_certfile"):
        client_kwargs(kafka(security_protocol="SSL", ssl_keyfile=str(tmp_path / "k.pem")))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_credentials_are_passed(
    mechanism: str, protocol: str, cert: tuple[Path, Path]
) -> None:
    tls = {"ssl_cafile": str(cert[0])} if protocol == "SASL_SSL" else {}
    kwargs = client_kwargs(
        kafka(
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username="svc-risk",
            sasl_password=PASSWORD,
            **tls,
        )
    )
    assert kwargs["security_protocol"] == protocol
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "svc-risk"
    assert kwargs["sasl_plain_password"] == PASSWORD
    assert ("ssl_context" in kwargs) is (protocol == "SASL_SSL")


def test_password_file_wins_and_is_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD + "\n")
    kwargs = client_kwargs(
        kafka(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="svc",
            sasl_password="inline-loses",
            sasl_password_file=str(secret),
        )
    )
    assert kwargs["sasl_plain_password"] == PASSWORD


def test_settings_from_toml_and_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    config = load_config(
        text='[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "SCRAM-SHA-256"\n',
        env={
            "RISKGATE_KAFKA__SASL_USERNAME": "from-env",
            "RISKGATE_KAFKA__SASL_PASSWORD_FILE": str(secret),
        },
    )
    kwargs = client_kwargs(config.kafka)
    assert kwargs["sasl_plain_username"] == "from-env"
    assert kwargs["sasl_plain_password"] == PASSWORD


def test_missing_mechanism_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.sasl_mechanism is required"):
        client_kwargs(kafka(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p"))


@pytest.mark.parametrize(
    "settings",
    [
        {"sasl_password": PASSWORD},  # no username
        {"sasl_username": "svc-risk"},  # no password
        {"sasl_username": "svc-risk", "sasl_password": ""},  # empty password
        {"sasl_password": PASSWORD, "sasl_username": ""},
    ],
)
def test_missing_credentials_name_the_keys_never_the_values(settings: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        client_kwargs(kafka(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", **settings))
    message = str(info.value)
    assert "kafka.sasl_username" in message
    assert "kafka.sasl_password" in message
    assert PASSWORD not in message
    assert "svc-risk" not in message


def test_empty_or_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    base = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password"):
        client_kwargs(kafka(**base, sasl_password_file=str(empty)))
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password_file"):
        client_kwargs(kafka(**base, sasl_password_file=str(tmp_path / "absent")))


def test_nothing_secret_reaches_a_rendered_log_line(tmp_path: Path) -> None:
    """What the worker could log about its connection: redacted kwargs, config objects."""
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    config = load_config(
        text=(
            '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
            f'sasl_username = "svc"\nsasl_password = "{PASSWORD}"\n'
            f'[control]\nsecret = "{PASSWORD}-control"\n'
        ),
        env={},
    )
    assert isinstance(config, Config)
    kwargs = client_kwargs(config.kafka)
    safe = redacted(kwargs)
    assert safe["sasl_plain_password"] == "***"
    assert safe["sasl_plain_username"] == "svc"
    assert kwargs["sasl_plain_password"] == PASSWORD  # redacted() copies, never mutates
    render = structlog.processors.JSONRenderer()
    lines = [
        render(None, "info", {"event": "connecting", **safe}),
        render(None, "info", {"event": "config", "config": config, "kafka": config.kafka}),
        repr(config),
        str(config.kafka),
    ]
    for line in lines:
        assert PASSWORD not in line, line
    assert "svc" in lines[0]
