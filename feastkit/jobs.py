"""Scheduled jobs behind the Airflow DAGs: one function per task, each bound to an explicit interval.

This module is imported by the DAG files at parse time, so it imports nothing heavy at module
level (no Feast, pandas, DuckDB or scikit-learn): every job imports what it needs when it runs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from feastkit import times
from feastkit.errors import FeastkitError
from feastkit.settings import Settings
from feastkit.times import utc

log = logging.getLogger(__name__)

RAW_TABLES: tuple[str, ...] = ("transactions", "activity", "fraud_labels", "users", "merchants")
# One Asset for the feature tables: which views exist is the registry's business (declared in
# feature_repo/), so the DAG files name no view. Each event's extra carries the interval and the
# rows written per view.
FEATURES_ASSET_NAME = "feastkit_features"
FEATURES_ASSET_URI = "x-feastkit://features"
SETTINGS_VARIABLE = "feastkit_settings"


# What every DAG shares ---------------------------------------------------------------------------

OWNER = "feastkit"


def default_args(retries: int = 2) -> dict[str, Any]:
    """Task defaults: an owner, retries with exponential backoff (1, 2, 4 ... min, at most 30)."""
    from datetime import timedelta

    return {"owner": OWNER, "retries": retries, "retry_delay": timedelta(minutes=1),
            "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=30)}


def start_date(settings: Settings) -> datetime:
    """The first data interval's start (FEASTKIT_DAG_START_DATE, UTC)."""
    return utc(settings.dag_start_date)


class fail_fast:  # noqa: N801  (used as a context manager: `with fail_fast():`)
    """Turn a FeastkitError (bad data or configuration) into a failed task without retries.

    Retrying cannot fix a corrupt file or a wrong setting, so the task fails at once and its log
    ends with the problem and the fix. Any other exception is left to Airflow's retries.
    """

    def __enter__(self) -> fail_fast:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, FeastkitError):
            from airflow.sdk.exceptions import AirflowFailException

            log.error("feastkit: error: %s", exc.message)
            raise AirflowFailException(exc.message) from None
        return False


# Settings for a task -----------------------------------------------------------------------------


def job_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from FEASTKIT_* env vars, overridden by the Airflow Variable `feastkit_settings`.

    The Variable holds a JSON object of Settings fields, e.g. {"profile": "redis"}; it is read only
    inside a running task (never at parse time) and is optional.
    """
    values: dict[str, Any] = {**_variable_overrides(), **(overrides or {})}
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise FeastkitError(f"Airflow Variable '{SETTINGS_VARIABLE}' names unknown setting(s) {unknown}",
                            f"use fields of feastkit.settings.Settings, e.g. {sorted(Settings.model_fields)[:4]}")
    return Settings(**values)


def _variable_overrides() -> dict[str, Any]:
    raw = os.environ.get(f"AIRFLOW_VAR_{SETTINGS_VARIABLE.upper()}")
    if raw is None:
        try:
            from airflow.sdk import Variable

            raw = Variable.get(SETTINGS_VARIABLE, default=None)
        except Exception as exc:  # no Airflow, or no task context: env vars only
            log.debug("no Airflow Variable %s: %s", SETTINGS_VARIABLE, exc)
            raw = None
    if not raw:
        return {}
    try:
        values = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError):
        raise FeastkitError(f"Airflow Variable '{SETTINGS_VARIABLE}' is not a JSON object",
                            'set it to JSON such as {"profile": "redis"}') from None
    if not isinstance(values, dict):
        raise FeastkitError(f"Airflow Variable '{SETTINGS_VARIABLE}' is not a JSON object",
                            'set it to JSON such as {"profile": "redis"}')
    return values


# Intervals ---------------------------------------------------------------------------------------


DAG_INTERVAL_FIX = ("schedule the DAG with an interval timetable (CronDataIntervalTimetable), or pass "
                    "start < end in the run's conf")


CONF_EXAMPLE = ('airflow dags trigger materialize --conf '
                '\'{"start": "2026-04-30T05:00:00+00:00", "end": "2026-04-30T06:00:00+00:00"}\'')
CONF_FIX = f"pass both in the run's conf, e.g. {CONF_EXAMPLE}, or no conf to load every computed interval not yet loaded"


def check_interval(start: datetime | str | None, end: datetime | str | None) -> tuple[datetime, datetime]:
    """Validated UTC [start, end); a run without a data interval is refused with the fix."""
    if start is None or end is None:
        # manual and asset-triggered runs have no data interval in Airflow 3
        raise FeastkitError("the run has no data interval (start and end are not both set)", DAG_INTERVAL_FIX)
    return times.check_interval(start, end, fix=DAG_INTERVAL_FIX)


def requested_interval(conf: dict[str, Any] | None) -> tuple[datetime, datetime] | None:
    """The interval a run's conf asks to replay, or None when it names none (load what is pending)."""
    conf = conf or {}
    start, end = conf.get("start"), conf.get("end")
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise FeastkitError(f"the run's conf sets {'start' if end is None else 'end'} only", CONF_FIX)
    return times.check_interval(start, end, fix=CONF_FIX)


