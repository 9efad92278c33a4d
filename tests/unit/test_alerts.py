"""The alert lifecycle: opened once, updated not repeated, escalated, resolved after quiet, reopened."""

from __future__ import annotations

from detectors.alerts import AlertBook, AlertPolicy
from detectors.base import HOUR_MS
from detectors.findings import Finding


def finding(ts_h: float, score: float, severity: str = "warning", user: str = "u1") -> Finding:
    return Finding(
        detector="boundary_hugging",
        tenant="acme",
        user_id=user,
        category="S2",
        severity=severity,
        score=score,
        reason=f"score {score}",
        ts_ms=int(ts_h * HOUR_MS),
        action={"type": "throttle"},
    )


def changes(book: AlertBook, *findings: Finding) -> list[str]:
    return [c.change for f in findings for c in book.observe(f)]


def test_repeated_evidence_is_one_alert_updated_at_a_bounded_rate() -> None:
    book = AlertBook(AlertPolicy(update_min_interval_hours=6, update_score_growth=1.25))
    assert changes(book, finding(0, 5.0)) == ["opened"]
    assert changes(book, finding(1, 5.1), finding(2, 9.0)) == []  # too soon to re-publish
    assert changes(book, finding(7, 9.0)) == ["updated"]
    assert changes(book, finding(8, 9.5)) == []  # grew, but not by 25% since it was last published
    alert = next(iter(book.alerts.values()))
    assert alert.score == 9.5 and alert.reason == "score 9.5" and alert.updates == 1 and alert.status == "open"


def test_severity_escalates_at_once() -> None:
    book = AlertBook()
    changes(book, finding(0, 5.0))
    assert changes(book, finding(0.5, 11.0, "critical")) == ["escalated"]
    assert changes(book, finding(1, 12.0, "warning")) == []  # never de-escalated by a weaker finding
    assert next(iter(book.alerts.values())).severity == "critical"


def test_quiet_alerts_resolve_and_come_back_as_a_new_episode() -> None:
    book = AlertBook(AlertPolicy(quiet_period_hours=72))
    changes(book, finding(0, 5.0))
    assert [c.change for c in book.sweep(int(71 * HOUR_MS))] == []
    resolved = book.sweep(int(73 * HOUR_MS))
    assert [c.change for c in resolved] == ["resolved"] and resolved[0].ts_ms == 72 * HOUR_MS
    assert changes(book, finding(100, 6.0)) == ["reopened"]
    alert = next(iter(book.alerts.values()))
    assert alert.episode == 2 and alert.status == "open"


def test_resolution_does_not_depend_on_when_the_sweep_runs() -> None:
    swept = AlertBook()
    changes(swept, finding(0, 5.0))
    early = [c.change for c in swept.sweep(int(80 * HOUR_MS))] + changes(swept, finding(100, 6.0))
    lazy = AlertBook()
    changes(lazy, finding(0, 5.0))
    late = changes(lazy, finding(100, 6.0))  # no sweep in between: the finding resolves it first
    assert early == late == ["resolved", "reopened"]
    assert swept.alerts == lazy.alerts


def test_one_alert_per_user_detector_and_category() -> None:
    book = AlertBook()
    changes(book, finding(0, 5.0, user="a"), finding(0, 5.0, user="b"), finding(1, 5.0, user="a"))
    assert len(book.alerts) == 2
    assert sorted(a.alert_id for a in book.take_dirty()) == sorted(book.alerts)
    assert book.take_dirty() == []
