"""The offline commands a user runs by hand: eval, train, detectors, schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from detectors.registry import build_engine
from streams.evaluate import kafka_partition
from streams.pipeline import Message, Pipeline
from streams.simulator import SimConfig, simulate
from streams.store import Store
from streams.train import load

pytestmark = pytest.mark.integration
GUARDSTREAM = [sys.executable, "-m", "streams.cli"]


def test_eval_prints_and_writes_per_family_numbers(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [*GUARDSTREAM, "eval", "-s", "baseline", "--scale", "0.15", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scenario baseline" in result.stdout and "benign users flagged" in result.stdout
    data = json.loads(out.read_text())
    kinds = {k["kind"]: k for k in data[0]["kinds"]}
    assert set(kinds) >= {"boundary_hugger", "rephrase_prober", "output_bypass", "decomposer", "judge_evader"}
    assert all(0.0 <= k["recall"] <= 1.0 for k in kinds.values())
    assert "multivariate_anomaly" in data[0]["detectors"]


def test_unknown_scenario_is_a_clear_error() -> None:
    result = subprocess.run([*GUARDSTREAM, "eval", "-s", "nope"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown scenario" in result.stderr and "baseline" in result.stderr


def test_train_fits_a_model_from_the_store(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    pipeline = Pipeline(Store(db), build_engine(), topic="t")
    pipeline.assign({0, 1, 2, 3})
    offsets = dict.fromkeys(range(4), 0)
    messages = []
    for event in simulate(SimConfig(users=200, days=3, seed=21)).events:
        partition = kafka_partition(event["user_id"].encode(), 4)
        messages.append(Message(partition, offsets[partition], None, orjson.dumps(event), 0))
        offsets[partition] += 1
    for i in range(0, len(messages), 5000):
        pipeline.commit(pipeline.prepare(messages[i : i + 5000]))
    pipeline.store.close()

    model_path = tmp_path / "models" / "m.joblib"
    result = subprocess.run(
        [*GUARDSTREAM, "train", "--db", str(db), "--out", str(model_path), "--min-decisions", "40"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    model = load(model_path)
    assert model.trained_users >= 50 and model.critical_threshold >= model.threshold

    not_a_model = tmp_path / "x.joblib"
    not_a_model.write_bytes(b"not a model")
    with pytest.raises(Exception):  # noqa: B017 - joblib raises whatever unpickling raises
        load(not_a_model)

    too_few = subprocess.run(
        [*GUARDSTREAM, "train", "--db", str(db), "--out", str(model_path), "--min-decisions", "100000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert too_few.returncode == 2 and "need 50 to train" in too_few.stderr


def test_detectors_lists_every_threshold_with_its_meaning() -> None:
    result = subprocess.run(
        [*GUARDSTREAM, "detectors"], capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""}
    )
    assert result.returncode == 0, result.stderr
    for setting in (
        "hugging.index_level",
        "probing.min_chains",
        "rates.volume_ratio",
        "judge.cusum_level",
        "decomposition.min_risk",
        "alerts.quiet_period_hours",
    ):
        assert setting in result.stdout


def test_eval_with_a_detector_config_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "detectors.toml"
    config.write_text('disabled = ["judge"]\n')
    result = subprocess.run(
        [*GUARDSTREAM, "eval", "-s", "baseline", "--detector-config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "300", "PATH": ""},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: detector config {config}: disabled names unknown detector(s) judge" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_detectors_lists_the_disabled_setting() -> None:
    result = subprocess.run(
        [*GUARDSTREAM, "detectors"], capture_output=True, text=True, timeout=60, env={"COLUMNS": "300", "PATH": ""}
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "│ disabled" in line)
    assert "()" in line and "Detectors not to run, by name" in line


def test_run_with_a_detector_config_that_cannot_be_used_stops_before_the_store_and_kafka(tmp_path: Path) -> None:
    config = tmp_path / "detectors.toml"
    config.write_text("disabled = [\n")
    db = tmp_path / "store.duckdb"
    result = subprocess.run(
        [*GUARDSTREAM, "run", "--bootstrap", "127.0.0.1:9", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "COLUMNS": "300",
            "PATH": "",
            "GUARDSTREAM_DETECTOR_CONFIG": str(config),
            "GUARDSTREAM_PSEUDONYM_KEY": os.environ["GUARDSTREAM_PSEUDONYM_KEY"],  # passes: the config is refused
        },
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: detector config {config}:" in result.stderr and "Traceback" not in result.stderr
    assert not db.exists(), "no store is created for a worker that cannot run"
