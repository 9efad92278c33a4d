"""``guardstream bench`` at a tiny size, end to end: embedded broker, the raw client, two Faust apps and the
real pipeline, each in its own process, then the latency phase. No timing assertions: every variant must have
read exactly what was produced, and the report must hold together."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from streams.bench import _paced_produce
from streams.broker import client_kwargs, ensure_topics
from streams.settings import Settings

pytestmark = pytest.mark.integration
GUARDSTREAM = [sys.executable, "-m", "streams.cli"]
EVENTS = 3000


def bench(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GUARDSTREAM, "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_bench_measures_every_variant_on_the_same_data(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = bench("--events", str(EVENTS), "--json", str(out), "--markdown", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())

    assert data["produced"]["events"] == EVENTS
    assert sum(data["produced"]["targets"].values()) == EVENTS, "the offsets acknowledged cover every event"
    assert set(data["variants"]) == {"a", "b", "b2", "c"}
    for name, variant in data["variants"].items():
        assert variant["events"] == EVENTS, f"variant {name} read {variant['events']} of {EVENTS}"
        assert variant["events_per_second"] > 0 and variant["seconds"] > 0, name
        assert variant["peak_rss_bytes"] > 10 << 20, f"variant {name}: a Python process's peak RSS"
    assert data["variants"]["c"]["decisions"] == EVENTS, "the pipeline stored every decision once"
    assert set(data["ratios"]) == {"c/a", "c/b", "c/b2"}
    assert all(r > 0 for r in data["ratios"].values())

    latency = data["latency"]
    assert latency["events"] == EVENTS and latency["rate_basis"] == "50% of c"
    assert latency["rate"] == pytest.approx(data["variants"]["c"]["events_per_second"] / 2)
    assert latency["alerts"] == latency["alert_changes"] - latency["changes"].get("resolved", 0)
    if latency["alerts"]:
        assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
        assert latency["min_ms"] > -1000, "alert timestamps are publish times, after the events they report"
    assert set(latency["cores"]) == {"worker", "producer", "broker"}, "who used the CPU during the latency phase"
    assert all(share >= 0 for share in latency["cores"].values())

    assert "guardstream bench" in result.stdout
    assert "| variant | what | events/s | c ÷ this | peak RSS |" in result.stdout


def test_bench_errors_are_one_line(tmp_path: Path) -> None:
    result = bench("--only", "a,x", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown variant(s) x" in result.stderr and "Traceback" not in result.stderr

    result = bench("--workers", "5", "--partitions", "4", cwd=tmp_path)
    assert result.returncode == 2
    assert "--workers 5 exceeds --partitions 4" in result.stderr and "Traceback" not in result.stderr


def test_a_pipeline_worker_that_dies_is_reported_with_its_log(tmp_path: Path) -> None:
    env = {**os.environ, "GUARDSTREAM_DETECTOR_CONFIG": str(tmp_path / "missing.toml")}
    work = tmp_path / "work"  # kept after a failure, for its logs
    result = bench("--events", "500", "--only", "c", "--skip-latency", "--workdir", str(work), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "error: pipeline worker 0 (c)" in " ".join(result.stderr.split())
    assert "missing.toml" in result.stderr, "the tail of the worker's log says why"
    assert (work / "c-worker-0.log").exists()
    assert not result.stderr.lstrip().startswith("Traceback")


def test_bench_workers_mode_shares_one_store_through_the_writer(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = bench(
        "--events", "2000", "--only", "c", "--workers", "2", "--skip-latency", "--json", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    scaling = json.loads(out.read_text())["scaling"]
    for run in (scaling["one"], scaling["many"]):
        assert run["writer"] and run["writer_peak_rss_bytes"] > 10 << 20, "workers commit to a writer process"
        assert run["decisions"] == 2000, "every decision stored once across the workers"
    assert scaling["many"]["workers"] == 2
    assert sorted(p for owned in scaling["many"]["assignment"] for p in owned) == [0, 1, 2, 3]


def test_bench_rounds_run_every_variant_again_on_the_same_data(tmp_path: Path) -> None:
    """Also --floor: c0, the pipeline with every detector disabled, beside c in each round."""
    out = tmp_path / "out.json"
    work = tmp_path / "work"
    result = bench(
        "--events", "1000", "--only", "a,c", "--floor", "--rounds", "2", "--skip-latency", "--json", str(out),
        "--workdir", str(work), "--markdown", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["settings"]["rounds"] == 2
    for name in ("a", "c", "c0"):
        assert len(data["variants"][name]["rounds"]) == 2 and all(r > 0 for r in data["variants"][name]["rounds"])
        assert data["variants"][name]["events"] == 1000, "the median run read every event"
    assert data["variants"]["c"]["decisions"] == data["variants"]["c0"]["decisions"] == 1000
    assert len(data["round_ratios"]) == 2 and set(data["ratios"]) == {"c/a", "c/c0"}
    # each round's runs have their own consumer group and files: the second c started from an empty store
    assert (work / "c-0.duckdb").exists() and (work / "c.r2-0.duckdb").exists()
    assert "detectors disabled by" in (work / "c0-worker-0.log").read_text()
    assert "median of 2 rounds" in result.stdout and "ratios per round" in result.stdout
    assert "| c0 | guardstream run, every detector disabled" in result.stdout


def test_bench_commit_breaks_the_commit_path_down(tmp_path: Path) -> None:
    from detectors.registry import DetectorConfig, build_detectors

    out = tmp_path / "commit.json"
    args = ["--events", "2000", "--batch", "500,2000", "--no-model", "--floor"]
    args += ["--workdir", str(tmp_path), "--json", str(out)]
    result = bench("commit", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [run["batch"] for run in data["runs"]] == [500, 2000]
    for run in data["runs"]:
        assert run["events"] == 2000 and run["batches"] == -(-2000 // run["batch"])
        assert set(run["us_per_event"]) == {"prepare", "detect", "sink", "settle"}
        assert run["events_per_second"] > 0 and run["us_per_event"]["detect"] > 0
        items = {(item["phase"], item["item"]): item for item in run["items"]}
        for detector in build_detectors(DetectorConfig()):
            assert ("detect", f"detector {detector.name}") in items, detector.name
        assert items[("sink", "COMMIT")]["calls"] == run["batches"], "one transaction per batch"
        assert items[("sink", "INSERT INTO decision_rows")]["calls"] == run["batches"]
        assert ("detect", "decisions table (Arrow)") in items
        floor = run["floor"]  # the same messages without detectors
        assert floor["events_per_second"] > 0 and set(floor["us_per_event"]) == set(run["us_per_event"])
        assert floor["detectors_share"] is not None and floor["detectors_share"] < 1
    assert "commit path, batches of 500" in result.stdout and "without detectors" in result.stdout
    assert not list(tmp_path.glob("**/*.duckdb")), "the temporary stores are removed"

    refused = bench("commit", "--batch", "0", cwd=tmp_path)
    assert refused.returncode == 2 and "--batch" in refused.stderr and "Traceback" not in refused.stderr


def test_statement_labels_name_what_a_statement_touches() -> None:
    from streams.bench_commit import statement_label

    assert statement_label("INSERT INTO alerts BY NAME SELECT * FROM alerts_batch") == "INSERT INTO alerts"
    assert statement_label("COMMIT") == "COMMIT" and statement_label("BEGIN TRANSACTION") == "BEGIN TRANSACTION"
    dedup = "SELECT b.id FROM (SELECT id FROM decisions_batch) b SEMI JOIN (SELECT id FROM event_keys) k USING (id)"
    assert statement_label(dedup) == "SELECT ... FROM decisions_batch, event_keys"


def test_the_latency_phase_sends_every_event_once_where_send_would_with_its_send_time(settings: Settings) -> None:
    """The paced producer encodes ahead and sends record batches per partition (several when one fills up): each
    event must still arrive once, on the partition its key hashes to, with ``ts`` the time it was sent, and the
    offsets it reports must be the topic's end (the pipeline is waited for up to them)."""
    events = [
        {"event_id": f"e-{i}", "ts": "2020-01-01T00:00:00.000Z", "user_id": f"u-{i % 37}", "note": '"@@ts@@" stays'}
        for i in range(3000)
    ]
    topic = settings.decisions_topic
    asyncio.run(ensure_topics(settings, [topic]))
    advanced: list[int] = []
    before = datetime.now(UTC)
    # record batches of 2 KiB: a tick's events for one partition fill several, so the full-batch path runs too
    targets = asyncio.run(_paced_produce(settings, topic, events, 20_000, advanced.append, max_batch_bytes=2048))
    after = datetime.now(UTC)
    assert sum(advanced) == len(events)
    assert sum(targets.values()) == len(events), targets

    async def read_back() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, **client_kwargs(settings), auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            records: list[Any] = []
            while len(records) < len(events):
                batch = await consumer.getmany(timeout_ms=2000)
                assert batch, f"only {len(records)} of {len(events)} events arrived"
                for part in batch.values():
                    records.extend(part)
            return records
        finally:
            await consumer.stop()

    records = asyncio.run(read_back())
    partitions = sorted(targets)
    seen = {}
    for record in records:
        body = orjson.loads(record.value)
        seen[body["event_id"]] = body
        assert record.partition == DefaultPartitioner()(record.key, partitions, partitions)
        assert record.key == body["user_id"].encode()
        sent = datetime.fromisoformat(body["ts"])
        assert before - timedelta(milliseconds=1) <= sent <= after, body["ts"]
        assert body["note"] == '"@@ts@@" stays', "only the ts field is replaced"
    assert sorted(seen) == sorted(e["event_id"] for e in events), "every event exactly once"
    ends: dict[int, int] = {}
    for record in records:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    assert ends == targets
