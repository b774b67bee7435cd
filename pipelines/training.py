"""Model training: feature service -> PIT training set -> scikit-learn -> versioned model bundle."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.pipeline import Pipeline

from feastkit.bundle import (
    FORMAT_VERSION,
    ModelBundle,
    combined_fingerprint,
    feature_fingerprints,
    new_version,
    promote,
    reference_stats,
    registry_defaults,
)
from feastkit.errors import FeastkitError
from feastkit.recipes import labelled_entities, recipe_of
from feastkit.services import build_training_set, describe_service

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

EVAL_SHARE = 0.25       # the latest quarter of the period is the evaluation window
THRESHOLD_SHARE = 0.2   # the latest fifth of the training window picks the decision threshold
THRESHOLD_RULE = "maximises F1 on the last 20% of the training window (held out from fitting)"


@dataclass(frozen=True)
class TrainingResult:
    """One trained bundle: where it is and how it did on the later window."""

    feature_service: str
    version: str
    path: Path
    metrics: dict[str, float]
    label_rate: float
    rows: int
    threshold: float
    promoted: bool

    def line(self) -> str:
        m = self.metrics
        return (f"{self.feature_service:<20} rows={self.rows:>7,}  label_rate={self.label_rate:.4f}  "
                f"ROC AUC={m['roc_auc']:.3f}  PR AUC={m['pr_auc']:.3f}  threshold={self.threshold:.3f}  "
                f"precision={m['precision_at_threshold']:.2f} recall={m['recall_at_threshold']:.2f}")


def time_split(frame: pd.DataFrame, share: float, column: str = "event_timestamp") -> tuple[pd.Series, pd.Series]:
    """Masks (earlier, later): the later `share` of rows by time, never splitting one timestamp."""
    cutoff = frame[column].quantile(1.0 - share)
    later = frame[column] >= cutoff
    if later.all() or not later.any():
        raise FeastkitError("the training set spans too little time to split into train and evaluation",
                            "generate more days of data")
    return ~later, later


def new_model(seed: int = 0) -> Pipeline:
    """Gradient-boosted trees behind a median imputer: missing values are handled inside the model."""
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("model", HistGradientBoostingClassifier(max_iter=250, learning_rate=0.06, max_leaf_nodes=31,
                                                 l2_regularization=1.0, min_samples_leaf=40,
                                                 random_state=seed)),
    ])


def _check_labels(y: np.ndarray, where: str) -> None:
    if y.min() == y.max():
        raise FeastkitError(f"the {where} window has only one class (label rate {y.mean():.3f})",
                            "generate more data (more users or days) so both outcomes occur")


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def evaluate(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = scores >= threshold
    tp = int((predicted & (y == 1)).sum())
    return {
        "roc_auc": float(roc_auc_score(y, scores)),
        "pr_auc": float(average_precision_score(y, scores)),
        "precision_at_threshold": tp / max(int(predicted.sum()), 1),
        "recall_at_threshold": tp / max(int((y == 1).sum()), 1),
        "eval_rows": int(len(y)),
        "eval_positives": int(y.sum()),
        "eval_label_rate": float(y.mean()),
    }


def fit_and_evaluate(frame: pd.DataFrame, columns: list[str], defaults: dict[str, float],
                     seed: int = 0) -> tuple[Pipeline, float, dict[str, float], pd.Series]:
    """Time-ordered fit / threshold / evaluation on a training frame with a `label` column."""
    earlier, later = time_split(frame, EVAL_SHARE)
    train = frame[earlier]
    fit_mask, thr_mask = time_split(train, THRESHOLD_SHARE)
    fill = {c: defaults.get(c, np.nan) for c in columns}

    def x(part: pd.DataFrame) -> np.ndarray:
        return part[columns].apply(pd.to_numeric, errors="coerce").astype("float64").fillna(fill).to_numpy()

    y_fit, y_thr, y_eval = (p["label"].to_numpy() for p in (train[fit_mask], train[thr_mask], frame[later]))
    for y, where in ((y_fit, "training"), (y_thr, "threshold"), (y_eval, "evaluation")):
        _check_labels(y, where)
    model = new_model(seed).fit(x(train[fit_mask]), y_fit)
    threshold = best_f1_threshold(y_thr, model.predict_proba(x(train[thr_mask]))[:, 1])
    metrics = evaluate(y_eval, model.predict_proba(x(frame[later]))[:, 1], threshold)
    return model, threshold, metrics, later


def train_service(store: FeatureStore, service: str, clean_dir: Path, models_dir: Path,
                  seed: int = 0, promote_bundle: bool = True,
                  entities: pd.DataFrame | None = None) -> TrainingResult:
    """Build the PIT training set for a feature service, fit, evaluate on the later window, save a bundle."""
    spec = describe_service(store, service)
    entities = entities if entities is not None else labelled_entities(store, service, clean_dir)
    frame = build_training_set(store, service, entities)
    columns = spec.feature_columns
    earlier, later = time_split(frame, EVAL_SHARE)
    defaults = registry_defaults(store, spec.feature_refs)
    medians = frame.loc[earlier, columns].apply(pd.to_numeric, errors="coerce").median()
    for col in columns:
        if col not in defaults:
            value = medians.get(col)
            defaults[col] = float(value) if value is not None and not pd.isna(value) else 0.0
    model, threshold, metrics, later = fit_and_evaluate(frame, columns, defaults, seed)
    fingerprints = feature_fingerprints(store, spec.feature_refs)
    ts = frame["event_timestamp"]
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "version": new_version(),
        "created_at": datetime.now(UTC).isoformat(),
        "task": recipe_of(store, service),
        "feature_service": service,
        "feature_refs": spec.feature_refs,
        "join_keys": spec.join_keys,
        "request_fields": spec.request_fields,
        "feature_fingerprints": fingerprints,
        "fingerprint": combined_fingerprint(fingerprints),
        "training_window": {"start": ts[~later].min().isoformat(), "end": ts[~later].max().isoformat()},
        "evaluation_window": {"start": ts[later].min().isoformat(), "end": ts[later].max().isoformat()},
        "rows": {"total": int(len(frame)), "train": int((~later).sum()), "evaluation": int(later.sum())},
        "label_rate": float(frame["label"].mean()),
        "metrics": metrics,
        "threshold": threshold,
        "threshold_rule": THRESHOLD_RULE,
        "defaults": defaults,
        "defaults_rule": "Field tag `default` from the registry, else the training-window median",
        "reference_stats": reference_stats(frame[~later], columns),
        "model": {"class": "sklearn Pipeline(SimpleImputer(median) -> HistGradientBoostingClassifier)",
                  "sklearn_version": sklearn.__version__, "seed": seed},
    }
    bundle = ModelBundle(model, manifest)
    path = bundle.save(models_dir)
    if promote_bundle:
        promote(models_dir, service, bundle.version)
    return TrainingResult(service, bundle.version, path, metrics, manifest["label_rate"], len(frame),
                          threshold, promote_bundle)


# Leakage demonstration ------------------------------------------------------------------------


def leaky_join(frame: pd.DataFrame, features: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    """What a naive join does: every row gets the entity's LATEST feature values, from its future too."""
    latest = features.sort_values("event_timestamp").groupby(key).tail(1)[[key, *columns]]
    return frame.drop(columns=[c for c in columns if c in frame.columns]).merge(latest, on=key, how="left")


