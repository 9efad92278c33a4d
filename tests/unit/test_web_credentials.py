"""Who may ask, decided without a server: half-set credentials, the start-up check for serving beyond loopback,
the one-line settings error, and the container probe speaking the same settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streams import probe
from streams.cli import settings_error
from streams.settings import Settings
from streams.web_security import ServingRefused, check_serving, is_loopback

BASIC = {"web_username": "prometheus", "web_password": "s3cret"}
TLS = {"web_tls_cert": Path("/certs/tls.crt"), "web_tls_key": Path("/certs/tls.key")}
MUTUAL = {**TLS, "web_tls_client_cafile": Path("/certs/ca.crt")}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"web_username": "prometheus"}, "GUARDSTREAM_WEB_USERNAME is set without GUARDSTREAM_WEB_PASSWORD"),
        ({"web_username": "prometheus", "web_password": ""}, "without GUARDSTREAM_WEB_PASSWORD"),
        ({"web_password": "s3cret"}, "GUARDSTREAM_WEB_PASSWORD is set without GUARDSTREAM_WEB_USERNAME"),
        ({"web_tls_key": Path("/certs/tls.key")}, "GUARDSTREAM_WEB_TLS_KEY is set without GUARDSTREAM_WEB_TLS_CERT"),
        ({"web_tls_client_cafile": Path("/certs/ca.crt")}, "needs the server's own GUARDSTREAM_WEB_TLS_CERT"),
        ({"web_tls_client_key": Path("/c.key")}, "GUARDSTREAM_WEB_TLS_CLIENT_KEY is set without"),
    ],
)
def test_half_set_credentials_are_an_error_wherever_settings_load(values: dict[str, Any], named: str) -> None:
    """Not a silent fall-back to no auth: the settings object itself refuses them (every command loads it)."""
    with pytest.raises(ValidationError) as refused:
        settings(**values)
    line = settings_error(refused.value)
    assert named in line
    assert "\n" not in line and "s3cret" not in line, "one line, and never the values given"


def test_an_empty_variable_is_unset() -> None:
    blank = settings(web_tls_cert="", web_tls_key=" ", web_username="", web_password="", web_tls_cafile="")
    assert blank.web_tls_cert is None and blank.web_tls_key is None and blank.web_tls_cafile is None
    assert blank.web_authorization() is None and blank.web_scheme() == "http"


@pytest.mark.parametrize(
    "values", [{}, BASIC, TLS, {**TLS, **BASIC}, MUTUAL, {**MUTUAL, **BASIC}, {"web_tls_cert": Path("/both.pem")}]
)
def test_complete_credentials_load(values: dict[str, Any]) -> None:
    loaded = settings(**values)
    assert (loaded.web_authorization() is not None) == ("web_username" in values)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost"])
def test_loopback_serves_without_credentials(host: str) -> None:
    assert is_loopback(host)
    check_serving(settings(web_host=host), load_files=False)
    check_serving(settings(web_host=host, **BASIC), load_files=False)  # basic auth without TLS: loopback only


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.1.2.3", "192.0.2.7"])
@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({}, "serve it over TLS"),
        (BASIC, "would send the password in clear"),
        (TLS, "to callers with basic auth"),
        ({"web_tls_cafile": Path("/certs/ca.crt")}, "serve it over TLS"),
    ],
)
def test_beyond_loopback_without_tls_and_credentials_is_refused(host: str, values: dict[str, Any], why: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ServingRefused, match=why):
        check_serving(settings(web_host=host, **values), load_files=False)


@pytest.mark.parametrize("values", [{**TLS, **BASIC}, MUTUAL, {**MUTUAL, **BASIC}])
def test_beyond_loopback_with_tls_and_credentials_serves(values: dict[str, Any]) -> None:
    check_serving(settings(web_host="0.0.0.0", **values), load_files=False)


def test_a_worker_does_not_call_a_remote_writer_in_clear_text() -> None:
    check_serving(settings(writer_url="http://127.0.0.1:6066"), load_files=False)
    check_serving(settings(writer_url="https://guardstream-writer:6066"), load_files=False)
    with pytest.raises(ServingRefused, match="in clear text"):
        check_serving(settings(writer_url="http://guardstream-writer:6066", **BASIC), load_files=False)


def test_tls_files_that_cannot_be_loaded_are_one_clear_error(tmp_path: Path) -> None:
    missing = {"web_tls_cert": tmp_path / "tls.crt", "web_tls_key": tmp_path / "tls.key"}
    with pytest.raises(ServingRefused, match="cannot load GUARDSTREAM_WEB_TLS_CERT"):
        check_serving(settings(**missing))
    not_pem = tmp_path / "client.crt"
    not_pem.write_text("not a certificate")
    with pytest.raises(ServingRefused, match="to call the writer"):
        check_serving(settings(writer_url="https://127.0.0.1:1", web_tls_client_cert=not_pem))


def test_the_probe_reads_real_settings_and_sends_the_same_credentials() -> None:
    """streams/probe.py reads the environment itself (standard library only): its variables must be settings, and
    what it sends must be what the settings object sends."""
    names = {f"GUARDSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert {probe.PREFIX + name for name in probe.READS} <= names
    env = {"GUARDSTREAM_WEB_USERNAME": "prometheus", "GUARDSTREAM_WEB_PASSWORD": "s3:cr:et"}
    assert probe.authorization(env) == settings(web_username="prometheus", web_password="s3:cr:et").web_authorization()
    request, context = probe.request_for("/status", {**env, "GUARDSTREAM_WEB_PORT": "7070"})
    assert request.full_url == "http://127.0.0.1:7070/status" and context is None
    assert request.get_header("Authorization") == probe.authorization(env)
    assert probe.authorization({"GUARDSTREAM_WEB_USERNAME": "prometheus"}) is None
