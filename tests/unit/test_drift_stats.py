"""Drift statistics: KS/PSI/chi-square against scipy and direct formulas, BH, and the flagging decision."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from feastkit.errors import FeastkitError
from monitoring.drift import (
    DriftThresholds,
    benjamini_hochberg,
    binned_shares,
    chi2_test,
    compare_feature,
    compare_frames,
    is_categorical,
    ks_test,
    psi_from_shares,
    psi_numeric,
    quantile_edges,
)


def reference_bh(p: list[float]) -> list[float]:
    """Benjamini-Hochberg written out: q_(i) = min_{j>=i} p_(j) * m / j, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = min(running, 1.0)
    return q


def test_bh_matches_reference_implementation() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.concatenate([rng.uniform(size=30), rng.uniform(0, 1e-4, size=5)])
        p[3] = p[4]  # ties
        assert np.allclose(benjamini_hochberg(p), reference_bh(list(p)), rtol=0, atol=1e-15)
    fixed = [0.01, 0.04, 0.03, 0.2, 0.5]
    assert np.allclose(benjamini_hochberg(np.array(fixed)), [0.05, 0.2 / 3, 0.2 / 3, 0.25, 0.5])
    assert benjamini_hochberg(np.array([])).size == 0


def test_ks_matches_scipy_on_fixed_arrays() -> None:
    a = np.array([0.1, 0.4, 0.7, 1.2, 1.9, 2.2, 3.1, 3.3, 4.0, 5.5])
    b = np.array([0.9, 1.5, 2.5, 2.8, 3.6, 4.4, 4.9, 5.1, 6.3, 7.0, 7.7])
    d, p = ks_test(a, b)
    expected = stats.ks_2samp(a, b, method="exact")
    assert d == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    # the statistic by its definition: the largest gap between the two ECDFs
    grid = np.concatenate([a, b])
    gaps = np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                  - np.searchsorted(np.sort(b), grid, "right") / len(b))
    assert d == pytest.approx(gaps.max())
    rng = np.random.default_rng(1)
    big_a, big_b = rng.normal(size=3000), rng.normal(0.1, size=2000)
    d, p = ks_test(big_a, big_b)
    expected = stats.ks_2samp(big_a, big_b, method="asymp")
    assert (d, p) == pytest.approx((expected.statistic, expected.pvalue))
    # above the pair size where the limiting distribution takes over: same D, p within 1 %
    huge_a, huge_b = rng.normal(size=60_000), rng.normal(0.02, size=40_000)
    d, p = ks_test(huge_a, huge_b)
    expected = stats.ks_2samp(huge_a, huge_b, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=0.01)
    # clustered rows: the p-value is taken at the effective sizes, the statistic is unchanged
    d_eff, p_eff = ks_test(huge_a, huge_b, effective=(50, 40))
    assert d_eff == d and p_eff == pytest.approx(stats.kstwo.sf(d, round(50 * 40 / 90)))


def test_psi_matches_direct_formula() -> None:
    reference = np.arange(1, 101, dtype=float)            # deciles at 10.9, 20.8, ...
    current = np.concatenate([np.arange(1, 51), np.full(50, 95.0)]).astype(float)
    edges = np.quantile(reference, np.linspace(0, 1, 11)[1:-1])
    ref_share = np.histogram(reference, np.concatenate([[-np.inf], edges, [np.inf]]))[0] / 100
    cur_share = np.histogram(current, np.concatenate([[-np.inf], edges, [np.inf]]))[0] / 100
    r, c = np.maximum(ref_share, 1e-4), np.maximum(cur_share, 1e-4)
    direct = float(np.sum((c - r) * np.log(c / r)))
    assert psi_numeric(reference, current) == pytest.approx(direct)
    assert psi_numeric(reference, reference) == pytest.approx(0.0)
    # hand-checked two-bin case: (0.8-0.5)ln(0.8/0.5) + (0.2-0.5)ln(0.2/0.5)
    assert psi_from_shares(np.array([0.5, 0.5]), np.array([0.8, 0.2])) == pytest.approx(
        0.3 * np.log(1.6) + 0.3 * np.log(2.5))


