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
    reference, current = _pairs(1200, 0.0, 1), _pairs(600, 0.8, 2)
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
    # below the AUROC bar nothing could flag it, so no shuffle is spent on it
    assert result.auc < 0.55 and result.permutations == 0 and result.p_value is None


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

    (ref, g_ref), (cur, g_cur) = window(1200, 0.0, 1), window(600, 0.15, 2)
    mixed = domain_classifier_test(ref, cur, ["a", "b", "c"], seed=0)
    grouped = domain_classifier_test(ref, cur, ["a", "b", "c"], groups=(g_ref, g_cur), seed=0)
    assert mixed.drifted and mixed.auc > 0.57   # the fingerprint gives it away
    assert not grouped.drifted and grouped.auc < 0.55, grouped


@pytest.mark.parametrize(("null", "shuffles", "p_value", "drifted"), [
    ([0.50] * 19, 19, 1 / 20, True),                 # no shuffle reaches 0.60: every one runs
    ([0.50, 0.61, 0.50], 2, 1 / 2, False),           # one reaches it: p > 0.05 whatever follows
    ([0.50] * 10 + [0.60] + [0.50] * 8, 11, 1 / 11, False),  # a tie counts as reaching it
])
def test_the_shuffles_stop_once_the_decision_is_known(
        monkeypatch: pytest.MonkeyPatch, null: list[float], shuffles: int, p_value: float, drifted: bool) -> None:
    from monitoring import multivariate

    fitted = iter([0.60, *null])
    real = multivariate._out_of_fold_auc
    calls = []

    def scripted(x, y, folds, seed):  # a scripted AUROC; the observed fit is real (its model ranks features)
        calls.append(seed)
        return (next(fitted), *(real(x, y, folds, seed)[1:] if len(calls) == 1 else (None, None)))

    monkeypatch.setattr(multivariate, "_out_of_fold_auc", scripted)
    result = domain_classifier_test(_pairs(80, 0, 1), _pairs(80, 0, 2), ["x", "y"], seed=0)
    assert (result.permutations, result.drifted) == (shuffles, drifted)
    assert result.p_value == pytest.approx(p_value, abs=1e-4)


def test_bad_settings_are_said() -> None:
    with pytest.raises(FeastkitError, match="cannot reach p <= 0.01"):
        MultivariateThresholds(alpha=0.01, permutations=19)
    with pytest.raises(FeastkitError, match="missing from a window"):
        domain_classifier_test(_pairs(50, 0, 1), _pairs(50, 0, 2), ["x", "zz"])
    with pytest.raises(FeastkitError, match="needs at least 8"):
        domain_classifier_test(_pairs(50, 0, 1), _pairs(5, 0, 2), ["x"])


def test_the_drift_command_says_when_no_shuffle_was_needed() -> None:
    from feastkit.cli import multivariate_line
    from monitoring.multivariate import MultivariateDrift

    below = MultivariateDrift(auc=0.51, p_value=None, null_auc_max=None, permutations=0, n_reference=10,
                              n_current=10, features=["x", "y"], entity="user_id")
    assert multivariate_line(below) == ("  ok    multivariate (user_id, 2 features): domain classifier AUROC "
                                        "0.510, below the AUROC bar, no shuffle needed; most telling: none")
    flagged = MultivariateDrift(auc=0.7, p_value=0.05, null_auc_max=0.56, permutations=19, n_reference=10,
                                n_current=10, features=["x"], top_features=[{"feature": "x", "auc_drop": 0.1}],
                                drifted=True)
    assert multivariate_line(flagged) == ("  DRIFT multivariate (rows, 1 features): domain classifier AUROC 0.700, "
                                          "permutation p 0.050 over 19 shuffle(s), best shuffle 0.560; most telling: x")
