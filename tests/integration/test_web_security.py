"""The worker's endpoints behind HTTPS and basic auth, and the CLI still reaching them."""

from __future__ import annotations

import http.client
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streams.broker import free_port
from streams.settings import Settings
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, wait_until

pytestmark = pytest.mark.integration


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def status(url: str, context: ssl.SSLContext, authorization: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_metrics_and_queries_need_the_password_over_https(settings: Settings, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    secure = {
        "GUARDSTREAM_WEB_USERNAME": "prometheus",
        "GUARDSTREAM_WEB_PASSWORD": "s3cret",
        "GUARDSTREAM_WEB_TLS_CERT": str(cert),
        "GUARDSTREAM_WEB_TLS_KEY": str(key),
    }
    env = {**env_for(settings), **secure}
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*GUARDSTREAM, "run", "--web-port", str(port)], env=env, stdout=out, stderr=out)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        url = f"https://127.0.0.1:{port}"
        good = Settings(web_username="prometheus", web_password="s3cret").web_authorization()  # type: ignore[arg-type]
        wait_until(lambda: status(url + "/status", context, good) == 200, 90, "the worker over https")
        for path in ("/metrics", "/status"):
            assert status(url + path, context, None) == 401
            assert status(url + path, context, "Basic cHJvbWV0aGV1czp3cm9uZw==") == 401  # prometheus:wrong
            assert status(url + path, context, good) == 200
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)  # no plain HTTP

        # the CLI finds the worker through <db>.service.json and brings the credentials and the trust along
        cli = subprocess.run([*GUARDSTREAM, "sql", "SELECT 42 AS answer", "-f", "csv"], env=env, capture_output=True)
        assert cli.returncode == 0, cli.stderr.decode()
        assert b"42" in cli.stdout
        without = {k: v for k, v in env.items() if k != "GUARDSTREAM_WEB_PASSWORD"}
        refused = subprocess.run([*GUARDSTREAM, "sql", "SELECT 1", "-f", "csv"], env=without, capture_output=True)
        assert refused.returncode != 0 and b"authentication required" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
