"""``guardstream train``: fit the multivariate anomaly model from the store, in batch.

Per-user counters come from SQL over ``decisions`` (read through the same read-only path as
``guardstream sql``, so it works while the pipeline runs) into a polars frame; :func:`detectors.multivariate.features`
turns them into the vectors an IsolationForest is fitted on. The model file carries its format, version,
features, threshold and provenance, and loading refuses a file that does not match this build.
"""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import polars as pl
import sklearn
from sklearn.ensemble import IsolationForest

from detectors.multivariate import FEATURES, MODEL_FORMAT, AnomalyModel, ProfileCounters, features

COUNTER_COLUMNS = (
    "decisions",
    "blocks",
    "hugs",
    "near",
    "outputs",
    "output_blocks",
    "judged",
    "judge_unsafe",
    "peak_ratio_sum",
    "sessions",
    "inputs",
)


def counters_sql(band: float) -> str:
    """Per-user counters, mirroring :func:`detectors.multivariate.fold` (threshold stages) and the judge
    counts of :class:`detectors.multivariate.MultivariateAnomaly`."""
    low, high = 1.0 - 3.0 * band, 1.0 - band
    threshold_stage = "stage IN ('input', 'output', 'tool')"
    return f"""
WITH per_user AS (
    SELECT tenant, user_id,
        count(*) FILTER ({threshold_stage}) AS decisions,
        count(*) FILTER ({threshold_stage} AND len(blocked_categories) > 0) AS blocks,
        count(*) FILTER ({threshold_stage} AND len(hugging_categories) > 0) AS hugs,
        count(*) FILTER ({threshold_stage} AND peak_ratio >= {low!r} AND peak_ratio < {high!r}) AS near,
        count(*) FILTER (stage = 'output') AS outputs,
        count(*) FILTER (stage = 'output' AND len(blocked_categories) > 0) AS output_blocks,
        count(*) FILTER (stage = 'judge' AND judge_verdict IS NOT NULL) AS judged,
        count(*) FILTER (stage = 'judge' AND judge_verdict = 'unsafe' AND len(blocked_categories) = 0)
            AS judge_unsafe,
        coalesce(sum(peak_ratio) FILTER ({threshold_stage}), 0.0) AS peak_ratio_sum,
        count(*) FILTER (stage = 'input' AND turn = 0) AS sessions,
        count(*) FILTER (stage = 'input') AS inputs
    FROM decisions GROUP BY ALL
),
elevated AS (
    SELECT tenant, user_id, map(list(peak_category ORDER BY peak_category), list(n ORDER BY peak_category))
        AS elevated
    FROM (
        SELECT tenant, user_id, peak_category, count(*) AS n FROM decisions
        WHERE {threshold_stage} AND peak_category IS NOT NULL AND peak_ratio >= {low!r}
        GROUP BY ALL
    ) GROUP BY ALL
)
SELECT per_user.*, elevated.elevated FROM per_user LEFT JOIN elevated USING (tenant, user_id)
ORDER BY tenant, user_id
"""


def frame_counters(frame: pl.DataFrame) -> list[ProfileCounters]:
    out = []
    for row in frame.iter_rows(named=True):
        elevated = row.get("elevated") or {}
        if isinstance(elevated, list):  # polars may hand a MAP over as a list of key/value structs
            elevated = {item["key"]: item["value"] for item in elevated}
        out.append(
            ProfileCounters(**{c: row[c] for c in COUNTER_COLUMNS}, elevated={k: int(v) for k, v in elevated.items()})
        )
    return out


class ForestScores:
    """``score_samples`` of a fitted IsolationForest, as sklearn computes it (its own per-tree code, the same sum in
    the same order), without the per-call input validation and joblib dispatch over the trees: ~14 ms a call whatever
    the number of rows, which the stream pays once per batch. Falls back to sklearn's own method when this sklearn
    keeps its trees differently. ``forest`` is the estimator itself (what :func:`save` stores)."""

    def __init__(self, forest: IsolationForest) -> None:
        self.forest = forest
        self._trees: list[tuple[Any, Any, Any, Any]] | None = None
        try:
            from sklearn.ensemble._iforest import _average_path_length

            subsample = forest._max_features != forest.n_features_in_
            self._trees = [
                (estimator.tree_, columns if subsample else None, path_lengths, average_lengths)
                for estimator, columns, path_lengths, average_lengths in zip(
                    forest.estimators_,
                    forest.estimators_features_,
                    forest._decision_path_lengths,
                    forest._average_path_length_per_tree,
                    strict=True,
                )
            ]
            self._denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])
        except (AttributeError, ImportError, TypeError):
            self._trees = None

    def score_samples(self, rows: list[list[float]]) -> Any:
        if self._trees is None:
            return self.forest.score_samples(rows)
        matrix = np.ascontiguousarray(rows, dtype=np.float32)
        depths = np.zeros(matrix.shape[0], np.float64, order="F")
        for tree, columns, path_lengths, average_lengths in self._trees:
            leaves = tree.apply(matrix if columns is None else np.ascontiguousarray(matrix[:, columns]))
            depths += path_lengths[leaves] + average_lengths[leaves] - 1.0
        denominator = self._denominator
        return -(2 ** (-np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0)))


def fit(
    counters: list[ProfileCounters], *, contamination: float = 0.002, seed: int = 7, min_decisions: int = 100
) -> AnomalyModel:
    """Fit on users with enough decisions; the flag threshold is the (1 - contamination) quantile of the
    training users' anomaly scores, critical at a fifth of that tail."""
    rows = [features(c) for c in counters if c.decisions >= min_decisions]
    if len(rows) < 50:
        raise ValueError(f"only {len(rows)} users have at least {min_decisions} decisions; need 50 to train")
    matrix = np.asarray(rows, dtype=float)
    forest = IsolationForest(n_estimators=200, random_state=seed, contamination="auto").fit(matrix)
    scores = -forest.score_samples(matrix)
    digest = hashlib.sha256(matrix.tobytes()).hexdigest()[:8]
    return AnomalyModel(
        version=f"iforest-{datetime.now(UTC):%Y%m%d}-{digest}",
        threshold=float(np.quantile(scores, 1.0 - contamination)),
        critical_threshold=float(np.quantile(scores, 1.0 - contamination / 5.0)),
        features=FEATURES,
        trained_users=len(rows),
        model=ForestScores(forest),
    )


def save(model: AnomalyModel, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": MODEL_FORMAT,
        "version": model.version,
        "threshold": model.threshold,
        "critical_threshold": model.critical_threshold,
        "features": list(model.features),
        "trained_users": model.trained_users,
        "sklearn": sklearn.__version__,
        "created_at": datetime.now(UTC).isoformat(),
        "estimator": model.model.forest if isinstance(model.model, ForestScores) else model.model,
    }
    buffer = io.BytesIO()
    joblib.dump(payload, buffer)
    path.write_bytes(buffer.getvalue())


def load(path: Path) -> AnomalyModel:
    """Load a model written by :func:`save`. Only load files you trained: joblib files are pickles."""
    payload: dict[str, Any] = joblib.load(path)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a guardstream anomaly model ({MODEL_FORMAT})")
    if tuple(payload["features"]) != FEATURES:
        raise ValueError(f"{path} was trained on features {payload['features']}; this build computes {FEATURES}")
    return AnomalyModel(
        version=payload["version"],
        threshold=payload["threshold"],
        critical_threshold=payload["critical_threshold"],
        features=tuple(payload["features"]),
        trained_users=payload["trained_users"],
        model=ForestScores(payload["estimator"]),
    )
