"""KAFKA_SECURITY_PROTOCOL and its settings: checked whole, and turned into the clients' TLS and SASL.

What a broker does with them is tested in tests/integration/test_kafka_tls.py (TLS); the
embedded broker cannot check SASL credentials, so SASL is tested here as far as the
arguments every Kafka client of the service gets.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.errors import ConfigurationError
from service.runtime import build_runtime, kafka_client_options, kafka_security, runtime_or_exit
from tests.tls_material import write_tls_files


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = Settings()
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert kafka_security(settings) is None
    assert kafka_client_options(settings) == {}


def test_tls_verifies_the_broker_against_the_ca_file(tmp_path: Path) -> None:
    files = write_tls_files(tmp_path)
    options = kafka_client_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(files.ca)))
    assert options["security_protocol"] == "SSL"
    context: ssl.SSLContext = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "sessionpulse test CA"),),)]


def test_tls_without_a_ca_file_trusts_the_system_store_and_can_skip_the_host_name() -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_check_hostname=False)
    context: ssl.SSLContext = kafka_client_options(settings)["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname


def test_mutual_tls_loads_the_client_certificate(tmp_path: Path) -> None:
    files = write_tls_files(tmp_path)  # the server's pair stands in for a client's
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(files.ca),
        kafka_ssl_certfile=str(files.cert),
        kafka_ssl_keyfile=str(files.key),
    )
    assert kafka_client_options(settings)["security_protocol"] == "SSL"
    wrong = Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=str(files.ca))  # no key in it
    with pytest.raises(ConfigurationError, match="KAFKA_SSL_CERTFILE"):
        kafka_client_options(wrong)


@pytest.mark.parametrize(
    ("protocol", "mechanism", "tls"),
    [
        ("SASL_SSL", "SCRAM-SHA-512", True),
        ("SASL_SSL", "PLAIN", True),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256", False),
    ],
)
def test_sasl_gives_every_client_the_mechanism_and_credentials(
    protocol: str, mechanism: str, tls: bool
) -> None:
    settings = Settings(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="svc",
        kafka_sasl_password="s3cret",
    )
    options = kafka_client_options(settings)
    assert options["security_protocol"] == protocol
    assert options["sasl_mechanism"] == mechanism
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext) is tls
    assert "s3cret" not in repr(settings)  # a secret, kept out of logs


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SASL_USERNAME": "svc",
            },
            "needs KAFKA_SASL_PASSWORD",
        ),
        ({"KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "x"}, "PLAINTEXT uses no SASL"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SASL_USERNAME": "svc",
                "KAFKA_SASL_PASSWORD": "x",
                "KAFKA_SSL_CAFILE": "/ca.pem",
            },
            "SASL_PLAINTEXT uses no TLS",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "/k.pem"},
            "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE",
        ),
        (
            {"KAFKA_SSL_CHECK_HOSTNAME": "false"},
            "KAFKA_SSL_CHECK_HOSTNAME set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_USERNAME": "svc",
                "KAFKA_SASL_PASSWORD": "x",
            },
            "kafka_sasl_mechanism",
        ),
    ],
)
def test_settings_that_do_not_go_together_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_names_are_taken_in_any_case_and_a_blank_protocol_is_plaintext(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", " sasl_ssl ")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "x")
    settings = Settings()
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
    for name in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "")
    assert Settings().kafka_security_protocol == "PLAINTEXT"


def test_blank_variables_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template's `KAFKA_SSL_CAFILE=` (or any of them left empty) changes nothing."""
    for name in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE",
                 "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):  # fmt: skip
        monkeypatch.setenv(name, "")
    assert kafka_client_options(Settings()) == {}


def test_a_ca_file_that_does_not_load_is_named(tmp_path: Path) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match=r"KAFKA_SSL_CAFILE .*missing\.pem"):
        build_runtime(settings)


def test_a_command_with_unusable_settings_exits_with_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SystemExit) as exited:
        runtime_or_exit("worker")
    assert str(exited.value).startswith("sessionpulse worker: invalid configuration:")
    assert "KAFKA_SASL_USERNAME" in str(exited.value)


def test_a_refused_setting_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic's message repeats the values it was given; a password must not reach the log."""
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("HTTP_PORT", "eighty")
    with pytest.raises(SystemExit) as exited:
        runtime_or_exit("api")
    assert "HTTP_PORT: Input should be a valid integer" in str(exited.value)
    assert "eighty" not in str(exited.value)
    monkeypatch.delenv("HTTP_PORT")
    with pytest.raises(SystemExit) as exited:
        runtime_or_exit("api")
    assert "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in str(
        exited.value
    )
    assert "hunter2" not in str(exited.value)
