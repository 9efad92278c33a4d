"""A real Prometheus, with guardstream's rules, scrapes a real pipeline fed by the simulator: every
recording rule must return data, so no rule (and no panel built on one) is left empty by a typo."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.integration.conftest import ScrapedPipeline, prom_query, recording_rules
from tests.integration.test_run_against_broker import wait_until

pytestmark = pytest.mark.integration


def test_every_recording_rule_returns_data_from_a_running_pipeline(scraped_pipeline: ScrapedPipeline) -> None:
    base = scraped_pipeline.prometheus
    assert prom_query(base, 'up{job="guardstream"}')[0]["value"][1] == "1"

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
