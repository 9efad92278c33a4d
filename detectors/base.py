"""The detector contract: what every detector in ``detectors/`` looks like to the engine.

A detector is a small object with typed, serializable state per user (and per tenant for population
baselines). ``update`` folds one decision into that state and returns findings: plain data saying the
user looks like an attacker of some kind, with a score, a reason a person can act on and a suggested
action. Deciding what becomes an alert, and when it is updated, escalated or resolved, is the
:class:`detectors.alerts.AlertBook`'s job, not the detector's. No I/O, no clock, no global randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import msgspec

from detectors.events import Decision
from detectors.findings import Finding

CategoryOutcome = tuple[str, float, bool, bool]  # category, score, hugging, blocked

# Stages whose decisions apply a block threshold a user could be tuning against. A judge's second
# opinion repeats the scores of the output it judged, so counting it there would count that output twice.
THRESHOLD_STAGES = frozenset({"input", "output", "tool"})
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


def category_outcomes(event: Decision, band: float) -> list[CategoryOutcome]:
    """(category, score, hugging, blocked) for every category that has both a score and a threshold.

    Vocabulary of ``event-schema.md``: margin = threshold - score; a decision hugs a category when
    ``0 < margin <= band * threshold``; it is blocked there when ``margin <= 0``."""
    thresholds = event.thresholds
    out: list[CategoryOutcome] = []
    for category, score in event.scores.items():
        threshold = thresholds.get(category)
        if threshold is None:
            continue
        margin = threshold - score
        out.append((category, score, 0.0 < margin <= band * threshold, margin <= 0.0))
    return out


def peak(outcomes: list[CategoryOutcome], thresholds: dict[str, float]) -> tuple[str | None, float]:
    """The category with the highest score/threshold ratio, and that ratio (first one wins a tie)."""
    best: str | None = None
    ratio = 0.0
    for category, score, _hug, _blk in outcomes:
        r = score / thresholds[category]
        if r > ratio:
            best, ratio = category, r
    return best, ratio


@dataclass(frozen=True, slots=True)
class Observation:
    """One decoded decision as every detector sees it (outcomes computed once, with the engine's band).

    ``peak`` and ``min_margin`` are filled by :func:`observe` (the engine's one pass over the categories);
    an Observation built by hand leaves them ``None`` and readers compute them."""

    event: Decision
    ts_ms: int
    outcomes: list[CategoryOutcome]
    band: float
    peak: tuple[str | None, float] | None = None
    min_margin: float | None = None


def observe(event: Decision, ts_ms: int, band: float) -> Observation:
    """Outcomes, peak and smallest margin of a decision in one pass over its categories (the hot path)."""
    thresholds = event.thresholds
    outcomes: list[CategoryOutcome] = []
    best: str | None = None
    ratio = 0.0
    min_margin: float | None = None
    for category, score in event.scores.items():
        threshold = thresholds.get(category)
        if threshold is None:
            continue
        margin = threshold - score
        outcomes.append((category, score, 0.0 < margin <= band * threshold, margin <= 0.0))
        r = score / threshold
        if r > ratio:
            best, ratio = category, r
        if min_margin is None or margin < min_margin:
            min_margin = margin
    return Observation(event, ts_ms, outcomes, band, (best, ratio), min_margin)


class Detector(Protocol):
    """``name`` keys the detector's state; ``emits`` lists the detector names its findings carry. A detector may
    also set ``state_key``, a short string unique among the engine's detectors, to key its user state in the
    stored blob instead of ``name`` (see :data:`detectors.engine.COMPACT`)."""

    name: ClassVar[str]
    emits: ClassVar[tuple[str, ...]]
    user_state: ClassVar[type[msgspec.Struct]]
    population_state: ClassVar[type[msgspec.Struct]]

    def update(self, user: Any, population: Any, obs: Observation) -> list[Finding]: ...


_policy_keys: dict[tuple[str | None, float | None], str] = {}


@runtime_checkable
class BatchScoring(Protocol):
    """A detector that snapshots users in ``update`` and scores the snapshots once per batch."""

    def collect(self) -> list[Finding]:
        """Score the snapshots taken since the last call; return the findings."""
        ...

    def discard(self) -> None:
        """Drop the snapshots taken since the last call (their batch was rolled back)."""
        ...


def policy_key(event: Decision, category: str) -> str:
    """Baselines are kept per policy: a new ``policy_version`` or a moved threshold starts a new one,
    so a policy change is not read as every user suddenly behaving differently."""
    threshold = event.thresholds.get(category)
    memo = (event.policy_version, threshold)
    key = _policy_keys.get(memo)
    if key is None:  # a handful of distinct policies in practice: build each string once
        if len(_policy_keys) >= 4096:
            _policy_keys.clear()
        key = _policy_keys[memo] = f"{event.policy_version or '-'}|{threshold!r}"
    return key