def leaky_features(store: FeatureStore, service: str, entities: pd.DataFrame, features_dir: Path) -> pd.DataFrame:
    """The service's features as a naive join gives them: every base view's latest row per entity
    (from its future too), and the on-demand views run by Feast on those leaked inputs."""
    from feastkit.services import get_service
    from pipelines.aggregates import read_view

    views = {v.name: v for v in store.list_feature_views()}
    odfvs = {o.name: o for o in store.list_on_demand_feature_views()}
    tables: dict[str, pd.DataFrame] = {}

    def join(frame: pd.DataFrame, view_name: str, columns: list[str]) -> pd.DataFrame:
        view = views[view_name]
        if view_name not in tables:
            tables[view_name] = read_view(features_dir, view_name)
        (key,) = view.join_keys  # the declared views have one entity key each
        return leaky_join(frame, tables[view_name], key, columns)

    frame = entities.copy()
    for projection in get_service(store, service).feature_view_projections:
        names = [f.name for f in projection.features]
        if projection.name in views:
            frame = join(frame, projection.name, names)
            continue
        odfv = odfvs[projection.name]
        inputs = frame.copy()
        for source in odfv.source_feature_view_projections.values():
            inputs = join(inputs, source.name, [f.name for f in source.features])
        request = [f.name for s in odfv.source_request_sources.values() for f in s.schema]
        used = request + [f.name for s in odfv.source_feature_view_projections.values() for f in s.features]
        out = odfv.transform_dict({c: [None if pd.isna(v) else v for v in inputs[c]] for c in used})
        for name in names:
            frame[name] = np.asarray(out[name])
    return frame


