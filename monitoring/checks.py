"""The monitoring run: drift windows through Feast, freshness, skew, one decision and the reports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from feastkit.errors import FeastkitError
from feastkit.settings import Settings
from feastkit.times import require_aware
from monitoring.drift import (
    DriftThresholds,
    FeatureDrift,
    compare_feature,
    compare_frames,
    decide,
    entity_units,
)
from monitoring.freshness import ViewFreshness, check_freshness
from monitoring.multivariate import (
    MultivariateDrift,
    MultivariateThresholds,
    domain_classifier_test,
)
from monitoring.skew import FeatureSkew, check_skew

if TYPE_CHECKING:
    from feast import FeatureStore

CHECKS = ("drift", "freshness", "skew")
DEFAULT_MAX_ROWS = 10_000  # entity rows sampled per window for drift (Feast retrieval dominates cost)
# Absolute timestamps (e.g. last_txn_epoch) move with the calendar by construction: every window
# differs from the one before, so testing them for drift only produces alarms. Their meaningful
# form (hours since the last transaction, account age) is a derived feature that is tested.
SKIP_SUFFIXES = ("_epoch",)


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end) and how many entity rows were compared in it."""

    start: datetime
    end: datetime
    rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "rows": self.rows}


@dataclass
class ServiceDrift:
    """Drift of one feature service between two windows; frames kept for the report's plots."""

    feature_service: str
    reference: Window
    current: Window
    features: list[FeatureDrift]
    refs: dict[str, str]                      # feature column -> feature ref view:feature
    skipped: list[str] = field(default_factory=list)  # refs not tested (absolute timestamps)
    prediction: FeatureDrift | None = None
    model_version: str | None = None
    reference_frame: pd.DataFrame | None = field(default=None, repr=False)
    current_frame: pd.DataFrame | None = field(default=None, repr=False)
    multivariate: list[MultivariateDrift] = field(default_factory=list)

    @property
    def drifted(self) -> list[str]:
        out = [self.refs[f.feature] for f in self.features if f.drifted]
        if self.prediction is not None and self.prediction.drifted:
            out.append(f"prediction:{self.feature_service}")
        out.extend(multivariate_ref(self.feature_service, m.entity) for m in self.multivariate if m.drifted)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_service": self.feature_service,
            "reference": self.reference.to_dict(), "current": self.current.to_dict(),
            "features": [{"ref": self.refs[f.feature], **f.to_dict()} for f in self.features],
            "prediction": None if self.prediction is None else
            {"model_version": self.model_version, **self.prediction.to_dict()},
            "skipped": self.skipped,
            "multivariate": [{"ref": multivariate_ref(self.feature_service, m.entity), **m.to_dict()}
                             for m in self.multivariate],
            "drifted": self.drifted,
        }


@dataclass
class MonitoringOutcome:
    """What a monitoring run found, and where its reports are."""

    drifted: list[str]
    stale: list[str]
    skewed: list[str]
    report_json: Path
    report_html: Path
    drift: list[ServiceDrift] = field(default_factory=list)
    freshness: list[ViewFreshness] = field(default_factory=list)
    skew: dict[str, list[FeatureSkew]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)   # e.g. injected drift that no feature reads

    @property
    def ok(self) -> bool:
        return not (self.drifted or self.stale or self.skewed)


# Windows through Feast ---------------------------------------------------------------------------


def window_features(store: FeatureStore, settings: Settings, service: str, start: datetime,
                    end: datetime, max_rows: int, seed: int) -> pd.DataFrame:
    """Features of a (sampled) window exactly as the model saw them: Feast historical retrieval."""
    from feastkit.recipes import window_entities
    from feastkit.services import build_training_set

    entities = window_entities(store, service, settings.clean_dir, start, end)
    if entities.empty:
        raise FeastkitError(f"'{service}' has no entity rows in [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) "
                            "UTC, so drift has nothing to compare there",
                            "pass an --end inside the data, or other --current-days/--reference-days")
    if len(entities) > max_rows:
        entities = entities.sample(n=max_rows, random_state=seed).sort_values("event_timestamp")
    return build_training_set(store, service, entities.reset_index(drop=True))


def _bundle_for(settings: Settings, service: str) -> Any:
    from feastkit.bundle import current_bundle

    try:
        bundle = current_bundle(settings.models_dir, service)
    except FeastkitError:
        return None
    return bundle if bundle.feature_service == service else None


def multivariate_ref(service: str, entity: str) -> str:
    """How a multivariate finding is named among the drifted refs."""
    return f"multivariate:{service}:{entity or 'rows'}"


def entity_groups(keys: dict[str, list[str]], columns: list[str]) -> list[tuple[list[str], list[str]]]:
    """(join keys, columns) tested together: each entity's features, with the row-level
    (request-time) features joining the entity that has the most features."""
    by_entity: dict[tuple[str, ...], list[str]] = {}
    for c in columns:
        if c in keys:
            by_entity.setdefault(tuple(keys[c]), []).append(c)
    rows = [c for c in columns if c not in keys]
    if not by_entity:
        return [([], rows)]
    main = max(by_entity, key=lambda k: len(by_entity[k]))
    by_entity[main] = by_entity[main] + rows
    return [(list(k), cols) for k, cols in by_entity.items()]


