"""Shared integration fixture: a real pipeline, fed by the simulator, scraped by a real Prometheus that
loads guardstream's rules. The rules test and the dashboards test both query it."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streams.broker import free_port
from streams.settings import Settings
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, get_json, wait_until

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


@dataclass(frozen=True)
class ScrapedPipeline:
    prometheus: str  # base URL of the Prometheus server
    pipeline: str  # base URL of the worker's /metrics and /status
    writer: str  # base URL of the writer's /metrics, /status, /query, /verdict
    env: dict[str, str]  # environment pointing guardstream commands at this pipeline's store and topics


def _start_prometheus(binary: str, workdir: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n"
        "  - job_name: guardstream\n"
        f"    static_configs: [{{targets: {targets!r}}}]\n"
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: urllib.request.urlopen(base + "/-/ready", timeout=2).status == 200, 60, "prometheus")
    return proc, base


@pytest.fixture
def scraped_pipeline(settings: Settings, tmp_path: Path) -> Iterator[ScrapedPipeline]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (CI installs Debian's prometheus package)")
    # The deployed topology (deploy/): a writer that owns the store and a worker committing to it, both scraped
    # as job guardstream, so every panel and rule is checked against what the two processes export together.
    env = env_for(settings)
    writer_port, web_port = free_port(), free_port()
    writer_url, url = f"http://127.0.0.1:{writer_port}", f"http://127.0.0.1:{web_port}"
    writer = subprocess.Popen([*GUARDSTREAM, "writer", "--port", str(writer_port)], env=env)
    worker = subprocess.Popen([*GUARDSTREAM, "run", "--writer", writer_url, "--web-port", str(web_port)], env=env)
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: get_json(writer_url + "/status")["role"], 90, "the writer")
        wait_until(lambda: get_json(url + "/status")["partitions"], 90, "the worker")
        targets = [f"127.0.0.1:{writer_port}", f"127.0.0.1:{web_port}"]
        prometheus, base = _start_prometheus(binary, tmp_path, targets)
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
        ends = {int(p): o for p, o in json.loads(offsets_file.read_text()).items()}

        def caught_up() -> bool:
            parts = get_json(writer_url + "/status")["partitions"]
            return sum(parts.get(str(p), {}).get("next_offset", 0) for p in ends) >= sum(ends.values())

        wait_until(caught_up, 180, "the pipeline to commit every message")
        wait_until(lambda: len(prom_query(base, 'up{job="guardstream"} == 1')) == 2, 30, "prometheus to scrape both")
        yield ScrapedPipeline(prometheus=base, pipeline=url, writer=writer_url, env=env)
    finally:
        for proc in (worker, writer):
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        if prometheus is not None:
            prometheus.send_signal(signal.SIGTERM)
            prometheus.wait(30)