def intervals_from_asset_events(extras: list[dict[str, Any]]) -> list[tuple[datetime, datetime]]:
    """The distinct [start, end) intervals announced by feature_pipeline asset events, in time order.

    A `materialize` run reports them, but loads what the interval ledger says is pending: Airflow
    hands a run only the events up to its asset queue entry, so an event that found the queue
    entry taken would otherwise be left unloaded until the next feature run.
    """
    found = set()
    for extra in extras:
        if extra and extra.get("start") and extra.get("end"):
            try:
                found.add(times.check_interval(extra["start"], extra["end"]))
            except FeastkitError:
                log.warning("asset event with an unreadable interval: %s", extra)
    return sorted(found)


# File checks: fail before writing anything --------------------------------------------------------


def check_parquet_files(paths: list[Path], what: str, fix: str) -> None:
    """Raise a FeastkitError naming the first missing or unreadable parquet file."""
    import pyarrow.parquet as pq

    for path in paths:
        if not path.is_file():
            raise FeastkitError(f"{what} {path} is missing", fix)
        try:
            pq.read_metadata(path)
        except Exception as exc:
            raise FeastkitError(f"{what} {path} is not a readable parquet file ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:160]})", fix) from None


def check_raw_tables(settings: Settings) -> None:
    """Every raw table the feature pipeline reads exists and is a readable parquet file."""
    check_parquet_files([settings.raw_dir / f"{t}.parquet" for t in RAW_TABLES], "raw table file",
                        "restore the file from its source (or rerun `feastkit generate`), then clear "
                        "the failed task to rerun the interval")


def check_feature_files(settings: Settings, views: list[str] | None = None) -> None:
    """Every file of the feature tables materialization reads is a readable parquet file."""
    from feastkit.store import applied_specs, open_store

    files: list[Path] = []
    for table in views or [s.name for s in applied_specs(open_store(settings))]:
        files += sorted((settings.features_dir / table).glob("*.parquet"))
    check_parquet_files(files, "feature file",
                        "rerun the feature_pipeline DAG for the intervals that wrote it (or "
                        "`feastkit compute --start ... --end ...`), then clear the failed task")


# Jobs --------------------------------------------------------------------------------------------


