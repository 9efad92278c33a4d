"""Multivariate anomaly: users whose overall pattern of guardrail decisions is unlike the population's,
scored with an IsolationForest trained in batch (``guardstream train``) on per-user feature vectors.

The same counters feed training and scoring: the stream keeps them in each user's state, and training
computes them with SQL over the ``decisions`` table (``streams/train.py``); :func:`features` turns either
into the vector the model sees, and a test checks that both paths give equal counters. Scoring is batched:
when a user's decision count reaches a checkpoint (100, 200, 400, 800, then every 500), their feature
vector is snapshotted and the engine scores all snapshots of a batch in one call. A snapshot is fixed
when taken, so results do not depend on where batches end.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import msgspec

from detectors.base import THRESHOLD_STAGES, Observation, peak
from detectors.findings import Finding

MODEL_FORMAT = "guardstream.iforest/v1"

FEATURES: tuple[str, ...] = (
    "log_decisions",
    "block_rate",
    "hug_rate",
    "near_rate",
    "output_block_after_pass_rate",
    "judge_unsafe_rate",
    "mean_peak_ratio",
    "top_category_share",
    "turns_per_session",
)


class ProfileCounters(msgspec.Struct, array_like=True):
    """Per-user counters (threshold stages unless noted). ``elevated`` counts decisions by the category of
    their highest score/threshold ratio when that ratio is at least 0.4 (capped at 16 categories)."""

    decisions: int = 0
    blocks: int = 0
    hugs: int = 0  # decisions with at least one hugging category
    near: int = 0  # peak ratio in [1 - 3*band, 1 - band): elevated, below the hugging band
    outputs: int = 0
    output_blocks: int = 0
    judged: int = 0  # judge stage
    judge_unsafe: int = 0
    peak_ratio_sum: float = 0.0
    sessions: int = 0  # input decisions with turn == 0
    inputs: int = 0
    elevated: dict[str, int] = msgspec.field(default_factory=dict)


class AnomalyState(msgspec.Struct, omit_defaults=True):
    counters: ProfileCounters = msgspec.field(default_factory=ProfileCounters)


class NoPopulation(msgspec.Struct):
    pass


MAX_ELEVATED_CATEGORIES = 16


def features(c: ProfileCounters) -> list[float]:
    """The model's input vector, in :data:`FEATURES` order. Rates are smoothed so small counts stay sane."""
    n = c.decisions
    elevated_total = sum(c.elevated.values())
    return [
        math.log1p(n),
        (c.blocks + 0.1) / (n + 10.0),
        (c.hugs + 0.1) / (n + 10.0),
        (c.near + 0.1) / (n + 10.0),
        (c.output_blocks + 0.05) / (c.outputs + 10.0),
        (c.judge_unsafe + 0.05) / (c.judged + 5.0),
        c.peak_ratio_sum / n if n else 0.0,
        (max(c.elevated.values()) / elevated_total) if elevated_total >= 3 else 0.0,
        (c.inputs / c.sessions) if c.sessions else float(c.inputs),
    ]


def checkpoint(n: int) -> bool:
    """Decision counts at which a user is scored: 100, 200, 400, 800, then every 500. Fewer decisions give
    rates too noisy to call a whole pattern unusual (at 25, one block is 4%)."""
    if n <= 800:
        return n in (100, 200, 400, 800)
    return n % 500 == 0


class ScoringModel(Protocol):
    def score_samples(self, rows: list[list[float]]) -> Any: ...


class AnomalyModel(msgspec.Struct, frozen=True, kw_only=True):
    """A trained model with what it needs to be used safely: its features, threshold and provenance."""

    version: str
    threshold: float  # anomaly score (-score_samples) at or above which a user is flagged
    critical_threshold: float
    features: tuple[str, ...]
    trained_users: int
    model: Any = None  # the fitted sklearn IsolationForest (not serialized by msgspec; see streams/train.py)