def test_psi_handles_ties_and_empty_bins() -> None:
    reference = np.sort(np.array([0.0] * 70 + [1.0] * 20 + [5.0] * 10))
    edges = quantile_edges(reference)
    assert list(edges) == sorted(set(edges))  # duplicate quantiles collapsed
    assert binned_shares(reference, edges).sum() == pytest.approx(1.0)
    current = np.sort(np.full(100, 50.0))  # everything in one bin, the others empty
    value = psi_numeric(reference, current)
    assert np.isfinite(value) and value > 1.0
    assert psi_numeric(np.full(10, 3.0), np.full(10, 3.0)) == pytest.approx(0.0)


def test_chi_square_matches_scipy() -> None:
    reference = np.array([0] * 50 + [1] * 30 + [2] * 20, dtype=float)
    current = np.array([0] * 30 + [1] * 30 + [2] * 30 + [3] * 10, dtype=float)
    statistic, p_value, psi = chi2_test(reference, current)
    expected = stats.chi2_contingency(np.array([[50, 30, 20, 0], [30, 30, 30, 10]]), correction=False)
    assert statistic == pytest.approx(expected[0]) and p_value == pytest.approx(expected[1])
    assert psi == pytest.approx(psi_from_shares(np.array([.5, .3, .2, 0]), np.array([.3, .3, .3, .1])))


def test_categorical_detection() -> None:
    hours = pd.Series(np.arange(24).repeat(3))
    assert is_categorical(hours, hours)
    assert not is_categorical(pd.Series(np.linspace(0, 1, 50)), pd.Series([0.5]))
    assert not is_categorical(pd.Series(np.arange(100)), pd.Series(np.arange(100)))
    assert is_categorical(pd.Series([0.0, 1.0, 1.0]), pd.Series([1.0, np.nan]))


def test_null_rate_change_is_reported_and_flagged() -> None:
    rng = np.random.default_rng(2)
    ref = pd.Series(rng.normal(size=2000))
    cur = pd.Series(rng.normal(size=2000))
    cur[:600] = np.nan
    result = compare_feature("x", ref, cur)
    assert result.null_rate_current == pytest.approx(0.3) and result.n_current == 1400
    decided = compare_frames(pd.DataFrame({"x": ref}), pd.DataFrame({"x": cur}))[0]
    assert decided.drifted and "null rate" in decided.reasons[0]


def _synthetic_windows(seed: int, n_ref: int, n_cur: int, shifted: set[str]) -> tuple[pd.DataFrame, ...]:
    """20 features of several shapes; the `shifted` ones move in the current window."""
    rng = np.random.default_rng(seed)

    def draw(name: str, n: int, shift: bool) -> np.ndarray:
        kind = int(name.split("_")[1]) % 5
        if kind == 0:
            return rng.normal(1.5 if shift else 0.0, 1.0, n) * 10 + 100
        if kind == 1:
            return rng.lognormal(0.6 if shift else 0.0, 1.0, n)
        if kind == 2:  # a count with many ties at zero
            return rng.poisson(2.5 if shift else 1.0, n).astype(float) * 7
        if kind == 3:  # categorical hour of day
            p = np.ones(24) / 24
            if shift:
                p[:6] *= 5
                p /= p.sum()
            return rng.choice(24, n, p=p)
        return rng.binomial(1, 0.45 if shift else 0.2, n)  # a flag

    names = [f"f_{i}" for i in range(20)]
    reference = pd.DataFrame({n: draw(n, n_ref, False) for n in names})
    current = pd.DataFrame({n: draw(n, n_cur, n in shifted) for n in names})
    return reference, current


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_injected_shift_flags_exactly_the_shifted_features(seed: int) -> None:
    shifted = {"f_0", "f_6", "f_12", "f_13", "f_19"}  # one of each shape
    reference, current = _synthetic_windows(seed, 40_000, 10_000, shifted)
    results = compare_frames(reference, current)
    assert {r.feature for r in results if r.drifted} == shifted
    kinds = {r.feature: r.kind for r in results}
    assert kinds["f_3"] == "categorical" and kinds["f_4"] == "categorical" and kinds["f_0"] == "numeric"


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_big_samples_do_not_flag_trivial_shifts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = pd.DataFrame({"x": rng.normal(0, 1, 400_000)})
    current = pd.DataFrame({"x": rng.normal(0.03, 1, 400_000)})  # significant, but tiny
    result = compare_frames(reference, current)[0]
    assert result.p_adjusted < 0.05 and not result.drifted