def run_validation(settings: Settings, as_of: datetime | str | None) -> dict[str, dict[str, int]]:
    """Validate the raw tables into clean + quarantine; per table rows_in = accepted + quarantined.

    Validation reads whole raw tables (the aggregates then read only the lookback an interval
    needs), so its counts reconcile per table exactly as `feastkit validate` reports them. Rows
    stamped after `as_of` (the run's interval end, never the wall clock) are quarantined as future.
    """
    from pipelines.validation import validate_all

    if as_of is None:
        raise FeastkitError("this validation run has no interval end to judge future rows by", DAG_INTERVAL_FIX)
    check_raw_tables(settings)
    reports = validate_all(settings.raw_dir, settings.clean_dir, settings.quarantine_dir, as_of=utc(as_of),
                           lock_timeout=settings.lock_timeout_seconds,
                           memory_limit=settings.validation_memory_limit)
    for r in reports:
        log.info("validation %s", r.line())
    return {r.table: {"rows_in": r.rows_in, "accepted": r.accepted, "quarantined": r.quarantined,
                      **{f"reason_{k}": v for k, v in r.reasons.items()}} for r in reports}


def run_compute(settings: Settings, start: datetime | str, end: datetime | str) -> dict[str, Any]:
    """Compute every feature table's rows for exactly [start, end) (rows start < T <= end).

    Reruns and backfills replace exactly the rows the interval owns, so they are idempotent.
    """
    from feastkit.store import applied_specs, open_store
    from pipelines.aggregates import compute_features, rows_engine

    a, b = check_interval(start, end)
    specs = applied_specs(open_store(settings))
    computed = compute_features(specs, settings.clean_dir, settings.features_dir, a, b,
                                lock_timeout=settings.lock_timeout_seconds, engine=rows_engine(settings))
    for line in computed.lines():
        log.info("features [%s, %s) %s", a.isoformat(), b.isoformat(), line)
    # compute_features entered each view's span in the interval ledger (feastkit.ledger)
    recorded = {name: [lo.isoformat(), hi.isoformat()] for name, (lo, hi) in computed.computed.items()}
    return {"start": a.isoformat(), "end": b.isoformat(), "rows": dict(computed.rows),
            "files": dict(computed.files), "recorded": recorded}


def data_end(settings: Settings, store: Any) -> datetime:
    """The end of the clean event data: nothing after it is loaded into the online store.

    Rows computed for an interval past the data (the wall-clock hour a freshly unpaused DAG runs)
    only extrapolate the last events; loading them would move each view's materialized watermark
    to a time no event has reached, and freshness and skew checks would compare against it.
    """
    from feastkit.declarations import specs_of
    from pipelines.aggregates import default_range

    return default_range(specs_of(store.list_feature_views()), settings.clean_dir)[1]


def pending_intervals(settings: Settings, store: Any, views: list[str] | None = None) -> dict[str, list]:
    """Per online view: the intervals computed and not yet loaded into this store, up to the data's end."""
    from feastkit.ledger import Ledger, clip
    from feastkit.store import online_store_key

    online = [fv.name for fv in store.list_feature_views() if fv.online and (not views or fv.name in views)]
    pending = Ledger(settings.features_dir).pending(online_store_key(store), online)
    end = data_end(settings, store)
    return {view: kept for view, items in pending.items() if (kept := clip(items, end))}


def run_feature_pipeline(settings: Settings, start: datetime | str, end: datetime | str) -> dict[str, Any]:
    """Validate the raw tables as of the interval's end, then compute the feature tables for [start, end)."""
    validation = run_validation(settings, check_interval(start, end)[1])
    return {**run_compute(settings, start, end), "validation": validation}


