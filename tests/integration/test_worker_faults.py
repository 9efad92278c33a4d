"""Faults inside a real worker process: a detector bug and a hung store (fault hooks in faults/)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detectors.events import pseudonymize
from streams.broker import free_port
from streams.produce import produce
from streams.sandbox import open_sandboxed
from streams.settings import Settings
from streams.simulator import SimConfig, simulate
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, get_json, read_topic, wait_until

pytestmark = pytest.mark.integration
FAULTS = Path(__file__).with_name("faults")


def start(settings: Settings, log: Path, **faults: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**env_for(settings), "PYTHONPATH": str(FAULTS), **faults}
    with log.open("wb") as out:
        proc = subprocess.Popen([*GUARDSTREAM, "run", "--web-port", str(port)], env=env, stdout=out, stderr=out)
    return proc, f"http://127.0.0.1:{port}"


def test_a_detector_bug_dead_letters_the_events_and_the_stream_goes_on(settings: Settings, tmp_path: Path) -> None:
    events = simulate(SimConfig(users=60, days=1, seed=21)).events
    victim = events[len(events) // 2]["user_id"]
    victim_events = {e["event_id"] for e in events if e["user_id"] == victim}
    targets = asyncio.run(produce(settings, events))
    log = tmp_path / "worker.log"
    key = settings.pseudonym_key_bytes()
    assert key is not None
    proc, url = start(settings, log, GUARDSTREAM_FAULT_DETECTOR_USER=pseudonymize(victim, key))  # as detectors see it
    try:
        wait_until(lambda: get_json(url + "/status")["counts"]["messages"] >= sum(targets.values()), 120, "the end")
        pid = get_json(url + "/status")["pid"]
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            exposition = response.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0 and pid == proc.pid, "the worker never restarted and stopped cleanly"

    dlq = asyncio.run(read_topic(settings, settings.dlq_topic))
    reasons = {dict(r.headers)["guardstream.reason_code"] for r in dlq}
    assert reasons == {b"detector_error"}
    assert {orjson.loads(r.value)["event_id"] for r in dlq} == victim_events, "each of the user's events, once"
    assert all(b"injected detector bug" in dict(r.headers)["guardstream.reason"] for r in dlq)
    counted = sum(
        s.value
        for f in text_string_to_metric_families(exposition)
        for s in f.samples
        if s.name == "guardstream_ingest_dead_letters_total" and s.labels["reason"] == "detector_error"
    )
    assert counted == len(victim_events)
    assert log.read_text().count("detector failed on event") >= len(victim_events)

    conn = open_sandboxed(settings.db)
    try:
        stored: Any = conn.execute("SELECT count(*) FROM decisions").fetchone()
        letters: Any = conn.execute("SELECT count(*) FROM dead_letters WHERE reason_code = 'detector_error'").fetchone()
    finally:
        conn.close()
    assert stored[0] == len(events), "nothing lost: the events themselves are stored"
    assert letters[0] == len(victim_events)


def test_a_worker_whose_commits_hang_exits_non_zero(settings: Settings, tmp_path: Path) -> None:
    asyncio.run(produce(settings, simulate(SimConfig(users=20, days=0.2, seed=22)).events))
    log = tmp_path / "worker.log"
    proc, _url = start(settings, log, GUARDSTREAM_FAULT_HANG_COMMIT="1", GUARDSTREAM_STALL_SECONDS="3")
    try:
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 71, log.read_text()[-2000:]
    assert "stalled:" in log.read_text() and "nothing was committed" in log.read_text()
