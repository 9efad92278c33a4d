"""A real Prometheus, with guardstream's rules, scrapes a real pipeline fed by the simulator: every
recording rule must return data, so no rule (and no panel built on one) is left empty by a typo."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.broker import free_port
from streams.settings import Settings
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, get_json, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"


def recording_rules() -> list[str]:
    return re.findall(r"^\s*- record:\s*(\S+)", RULES.read_text(), re.MULTILINE)


def prom_query(base: str, expr: str) -> list[Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result: list[Any] = body["data"]["result"]
    return result


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (CI installs Debian's prometheus package)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    proc: subprocess.Popen[bytes] | None = None

    def start(target: str) -> str:
        nonlocal proc
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{RULES}']\n"
            "scrape_configs:\n"
            "  - job_name: guardstream\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: urllib.request.urlopen(base + "/-/ready", timeout=2).status == 200, 60, "prometheus")
        return base

    yield start, tmp_path  # type: ignore[misc]
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_every_recording_rule_returns_data_from_a_running_pipeline(
    settings: Settings, prometheus: Any, tmp_path: Path
) -> None:
    start_prometheus, _ = prometheus
    env = env_for(settings)
    web_port = free_port()
    worker = subprocess.Popen([*GUARDSTREAM, "run", "--web-port", str(web_port)], env=env)
    try:
        url = f"http://127.0.0.1:{web_port}"
        wait_until(lambda: get_json(url + "/status")["partitions"], 90, "the worker")
        base = start_prometheus(f"127.0.0.1:{web_port}")
        offsets_file = tmp_path / "offsets.json"
        sim = subprocess.run(
            [
                *GUARDSTREAM,
                "simulate",
                "--users",
                "120",
                "--days",
                "2",
                "--seed",
                "8",
                "--bad-events",
                "20",
                "--labels",
                str(tmp_path / "labels.jsonl"),
                "--offsets-file",
                str(offsets_file),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert sim.returncode == 0, sim.stderr
        targets = {int(p): o for p, o in json.loads(offsets_file.read_text()).items()}

        def caught_up() -> bool:
            parts = get_json(url + "/status")["partitions"]
            return sum(parts.get(str(p), {}).get("next_offset", 0) for p in targets) >= sum(targets.values())

        wait_until(caught_up, 180, "the pipeline to commit every message")
        up = wait_until(lambda: prom_query(base, 'up{job="guardstream"}'), 30, "prometheus to scrape the pipeline")
        assert up[0]["value"][1] == "1"

        missing: list[str] = []

        def all_rules_have_data() -> bool:
            missing[:] = [rule for rule in recording_rules() if not prom_query(base, rule)]
            return not missing

        try:
            wait_until(all_rules_have_data, 60, "every recording rule to return data")
        except AssertionError as exc:
            raise AssertionError(f"recording rules without data: {missing}") from exc
        assert len(recording_rules()) >= 20

        # rule evaluation itself is healthy (no rule failing on the real series)
        with urllib.request.urlopen(base + "/api/v1/rules", timeout=5) as response:
            groups = json.loads(response.read())["data"]["groups"]
        unhealthy = [r["name"] for g in groups for r in g["rules"] if r.get("health") != "ok"]
        assert unhealthy == []
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
