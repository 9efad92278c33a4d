"""`guardstream run` against a separately started broker, fed by `guardstream simulate`, queried with
`guardstream sql` while it runs: the spine's acceptance path, with real processes and a real broker."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from detectors.registry import DetectorConfig, build_detectors, build_engine
from streams.bench import stop_process as stop
from streams.broker import client_kwargs, free_port
from streams.evaluate import run_engine
from streams.settings import Settings
from streams.simulator import SimConfig, simulate
from tests.conftest import promtool

pytestmark = pytest.mark.integration
GUARDSTREAM = [sys.executable, "-m", "streams.cli"]


def env_for(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "GUARDSTREAM_BOOTSTRAP": settings.bootstrap,
        "GUARDSTREAM_DB": str(settings.db),
        "GUARDSTREAM_DECISIONS_TOPIC": settings.decisions_topic,
        "GUARDSTREAM_ALERTS_TOPIC": settings.alerts_topic,
        "GUARDSTREAM_DLQ_TOPIC": settings.dlq_topic,
        "GUARDSTREAM_CONSUMER_GROUP": settings.consumer_group,
        # scratch files beside the store: a worker a test kills with SIGKILL cannot remove its own
        "TMPDIR": str(settings.db.parent),
    }


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError as exc:
            last_error = exc
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} ({last_error})")


async def read_topic(settings: Settings, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, **client_kwargs(settings), auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        records: list[Any] = []
        while True:
            batch = await consumer.getmany(timeout_ms=1500)
            if not batch:
                return records
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()


@pytest.fixture
def delivery() -> str:
    return "batches"


@pytest.fixture
def worker(settings: Settings, delivery: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A worker taking the decisions as record batches from Faust's fetcher (the default), or through the agent's
    stream one Faust event at a time (``delivery="stream"``: GUARDSTREAM_FAUST_BATCH_DELIVERY=false)."""
    port = free_port()
    env = {**env_for(settings), "GUARDSTREAM_FAUST_BATCH_DELIVERY": str(delivery == "batches").lower()}
    proc = subprocess.Popen([*GUARDSTREAM, "run", "--web-port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get_json(url + "/status")["partitions"], 90, "the worker to serve /status")
        yield proc, url
    finally:
        stop(proc)


@pytest.mark.parametrize("delivery", ["batches", "stream"])
def test_run_simulate_and_query_while_running(
    settings: Settings, worker: tuple[subprocess.Popen[bytes], str], tmp_path: Path, delivery: str
) -> None:
    proc, url = worker
    env = env_for(settings)
    labels = tmp_path / "labels.jsonl"
    sim = subprocess.run(
        [
            *GUARDSTREAM,
            "simulate",
            "--users",
            "150",
            "--days",
            "2",
            "--seed",
            "5",
            "--labels",
            str(labels),
            "--bad-events",
            "30",
            "--offsets-file",
            str(tmp_path / "o.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert sim.returncode == 0, sim.stderr
    assert labels.read_text().count("\n") == 150
    assert "text" not in labels.read_text()

    targets = {int(p): o for p, o in json.loads((tmp_path / "o.json").read_text()).items()}
    total = sum(targets.values())

    def caught_up() -> bool:
        parts = get_json(url + "/status")["partitions"]
        return sum(parts.get(str(p), {}).get("next_offset", 0) for p in targets) >= total

    wait_until(caught_up, 180, "the pipeline to commit every message")
    status = get_json(url + "/status")
    assert status["delivery"] == delivery
    assert status["detectors"] == [d.name for d in build_detectors(DetectorConfig())], "every detector runs"

    # the file is locked by the running worker, yet `guardstream sql` answers (through the worker)
    out = subprocess.run(
        [
            *GUARDSTREAM,
            "sql",
            "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM decisions",
            "--format",
            "csv",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    row = next(csv.DictReader(io.StringIO(out.stdout)))
    assert int(row["n"]) == int(row["ids"]) == total - 30

    dlq = json.loads(
        subprocess.run(
            [
                *GUARDSTREAM,
                "sql",
                "SELECT reason_code, count(*) AS n FROM dead_letters GROUP BY ALL",
                "--format",
                "json",
            ],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert sum(r["n"] for r in dlq) == 30

    refused = subprocess.run([*GUARDSTREAM, "sql", "DELETE FROM decisions"], env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "read-only" in refused.stderr

    # the dead-letter topic holds every rejected message with its reason and source coordinates
    records = asyncio.run(read_topic(settings, settings.dlq_topic))
    assert len(records) == 30
    headers = dict(records[0].headers)
    assert headers["guardstream.reason_code"] and headers["guardstream.source_offset"]

    # alerts: on the topic exactly as in the table
    alerts = json.loads(
        subprocess.run(
            [*GUARDSTREAM, "sql", "SELECT change_id FROM alert_changes", "-f", "json"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert alerts, "planted boundary huggers should be flagged"
    published = wait_until(lambda: asyncio.run(read_topic(settings, settings.alerts_topic)), 30, "alerts on the topic")
    assert sorted(json.loads(r.value)["change_id"] for r in published) == sorted(a["change_id"] for a in alerts)
    body = json.loads(published[0].value)
    assert body["reason"] and body["detector"] and body["nist_measure"]

    # metrics: valid exposition, no per-user label, a commit happened
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        exposition = response.read().decode()
    assert "guardstream_pipeline_decisions_total" in exposition
    assert "user_id" not in exposition and "u-0" not in exposition
    assert "guardstream_judge_disagreement_ratio{" in exposition, "the measurement-quality signal (MEASURE 2.13)"
    phases = {
        sample.labels["phase"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "guardstream_sink_batch_phase_seconds_count"
    }
    assert set(phases) == {"decode", "wait", "detect", "sink", "publish"}, phases
    assert all(count > 0 for count in phases.values()), "every phase of a commit is observed"
    assert phases["decode"] == phases["detect"] == phases["sink"] == phases["publish"] == phases["wait"], (
        "once per commit each"
    )
    lags = [line for line in exposition.splitlines() if line.startswith("guardstream_consumer_lag_messages{")]
    assert lags and all(line.endswith(" 0.0") for line in lags), lags
    tool = promtool()
    if tool is not None:
        check = subprocess.run([tool, "check", "metrics"], input=exposition, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr

    # the stream's alert history equals `guardstream eval`'s offline run of the same events
    streamed = json.loads(
        subprocess.run(
            [
                *GUARDSTREAM,
                "sql",
                "SELECT change_id, change, epoch_ms(ts) AS ts, severity, score FROM alert_changes",
                "-f",
                "json",
            ],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )
    offline = run_engine(  # with the worker's pseudonym key: alert ids are made from the stored user ids
        build_engine(),
        simulate(SimConfig(users=150, days=2, seed=5)).events,
        partitions=4,
        pseudonym_key=settings.pseudonym_key_bytes(),
    )
    assert sorted((c["change_id"], c["change"], c["ts"], c["severity"], c["score"]) for c in streamed) == sorted(
        (c.change_id, c.change, c.ts_ms, c.alert.severity, c.alert.score) for c in offline
    )

    # an analyst's verdict goes through the running pipeline and feeds the precision metric (MEASURE 3.3)
    some_alert = json.loads(
        subprocess.run(
            [*GUARDSTREAM, "sql", "SELECT alert_id, detector FROM alerts LIMIT 1", "-f", "json"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )[0]
    recorded = subprocess.run(
        [*GUARDSTREAM, "verdict", some_alert["alert_id"], "false_positive", "--note", "test"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert recorded.returncode == 0, recorded.stderr
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        exposition = response.read().decode()
    precision = [
        sample
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "guardstream_detector_precision_ratio" and sample.labels["detector"] == some_alert["detector"]
    ]
    assert len(precision) == 1 and precision[0].value == 0.0, precision  # one verdict: a false positive
    assert precision[0].labels["nist_measure"] == "MEASURE-3.3" and precision[0].labels["ai600_risk"]
    wrong = subprocess.run(
        [*GUARDSTREAM, "verdict", some_alert["alert_id"], "maybe"], env=env, capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "confirmed, false_positive" in wrong.stderr

    # a clean stop, then the file opens directly
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    direct = subprocess.run(
        [*GUARDSTREAM, "sql", "SELECT count(*) AS n FROM decisions", "-f", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout) == [{"n": total - 30}]
    # with no pipeline running the verdict is written to the file directly
    again = subprocess.run(
        [*GUARDSTREAM, "verdict", some_alert["alert_id"], "confirmed"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    stored = subprocess.run(
        [*GUARDSTREAM, "sql", "SELECT verdict FROM verdicts", "-f", "json"], env=env, capture_output=True, text=True
    )
    assert json.loads(stored.stdout) == [{"verdict": "confirmed"}]
    missing = subprocess.run(
        [*GUARDSTREAM, "verdict", "no-such-alert", "confirmed"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no alert" in missing.stderr


def test_a_second_writer_gets_a_clear_error(settings: Settings, worker: tuple[subprocess.Popen[bytes], str]) -> None:
    second = subprocess.run(
        [*GUARDSTREAM, "run", "--web-port", str(free_port())],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert "another process" in second.stderr and "Traceback" not in second.stderr


def test_a_stopped_worker_leaves_no_scratch_directory(settings: Settings, tmp_path: Path) -> None:
    """Faust's data directory is the worker's own scratch space: made at start, removed on SIGTERM."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [*GUARDSTREAM, "run", "--web-port", str(port)], env={**env_for(settings), "TMPDIR": str(scratch)}
    )
    try:
        wait_until(lambda: get_json(f"http://127.0.0.1:{port}/status")["partitions"], 90, "the worker to serve /status")
        assert [p.name.startswith("guardstream-faust-") for p in scratch.iterdir()] == [True]
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert list(scratch.iterdir()) == []