def multivariate_between(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str],
                         keys: dict[str, list[str]], thresholds: MultivariateThresholds,
                         seed: int = 0) -> list[MultivariateDrift]:
    """The domain-classifier test per entity group, folds and shuffles grouped by the entity."""
    out = []
    for join_keys, cols in entity_groups(keys, columns):
        groups = (entity_units(reference, join_keys), entity_units(current, join_keys)) if join_keys else None
        result = domain_classifier_test(reference, current, cols, thresholds, groups, seed)
        result.entity = ",".join(join_keys)
        out.append(result)
    return out


def drift_between(store: FeatureStore, settings: Settings, service: str, reference: Window,
                  current: Window, thresholds: DriftThresholds | None = None,
                  max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0,
                  with_prediction: bool = True, multivariate: bool | None = None) -> ServiceDrift:
    """Compare a feature service's features (and model score, when a bundle exists) across two windows."""
    from feastkit.services import describe_service

    thresholds = thresholds or DriftThresholds()
    spec = describe_service(store, service)
    ref_frame = window_features(store, settings, service, reference.start, reference.end, max_rows, seed)
    cur_frame = window_features(store, settings, service, current.start, current.end, max_rows, seed + 1)
    refs = dict(zip(spec.feature_columns, spec.feature_refs, strict=True))
    columns = [c for c in spec.feature_columns if not c.endswith(SKIP_SUFFIXES)]
    if not columns:
        raise FeastkitError(f"'{service}' has no feature drift can test (only absolute timestamps)",
                            "monitor a service with other features")
    keys = feature_entity_keys(store, refs, columns)
    results = compare_frames(ref_frame, cur_frame, columns, thresholds, entity_keys=keys)
    out = ServiceDrift(service, Window(reference.start, reference.end, len(ref_frame)),
                       Window(current.start, current.end, len(cur_frame)), results, refs,
                       [refs[c] for c in spec.feature_columns if c not in columns],
                       reference_frame=ref_frame[columns].copy(), current_frame=cur_frame[columns].copy())
    if settings.drift_multivariate if multivariate is None else multivariate:
        out.multivariate = multivariate_between(
            ref_frame, cur_frame, columns, keys,
            MultivariateThresholds(alpha=thresholds.alpha, min_auc=settings.drift_multivariate_min_auc), seed)
    bundle = _bundle_for(settings, service) if with_prediction else None
    if bundle is not None:
        ref_scores, _ = bundle.predict_proba(ref_frame)
        cur_scores, _ = bundle.predict_proba(cur_frame)
        score = compare_feature("prediction_score", pd.Series(ref_scores), pd.Series(cur_scores),
                                categorical=False)
        out.prediction = decide([score], thresholds)[0]
        out.model_version = bundle.version
        out.reference_frame["prediction_score"] = np.asarray(ref_scores)
        out.current_frame["prediction_score"] = np.asarray(cur_scores)
    return out


def feature_entity_keys(store: FeatureStore, refs: dict[str, str], columns: list[str]) -> dict[str, list[str]]:
    """Join keys of the entity each column describes: the view's keys; none for request-time features."""
    views = {v.name: v for v in store.list_feature_views()}
    out = {}
    for column in columns:
        view = views.get(refs[column].split(":", 1)[0])
        if view is not None and view.join_keys:
            out[column] = list(view.join_keys)
    return out


def _reads(text: str | None, column: str) -> bool:
    return bool(text) and re.search(rf"\b{re.escape(column)}\b", text) is not None


def features_reading(specs: list[Any], odfv_request_fields: dict[str, set[str]], table: str,
                     columns: list[str]) -> set[str]:
    """The views (and on-demand views) whose declared features read any of `columns` of the raw
    `table`: through an aggregation's column or filter, a derived expression, or the event
    time that every window of that table is cut by; on-demand views through a request field of
    the same name (the request carries the transaction's own values)."""
    readers: set[str] = set()
    for spec in specs:
        sources = {src.name: src for src in spec.sources if src.table == table}
        if not sources:
            continue
        if any(src.timestamp in columns for src in sources.values()):
            readers.add(spec.name)
        for agg in spec.aggregations:
            if agg.source in sources and any(agg.column == c or _reads(agg.where, c) for c in columns):
                readers.add(spec.name)
        if any(_reads(f.expression, c) for f in spec.features for c in columns):
            readers.add(spec.name)
    if table == "transactions":
        readers.update(name for name, fields in odfv_request_fields.items() if fields & set(columns))
    return readers


