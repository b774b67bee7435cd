"""Replay check: the logged predictions' features rebuilt offline at their request times, compared with what was served.

For the predictions logged in [start, end) (`feastkit.prediction_log`), every feature of the
service is rebuilt with Feast's historical retrieval (`build_training_set`: one row per logged
row, the recipe's as-of rule, on-demand views from the logged request fields) and compared
with the value served. Per feature: mismatch rate, values that differ (with relative errors),
served-missing-but-offline-present and the reverse, and examples naming the request. What
training would have seen is what the model was served, or the check says where it was not.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
from feast import FeatureStore

from feastkit import prediction_log as fmt
from feastkit.errors import FeastkitError
from feastkit.prediction_log import NothingLogged
from feastkit.recipes import AS_OF_OFFSET, recipe_of
from feastkit.services import build_training_set, describe_service
from feastkit.settings import Settings
from feastkit.times import utc
from monitoring.check_metrics import write_replay_metrics
from monitoring.skew import ABS_TOLERANCE, FeatureSkew, same_value

MAX_EXAMPLES = 5


@dataclass
class FeatureReplay(FeatureSkew):
    """One feature of the service (`feature`: view:feature): served vs rebuilt offline over the
    logged rows (`compared`); `mismatches` are rows that disagree in value or presence."""

    both_present: int = 0              # rows with a value on both sides
    value_mismatches: int = 0          # both present, different values
    missing_online_present_offline: int = 0
    present_online_missing_offline: int = 0
    max_relative_error: float | None = None   # over the rows where both sides have a number
    mean_relative_error: float | None = None


@dataclass
class ServiceReplay:
    service: str
    start: datetime
    end: datetime
    rows: int
    max_mismatch_rate: float
    features: list[FeatureReplay]
    model_versions: list[str]

    @property
    def failing(self) -> list[FeatureReplay]:
        return [f for f in self.features if f.mismatch_rate > self.max_mismatch_rate]

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "rows": self.rows, "model_versions": self.model_versions,
                "max_mismatch_rate": self.max_mismatch_rate, "failing": [f.feature for f in self.failing],
                "features": [f.to_dict() for f in self.features]}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _plain(value: Any) -> Any:
    if _missing(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _relative_error(served: Any, offline: Any) -> float | None:
    try:
        a, b = float(served), float(offline)
    except (TypeError, ValueError):
        return None
    return abs(a - b) / max(abs(b), ABS_TOLERANCE)


def read_log(log_dir: Path, service: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The logged rows of `service` with request times in [start, end)."""
    table = fmt.read_log_table(log_dir, service, start, end)
    if table is None:
        raise NothingLogged(f"no prediction log for {service} in [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC "
                            f"under {fmt.service_log_dir(log_dir, service)}",
                            "serve predictions with FEASTKIT_PREDICTION_LOG on, or pick the hours the log covers")
    frame = table.to_pandas()
    times = pd.to_datetime(frame[fmt.REQUEST_TIME], utc=True)
    return frame[(times >= pd.Timestamp(start)) & (times < pd.Timestamp(end))].reset_index(drop=True)


def compare_feature(ref: str, served: pd.Series, offline: pd.Series, log: pd.DataFrame) -> FeatureReplay:
    result = FeatureReplay(feature=ref, compared=len(served), mismatches=0)
    errors: list[float] = []
    for i, (a, b) in enumerate(zip(served.tolist(), offline.tolist(), strict=True)):
        a_missing, b_missing = _missing(a), _missing(b)
        if a_missing and b_missing:
            continue
        kind = None
        if a_missing:
            result.missing_online_present_offline += 1
            kind = "missing online, present offline"
        elif b_missing:
            result.present_online_missing_offline += 1
            kind = "present online, missing offline"
        else:
            result.both_present += 1
            error = _relative_error(a, b)
            if error is not None:
                errors.append(error)
            if not same_value(a, b):
                result.value_mismatches += 1
                kind = "values differ"
        if kind is None:
            continue
        result.mismatches += 1
        if len(result.examples) < MAX_EXAMPLES:
            result.examples.append({
                "request_id": log[fmt.REQUEST_ID].iat[i], "row": int(log[fmt.ROW].iat[i]),
                "request_time": pd.Timestamp(log[fmt.REQUEST_TIME].iat[i]).isoformat(),
                "served": _plain(a), "offline": _plain(b), "kind": kind})
    if errors:
        result.max_relative_error = max(errors)
        result.mean_relative_error = sum(errors) / len(errors)
    return result