def test_thresholds_validate() -> None:
    with pytest.raises(FeastkitError):
        DriftThresholds(alpha=1.5)
    with pytest.raises(FeastkitError):
        DriftThresholds(psi=-1)


@pytest.mark.parametrize("kind,reference,current", [
    ("numeric", np.random.default_rng(0).beta(0.3, 30, 3000), np.random.default_rng(1).uniform(0, 1, 800)),
    ("numeric", np.zeros(500), np.r_[np.zeros(400), np.full(100, 5.0)]),   # ties, one positive value
    ("numeric", np.full(200, 7.0), np.full(100, 7.0)),                       # constant
    ("numeric", np.random.default_rng(2).normal(size=2000), np.array([np.nan, 1.0, 2.0])),
    ("categorical", np.arange(24).repeat(10), np.r_[np.zeros(50), np.arange(24)]),
])
def test_plots_render_for_awkward_distributions(kind: str, reference: np.ndarray,
                                                current: np.ndarray) -> None:
    import base64

    from monitoring.report import plot_feature

    png = base64.b64decode(plot_feature("x", kind, pd.Series(reference), pd.Series(current), "x"))
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_kish_effective_size_weighs_entities_by_their_rows() -> None:
    from monitoring.drift import kish_effective_size

    assert kish_effective_size(np.repeat(np.arange(50), 20)) == 50  # equal clusters: the entity count
    assert kish_effective_size(np.arange(7)) == 7                   # one row each: the row count
    assert kish_effective_size(np.array([], dtype=int)) == 0
    # 220 merchants, the top one with 28 % of the rows and the top five with 64 %: about 8, not 220
    counts = np.array([280, 120, 100, 80, 60] + [2] * 215)
    units = np.repeat(np.arange(len(counts)), counts)
    assert 6 <= kish_effective_size(units) <= 10
    assert kish_effective_size(units) == round(counts.sum() ** 2 / (counts ** 2).sum())


def test_a_few_heavy_entities_moving_a_little_is_not_drift() -> None:
    """Merchant-like clusters: the top five carry most rows and their values wander a little
    between windows. Counting distinct entities (220) flagged it; Kish's size (about 8) does not,
    while a real shift of every entity is still flagged."""
    rng = np.random.default_rng(4)
    counts = np.array([2800, 1200, 1000, 800, 600] + [20] * 215)
    value = rng.lognormal(3.5, 0.4, size=len(counts))
    units = np.repeat(np.arange(len(counts)), counts)

    def window(level: np.ndarray, share: float) -> tuple[pd.Series, pd.Series]:
        take = rng.random(len(units)) < share
        return pd.Series(np.repeat(level, counts)[take]), pd.Series(units[take])

    ref, ref_units = window(value, 0.8)
    wander, wander_units = window(value * rng.normal(1.0, 0.04, size=len(counts)), 0.2)
    result = compare_frames(pd.DataFrame({"f": ref, "m": ref_units}), pd.DataFrame({"f": wander, "m": wander_units}),
                            ["f"], entity_keys={"f": ["m"]})[0]
    assert result.ks_statistic > 0.1  # the effect looks large: a few big atoms moved
    assert result.n_effective_reference < 15 and not result.drifted, result.to_dict()
    shifted, shifted_units = window(value * 1.8, 0.2)
    real = compare_frames(pd.DataFrame({"f": ref, "m": ref_units}), pd.DataFrame({"f": shifted, "m": shifted_units}),
                          ["f"], entity_keys={"f": ["m"]})[0]
    assert real.drifted, real.to_dict()
