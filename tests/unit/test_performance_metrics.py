"""The performance check's metric arithmetic: weighted curves equal scikit-learn's, CBPE's
expectations, interval coverage, the calibration test and the isotonic fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from feastkit.errors import FeastkitError
from monitoring.performance import (
    RankedScores,
    calibrate,
    estimated_metrics,
    realized_metrics,
    spiegelhalter,
    weekly_performance,
    weighted_metrics,
    wilson_interval,
)


@pytest.mark.parametrize("n, decimals", [(7, 1), (300, 2), (5000, 6)])
def test_weighted_curves_equal_scikit_learn_with_ties_and_weights(n: int, decimals: int) -> None:
    rng = np.random.default_rng(n)
    scores = np.round(rng.random(n), decimals)  # ties at 1 and 2 decimals
    labels = (rng.random(n) < 0.2 + 0.5 * scores).astype("float64")
    labels[:2] = [0, 1]
    weights = rng.integers(0, 4, n).astype("float64")
    weights[:2] = 1
    got = weighted_metrics(RankedScores.of(scores), weights * labels, weights * (1 - labels), 0.5)
    assert got["roc_auc"][0] == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), abs=1e-12)
    assert got["pr_auc"][0] == pytest.approx(average_precision_score(labels, scores, sample_weight=weights),
                                             abs=1e-12)
    flagged = scores >= 0.5
    tp = (weights * labels * flagged).sum()
    assert got["precision"][0] == pytest.approx(tp / (weights * flagged).sum())
    assert got["recall"][0] == pytest.approx(tp / (weights * labels).sum())


def test_cbpe_point_estimates_are_the_expected_confusion_matrix_and_fractional_curves() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(2000)
    p = 0.05 + 0.6 * scores ** 2
    got = estimated_metrics(scores, p, 0.7, rng)
    flagged = scores >= 0.7
    assert got["precision"].value == pytest.approx(p[flagged].sum() / flagged.sum())
    assert got["recall"].value == pytest.approx(p[flagged].sum() / p.sum())
    doubled = np.r_[np.ones(len(p)), np.zeros(len(p))]  # each row once as a positive (p), once as a negative (1 - p)
    assert got["roc_auc"].value == pytest.approx(
        roc_auc_score(doubled, np.r_[scores, scores], sample_weight=np.r_[p, 1 - p]))
    assert got["pr_auc"].value == pytest.approx(
        average_precision_score(doubled, np.r_[scores, scores], sample_weight=np.r_[p, 1 - p]))
    for metric in got.values():
        assert metric.low < metric.value < metric.high


def test_with_calibrated_scores_the_estimate_covers_the_realized_value() -> None:
    """Labels drawn from the probabilities themselves: CBPE's interval holds the realized value
    about 95 % of the time, and its centre is unbiased."""
    rng = np.random.default_rng(11)
    inside, errors = 0, []
    for _ in range(40):
        scores = rng.beta(0.5, 8, size=3000)
        labels = (rng.random(3000) < scores).astype("float64")
        est = estimated_metrics(scores, scores, 0.2, rng)
        real = realized_metrics(scores, labels, 0.2, rng)
        inside += est["roc_auc"].low <= real["roc_auc"].value <= est["roc_auc"].high
        errors.append(est["recall"].value - real["recall"].value)
    assert inside >= 33  # 95 % of 40 is 38; binomial spread
    assert abs(np.mean(errors)) < 0.02


def test_realized_intervals_hold_the_truth() -> None:
    rng = np.random.default_rng(5)
    scores = rng.random(4000)
    labels = (rng.random(4000) < 0.1 + 0.3 * scores).astype("float64")
    got = realized_metrics(scores, labels, 0.5, rng)
    assert got["roc_auc"].low < got["roc_auc"].value < got["roc_auc"].high
    assert got["roc_auc"].value == pytest.approx(roc_auc_score(labels, scores))
    low, high = wilson_interval(30, 100)
    assert (round(low, 4), round(high, 4)) == (0.2189, 0.3958)  # the textbook Wilson interval
    assert all(np.isnan(wilson_interval(0, 0)))  # no trials, no interval


def test_undefined_metrics_are_none_not_a_number() -> None:
    rng = np.random.default_rng(0)
    got = realized_metrics(np.array([0.1, 0.2, 0.3]), np.zeros(3), 0.5, rng)
    assert got["roc_auc"].value is None and got["recall"].value is None and got["precision"].value is None


def test_calibration_is_left_alone_when_it_holds_and_fixed_when_it_does_not() -> None:
    rng = np.random.default_rng(2)
    # calibrated scores: the test rejects at its level, about 1 time in 20, and then nothing changes much
    rejected = 0
    for _ in range(40):
        scores = rng.beta(0.6, 6, size=20_000)
        labels = (rng.random(len(scores)) < scores).astype("float64")
        ok, same = calibrate(scores, labels)
        rejected += ok.calibrated
        if not ok.calibrated:
            assert ok.spiegelhalter_p >= 0.05 and np.array_equal(same(scores), scores)
    assert rejected <= 6
    # scores that overstate the risk threefold (a model trained on rebalanced classes, say)
    inflated = np.clip(scores * 3, 0, 1)
    bad, fix = calibrate(inflated, labels)
    assert bad.calibrated and bad.spiegelhalter_p < 1e-6 and bad.ece > 0.05
    assert bad.ece_calibrated < 0.01
    assert abs(fix(inflated).mean() - labels.mean()) < 0.005
    z, p = spiegelhalter(scores, labels)
    assert abs(z) < 3 and 0 < p <= 1
    with pytest.raises(FeastkitError, match="only one class"):
        calibrate(scores, np.zeros(len(scores)))


def test_non_finite_scores_are_refused() -> None:
    with pytest.raises(FeastkitError, match="not a finite number"):
        RankedScores.of(np.array([0.1, np.nan]))


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles", "Asia/Tokyo"])
def test_weeks_are_iso_weeks_in_utc_and_only_old_enough_ones_are_mature(zone: str) -> None:
    """Week boundaries and maturity compare UTC instants, whatever zone the times are given in."""
    rng = np.random.default_rng(1)
    start = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
    times = pd.date_range(start, start + timedelta(days=21), freq="1h", inclusive="left", tz="UTC")
    scored = pd.DataFrame({"time": times.tz_convert(zone), "score": rng.random(len(times))})
    scored["label"] = (rng.random(len(times)) < scored["score"] * 0.5).astype("int64")
    as_of = start + timedelta(days=14 + 30)  # the first two weeks are 30 days old, the third is not
    periods = weekly_performance(scored, 0.5, lambda s: s * 0.5, as_of, timedelta(days=30))
    assert [p.start for p in periods] == [start + timedelta(days=7 * i) for i in range(3)]
    assert [p.rows for p in periods] == [168, 168, 168]
    assert [p.mature for p in periods] == [True, True, False]
    assert periods[2].realized is None and periods[2].error is None
    assert periods[0].error is not None and set(periods[0].error) == {"roc_auc", "pr_auc", "precision", "recall"}


def test_the_plot_draws_an_interval_that_does_not_hold_its_point() -> None:
    """A percentile bootstrap interval can miss its point estimate (few positives in a week):
    the report still draws (found on a small deployment's last week)."""
    from monitoring.performance import (
        Calibration,
        Estimate,
        PeriodPerformance,
        ServicePerformance,
        plot_periods,
    )

    outside = {m: Estimate(0.9, 0.5, 0.8) for m in ("roc_auc", "pr_auc", "precision", "recall")}
    inside = {m: Estimate(0.7, 0.6, 0.8) for m in outside}
    start = datetime(2026, 3, 2, tzinfo=UTC)
    period = PeriodPerformance(start, start + timedelta(days=7), 100, True, 3, outside, inside)
    result = ServicePerformance("s", "v", "history", 0.5, start, timedelta(days=30), {}, start, start, inside,
                                Calibration(1, 1, 0, 1, 1, 0, 1, 0, 0, False), [period])
    assert len(plot_periods(result)) > 1000