def replay_service(store: FeatureStore, log_dir: Path, service: str, start: datetime, end: datetime,
                   max_mismatch_rate: float = 0.0) -> ServiceReplay:
    """Rebuild the logged rows of [start, end) offline and compare them feature by feature."""
    start, end = utc(start), utc(end)
    log = read_log(log_dir, service, start, end)
    if log.empty:
        raise NothingLogged(f"the prediction log of {service} has no row with a request time in "
                            f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC",
                            "pick the hours the log covers (its file names start with the hour)")
    spec = describe_service(store, service)
    absent = [c for c in [*spec.join_keys, *spec.request_fields] if c not in log.columns]
    if absent:
        raise FeastkitError(f"the prediction log of {service} lacks column(s) {absent} the service now reads",
                            "replay an interval logged since the service last changed")
    offset = AS_OF_OFFSET if recipe_of(store, service) == "fraud" else pd.Timedelta(0)
    entities = log[[*spec.join_keys, *spec.request_fields]].copy()
    entities["event_timestamp"] = pd.to_datetime(log[fmt.REQUEST_TIME], utc=True) - offset
    offline = build_training_set(store, service, entities)
    features = []
    for column, name in fmt.feature_columns(store, service):
        ref = column.replace("__", ":", 1)
        if column not in log.columns:  # a feature added to the service after these rows were logged
            continue
        features.append(compare_feature(ref, log[column], offline[name], log))
    return ServiceReplay(service, start, end, len(log), max_mismatch_rate, features,
                         sorted(set(log[fmt.MODEL_VERSION].astype(str))))


@dataclass
class ReplayOutcome:
    results: list[ServiceReplay]
    report_json: Path
    report_html: Path

    @property
    def failing(self) -> dict[str, list[str]]:
        return {r.service: [f.feature for f in r.failing] for r in self.results if r.failing}


def logged_hours(log_dir: Path) -> tuple[datetime, datetime] | None:
    """[first, last + 1h) over the hours of every service's log files (None: no log)."""
    hours = [h for folder in (log_dir.iterdir() if log_dir.is_dir() else []) if folder.is_dir()
             for h in map(fmt.hour_of, folder.glob("*.parquet")) if h is not None]
    return (min(hours), max(hours) + timedelta(hours=1)) if hours else None


def replay_check(settings: Settings, start: datetime | None, end: datetime | None, service: str | None = None,
                 max_mismatch_rate: float | None = None, store: FeatureStore | None = None) -> ReplayOutcome:
    """Replay every service with logged predictions in [start, end) (or one), write the reports.
    A missing start or end is the first or last logged hour."""
    from feastkit.store import open_store, require_applied

    rate = settings.replay_max_mismatch_rate if max_mismatch_rate is None else max_mismatch_rate
    if not 0.0 <= rate <= 1.0:
        raise FeastkitError(f"the mismatch rate {rate} is not a rate", "pass a value in [0, 1]")
    store = store or open_store(settings)
    require_applied(store)
    known = {s.name for s in store.list_feature_services()}
    if service is not None and service not in known:
        raise FeastkitError(f"unknown feature service '{service}'", f"use one of {sorted(known)}")
    log_dir = Path(settings.prediction_log_dir)
    if start is None or end is None:
        span = logged_hours(log_dir)
        if span is None:
            raise NothingLogged(f"no prediction log under {log_dir}",
                                "serve predictions first (the log is on by default)")
        start, end = start or span[0], end or span[1]
    start, end = utc(start), utc(end)
    if end <= start:
        raise FeastkitError(f"the interval [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC is empty",
                            "pass an --end after --start")
    services = [service] if service else sorted(
        p.name for p in (log_dir.iterdir() if log_dir.is_dir() else [])
        if p.name in known and fmt.log_files(log_dir, p.name, start, end))
    if not services:
        raise NothingLogged(f"no prediction log under {log_dir} for [{start:%Y-%m-%d %H:%M}, "
                            f"{end:%Y-%m-%d %H:%M}) UTC",
                            "serve predictions first (the log is on by default) or pick the hours it covers")
    results = [replay_service(store, log_dir, name, start, end, rate) for name in services]
    json_path, html_path = write_replay_reports(Path(settings.reports_dir), results)
    write_replay_metrics(settings, results)
    return ReplayOutcome(results, json_path, html_path)


