"""streams/train.py's ForestScores: the multivariate model's scores exactly as sklearn gives them, without its
per-call overhead; the model file keeps the sklearn estimator itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest

from detectors.multivariate import FEATURES
from streams.train import ForestScores, load, save
from tests.unit.test_detector_contract import DETECTORS


def test_scores_equal_sklearns_to_the_last_bit() -> None:
    rng = np.random.default_rng(3)
    for max_features in (1.0, 0.5):  # with and without a feature subset per tree
        training = rng.gamma(2.0, size=(400, 6))
        forest = IsolationForest(n_estimators=60, max_features=max_features, random_state=1).fit(training)
        fast = ForestScores(forest)
        for n in (1, 2, 33):
            rows = (rng.gamma(2.0, size=(n, 6)) * rng.choice([0.0, 0.1, 1.0, 50.0], size=(n, 6))).tolist()
            assert np.array_equal(fast.score_samples(rows), forest.score_samples(rows))


def test_the_model_file_holds_the_sklearn_estimator_and_loads_with_the_fast_scores(tmp_path: Path) -> None:
    multivariate = next(d for d in DETECTORS if d.name == "multivariate_anomaly")
    model = multivariate.model  # type: ignore[attr-defined]
    assert isinstance(model.model, ForestScores)
    save(model, tmp_path / "m.joblib")
    again = load(tmp_path / "m.joblib")
    assert isinstance(again.model, ForestScores) and isinstance(again.model.forest, IsolationForest)
    rows = np.random.default_rng(0).random((5, len(FEATURES))).tolist()
    assert np.array_equal(again.model.score_samples(rows), model.model.forest.score_samples(rows))
