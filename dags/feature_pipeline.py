"""Hourly feature pipeline: validate raw events, compute the feature tables for the run's interval.

Each run owns exactly [data_interval_start, data_interval_end) (CronDataIntervalTimetable: a plain
cron string gives no data interval in Airflow 3) and, when done, updates the feature-tables Asset
with the interval and the rows per view in the event's extra; the `materialize` DAG is scheduled
on it. Which views exist comes from the registry: the DAG names none.
Catchup is off by default (FEASTKIT_DAG_CATCHUP): replay missed hours with `airflow backfill create`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, CronDataIntervalTimetable, dag, get_current_context, task

from feastkit.jobs import FEATURES_ASSET_NAME, FEATURES_ASSET_URI, default_args, start_date
from feastkit.settings import Settings

SETTINGS = Settings()
FEATURES = Asset(name=FEATURES_ASSET_NAME, uri=FEATURES_ASSET_URI, group="feastkit_features")


@dag(
    dag_id="feature_pipeline",
    schedule=CronDataIntervalTimetable(SETTINGS.schedule_feature_pipeline, timezone="UTC"),
    start_date=start_date(SETTINGS),
    catchup=SETTINGS.dag_catchup,
    max_active_runs=1,  # runs rewrite the clean tables and day files: one at a time, in order
    default_args=default_args(retries=2),
    dagrun_timeout=timedelta(hours=2),
    tags=["feastkit", "features"],
    doc_md=__doc__,
)
def feature_pipeline() -> None:
    @task(execution_timeout=timedelta(minutes=30))
    def validate(data_interval_end=None) -> dict[str, Any]:
        """Raw tables -> clean + quarantine (with reasons), as of the interval's end; counts reconcile."""
        from feastkit.jobs import fail_fast, job_settings, run_validation

        with fail_fast():
            return run_validation(job_settings(), data_interval_end)

    @task(execution_timeout=timedelta(minutes=45), outlets=[FEATURES])
    def compute_features(validation: dict[str, Any], data_interval_start=None,
                         data_interval_end=None) -> dict[str, Any]:
        """Feature rows for exactly [data_interval_start, data_interval_end)."""
        from feastkit.jobs import fail_fast, job_settings, run_compute

        with fail_fast():
            report = run_compute(job_settings(), data_interval_start, data_interval_end)
        get_current_context()["outlet_events"][FEATURES].extra = {
            "start": report["start"], "end": report["end"],
            "rows": {view: int(n) for view, n in report["rows"].items()}}
        return {**report, "validation": validation}

    compute_features(validate())


feature_pipeline()
