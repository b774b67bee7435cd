"""Multivariate drift: a domain classifier tells current rows from reference rows, judged by a permutation null."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from feastkit.errors import FeastkitError

MAX_ROWS_PER_WINDOW = 3_000   # rows per window the classifier sees (the null refits it many times)
FOLDS = 4
PERMUTATIONS = 19             # 19 shuffles: the smallest p-value is 1/20 = 0.05
TOP_FEATURES = 5


@dataclass(frozen=True)
class MultivariateThresholds:
    """When the joint distribution counts as drifted: the classifier beats every shuffle often
    enough (permutation p <= alpha) AND separates the windows by a real margin (AUROC >= min_auc).

    Rows of one entity are alike, and populations age between windows (account ages grow), so a
    flexible classifier always finds a little signal; 0.55 is meant to keep such drift below the
    bar (docs/monitoring.md gives what was measured; a benchmark is still to come).
    """

    alpha: float = 0.05
    min_auc: float = 0.55
    permutations: int = PERMUTATIONS

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise FeastkitError(f"alpha {self.alpha} is not in (0, 1)", "pass e.g. alpha=0.05")
        if not 0.5 <= self.min_auc < 1:
            raise FeastkitError(f"min_auc {self.min_auc} is not in [0.5, 1)", "pass e.g. min_auc=0.55")
        if self.permutations < 1:
            raise FeastkitError(f"permutations {self.permutations} is below 1", "pass e.g. permutations=19")
        if 1.0 / (self.permutations + 1) > self.alpha:
            raise FeastkitError(f"{self.permutations} permutations cannot reach p <= {self.alpha} "
                                f"(the smallest p-value is 1/{self.permutations + 1})",
                                f"use at least {int(np.ceil(1 / self.alpha)) - 1} permutations")


@dataclass
class MultivariateDrift:
    """The domain-classifier test of one group of features (one entity's) between two windows."""

    auc: float                      # out-of-fold ROC AUC of telling current rows from reference rows
    p_value: float                  # (1 + shuffles with an AUC at least as high) / (1 + shuffles)
    null_auc_max: float             # the best AUC any shuffle reached
    permutations: int
    n_reference: int
    n_current: int
    features: list[str]
    top_features: list[dict[str, float]] = field(default_factory=list)  # AUC lost when one is shuffled
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)
    entity: str = ""                # whose features were tested together ("" = rows independent)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    out = np.empty((len(frame), len(columns)), dtype="float64")
    for j, c in enumerate(columns):
        values = pd.to_numeric(frame[c], errors="coerce")
        out[:, j] = values.to_numpy(dtype="float64", na_value=np.nan)
    return out


def _sample(x: np.ndarray, groups: np.ndarray, limit: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= limit:
        return x, groups
    keep = np.sort(rng.choice(len(x), size=limit, replace=False))
    return x[keep], groups[keep]


def _classifier(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    # shallow boosted trees see interactions (that is the point) and take NaN as it comes
    return HistGradientBoostingClassifier(max_iter=40, max_depth=4, learning_rate=0.1,
                                          early_stopping=False, random_state=seed)


def _folds(groups: np.ndarray, y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds that keep each entity's rows together, so the classifier cannot recognise an entity
    it saw in training and call that drift."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def _out_of_fold_auc(x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                     seed: int) -> tuple[float, Any, np.ndarray]:
    from sklearn.metrics import roc_auc_score

    scores = np.empty(len(y))
    model = None
    for train, test in folds:
        model = _classifier(seed).fit(x[train], y[train])
        scores[test] = model.predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, scores)), model, folds[-1][1]


def _importance(model: Any, x: np.ndarray, y: np.ndarray, columns: list[str],
                rng: np.random.Generator) -> list[dict[str, float]]:
    """How much held-out AUC the last fold's model loses when one feature is shuffled."""
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, model.predict_proba(x)[:, 1]))
    out = []
    for j, c in enumerate(columns):
        shuffled = x.copy()
        shuffled[:, j] = rng.permutation(shuffled[:, j])
        out.append({"feature": c, "auc_drop": round(auc - float(roc_auc_score(y, model.predict_proba(shuffled)[:, 1])), 4)})
    out.sort(key=lambda item: -item["auc_drop"])
    return [item for item in out[:TOP_FEATURES] if item["auc_drop"] > 0]


