"""Alert lifecycle: one alert per user, detector and category, opened once, updated (not repeated) as
evidence grows, escalated when its severity rises, resolved after a quiet period of event time, and
reopened if the behaviour comes back. Every change is an :class:`AlertChange` for the alerts topic.

The outcome does not depend on where batches start and end: an alert whose quiet period has run out is
resolved at ``last evidence + quiet period`` whether a sweep notices it first or its next finding does.
"""

from __future__ import annotations

from typing import Any

import msgspec

from detectors.base import HOUR_MS
from detectors.findings import SEVERITY_RANK, Finding


class AlertPolicy(msgspec.Struct, frozen=True, kw_only=True):
    quiet_period_hours: float = 72.0
    """An open alert without new evidence for this much event time is resolved."""
    update_min_interval_hours: float = 6.0
    """An open alert is re-published as ``updated`` at most this often (escalations always are) ..."""
    update_score_growth: float = 1.25
    """... and only once its score has grown by this factor since it was last published."""


class AlertState(msgspec.Struct, kw_only=True):
    alert_id: str
    detector: str
    tenant: str
    user_id: str
    category: str | None
    status: str  # "open" | "resolved"
    severity: str
    score: float
    reason: str
    evidence: dict[str, Any]
    action: dict[str, Any]
    first_ts_ms: int  # this episode's first evidence
    last_ts_ms: int  # latest evidence
    changed_ts_ms: int  # event time of the last published change
    published_score: float
    updates: int = 0
    episode: int = 1


class AlertChange(msgspec.Struct, frozen=True, kw_only=True):
    change: str  # "opened" | "updated" | "escalated" | "resolved" | "reopened"
    ts_ms: int
    alert: AlertState  # a copy, as of this change

    @property
    def change_id(self) -> str:
        return f"{self.alert.alert_id}:{self.alert.episode}:{self.alert.updates}:{self.change}"


def _copy(alert: AlertState) -> AlertState:
    return msgspec.structs.replace(alert, evidence=dict(alert.evidence), action=dict(alert.action))


class AlertBook:
    def __init__(self, policy: AlertPolicy | None = None, alerts: dict[str, AlertState] | None = None) -> None:
        self.policy = policy or AlertPolicy()
        self.alerts: dict[str, AlertState] = alerts or {}
        self.dirty: set[str] = set()
        self._quiet_ms = int(self.policy.quiet_period_hours * HOUR_MS)
        self._interval_ms = int(self.policy.update_min_interval_hours * HOUR_MS)

    def observe(self, finding: Finding) -> list[AlertChange]:
        changes: list[AlertChange] = []
        alert = self.alerts.get(finding.alert_id)
        ts = finding.ts_ms
        if alert is None:
            alert = self.alerts[finding.alert_id] = AlertState(
                alert_id=finding.alert_id,
                detector=finding.detector,
                tenant=finding.tenant,
                user_id=finding.user_id,
                category=finding.category,
                status="open",
                severity=finding.severity,
                score=finding.score,
                reason=finding.reason,
                evidence=dict(finding.evidence),
                action=dict(finding.action),
                first_ts_ms=ts,
                last_ts_ms=ts,
                changed_ts_ms=ts,
                published_score=finding.score,
            )
            self.dirty.add(alert.alert_id)
            return [AlertChange(change="opened", ts_ms=ts, alert=_copy(alert))]
        self.dirty.add(alert.alert_id)
        if alert.status == "open" and ts - alert.last_ts_ms > self._quiet_ms:
            changes.append(self._resolve(alert))
        if alert.status == "resolved":
            alert.status = "open"
            alert.episode += 1
            alert.updates = 0
            alert.first_ts_ms = alert.last_ts_ms = alert.changed_ts_ms = ts
            self._take(alert, finding)
            alert.severity = finding.severity
            alert.published_score = finding.score
            changes.append(AlertChange(change="reopened", ts_ms=ts, alert=_copy(alert)))
            return changes
        alert.last_ts_ms = max(alert.last_ts_ms, ts)
        self._take(alert, finding)
        if SEVERITY_RANK.get(finding.severity, 0) > SEVERITY_RANK.get(alert.severity, 0):
            alert.severity = finding.severity
            change = "escalated"
        elif (
            finding.score >= alert.published_score * self.policy.update_score_growth
            and ts - alert.changed_ts_ms >= self._interval_ms
        ):
            change = "updated"
        else:
            return changes
        alert.updates += 1
        alert.changed_ts_ms = ts
        alert.published_score = finding.score
        changes.append(AlertChange(change=change, ts_ms=ts, alert=_copy(alert)))
        return changes

    def sweep(self, watermark_ms: int) -> list[AlertChange]:
        """Resolve the open alerts whose quiet period ended by ``watermark_ms`` (the partition's event time)."""
        changes = []
        for alert in self.alerts.values():
            if alert.status == "open" and watermark_ms - alert.last_ts_ms > self._quiet_ms:
                self.dirty.add(alert.alert_id)
                changes.append(self._resolve(alert))
        return changes

    def take_dirty(self) -> list[AlertState]:
        out = [self.alerts[a] for a in sorted(self.dirty)]
        self.dirty.clear()
        return out

    def _resolve(self, alert: AlertState) -> AlertChange:
        alert.status = "resolved"
        alert.updates += 1
        alert.changed_ts_ms = alert.last_ts_ms + self._quiet_ms
        return AlertChange(change="resolved", ts_ms=alert.changed_ts_ms, alert=_copy(alert))

    @staticmethod
    def _take(alert: AlertState, finding: Finding) -> None:
        alert.score = finding.score
        alert.reason = finding.reason
        alert.evidence = dict(finding.evidence)
        alert.action = dict(finding.action)
