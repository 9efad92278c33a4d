"""The committed Grafana dashboards are what dashboards/build.py generates, are well formed, and every panel
query returns data from a real Prometheus scraping a real pipeline fed by the simulator (so no panel is left
empty by a misspelled metric, label or recording rule)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dashboards.build import GENERATED, build_all, render
from tests.integration.conftest import ScrapedPipeline, prom_query
from tests.integration.test_run_against_broker import GUARDSTREAM, wait_until

pytestmark = pytest.mark.integration

# What Grafana would substitute; "All" on a label variable is allValue ".*".
VARIABLES = {
    "category": ".*",
    "stage": ".*",
    "detector": ".*",
    "nist_measure": ".*",
    "ai600_risk": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
}
FORBIDDEN_LABELS = ("user_id", "session_id", "event_id")


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"unknown template variable ${name} in {expr!r}"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title + refId, PromQL with the template variables substituted)."""
    return [
        (d["uid"], f"{p['title']} [{t['refId']}]", substitute(t["expr"]))
        for d in build_all().values()
        for p in query_panels(d)
        for t in p["targets"]
    ]


def test_committed_dashboards_are_what_the_builder_generates() -> None:
    generated = build_all()
    committed = {p.name: p.read_text() for p in GENERATED.glob("*.json")}
    assert sorted(committed) == sorted(generated), "run `python -m dashboards.build` and commit the result"
    for name, dashboard in generated.items():
        assert committed[name] == render(dashboard), f"{name} is stale: run `python -m dashboards.build`"
        assert json.loads(committed[name]) == dashboard


def test_check_mode_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboards import build

    monkeypatch.setattr(build, "GENERATED", tmp_path)
    assert build.main([]) == 0
    assert build.main(["--check"]) == 0
    victim = next(tmp_path.glob("*.json"))
    victim.write_text(victim.read_text().replace('"refresh": "30s"', '"refresh": "5s"'))
    assert build.main(["--check"]) == 1


def test_dashboards_are_well_formed() -> None:
    dashboards = list(build_all().values())
    uids = [d["uid"] for d in dashboards]
    assert sorted(uids) == [
        "guardstream-nist",
        "guardstream-overview",
        "guardstream-pipeline-health",
        "guardstream-slow-burn",
    ]
    for d in dashboards:
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{d['uid']}: duplicate panel ids"
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name, variable in variables.items():
            if name != "datasource":
                assert variable["includeAll"] and variable["allValue"] == ".*", name
        for p in d["panels"]:
            assert set(p["gridPos"]) == {"x", "y", "w", "h"}
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for p in query_panels(d):
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
            for t in p["targets"]:
                assert t["expr"].strip(), p["title"]
                for label in FORBIDDEN_LABELS:
                    assert label not in t["expr"], f"{d['uid']} / {p['title']} mentions {label}"
                for name in re.findall(r"\$(\w+)", t["expr"]):
                    assert name.startswith("__") or name in variables, f"{p['title']}: ${name} is not defined"


def test_every_panel_query_returns_data_from_a_running_pipeline(scraped_pipeline: ScrapedPipeline) -> None:
    base, env = scraped_pipeline.prometheus, scraped_pipeline.env
    # Precision is only exported once an analyst has judged an alert, as it would be in production.
    picked = subprocess.run(
        [*GUARDSTREAM, "sql", "SELECT alert_id FROM alerts LIMIT 1", "-f", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert picked.returncode == 0, picked.stderr
    rows = json.loads(picked.stdout)
    assert rows, "the simulator raised no alert"
    judged = subprocess.run(
        [*GUARDSTREAM, "verdict", rows[0]["alert_id"], "confirmed"], env=env, capture_output=True, text=True
    )
    assert judged.returncode == 0, judged.stderr

    queries = panel_queries()
    assert len(queries) >= 40
    empty: list[str] = []

    def every_panel_has_data() -> bool:
        empty[:] = [f"{uid} / {title}: {expr}" for uid, title, expr in queries if not prom_query(base, expr)]
        return not empty

    try:
        wait_until(every_panel_has_data, 60, "every panel query to return data")
    except AssertionError as exc:
        raise AssertionError("panel queries without data:\n" + "\n".join(empty)) from exc
