"""Daily monitoring: feature drift, freshness and online/offline skew as of the run's interval end,
the replay check of the predictions served during the interval, and the weekly performance of the
logged fraud predictions (realized once chargebacks matured, estimated before). First, the
prediction log's hours that ended by the interval's end are merged into one file each (the server
writes one per flush), so the checks read a few files, not thousands.

A task fails (no retries: drift is a finding, not a glitch) when its checks are not ok; its log
names what drifted, what is stale or skewed, which served features disagree with the offline
rebuild, which weeks' performance dropped, and where the HTML report is. The replay and
performance tasks are skipped when nothing was served.
Catchup is off by default (FEASTKIT_DAG_CATCHUP): backfill to check past days.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, dag, task

from feastkit.jobs import default_args, start_date
from feastkit.settings import Settings

SETTINGS = Settings()


@dag(
    dag_id="drift_check",
    schedule=CronDataIntervalTimetable(SETTINGS.schedule_drift_check, timezone="UTC"),
    start_date=start_date(SETTINGS),
    catchup=SETTINGS.dag_catchup,
    max_active_runs=1,
    default_args=default_args(retries=2),
    dagrun_timeout=timedelta(hours=2),
    tags=["feastkit", "monitoring"],
    doc_md=__doc__,
)
def drift_check() -> None:
    @task(execution_timeout=timedelta(hours=1))
    def run_checks(data_interval_end=None) -> dict[str, Any]:
        """monitoring.run_monitoring(settings, end=data_interval_end); fails when not ok."""
        from feastkit.jobs import fail_fast, job_settings, run_drift_check

        with fail_fast():
            return run_drift_check(job_settings(), end=data_interval_end)

    @task(execution_timeout=timedelta(hours=1))
    def compact_prediction_log(data_interval_end=None) -> dict[str, Any]:
        """feastkit.prediction_log.compact_log for every service, hours ending by the interval's end."""
        from feastkit.jobs import fail_fast, job_settings, run_compact_log

        with fail_fast():
            return run_compact_log(job_settings(), data_interval_end)

    @task(execution_timeout=timedelta(hours=1))
    def replay_check(data_interval_start=None, data_interval_end=None) -> dict[str, Any]:
        """monitoring.replay over the interval's logged predictions; skipped when none were logged."""
        from airflow.sdk.exceptions import AirflowSkipException

        from feastkit.jobs import fail_fast, job_settings, run_replay_check
        from feastkit.prediction_log import NothingLogged

        with fail_fast():
            try:
                return run_replay_check(job_settings(), data_interval_start, data_interval_end)
            except NothingLogged as exc:
                raise AirflowSkipException(exc.message) from None

    @task(execution_timeout=timedelta(hours=1))
    def performance_check(data_interval_end=None) -> dict[str, Any]:
        """monitoring.performance over the logged fraud predictions; skipped when none were logged."""
        from airflow.sdk.exceptions import AirflowSkipException

        from feastkit.jobs import fail_fast, job_settings, run_performance_check
        from feastkit.prediction_log import NothingLogged

        with fail_fast():
            try:
                return run_performance_check(job_settings(), data_interval_end)
            except NothingLogged as exc:
                raise AirflowSkipException(exc.message) from None

    run_checks()
    compacted = compact_prediction_log()
    # the checks read the log whether or not the merge ran: a merge is never needed for correctness
    compacted >> [replay_check.override(trigger_rule="all_done")(), performance_check.override(trigger_rule="all_done")()]


drift_check()
