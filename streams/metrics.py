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
FOLDED_KINDS = ("category", "tenant")  # what the caps of detectors/engine.py StateLimits fold
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_PHASES = ("decode", "wait", "detect", "sink", "publish")
CONTENT_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")  # aiohttp sets the charset itself


# Every safety metric: (name, the mapping's signal behind its nist_measure, where its ai600_risk comes from).
# docs/nist-mapping.md is generated from this table and the mapping file (`python -m streams.nist`).
SAFETY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("guardstream_pipeline_decisions_total", "decisions", "the decision's peak category"),
    ("guardstream_safety_category_decisions_total", "decisions / hugging / blocks by outcome", "the category"),
    ("guardstream_detector_alerts_total", "the detector", "the detector's fixed risk, else the alert's category"),
    ("guardstream_detector_alert_changes_total", "the detector", "the detector's fixed risk, else the category"),
    ("guardstream_detector_open_alerts", "the detector", "the detector's fixed risk, else the alert's category"),
    ("guardstream_detector_top_hugging_index", "boundary_hugging", "boundary_hugging's fixed risk"),
    ("guardstream_detector_verdicts", "verdicts", "the detector's fixed risk, else the alert's category"),
    ("guardstream_detector_precision_ratio", "verdicts", "the detector's fixed risk, else the alert's category"),
    ("guardstream_judge_disagreement_ratio", "judge_disagreement", "judge_disagreement's fixed risk"),
    ("guardstream_judge_judged_decisions", "judge_disagreement", "judge_disagreement's fixed risk"),
    ("guardstream_ingest_dead_letters_total", "dead_letters", "dead_letters' fixed risk"),
)


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
            ["stage", "guardrail", "decision", "nist_measure", "ai600_risk"],
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
            ["detector", "change", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.dead_letters = PromCounter(
            "guardstream_ingest_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason",
            ["reason", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.outbox_dead_letters = PromCounter(
            "guardstream_outbox_dead_letters_total",
            "Alert changes the alerts topic refused for their size: each went to the dead-letter topic as a summary "
            "(reason alert_too_large) and stays whole in alert_changes, never retried",
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
            "From a batch's fetch to its commit and ack: decoding, the wait for the committer, detectors, the "
            "sink's transaction and the outbox (guardstream_sink_batch_phase_seconds splits it)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_phase = Histogram(
            "guardstream_sink_batch_phase_seconds",
            "Where a batch's time goes, per commit: wait (in the commit queue behind the commit in flight), decode "
            "(decoding and observing its events, on the committer), detect (detectors, sweep and the batch's "
            "tables), sink (the DuckDB transaction, or the writer's), publish (alerts from the outbox and the ack)",
            ["phase"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        for phase in BATCH_PHASES:  # every series from the start, so rates and quantiles see all five
            self.batch_phase.labels(phase)
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
            ["guardrail", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.judge_judged = Gauge(
            "guardstream_judge_judged_decisions",
            "Judged decisions behind guardstream_judge_disagreement_ratio, per guardrail",
            ["guardrail", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.top_hugging = Gauge(
            "guardstream_detector_top_hugging_index",
            "Hugging index of the open boundary-hugging alerts, by rank slot (1 = highest). A fixed set of "
            "series: who holds a slot is in /status and the alerts table, never in a label",
            ["rank", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.open_alerts = Gauge(
            "guardstream_detector_open_alerts",
            "Alerts currently open, by detector and severity",
            ["detector", "severity", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.verdicts = Gauge(
            "guardstream_detector_verdicts",
            "Alerts with an analyst's verdict (confirmed or false_positive), by detector",
            ["detector", "verdict", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.precision = Gauge(
            "guardstream_detector_precision_ratio",
            "Confirmed / (confirmed + false positive) among alerts analysts judged, by detector",
            ["detector", "nist_measure", "ai600_risk"],
            registry=r,
        )
        self.tracked_users = Gauge(
            "guardstream_detector_tracked_users",
            "Users with detector state in memory (users idle for GUARDSTREAM_IDLE_USER_SECONDS of event time leave "
            "it; their state stays in the store)",
            registry=r,
        )
        self.users_evicted = PromCounter(
            "guardstream_detector_users_evicted_total",
            "Users whose detector state left memory after idling (stored; fetched back with their next decision)",
            registry=r,
        )
        self.users_loaded = PromCounter(
            "guardstream_detector_users_loaded_total",
            "Users whose detector state was fetched back from the store for a batch with a decision of theirs",
            registry=r,
        )
        self.state_folded = PromCounter(
            "guardstream_detector_state_folded_total",
            "What the detector-state caps folded: kind=category counts decision categories folded into a user's "
            "'__other__' category (GUARDSTREAM_MAX_CATEGORIES_PER_USER / _PER_PARTITION), kind=tenant decisions whose "
            "tenant shares the '__other__' population baselines (GUARDSTREAM_MAX_TENANTS_PER_PARTITION)",
            ["kind"],
            registry=r,
        )
        self._folded = {kind: self.state_folded.labels(kind) for kind in FOLDED_KINDS}
        self.privacy_raw_ids = Gauge(
            "guardstream_privacy_raw_ids",
            "1 when this process was started with --allow-raw-user-ids: it stores, publishes and serves user ids "
            "without pseudonyms; 0 when they are pseudonymized with GUARDSTREAM_PSEUDONYM_KEY (alert "
            "GuardstreamRawUserIds)",
            registry=r,
        )
        self.privacy_raw_ids.set(0)
        from streams import __version__

        self.build_info.labels(__version__, self.mapping.version).set(1)
        self._open_alert_labels: set[tuple[str, str, str, str]] = set()
        self._precreate()

    def _precreate(self) -> None:
        m = self.mapping
        top = (m.measure("boundary_hugging"), m.signal_risk("boundary_hugging", None))
        for rank in range(1, TOP_K + 1):
            self.top_hugging.labels(str(rank), *top).set(0)
        for code in REJECTION_CODES:
            self.dead_letters.labels(code, m.measure("dead_letters"), m.signal_risk("dead_letters", None))
        for detector in DETECTOR_NAMES:
            risk = m.signal_risk(detector, None)
            for severity in SEVERITIES:
                self.alerts.labels(detector, severity, m.measure(detector), risk)
                self._open_alert_labels.add((detector, severity, m.measure(detector), risk))
            for change in CHANGES:
                self.alert_changes.labels(detector, change, m.measure(detector), risk)
        for labels in self._open_alert_labels:
            self.open_alerts.labels(*labels).set(0)

    def observe_decisions(self, counts: Counter[tuple[str, str, str, str | None]]) -> None:
        """Counts by (stage, guardrail, decision, peak category): the risk is the peak category's."""
        m = self.mapping
        measure = m.measure("decisions")
        for (stage, guardrail, decision, peak_category), n in counts.items():
            self.decisions.labels(stage, self.guardrail(guardrail), decision, measure, m.risk(peak_category)).inc(n)

    def observe_categories(self, counts: Counter[tuple[str, str, str]]) -> None:
        m = self.mapping
        for (stage, category, outcome), n in counts.items():
            signal = {"allowed": "decisions", "hugging": "hugging", "blocked": "blocks"}[outcome]
            label = self.category(category)
            self.category_decisions.labels(stage, label, outcome, m.measure(signal), m.risk(category)).inc(n)

    def observe_alert_change(self, change: str, detector: str, severity: str, category: str | None) -> None:
        m = self.mapping
        measure, risk = m.measure(detector), m.signal_risk(detector, category)
        if change in ("opened", "reopened"):
            self.alerts.labels(detector, severity, measure, risk).inc()
        self.alert_changes.labels(detector, change, measure, risk).inc()

    def observe_memory(self, folded: dict[str, int], loaded: int, evicted: int) -> None:
        """One committed batch's folds, users fetched back from the store and users evicted as idle."""
        for kind, n in folded.items():
            self._folded[kind].inc(n)
        if loaded:
            self.users_loaded.inc(loaded)
        if evicted:
            self.users_evicted.inc(evicted)

    def observe_dead_letter(self, code: str) -> None:
        m = self.mapping
        self.dead_letters.labels(code, m.measure("dead_letters"), m.signal_risk("dead_letters", None)).inc()

    def observe_open_alerts(self, alerts: Iterable[AlertState]) -> list[AlertState]:
        """Open-alert counts and the top-K hugging slots; returns the top-K for /status."""
        m = self.mapping
        counts: Counter[tuple[str, str, str, str]] = Counter()
        heap: list[tuple[float, str, AlertState]] = []  # the K largest so far, smallest on top: O(K) memory
        for alert in alerts:
            if alert.status != "open":
                continue
            detector = alert.detector
            counts[(detector, alert.severity, m.measure(detector), m.signal_risk(detector, alert.category))] += 1
            if detector == "boundary_hugging":
                item = (alert.score, alert.alert_id, alert)
                if len(heap) < TOP_K:
                    heapq.heappush(heap, item)
                elif item[:2] > heap[0][:2]:
                    heapq.heapreplace(heap, item)
        self._open_alert_labels.update(counts)
        for labels in self._open_alert_labels:  # a label set that had alerts goes back to 0, not stale
            self.open_alerts.labels(*labels).set(counts.get(labels, 0))
        top = [a for _score, _id, a in sorted(heap, key=lambda i: i[:2], reverse=True)]
        top_labels = (m.measure("boundary_hugging"), m.signal_risk("boundary_hugging", None))
        for rank in range(1, TOP_K + 1):
            self.top_hugging.labels(str(rank), *top_labels).set(top[rank - 1].score if rank <= len(top) else 0)
        return top

    def observe_verdicts(self, counts: dict[tuple[str, str, str | None], int]) -> None:
        """Counts by (detector, verdict, category) of the alerts analysts judged."""
        m = self.mapping
        measure = m.measure("verdicts")
        totals: Counter[tuple[str, str, str]] = Counter()
        for (detector, verdict, category), n in counts.items():
            totals[(detector, verdict, m.signal_risk(detector, category))] += n
        keys = {(d, r) for d, _v, r in totals} | {(d, m.signal_risk(d, None)) for d in DETECTOR_NAMES}
        for detector, risk in keys:
            confirmed = totals.get((detector, "confirmed", risk), 0)
            false_positive = totals.get((detector, "false_positive", risk), 0)
            self.verdicts.labels(detector, "confirmed", measure, risk).set(confirmed)
            self.verdicts.labels(detector, "false_positive", measure, risk).set(false_positive)
            if confirmed + false_positive:
                self.precision.labels(detector, measure, risk).set(confirmed / (confirmed + false_positive))

    def observe_judge_rates(self, rates: dict[str, tuple[int, int]]) -> None:
        m = self.mapping
        labels = (m.measure("judge_disagreement"), m.signal_risk("judge_disagreement", None))
        for guardrail, (disagreements, judged) in rates.items():
            label = self.guardrail(guardrail)
            self.judge_judged.labels(label, *labels).set(judged)
            if judged:
                self.judge_disagreement.labels(label, *labels).set(disagreements / judged)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