def domain_classifier_test(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str],
                           thresholds: MultivariateThresholds | None = None,
                           groups: tuple[pd.Series, pd.Series] | None = None,
                           seed: int = 0) -> MultivariateDrift:
    """Can a classifier tell the windows apart, beyond what shuffled window labels allow?

    `groups` gives each row's entity in either window (e.g. the user): folds keep an entity's
    rows together. The observed out-of-fold AUROC is compared with the same procedure refitted
    on `permutations` shufflings of the window labels (shuffled by entity when groups are given).
    """
    thresholds = thresholds or MultivariateThresholds()
    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if missing:
        raise FeastkitError(f"column(s) {missing} are missing from a window", "compare the same features")
    if not columns:
        raise FeastkitError("the multivariate test needs at least one feature", "pass the service's features")
    rng = np.random.default_rng(seed)
    if groups is None:
        g_ref = np.arange(len(reference))
        g_cur = np.arange(len(current)) + len(reference)
    else:
        g_ref, g_cur = (pd.Series(g).astype(str).to_numpy() for g in groups)
    x_ref, g_ref = _sample(_matrix(reference, columns), g_ref, MAX_ROWS_PER_WINDOW, rng)
    x_cur, g_cur = _sample(_matrix(current, columns), g_cur, MAX_ROWS_PER_WINDOW, rng)
    if min(len(x_ref), len(x_cur)) < 2 * FOLDS:
        raise FeastkitError(f"a window has {min(len(x_ref), len(x_cur))} rows; the multivariate test needs "
                            f"at least {2 * FOLDS}", "widen the windows (--current-days/--reference-days)")
    x = np.vstack([x_ref, x_cur])
    y = np.r_[np.zeros(len(x_ref), dtype=int), np.ones(len(x_cur), dtype=int)]
    # an entity seen in both windows is two groups: its reference rows and its current rows
    groups_all = np.r_[np.char.add("r:", g_ref.astype(str)), np.char.add("c:", g_cur.astype(str))]
    if len(np.unique(groups_all)) < 2 * FOLDS:
        raise FeastkitError("too few distinct entities for grouped folds", "widen the windows")
    folds = _folds(groups_all, y, seed)
    auc, model, held_out = _out_of_fold_auc(x, y, folds, seed)

    # the null: the same procedure on window labels shuffled group by group (rows of one group
    # keep one label, as they do in the real split), refitted each time
    unique, inverse = np.unique(groups_all, return_inverse=True)
    group_label = np.zeros(len(unique), dtype=int)
    group_label[inverse[y == 1]] = 1
    # (a shuffle keeps the count of each label, and both windows hold groups: never one label)
    null = np.empty(thresholds.permutations)
    for b in range(thresholds.permutations):
        y_null = rng.permutation(group_label)[inverse]
        null[b] = _out_of_fold_auc(x, y_null, _folds(groups_all, y_null, seed + 1 + b), seed + 1 + b)[0]
    p_value = float((1 + np.sum(null >= auc)) / (1 + len(null)))
    out = MultivariateDrift(
        auc=round(auc, 4), p_value=round(p_value, 4), null_auc_max=round(float(null.max()), 4),
        permutations=len(null), n_reference=len(x_ref), n_current=len(x_cur), features=list(columns),
        top_features=_importance(model, x[held_out], y[held_out], columns, rng))
    if p_value <= thresholds.alpha and auc >= thresholds.min_auc:
        out.drifted = True
        out.reasons.append(f"domain classifier AUROC {auc:.3f} >= {thresholds.min_auc} "
                           f"(permutation p {p_value:.3f} <= {thresholds.alpha})")
    return out
