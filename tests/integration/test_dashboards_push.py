"""`guardstream dashboards push` against a stand-in Grafana HTTP API on loopback (no Grafana server can be
installed here): every committed dashboard is sent, by uid, with the token, overwriting."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from streams.grafana import load_dashboards

pytestmark = pytest.mark.integration


@pytest.fixture
def fake_grafana() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if self.headers.get("Authorization") != "Bearer secret-token":
                self.send_response(401)
                answer = {"message": "invalid API key"}
            else:
                self.send_response(200)
                answer = {"status": "success", "uid": body["dashboard"]["uid"], "version": 3}
            data = json.dumps(answer).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def test_push_sends_every_dashboard_by_uid(fake_grafana: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = fake_grafana
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "dashboards",
            "push",
            "--url",
            url,
            "--token",
            "secret-token",
            "--folder-uid",
            "guardstream",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = {d["uid"] for d in load_dashboards()}
    assert {r["body"]["dashboard"]["uid"] for r in received} == expected and len(received) == len(expected)
    assert all(r["path"] == "/api/dashboards/db" and r["body"]["overwrite"] is True for r in received)
    assert all(r["body"]["folderUid"] == "guardstream" for r in received)
    for uid in expected:
        assert f"pushed {uid} (version 3)" in result.stderr


def test_a_refused_push_is_one_clear_line(fake_grafana: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = fake_grafana
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "dashboards", "push", "--url", url, "--token", "wrong"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Grafana refused" in result.stderr and "Traceback" not in result.stderr
