"""The NIST labels: every safety metric carries both, unknown categories show as ``unmapped``, and the
committed mapping page says what the mapping file says."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import SAFETY_METRICS, Metrics
from streams.nist import UNMAPPED, load_mapping, markdown

DOC = Path(__file__).parents[2] / "docs" / "nist-mapping.md"


def samples(metrics: Metrics) -> list[tuple[str, dict[str, str]]]:
    out = []
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        out.extend((s.name, s.labels) for s in family.samples)
    return out


def test_committed_mapping_page_is_current() -> None:
    assert DOC.read_text() == markdown(), "docs/nist-mapping.md is stale: python -m streams.nist > docs/nist-mapping.md"


def test_every_safety_metric_carries_both_nist_labels() -> None:
    metrics = Metrics()
    metrics.observe_decisions(Counter({("input", "llama_guard", "block", "S9"): 3}))
    metrics.observe_categories(Counter({("input", "S9", "blocked"): 3}))
    metrics.observe_alert_change("opened", "category_rate", "warning", "S7")
    metrics.observe_judge_rates({"llama_guard": (1, 10)})
    metrics.observe_verdicts({("category_rate", "confirmed", "S7"): 2})
    metrics.observe_dead_letter("invalid_json")
    labelled = {
        family.name
        for family in text_string_to_metric_families(metrics.exposition().decode())
        if any("nist_measure" in s.labels for s in family.samples) and not family.name.endswith("_created")
    }
    safety = {name.removesuffix("_total") for name, _signal, _source in SAFETY_METRICS}
    assert labelled == safety, "SAFETY_METRICS and the exposition disagree"
    for name, labels in samples(metrics):
        if "nist_measure" in labels:
            assert labels["ai600_risk"], f"{name} has nist_measure but no ai600_risk"
            assert labels["nist_measure"].startswith("MEASURE-"), (name, labels)


def test_risk_follows_the_category_and_unknown_categories_are_unmapped() -> None:
    metrics = Metrics()
    metrics.observe_decisions(Counter({("input", "g", "block", "S9"): 1, ("input", "g", "allow", "brand_new"): 1}))
    metrics.observe_categories(Counter({("output", "brand_new", "hugging"): 4}))
    metrics.observe_alert_change("opened", "category_rate", "critical", "S7")
    decisions = {
        s[1]["decision"]: s[1]["ai600_risk"] for s in samples(metrics) if s[0] == "guardstream_pipeline_decisions_total"
    }
    assert decisions == {"block": "cbrn", "allow": UNMAPPED}
    hugging = [
        s[1]
        for s in samples(metrics)
        if s[0] == "guardstream_safety_category_decisions_total" and s[1]["category"] == "brand_new"
    ]
    assert hugging and hugging[0]["ai600_risk"] == UNMAPPED, "an unknown category is shown, not dropped"
    alerts = [
        s[1]
        for s in samples(metrics)
        if s[0] == "guardstream_detector_alerts_total"
        and s[1]["detector"] == "category_rate"
        and s[1]["severity"] == "critical"
    ]
    assert {a["ai600_risk"] for a in alerts} >= {"data_privacy"}


def test_mapping_risk_ids_are_declared() -> None:
    mapping = load_mapping()
    for risk in [*mapping.categories.values(), *mapping.signal_risks.values()]:
        assert risk in mapping.risks
