from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from streams.broker import ensure_topics, free_port
from streams.settings import Settings

pytestmark = pytest.mark.integration


def test_guardstream_broker_serves_kafka_until_stopped() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "broker", "--port", str(port)], stderr=subprocess.PIPE, text=True
    )
    try:
        settings = Settings(bootstrap=f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                asyncio.run(ensure_topics(settings, ["probe"], retries=1))
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0
    assert proc.stderr is not None and f"127.0.0.1:{port}" in proc.stderr.read()


def test_a_busy_port_is_a_clear_error() -> None:
    port = free_port()
    first = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "broker", "--port", str(port)], stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)
        second = subprocess.run(
            [sys.executable, "-m", "streams.cli", "broker", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "error" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