@dataclass
class MaterializeRunReport:
    """Which intervals one materialize run loaded into the online store (`pending`: chosen by the ledger)."""

    intervals: list[list[str]]
    views: list[str]
    chunks: int
    pending: bool = False
    lines: list[str] = field(default_factory=list)
    skipped: list[list[str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_materialize(settings: Settings, intervals: list[tuple[datetime | str, datetime | str]] | None = None,
                    views: list[str] | None = None) -> MaterializeRunReport:
    """Materialize explicit intervals, or (`intervals=None`) every computed interval not yet loaded.

    Without intervals, the interval ledger decides: per view, what the feature tables hold minus
    what this online store has loaded, whichever asset events triggered the run. Explicit
    intervals (a replay) are cut at the end of the data. Feature files are checked before anything
    is written, so a corrupt file fails the run with the online store untouched. Chunked, never
    `materialize-incremental`; replaying an older interval never regresses a newer online value.
    """
    from feastkit.ledger import Ledger, group_by_intervals
    from feastkit.store import materialize_interval, open_store, require_applied

    store = open_store(settings)
    require_applied(store)
    ledger = Ledger(settings.features_dir)
    online = sorted(fv.name for fv in store.list_feature_views() if fv.online)
    skipped: list[list[str]] = []
    if intervals is None:
        if not ledger.exists():
            raise FeastkitError(f"no computed interval is recorded ({ledger.path} does not exist)",
                                "run the feature_pipeline DAG (or `feastkit run-interval`) first, or replay "
                                f"an interval: {CONF_EXAMPLE}")
        work = group_by_intervals(pending_intervals(settings, store, views))
    else:
        checked = sorted({check_interval(a, b) for a, b in intervals})
        if not checked:
            raise FeastkitError("no interval to materialize", CONF_FIX)
        cap = data_end(settings, store)
        work = []
        for a, b in checked:
            if a >= cap:
                skipped.append([a.isoformat(), b.isoformat()])
                log.info("[%s, %s) is past the end of the data (%s): nothing to load", a.isoformat(),
                         b.isoformat(), cap.isoformat())
                continue
            work.append(((a, min(b, cap)), list(views) if views else None))
    if not work:
        log.info("materialize: nothing to load (every computed interval is loaded)")
        return MaterializeRunReport([], [], 0, intervals is None, ["nothing to load"], skipped)
    check_feature_files(settings, sorted({v for _, vs in work for v in (vs or online)}))
    lines, chunks, done, chosen = [], 0, [], set()
    for (a, b), names in work:
        report = materialize_interval(settings, a, b, views=names, store=store)
        log.info(report.line())
        lines.append(report.line())
        chunks += report.chunks
        chosen |= set(report.views)
        done.append([a.isoformat(), b.isoformat()])
    return MaterializeRunReport(done, sorted(chosen), chunks, intervals is None, lines, skipped)


def run_training(settings: Settings, promote_metric: str | None = None,
                 promote_tolerance: float | None = None,
                 services: list[str] | None = None) -> list[dict[str, Any]]:
    """Retrain every feature service's model and promote each new bundle only if it is not worse.

    A new bundle is promoted when its `promote_metric` is at least the serving bundle's minus
    `promote_tolerance` (defaults from settings); the replaced bundle stays as PREVIOUS for
    `rollback`. Returns one decision per service.
    """
    from feastkit.recipes import trainable_services
    from feastkit.store import open_store, require_applied
    from pipelines.training import train_and_promote_if_not_worse

    metric = promote_metric or settings.promote_metric
    tolerance = settings.promote_tolerance if promote_tolerance is None else promote_tolerance
    store = open_store(settings)
    require_applied(store)
    decisions = []
    for service in services or trainable_services(store):
        decision = train_and_promote_if_not_worse(store, service, settings.clean_dir, settings.models_dir,
                                                  metric=metric, tolerance=tolerance)
        log.info(decision.line())
        decisions.append(decision.as_dict())
    return decisions


def run_drift_check(settings: Settings, end: datetime | str) -> dict[str, Any]:
    """Run the monitoring checks as of `end`; raises when drift, staleness or skew is found."""
    try:
        from monitoring import run_monitoring
    except ImportError:
        raise FeastkitError("the monitoring checks (monitoring.run_monitoring) are not installed",
                            "install the monitoring module of feastkit, then clear the failed task") from None
    result = run_monitoring(settings, end=utc(end))
    summary = {"ok": bool(result.ok), "drifted": _names(result.drifted), "stale": _names(result.stale),
               "skewed": _names(result.skewed), "report_html": str(result.report_html)}
    log.info("monitoring as of %s: %s", utc(end).isoformat(), json.dumps(summary))
    if not result.ok:
        raise FeastkitError(
            f"monitoring found problems as of {utc(end):%Y-%m-%d %H:%M} UTC: drifted={summary['drifted']} "
            f"stale={summary['stale']} skewed={summary['skewed']}",
            f"read the report at {summary['report_html']}; retrain or fix the pipeline, then clear the task")
    return summary


def run_replay_check(settings: Settings, start: datetime | str, end: datetime | str) -> dict[str, Any]:
    """Replay the predictions logged in [start, end); raises when served and offline features disagree.
    Raises `monitoring.replay.NothingLogged` when nothing was logged (the DAG skips the task)."""
    from monitoring.replay import replay_check

    outcome = replay_check(settings, utc(start), utc(end))
    summary = {"services": {r.service: r.rows for r in outcome.results}, "failing": outcome.failing,
               "report_html": str(outcome.report_html)}
    log.info("replay check of [%s, %s): %s", utc(start).isoformat(), utc(end).isoformat(), json.dumps(summary))
    if outcome.failing:
        raise FeastkitError(
            f"served features disagree with the offline rebuild in [{utc(start):%Y-%m-%d %H:%M}, "
            f"{utc(end):%Y-%m-%d %H:%M}) UTC: {outcome.failing}",
            f"read the report at {summary['report_html']}: a stale materialization, an on-demand view "
            "changed without retraining or pushes missing offline are the usual causes; fix, then clear the task")
    return summary


def run_compact_log(settings: Settings, before: datetime | str | None = None,
                    service: str | None = None) -> dict[str, Any]:
    """Merge every hour of the prediction log that ends by `before` (default: the current hour's
    start) into one file per service and hour; what was merged, per service."""
    from feastkit import prediction_log as fmt

    log_dir = Path(settings.prediction_log_dir)
    logged = fmt.logged_services(log_dir)
    if service and service not in logged:
        raise FeastkitError(f"no prediction log for {service} under {log_dir}",
                            f"use one of {logged} or leave --service out")
    summary: dict[str, Any] = {"services": {}}
    for name in [service] if service else logged:
        merged = fmt.compact_log(log_dir, name, before, settings.lock_timeout_seconds)
        summary["services"][name] = {"hours": sum(1 for m in merged if m.files_in),
                                     "files_in": sum(m.files_in for m in merged),
                                     "rows": sum(m.rows for m in merged if m.files_in),
                                     "leftovers": sum(m.leftovers for m in merged)}
    log.info("prediction log compaction: %s", json.dumps(summary))
    return summary


def run_performance_check(settings: Settings, as_of: datetime | str) -> dict[str, Any]:
    """Weekly performance of the logged fraud predictions of the `performance_lookback_days` before
    `as_of`, with chargebacks known by then (realized once mature, estimated before); raises when a
    week dropped. Raises `NothingLogged` when nothing was logged (the DAG skips the task)."""
    from monitoring.performance import performance_check

    end = utc(as_of)
    start = end - timedelta(days=settings.performance_lookback_days)
    outcome = performance_check(settings, source="log", start=start, end=end, as_of=end)
    summary = {"services": {r.service: sum(p.rows for p in r.periods) for r in outcome.results},
               "degraded": outcome.degraded, "report_html": str(outcome.report_html)}
    log.info("performance as of %s: %s", end.isoformat(), json.dumps(summary))
    if outcome.degraded:
        raise FeastkitError(
            f"model performance dropped in the weeks before {end:%Y-%m-%d %H:%M} UTC: {outcome.degraded}",
            f"read the report at {summary['report_html']}: realized weeks are measured, later ones estimated "
            "from the scores (a drop there means the features moved to where the model does worse); retrain "
            "or investigate, then clear the task")
    return summary


def _names(items: Any) -> list[str]:
    if not items:
        return []
    if isinstance(items, dict):
        return sorted(str(k) for k in items)
    return [str(getattr(i, "name", i)) for i in items]
