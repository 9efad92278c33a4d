"""The Prometheus rules in deploy/prometheus: promtool accepts and unit-tests them, and every alert is
routable by a human (severity, summary, description, a runbook section that exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
TESTS = ROOT / "deploy" / "prometheus" / "tests.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_PREFIX = "https://github.com/guardstream/guardstream/blob/main/docs/runbooks.md#"
FORBIDDEN_LABELS = ("user_id", "session_id", "event_id")

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not on PATH (CI installs the prometheus package)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def rules_blocks() -> list[tuple[str, str, str]]:
    """(kind, name, text) per rule; rules.yml keeps one rule per `- alert:` / `- record:` item, so a
    line-based split is enough and needs no YAML dependency."""
    blocks: list[tuple[str, str, str]] = []
    current: list[str] = []
    head: tuple[str, str] | None = None
    for line in RULES.read_text().splitlines():
        m = re.match(r"^\s*- (alert|record|name): (\S+)", line)
        if m:
            if head and head[0] != "name":
                blocks.append((*head, "\n".join(current)))
            head, current = (m.group(1), m.group(2)), []
        current.append(line)
    if head and head[0] != "name":
        blocks.append((*head, "\n".join(current)))
    return blocks


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found, result.stdout
    assert int(found.group(1)) == len(rules_blocks()), "the line-based parser below missed rules"


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    alerts = [(name, text) for kind, name, text in rules_blocks() if kind == "alert"]
    assert len({name for name, _ in alerts}) >= 10
    for name, text in alerts:
        severity = re.search(r"^\s+severity: (\S+)$", text, re.M)
        assert severity and severity.group(1) in ("critical", "warning"), name
        for key in ("summary", "description", "runbook_url"):
            assert re.search(rf"^\s+{key}: \S", text, re.M), f"{name} has no {key}"
        url = re.search(r"runbook_url: (\S+)", text)
        assert url and url.group(1) == RUNBOOK_PREFIX + name.lower(), name


def test_every_runbook_url_has_a_heading() -> None:
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), re.M)}
    urls = set(re.findall(r"runbook_url: (\S+)", RULES.read_text()))
    assert urls
    missing = {u for u in urls if u.removeprefix(RUNBOOK_PREFIX) not in anchors}
    assert not missing


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    tests = TESTS.read_text()
    for name in {name for kind, name, _ in rules_blocks() if kind == "alert"}:
        cases = re.findall(rf"alertname: {name}\n\s+eval_time: \S+\n\s+exp_alerts:(.*)", tests)
        assert any(c.strip() == "[]" for c in cases), f"{name} has no non-firing case"
        assert any(c.strip() == "" for c in cases), f"{name} has no firing case"


def test_no_per_user_identifiers_in_rules() -> None:
    text = RULES.read_text()
    for label in FORBIDDEN_LABELS:
        assert label not in text, f"{label} must never be a Prometheus label"