def leaky_vs_pit(store: FeatureStore, clean_dir: Path, features_dir: Path,
                 service: str = "churn_prediction_v1", seed: int = 0,
                 entities: pd.DataFrame | None = None) -> dict[str, float]:
    """Evaluation ROC AUC of the same model on PIT features vs on a naive latest-value join of
    every view the service reads (and its on-demand features computed from those).

    `entities`: the labelled rows to use (default: the service's label recipe on the clean data).
    """
    spec = describe_service(store, service)
    entities = entities if entities is not None else labelled_entities(store, service, clean_dir)
    pit = build_training_set(store, service, entities)
    leaky = leaky_features(store, service, entities, features_dir)
    defaults = registry_defaults(store, spec.feature_refs)
    _, _, pit_metrics, _ = fit_and_evaluate(pit, spec.feature_columns, defaults, seed)
    _, _, leaky_metrics, _ = fit_and_evaluate(leaky, spec.feature_columns, defaults, seed)
    return {"pit_roc_auc": pit_metrics["roc_auc"], "leaky_roc_auc": leaky_metrics["roc_auc"]}


# Scheduled retraining: promote only if not worse -------------------------------------------------


@dataclass(frozen=True)
class PromotionDecision:
    """A retrained bundle, the serving one it was compared with, and whether it was promoted."""

    feature_service: str
    version: str
    metric: str
    new_value: float
    serving_version: str | None
    serving_value: float | None
    tolerance: float
    promoted: bool
    reason: str

    def line(self) -> str:
        verdict = "promoted" if self.promoted else "kept serving bundle"
        return f"{self.feature_service}: {verdict} ({self.reason})"

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def train_and_promote_if_not_worse(store: FeatureStore, service: str, clean_dir: Path, models_dir: Path,
                                   metric: str = "pr_auc", tolerance: float = 0.0,
                                   seed: int = 0) -> PromotionDecision:
    """Train a new bundle and promote it only if `metric` >= the serving bundle's value - `tolerance`.

    Each bundle's metric is the one recorded in its manifest (its own later evaluation window).
    The replaced bundle is kept as PREVIOUS, so `feastkit.bundle.rollback` restores it. A serving
    bundle trained on feature definitions that have changed since cannot be served any more, so
    the new bundle replaces it whatever its score.
    """
    from feastkit.bundle import current_bundle

    result = train_service(store, service, clean_dir, models_dir, seed=seed, promote_bundle=False)
    if metric not in result.metrics:
        raise FeastkitError(f"unknown promotion metric '{metric}'",
                            f"choose one of {sorted(k for k in result.metrics if not k.startswith('eval_'))}")
    new_value = float(result.metrics[metric])
    try:
        serving = current_bundle(models_dir, service)
    except FeastkitError:
        serving = None
    if serving is None:
        promoted, old_value, reason = True, None, "no serving bundle yet"
    else:
        old_value = serving.manifest.get("metrics", {}).get(metric)
        try:
            serving.check_against(store)
            still_valid = True
        except FeastkitError:
            still_valid = False
        if not still_valid:
            promoted, reason = True, "the serving bundle's feature definitions changed since it was trained"
        elif old_value is None:
            promoted, reason = True, f"the serving bundle recorded no {metric}"
        else:
            promoted = new_value >= float(old_value) - tolerance
            reason = (f"{metric} {new_value:.4f} vs serving {float(old_value):.4f}, "
                      f"tolerance {tolerance:g}: {'not worse' if promoted else 'worse'}")
    if promoted:
        promote(models_dir, service, result.version)
    return PromotionDecision(service, result.version, metric, new_value,
                             serving.version if serving is not None else None,
                             float(old_value) if old_value is not None else None, tolerance, promoted, reason)