def unseen_drift_notes(settings: Settings, store: FeatureStore, drift: list[ServiceDrift]) -> list[str]:
    """For drift the data generator recorded as injected (`<raw>/injected_drift.json`): each kind
    whose raw columns no checked feature reads, said plainly instead of passing as "no drift"."""
    import json

    from feastkit.store import applied_specs

    manifest = Path(settings.raw_dir) / "injected_drift.json"
    if not manifest.is_file() or not drift:
        return []
    injected = json.loads(manifest.read_text())
    specs = applied_specs(store)  # what was applied is what the checked services read
    odfvs = {v.name: {f.name for source in v.source_request_sources.values() for f in source.schema}
             for v in store.list_on_demand_feature_views()}
    checked = {ref.split(":", 1)[0] for d in drift for ref in d.refs.values()}
    notes = []
    for kind, shifts in injected.get("shifts", {}).items():
        readers = set().union(*(features_reading(specs, odfvs, table, cols) for table, cols in shifts.items()))
        if not readers & checked:
            where = ", ".join(f"{table}.{c}" for table, cols in shifts.items() for c in cols)
            notes.append(f"drift '{kind}' was injected in [{injected['start'][:10]}, {injected['end'][:10]}) "
                         f"but changes only {where}, which no feature of the checked services reads: "
                         "nothing here can flag it (declare a feature over it to monitor it)")
    return notes


def default_windows(end: datetime, current_days: int, reference_days: int) -> tuple[Window, Window]:
    """Current = the last `current_days` before `end`; reference = the `reference_days` before that."""
    if current_days <= 0 or reference_days <= 0:
        raise FeastkitError("window lengths must be positive", "pass e.g. --current-days 7 --reference-days 28")
    cut = end - timedelta(days=current_days)
    return Window(cut - timedelta(days=reference_days), cut), Window(cut, end)


# The run -----------------------------------------------------------------------------------------


def run_monitoring(settings: Settings, *, end: datetime | None = None, current_days: int = 7,
                   reference_days: int = 28, feature_service: str | None = None,
                   sample_entities: int = 200, checks: tuple[str, ...] = CHECKS,
                   thresholds: DriftThresholds | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                   as_of: datetime | None = None, seed: int = 0,
                   store: FeatureStore | None = None) -> MonitoringOutcome:
    """Drift, freshness and skew for one feature service (default: every service the registry
    names a label recipe for, as `feastkit train` does).

    `end` closes the current window (default: the end of the data). Freshness is judged at
    `as_of`, default `end` when given, else now. Reports go under settings.reports_dir.
    """
    from feastkit.clean import data_range
    from feastkit.recipes import trainable_services
    from feastkit.store import open_store, require_applied
    from monitoring.check_metrics import write_monitoring_metrics
    from monitoring.report import write_reports

    unknown = sorted(set(checks) - set(CHECKS))
    if unknown or not checks:
        raise FeastkitError(f"unknown check(s) {unknown or '(none)'}", f"choose from {list(CHECKS)}")
    store = store or open_store(settings)
    require_applied(store)
    services = [feature_service] if feature_service else trainable_services(store)
    if not services:  # nothing to check must not pass as "nothing found"
        raise FeastkitError("no feature service in the registry names a label recipe, so there is nothing "
                            "to monitor", "pass --service, or tag a service with model=fraud|churn in "
                            "feature_repo/ and run `feastkit apply`")
    thresholds = thresholds or DriftThresholds()
    started = datetime.now(UTC)

    drift: list[ServiceDrift] = []
    if "drift" in checks:
        data_end = require_aware(end, "time") if end is not None else data_range(settings.clean_dir)[1]
        reference, current = default_windows(data_end, current_days, reference_days)
        drift = [drift_between(store, settings, s, reference, current, thresholds, max_rows, seed)
                 for s in services]
    freshness: list[ViewFreshness] = []
    if "freshness" in checks:
        moment = (require_aware(as_of, "time") if as_of is not None
                  else require_aware(end, "time") if end is not None else started)
        freshness = check_freshness(store, moment)
        if not freshness:
            raise FeastkitError("the registry has no online feature view, so freshness has nothing to check",
                                "declare a view with online=True in feature_repo/ and run `feastkit apply`")
    skew: dict[str, list[FeatureSkew]] = {}
    if "skew" in checks:
        skew = {s: check_skew(store, s, settings.clean_dir, None, sample_entities, seed) for s in services}

    drifted = [ref for d in drift for ref in d.drifted]
    stale = [f.view for f in freshness if f.stale]
    skewed = sorted({f.feature for results in skew.values() for f in results if f.mismatches})
    outcome = MonitoringOutcome(drifted, stale, skewed, Path(), Path(), drift, freshness, skew,
                                notes=unseen_drift_notes(settings, store, drift))
    outcome.report_json, outcome.report_html, outcome.report = write_reports(
        settings.reports_dir, outcome, thresholds=thresholds, generated_at=started,
        checks=list(checks))
    write_monitoring_metrics(settings, outcome)
    return outcome
