"""Every Prometheus metric guardstream exports, in one place.

Names follow ``guardstream_<subsystem>_<name>_<unit>``. Labels are bounded enumerations only: stage,
decision, category (capped, overflow as ``other``), detector, severity, reason code, partition, and the
NIST labels from the versioned mapping. Never a user, session or event id: per-user detail lives in DuckDB.
Children are created at start-up and cached, and the hot path increments once per label set per batch.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from detectors.alerts import AlertState
from detectors.events import REJECTION_CODES
from detectors.registry import DETECTOR_NAMES
from streams.nist import NistMapping, load_mapping

OTHER = "other"
STAGES = ("input", "output", "tool", "judge")
VERDICTS = ("allow", "block", "redact", "escalate")
OUTCOMES = ("allowed", "hugging", "blocked")
SEVERITIES = ("warning", "critical")
TOP_K = 20
CHANGES = ("opened", "updated", "escalated", "resolved", "reopened")
CONTENT_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")  # aiohttp sets the charset itself


class BoundedValues:
    """Admits at most ``limit`` distinct free-form label values (categories, guardrail names): past that,
    new values are reported as ``other`` so a misbehaving producer cannot explode the series count."""

    def __init__(self, limit: int, initial: Iterable[str] = ()) -> None:
        self.limit = limit
        self.values: set[str] = set(initial)

    def __call__(self, value: str) -> str:
        if value in self.values:
            return value
        if len(self.values) < self.limit:
            self.values.add(value)
            return value
        return OTHER


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        mapping: NistMapping | None = None,
        category_limit: int = 64,
        guardrail_limit: int = 16,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.mapping = mapping or load_mapping()
        self.category = BoundedValues(category_limit, self.mapping.categories)
        self.guardrail = BoundedValues(guardrail_limit)
        r = self.registry
        self.build_info = Gauge(
            "guardstream_build_info",
            "Build and mapping versions (value is always 1)",
            ["version", "nist_mapping_version"],
            registry=r,
        )
        self.decisions = PromCounter(
            "guardstream_pipeline_decisions_total",
            "Decisions processed (new, not duplicates), by verdict",
            ["stage", "guardrail", "decision", "nist_measure"],
            registry=r,
        )
        self.category_decisions = PromCounter(
            "guardstream_safety_category_decisions_total",
            "Per-category outcomes of processed decisions: allowed, hugging (within the band under the "
            "threshold) or blocked (at or over it)",
            ["stage", "category", "outcome", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.alerts = PromCounter(
            "guardstream_detector_alerts_total",
            "Alerts raised, by detector and severity",
            ["detector", "severity", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.alert_changes = PromCounter(
            "guardstream_detector_alert_changes_total",
            "Alert lifecycle changes published: opened, updated, escalated, resolved, reopened",
            ["detector", "change"],
            registry=r,
        )
        self.dead_letters = PromCounter(
            "guardstream_ingest_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason",
            ["reason", "nist_measure"],
            registry=r,
        )
        self.duplicates = PromCounter(
            "guardstream_ingest_duplicate_events_total",
            "Events whose event_id was already stored (counted once, not again)",
            registry=r,
        )
        self.consumed = PromCounter(
            "guardstream_ingest_messages_total", "Messages read from the decisions topic", registry=r
        )
        self.lag = Gauge(
            "guardstream_consumer_lag_messages",
            "Messages in the partition not yet committed to the store",
            ["partition"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "guardstream_sink_batch_duration_seconds",
            "Time to process and commit one batch (detectors + DuckDB transaction)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_events = Histogram(
            "guardstream_sink_batch_size_events",
            "Messages per committed batch",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000),
            registry=r,
        )
        self.ingest_latency = Histogram(
            "guardstream_pipeline_ingest_latency_seconds",
            "From the broker's record timestamp to the batch's commit in the store",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.last_commit = Gauge(
            "guardstream_sink_last_commit_timestamp_seconds", "Wall-clock time of the last committed batch", registry=r
        )
        self.judge_disagreement = Gauge(
            "guardstream_judge_disagreement_ratio",
            "Share of judged decisions the LLM judge called unsafe although the guardrail allowed them, per "
            "guardrail, over the partitions this worker holds (how good the guardrail is as a measurement)",
            ["guardrail", "nist_measure"],
            registry=r,
        )
        self.judge_judged = Gauge(
            "guardstream_judge_judged_decisions",
            "Judged decisions behind guardstream_judge_disagreement_ratio, per guardrail",
            ["guardrail"],
            registry=r,
        )
        self.top_hugging = Gauge(
            "guardstream_detector_top_hugging_index",
            "Hugging index of the open boundary-hugging alerts, by rank slot (1 = highest). A fixed set of "
            "series: who holds a slot is in /status and the alerts table, never in a label",
            ["rank"],
            registry=r,
        )
        self.open_alerts = Gauge(
            "guardstream_detector_open_alerts",
            "Alerts currently open, by detector and severity",
            ["detector", "severity"],
            registry=r,
        )
        self.verdicts = Gauge(
            "guardstream_detector_verdicts",
            "Alerts with an analyst's verdict (confirmed or false_positive), by detector",
            ["detector", "verdict", "nist_measure"],
            registry=r,
        )
        self.precision = Gauge(
            "guardstream_detector_precision_ratio",
            "Confirmed / (confirmed + false positive) among alerts analysts judged, by detector",
            ["detector", "nist_measure"],
            registry=r,
        )
        self.tracked_users = Gauge(
            "guardstream_detector_tracked_users", "Users with detector state in memory", registry=r
        )
        from streams import __version__

        self.build_info.labels(__version__, self.mapping.version).set(1)
        self._precreate()

    def _precreate(self) -> None:
        m = self.mapping
        for rank in range(1, TOP_K + 1):
            self.top_hugging.labels(str(rank)).set(0)
        for code in REJECTION_CODES:
            self.dead_letters.labels(code, m.measure("dead_letters"))
        for detector in DETECTOR_NAMES:
            for severity in SEVERITIES:
                self.alerts.labels(detector, severity, m.measure(detector), m.signal_risk(detector, None))
            for change in CHANGES:
                self.alert_changes.labels(detector, change)
            for severity in SEVERITIES:
                self.open_alerts.labels(detector, severity).set(0)

    def observe_decisions(self, counts: Counter[tuple[str, str, str]]) -> None:
        measure = self.mapping.measure("decisions")
        for (stage, guardrail, decision), n in counts.items():
            self.decisions.labels(stage, self.guardrail(guardrail), decision, measure).inc(n)

    def observe_categories(self, counts: Counter[tuple[str, str, str]]) -> None:
        m = self.mapping
        for (stage, category, outcome), n in counts.items():
            signal = {"allowed": "decisions", "hugging": "hugging", "blocked": "blocks"}[outcome]
            label = self.category(category)
            self.category_decisions.labels(stage, label, outcome, m.measure(signal), m.risk(category)).inc(n)

    def observe_alert_change(self, change: str, detector: str, severity: str, category: str | None) -> None:
        m = self.mapping
        if change in ("opened", "reopened"):
            self.alerts.labels(detector, severity, m.measure(detector), m.signal_risk(detector, category)).inc()
        self.alert_changes.labels(detector, change).inc()

    def observe_dead_letter(self, code: str) -> None:
        self.dead_letters.labels(code, self.mapping.measure("dead_letters")).inc()

    def observe_open_alerts(self, alerts: Iterable[AlertState]) -> list[AlertState]:
        """Open-alert counts and the top-K hugging slots; returns the top-K for /status."""
        counts: Counter[tuple[str, str]] = Counter()
        heap: list[tuple[float, str, AlertState]] = []  # the K largest so far, smallest on top: O(K) memory
        for alert in alerts:
            if alert.status != "open":
                continue
            counts[(alert.detector, alert.severity)] += 1
            if alert.detector == "boundary_hugging":
                item = (alert.score, alert.alert_id, alert)
                if len(heap) < TOP_K:
                    heapq.heappush(heap, item)
                elif item[:2] > heap[0][:2]:
                    heapq.heapreplace(heap, item)
        for detector in DETECTOR_NAMES:
            for severity in SEVERITIES:
                self.open_alerts.labels(detector, severity).set(counts.get((detector, severity), 0))
        top = [a for _score, _id, a in sorted(heap, key=lambda i: i[:2], reverse=True)]
        for rank in range(1, TOP_K + 1):
            self.top_hugging.labels(str(rank)).set(top[rank - 1].score if rank <= len(top) else 0)
        return top

    def observe_verdicts(self, counts: dict[tuple[str, str], int]) -> None:
        measure = self.mapping.measure("verdicts")
        for detector in {d for d, _v in counts} | set(DETECTOR_NAMES):
            confirmed = counts.get((detector, "confirmed"), 0)
            false_positive = counts.get((detector, "false_positive"), 0)
            self.verdicts.labels(detector, "confirmed", measure).set(confirmed)
            self.verdicts.labels(detector, "false_positive", measure).set(false_positive)
            if confirmed + false_positive:
                self.precision.labels(detector, measure).set(confirmed / (confirmed + false_positive))

    def observe_judge_rates(self, rates: dict[str, tuple[int, int]]) -> None:
        measure = self.mapping.measure("judge_disagreement")
        for guardrail, (disagreements, judged) in rates.items():
            label = self.guardrail(guardrail)
            self.judge_judged.labels(label).set(judged)
            if judged:
                self.judge_disagreement.labels(label, measure).set(disagreements / judged)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