class MultivariateAnomaly:
    """Counts always; scores only when a model is loaded. Findings come from :meth:`collect`."""

    name: ClassVar[str] = "multivariate_anomaly"
    state_key: ClassVar[str] = "m"
    emits: ClassVar[tuple[str, ...]] = (name,)
    user_state: ClassVar[type[msgspec.Struct]] = AnomalyState
    population_state: ClassVar[type[msgspec.Struct]] = NoPopulation

    def __init__(self, model: AnomalyModel | None = None, band: float = 0.2) -> None:
        if model is not None and tuple(model.features) != FEATURES:
            raise ValueError(
                f"model {model.version} was trained on features {model.features}, this build computes {FEATURES}"
            )
        self.model = model
        self.band = band
        self.hot_floor = max(0.0, 1.0 - band)  # it reads hugging and blocked flags (and the peak observe found)
        self._pending: list[tuple[str, str, int, list[float], ProfileCounters]] = []

    def update(self, user: AnomalyState, population: NoPopulation, obs: Observation) -> list[Finding]:
        event = obs.event
        c = user.counters
        if event.stage == "judge":
            if event.judge is not None:
                c.judged += 1
                allowed = all(s < t for s, t in _pairs(event))
                c.judge_unsafe += event.judge.verdict == "unsafe" and allowed
            return []
        if event.stage not in THRESHOLD_STAGES:
            return []
        fold(c, obs, self.band)
        if self.model is not None and checkpoint(c.decisions):
            snapshot = msgspec.structs.replace(c, elevated=dict(c.elevated))
            self._pending.append((event.tenant, event.user_id, obs.ts_ms, features(c), snapshot))
        return []

    def discard(self) -> None:
        """Drop the snapshots taken since the last collect (their batch was rolled back)."""
        self._pending.clear()

    def collect(self) -> list[Finding]:
        """Score every snapshot taken since the last call, in one model call."""
        if not self._pending or self.model is None:
            self._pending.clear()
            return []
        pending, self._pending = self._pending, []
        scores = [-float(s) for s in self.model.model.score_samples([p[3] for p in pending])]
        findings = []
        for (tenant, user_id, ts_ms, vector, counters), score in zip(pending, scores, strict=True):
            if score < self.model.threshold:
                continue
            findings.append(self._finding(tenant, user_id, ts_ms, vector, counters, score))
        return findings

    def _finding(
        self, tenant: str, user_id: str, ts_ms: int, vector: list[float], c: ProfileCounters, score: float
    ) -> Finding:
        model = self.model
        assert model is not None
        severity = "critical" if score >= model.critical_threshold else "warning"
        named = dict(zip(FEATURES, vector, strict=True))
        top = max(c.elevated, key=lambda k: c.elevated[k]) if c.elevated else None
        reason = (
            f"decision pattern unlike the population's (anomaly score {score:.3f}, flag at {model.threshold:.3f}; "
            f"model {model.version}): {c.decisions} decisions, blocks {c.blocks / c.decisions:.1%}, "
            f"hugging {c.hugs / c.decisions:.1%}, near-threshold {c.near / c.decisions:.1%}, "
            f"output blocked after input passed {c.output_blocks}/{c.outputs}, "
            f"judge unsafe {c.judge_unsafe}/{c.judged}" + (f", top elevated category {top}" if top else "")
        )
        return Finding(
            detector=self.name,
            tenant=tenant,
            user_id=user_id,
            category=None,
            severity=severity,
            score=round(score, 6),
            reason=reason,
            ts_ms=ts_ms,
            evidence={"features": {k: round(v, 6) for k, v in named.items()}, "model_version": model.version},
            action={
                "type": "review_user",
                "summary": "review this user's recent traffic; the pattern as a whole "
                "is unusual even if no single detector fired",
            },
        )


def _pairs(event: Any) -> list[tuple[float, float]]:
    return [(s, event.thresholds[k]) for k, s in event.scores.items() if k in event.thresholds]


def fold(c: ProfileCounters, obs: Observation, band: float) -> None:
    """Fold one threshold-stage decision into the counters (the SQL in streams/train.py mirrors this)."""
    event = obs.event
    c.decisions += 1
    blocked = bool(obs.blocked)
    c.blocks += blocked
    c.hugs += bool(obs.hugging)
    peak_category, peak_ratio = obs.peak if obs.peak is not None else peak(obs.outcomes, event.thresholds)
    c.peak_ratio_sum += peak_ratio
    if 1.0 - 3.0 * band <= peak_ratio < 1.0 - band:
        c.near += 1
    if (
        peak_category is not None
        and peak_ratio >= 1.0 - 3.0 * band
        and (peak_category in c.elevated or len(c.elevated) < MAX_ELEVATED_CATEGORIES)
    ):
        c.elevated[peak_category] = c.elevated.get(peak_category, 0) + 1
    if event.stage == "output":
        c.outputs += 1
        c.output_blocks += blocked
    elif event.stage == "input":
        c.inputs += 1
        c.sessions += event.turn == 0
