"""Drift statistics between a reference and a current sample: KS, PSI, chi-square, BH and the decision."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from feastkit.errors import FeastkitError

PSI_EPSILON = 1e-4      # floor for a bin's share, so an empty bin gives a large but finite PSI term
PSI_BINS = 10           # reference-quantile bins (deciles)
MAX_CATEGORIES = 24     # integer features with at most this many distinct values are categorical
EXACT_KS_MAX_PAIRS = 1_000_000  # n_ref * n_cur up to this: exact KS p-value, above: asymptotic
KS_LIMIT_N = 10_000             # pair sizes above this use the limiting Kolmogorov distribution


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature counts as drifted: significant after BH AND a large enough effect.

    Big samples make every p-value tiny, so significance alone would flag trivial shifts; the
    effect-size floor keeps only shifts large enough to matter. Defaults: alpha 0.05 on the
    Benjamini-Hochberg adjusted p-value; a numeric feature also needs KS >= 0.1 or PSI >= 0.2;
    a categorical one PSI >= 0.2 (0.1-0.25 is the usual "moderate" PSI band, >0.25 "major").
    """

    alpha: float = 0.05
    ks_statistic: float = 0.1
    psi: float = 0.2
    null_rate_change: float = 0.1   # absolute change in the share of nulls that also counts as drift

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise FeastkitError(f"alpha {self.alpha} is not in (0, 1)", "pass e.g. --alpha 0.05")
        for name in ("ks_statistic", "psi", "null_rate_change"):
            if getattr(self, name) < 0:
                raise FeastkitError(f"threshold {name}={getattr(self, name)} is negative",
                                    "pass a value >= 0")


@dataclass
class FeatureDrift:
    """The comparison of one feature between the two windows."""

    feature: str
    kind: str                       # "numeric" | "categorical"
    test: str                       # "ks" | "chi2"
    n_reference: int
    n_current: int
    null_rate_reference: float
    null_rate_current: float
    statistic: float | None         # KS D, or the chi-square statistic
    p_value: float | None
    psi: float | None
    ks_statistic: float | None = None
    p_adjusted: float | None = None
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)
    mean_reference: float | None = None
    mean_current: float | None = None
    n_effective_reference: int | None = None   # Kish's effective size of the entities behind the rows (None: rows)
    n_effective_current: int | None = None

    @property
    def null_rate_change(self) -> float:
        return self.null_rate_current - self.null_rate_reference

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["null_rate_change"] = self.null_rate_change
        return {k: _clean(v) for k, v in out.items()}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


# Statistics --------------------------------------------------------------------------------------


