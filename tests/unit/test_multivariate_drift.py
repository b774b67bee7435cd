"""The domain-classifier test: a change in correlation alone is found, the same distribution is not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feastkit.errors import FeastkitError
from monitoring.drift import compare_frames
from monitoring.multivariate import MultivariateThresholds, domain_classifier_test


def _pairs(n: int, rho: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    y = rho * x + np.sqrt(1 - rho ** 2) * rng.standard_normal(n)
    return pd.DataFrame({"x": x, "y": y, "noise": rng.standard_normal(n)})


def test_a_change_in_correlation_alone_is_flagged_where_per_feature_tests_see_nothing() -> None:
    reference, current = _pairs(2000, 0.0, 1), _pairs(1000, 0.8, 2)
    per_feature = compare_frames(reference, current, ["x", "y", "noise"])
    assert not any(f.drifted for f in per_feature)   # every marginal is a standard normal
    result = domain_classifier_test(reference, current, ["x", "y", "noise"], seed=0)
    assert result.drifted, result
    assert result.auc > 0.6 and result.p_value == pytest.approx(1 / 20)
    assert {t["feature"] for t in result.top_features[:2]} == {"x", "y"}


@pytest.mark.parametrize("seed", [3, 4])
def test_the_same_distribution_is_not_flagged(seed: int) -> None:
    result = domain_classifier_test(_pairs(2000, 0.5, seed), _pairs(1000, 0.5, seed + 100),
                                    ["x", "y", "noise"], seed=seed)
    assert not result.drifted, result
    assert result.auc < 0.55 and result.permutations == 19


def test_an_entity_seen_in_training_is_not_taken_for_drift() -> None:
    """Each entity's rows share a fingerprint that also moves a little with time. Folds that mix an
    entity's rows would learn the fingerprint and call it drift; folds grouped by entity do not."""
    rng = np.random.default_rng(7)
    entities = 150
    fingerprint = rng.standard_normal((entities, 3)) * 3

    def window(rows: int, shift: float, seed: int) -> tuple[pd.DataFrame, pd.Series]:
        r = np.random.default_rng(seed)
        who = r.integers(0, entities, size=rows)
        values = fingerprint[who] + r.standard_normal((rows, 3)) * 0.05
        values[:, 0] += shift               # per entity, a small move between windows
        return pd.DataFrame(values, columns=["a", "b", "c"]), pd.Series(who)

    (ref, g_ref), (cur, g_cur) = window(2000, 0.0, 1), window(1000, 0.15, 2)
    mixed = domain_classifier_test(ref, cur, ["a", "b", "c"], seed=0)
    grouped = domain_classifier_test(ref, cur, ["a", "b", "c"], groups=(g_ref, g_cur), seed=0)
    assert mixed.drifted and mixed.auc > 0.6   # the fingerprint gives it away
    assert not grouped.drifted and grouped.auc < 0.55, grouped


def test_bad_settings_are_said() -> None:
    with pytest.raises(FeastkitError, match="cannot reach p <= 0.01"):
        MultivariateThresholds(alpha=0.01, permutations=19)
    with pytest.raises(FeastkitError, match="missing from a window"):
        domain_classifier_test(_pairs(50, 0, 1), _pairs(50, 0, 2), ["x", "zz"])
    with pytest.raises(FeastkitError, match="needs at least 8"):
        domain_classifier_test(_pairs(50, 0, 1), _pairs(5, 0, 2), ["x"])
