"""The README's demo command, small: broker, worker, simulator and report in one process tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_end_to_end_and_catches_the_planted_huggers(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    db = tmp_path / "demo.duckdb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "demo",
            "--users",
            "300",
            "--days",
            "3",
            "--seed",
            "11",
            "--db",
            str(db),
            "--labels",
            str(tmp_path / "labels.jsonl"),
            "--bad-events",
            "17",
            "--json",
            str(report),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "guardstream demo report" in result.stdout
    assert "Planted attackers vs what the pipeline flagged" in result.stdout

    data = json.loads(report.read_text())
    assert data["decisions"] == data["events"], "every simulated decision is stored exactly once"
    assert data["dead_letters"] == data["bad_events"] == 17
    kinds = {k["kind"]: k for k in data["comparison"]["kinds"]}
    assert kinds["boundary_hugger"]["recall"] == 1.0
    assert data["comparison"]["benign_flagged_rate"] <= 0.02

    # the demo leaves a store behind that opens directly once the pipeline has stopped
    conn = duckdb.connect(str(db), read_only=True)
    try:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (data["events"],)
        assert conn.execute("SELECT count(*) FROM decisions WHERE user_id LIKE 'u-%'").fetchone() == (0,), (
            "the demo pseudonymizes user ids"
        )
    finally:
        conn.close()
    assert not (tmp_path / "demo.duckdb.service.json").exists()

    # the key the demo made (random, beside the store, 0600) turns the printed `investigate --raw` hint into a report
    key_file = Path(data["key_file"])
    assert key_file.parent == tmp_path and key_file.stat().st_mode & 0o777 == 0o600
    assert data["flagged_user"] and data["flagged_raw_user"]
    hint = f'GUARDSTREAM_PSEUDONYM_KEY="$(cat {key_file})" guardstream investigate {data["flagged_raw_user"]} --raw'
    assert hint in " ".join(result.stdout.split()), result.stdout[-2000:]
    env = {**os.environ, "GUARDSTREAM_PSEUDONYM_KEY": key_file.read_text().strip(), "COLUMNS": "200"}
    report = subprocess.run(
        [sys.executable, "-m", "streams.cli", "investigate", data["flagged_raw_user"], "--raw", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert data["flagged_user"] in report.stdout + report.stderr
