"""Compiled trees give sklearn's probabilities bit for bit, and decline what they do not cover."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from serving.trees import CompiledTrees


def _data(rng: np.random.Generator, n: int, nan_share: float) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, 8))
    x[:, 3] = rng.integers(0, 5, n)  # ties on thresholds
    y = ((x[:, 0] + x[:, 1] * x[:, 2] + (x[:, 3] > 2) + rng.normal(0, 0.5, n)) > 0.5).astype(int)
    x[rng.random(x.shape) < nan_share] = np.nan
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probabilities_equal_sklearn_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = _data(rng, 3000, 0.1)  # missing values in training: learned missing-value directions
    model = HistGradientBoostingClassifier(max_iter=120, max_leaf_nodes=31, random_state=seed).fit(x, y)
    compiled = CompiledTrees.compile(model)
    assert compiled is not None
    test_x, _ = _data(rng, 2000, 0.15)
    test_x[:5] = model._predictors[0][0].nodes["num_threshold"][0]  # exactly on a threshold
    np.testing.assert_array_equal(compiled.predict_proba(test_x), model.predict_proba(test_x)[:, 1])
    one = test_x[7:8]
    assert compiled.predict_proba(one)[0] == model.predict_proba(one)[0, 1]


def test_nan_never_seen_in_training_follows_sklearn() -> None:
    rng = np.random.default_rng(4)
    x, y = _data(rng, 2000, 0.0)
    model = HistGradientBoostingClassifier(max_iter=40).fit(x, y)
    test_x, _ = _data(rng, 500, 0.3)
    np.testing.assert_array_equal(CompiledTrees.compile(model).predict_proba(test_x),
                                  model.predict_proba(test_x)[:, 1])


def test_declines_what_it_does_not_cover() -> None:
    rng = np.random.default_rng(5)
    x, y = _data(rng, 600, 0.0)
    assert CompiledTrees.compile(RandomForestClassifier(n_estimators=3).fit(x, y)) is None
    three = np.where(x[:, 0] > 0.5, 2, y)
    assert CompiledTrees.compile(HistGradientBoostingClassifier(max_iter=5).fit(x, three)) is None
    x[:, 3] = rng.integers(0, 4, len(x))
    categorical = HistGradientBoostingClassifier(max_iter=5, categorical_features=[3]).fit(x, y)
    assert CompiledTrees.compile(categorical) is None
    with pytest.raises(ValueError, match="matrix"):
        CompiledTrees.compile(HistGradientBoostingClassifier(max_iter=5).fit(x, y)).predict_proba(x[:, :3])