def write_replay_reports(reports_dir: Path, results: list[ServiceReplay], generated_at: datetime | None = None
                         ) -> tuple[Path, Path]:
    """`replay-<stamp>.json` and `.html` in `reports_dir`; their paths."""
    generated_at = generated_at or datetime.now(UTC)
    stamp = f"{generated_at:%Y%m%dT%H%M%S%fZ}"
    reports_dir.mkdir(parents=True, exist_ok=True)
    document = {"generated_at": generated_at.isoformat(), "services": [r.to_dict() for r in results]}
    json_path, html_path = reports_dir / f"replay-{stamp}.json", reports_dir / f"replay-{stamp}.html"
    json_path.write_text(json.dumps(document, indent=2, default=str))
    html_path.write_text(render_html(document))
    return json_path, html_path


def _rate(value: float) -> str:
    return f"{value:.2%}"


def _error(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def render_html(document: dict[str, Any]) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>feastkit replay check</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             ".bad{background:#fdd}</style>",
             f"<h1>Replay check</h1><p>generated {escape(document['generated_at'])}: served features vs "
             "the same features rebuilt offline at each logged request time.</p>"]
    for service in document["services"]:
        failing = set(service["failing"])
        parts.append(f"<h2>{escape(service['service'])}</h2><p>{service['rows']:,} logged prediction(s) in "
                     f"[{escape(service['start'])}, {escape(service['end'])}), model version(s) "
                     f"{escape(', '.join(service['model_versions']))}; allowed mismatch rate "
                     f"{_rate(service['max_mismatch_rate'])}; {len(failing)} feature(s) above it.</p>")
        parts.append("<table><tr><th>feature</th><th>mismatch rate</th><th>both present</th><th>values differ</th>"
                     "<th>missing online, present offline</th><th>present online, missing offline</th>"
                     "<th>max rel. error</th><th>mean rel. error</th></tr>")
        for f in service["features"]:
            cls = " class='bad'" if f["feature"] in failing else ""
            parts.append(
                f"<tr{cls}><td>{escape(f['feature'])}</td><td>{_rate(f['mismatch_rate'])}</td><td>{f['both_present']}</td>"
                f"<td>{f['value_mismatches']}</td><td>{f['missing_online_present_offline']}</td>"
                f"<td>{f['present_online_missing_offline']}</td>"
                f"<td>{_error(f['max_relative_error'])}</td><td>{_error(f['mean_relative_error'])}</td></tr>")
        parts.append("</table>")
        for f in service["features"]:
            if f["examples"]:
                parts.append(f"<h3>{escape(f['feature'])}</h3><ul>" + "".join(
                    f"<li>{escape(e['kind'])}: served {escape(str(e['served']))}, offline "
                    f"{escape(str(e['offline']))} (request {escape(str(e['request_id']))} row {e['row']}, "
                    f"{escape(e['request_time'])})</li>" for e in f["examples"]) + "</ul>")
    return "\n".join(parts)