def psi_from_shares(reference: np.ndarray, current: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """PSI = sum_i (c_i - r_i) * ln(c_i / r_i) over bins, shares floored at epsilon."""
    r = np.maximum(np.asarray(reference, dtype="float64"), epsilon)
    c = np.maximum(np.asarray(current, dtype="float64"), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def quantile_edges(reference_sorted: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Inner bin edges at the reference's quantiles, duplicates removed (ties collapse bins)."""
    if len(reference_sorted) == 0:
        return np.array([], dtype="float64")
    qs = np.quantile(reference_sorted, np.linspace(0, 1, bins + 1)[1:-1], method="linear")
    return np.unique(qs)


def binned_shares(values_sorted: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values in each bin (-inf, e1], (e1, e2], ..., (ek, inf) of sorted values."""
    positions = np.searchsorted(values_sorted, edges, side="right")
    counts = np.diff(np.concatenate([[0], positions, [len(values_sorted)]]))
    return counts / max(len(values_sorted), 1)


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS,
                epsilon: float = PSI_EPSILON, *, presorted: bool = False) -> float:
    """PSI of a numeric feature on the reference's quantile bins."""
    ref = reference if presorted else np.sort(reference)
    cur = current if presorted else np.sort(current)
    edges = quantile_edges(ref, bins)
    return psi_from_shares(binned_shares(ref, edges), binned_shares(cur, edges), epsilon)


def _pair_size(n: int, m: int) -> float:
    return n * m / (n + m) if n + m else 0.0


def ks_statistic_sorted(reference: np.ndarray, current: np.ndarray) -> float:
    """KS D = max |F_ref(x) - F_cur(x)| over every observed x (as scipy computes it), on sorted arrays."""
    n, m = len(reference), len(current)
    d = 0.0
    for points in (reference, current):  # sorted queries: each search starts where the last ended
        gap = np.searchsorted(reference, points, side="right") / n - \
            np.searchsorted(current, points, side="right") / m
        d = max(d, float(np.max(np.abs(gap))))
    return d


def ks_pvalue(d: float, n: float) -> float:
    """Two-sided p-value of D at pair size n = n1 n2 / (n1 + n2), as scipy's asymptotic method.

    scipy evaluates kstwo.sf(D, round(n)); above n = 10,000 that can take seconds per call, so
    the limiting Kolmogorov distribution kstwobign.sf(D sqrt(n)) is used there (kstwo converges
    to it; the two agree to well under 1 % relative at that size).
    """
    if n > KS_LIMIT_N:
        return float(min(1.0, stats.kstwobign.sf(d * np.sqrt(n))))
    return float(min(1.0, stats.kstwo.sf(d, max(1, round(n)))))


def ks_test(reference: np.ndarray, current: np.ndarray,
            effective: tuple[int, int] | None = None, *, presorted: bool = False) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value.

    Small samples: scipy's ks_2samp with its exact p-value. Large ones: the same statistic on
    the sorted arrays (sorted once, shared with PSI) and scipy's asymptotic p-value.
    With `effective` sample sizes (rows clustered by entity, see `compare_feature`) the p-value
    is taken at the effective pair size when that is smaller.
    """
    n, m = len(reference), len(current)
    if n * m <= EXACT_KS_MAX_PAIRS:
        result = stats.ks_2samp(reference, current, method="exact")
        d, p = float(result.statistic), float(result.pvalue)
    else:
        ref = reference if presorted else np.sort(reference)
        cur = current if presorted else np.sort(current)
        d = ks_statistic_sorted(ref, cur)
        p = ks_pvalue(d, _pair_size(n, m))
    if effective is not None and min(effective) < min(n, m):
        p = max(p, ks_pvalue(d, _pair_size(*effective)))
    return d, p


def chi2_test(reference: np.ndarray, current: np.ndarray,
              effective: tuple[int, int] | None = None) -> tuple[float, float, float]:
    """Chi-square test of homogeneity over the categories of both windows, and the categories' PSI.

    With `effective` sample sizes the statistic is scaled by (n_eff m_eff/(n_eff+m_eff)) /
    (n m/(n+m)) before its p-value is taken: the same counts carry less evidence when many rows
    repeat one entity.
    """
    categories, inverse = np.unique(np.concatenate([reference, current]), return_inverse=True)
    ref_counts = np.bincount(inverse[: len(reference)], minlength=len(categories))
    cur_counts = np.bincount(inverse[len(reference):], minlength=len(categories))
    psi = psi_from_shares(ref_counts / max(len(reference), 1), cur_counts / max(len(current), 1))
    if len(categories) < 2:
        return 0.0, 1.0, psi
    table = np.vstack([ref_counts, cur_counts])
    statistic, p_value, dof, _ = stats.chi2_contingency(table, correction=False)
    if effective is not None and min(effective) < min(len(reference), len(current)):
        scale = _pair_size(*effective) / _pair_size(len(reference), len(current))
        p_value = max(float(p_value), float(stats.chi2.sf(statistic * scale, dof)))
    return float(statistic), float(p_value), psi


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy.stats.false_discovery_control)."""
    p = np.asarray(p_values, dtype="float64")
    if p.size == 0:
        return p
    return stats.false_discovery_control(p, method="bh")


def _categorical_sorted(ref_sorted: np.ndarray, cur_sorted: np.ndarray, max_categories: int) -> bool:
    """Integer-valued with at most max_categories distinct values, decided on sorted non-null arrays."""
    if len(ref_sorted) + len(cur_sorted) == 0:
        return False
    distinct = set()
    for values in (ref_sorted, cur_sorted):
        if len(values):
            if values[0] != np.floor(values[0]) or not np.all(values == np.floor(values)):
                return False
            starts = np.flatnonzero(np.diff(values)) if len(values) > 1 else np.array([], dtype=int)
            if len(starts) >= max_categories:
                return False
            distinct.update(values[np.concatenate([[0], starts + 1])].tolist())
    return len(distinct) <= max_categories


def is_categorical(reference: pd.Series, current: pd.Series, max_categories: int = MAX_CATEGORIES) -> bool:
    """Integer-valued features with few distinct values are compared as categories."""
    ref, cur = _numeric(reference), _numeric(current)
    return _categorical_sorted(np.sort(ref[~np.isnan(ref)]), np.sort(cur[~np.isnan(cur)]), max_categories)


def _numeric(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_extension_array_dtype(series.dtype):
        return series.to_numpy(dtype="float64", copy=False)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def kish_effective_size(units: np.ndarray) -> int:
    """Kish's effective sample size of rows clustered by unit: (sum of w)^2 / sum of w^2, with w
    each unit's row count. Rows of one entity carry one observation; entities weigh by their rows,
    so 220 merchants whose top five carry 64 % of the rows are worth about 8, not 220."""
    if len(units) == 0:
        return 0
    _, counts = np.unique(units, return_counts=True)
    counts = counts.astype("float64")
    return max(1, int(round(counts.sum() ** 2 / (counts ** 2).sum())))


def compare_feature(name: str, reference: pd.Series, current: pd.Series,
                    categorical: bool | None = None,
                    reference_units: pd.Series | None = None,
                    current_units: pd.Series | None = None) -> FeatureDrift:
    """The raw statistics of one feature (no decision yet: that needs all features for BH).

    `*_units` name the independent unit of each row (e.g. the merchant a merchant feature
    describes). Rows of one entity in one window are near-copies of each other, so the tests'
    evidence comes from the number of distinct entities, not rows: 3,000 transactions at 50
    merchants are 50 observations of merchant_avg_ticket_30d. Without units every row counts.
    """
    ref_all, cur_all = _numeric(reference), _numeric(current)
    ref_null = float(np.isnan(ref_all).mean()) if len(ref_all) else 0.0
    cur_null = float(np.isnan(cur_all).mean()) if len(cur_all) else 0.0
    ref, cur = np.sort(ref_all[~np.isnan(ref_all)]), np.sort(cur_all[~np.isnan(cur_all)])
    if categorical is None:
        categorical = _categorical_sorted(ref, cur, MAX_CATEGORIES)
    base = dict(feature=name, n_reference=len(ref), n_current=len(cur), null_rate_reference=ref_null,
                null_rate_current=cur_null,
                mean_reference=float(ref.mean()) if len(ref) else None,
                mean_current=float(cur.mean()) if len(cur) else None)
    if len(ref) == 0 or len(cur) == 0:
        return FeatureDrift(kind="categorical" if categorical else "numeric",
                            test="chi2" if categorical else "ks", statistic=None, p_value=None,
                            psi=None, **base)
    effective = None
    if reference_units is not None and current_units is not None:
        effective = (kish_effective_size(np.asarray(reference_units)[~np.isnan(ref_all)]),
                     kish_effective_size(np.asarray(current_units)[~np.isnan(cur_all)]))
        base["n_effective_reference"], base["n_effective_current"] = effective
    if categorical:
        statistic, p_value, psi = chi2_test(ref, cur, effective)
        return FeatureDrift(kind="categorical", test="chi2", statistic=statistic, p_value=p_value,
                            psi=psi, **base)
    d, p_value = ks_test(ref, cur, effective, presorted=True)
    psi = psi_numeric(ref, cur, presorted=True)
    return FeatureDrift(kind="numeric", test="ks", statistic=d, p_value=p_value, psi=psi,
                        ks_statistic=d, **base)


def decide(results: list[FeatureDrift], thresholds: DriftThresholds) -> list[FeatureDrift]:
    """Adjust p-values across features (BH) and flag those that are significant with a real effect."""
    tested = [r for r in results if r.p_value is not None]
    adjusted = benjamini_hochberg(np.array([r.p_value for r in tested]))
    for r, q in zip(tested, adjusted, strict=True):
        r.p_adjusted = float(q)
    for r in results:
        r.reasons = []
        significant = r.p_adjusted is not None and r.p_adjusted < thresholds.alpha
        if significant and r.psi is not None and r.psi >= thresholds.psi:
            r.reasons.append(f"PSI {r.psi:.3f} >= {thresholds.psi}")
        if significant and r.kind == "numeric" and r.ks_statistic is not None \
                and r.ks_statistic >= thresholds.ks_statistic:
            r.reasons.append(f"KS {r.ks_statistic:.3f} >= {thresholds.ks_statistic}")
        if abs(r.null_rate_change) >= thresholds.null_rate_change and thresholds.null_rate_change > 0:
            r.reasons.append(f"null rate {r.null_rate_reference:.1%} -> {r.null_rate_current:.1%}")
        r.drifted = bool(r.reasons)
    return results


def entity_units(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each row's entity, from its join keys (one code per key combination within the frame)."""
    if len(keys) == 1:
        return frame[keys[0]]
    return pd.Series(pd.MultiIndex.from_frame(frame[keys]).factorize()[0], index=frame.index)


def compare_frames(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str] | None = None,
                   thresholds: DriftThresholds | None = None,
                   categorical: dict[str, bool] | None = None,
                   entity_keys: dict[str, list[str]] | None = None) -> list[FeatureDrift]:
    """Compare every chosen column of two windows and decide which drifted.

    `entity_keys` maps a column to the key columns of the entity it describes (see
    `compare_feature`); columns not in it are row-level (each row independent).
    """
    columns = list(columns if columns is not None else reference.columns)
    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if missing:
        raise FeastkitError(f"column(s) {missing} are missing from a window", "compare the same features")
    categorical, entity_keys = categorical or {}, entity_keys or {}
    results = []
    for c in columns:
        keys = entity_keys.get(c)
        units = (entity_units(reference, keys), entity_units(current, keys)) if keys else (None, None)
        results.append(compare_feature(c, reference[c], current[c], categorical.get(c), *units))
    return decide(results, thresholds or DriftThresholds())
