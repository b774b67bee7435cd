"""Weekly retraining: rebuild every model bundle, promote each only if it is not worse.

The rule (FEASTKIT_PROMOTE_METRIC, default pr_auc, and FEASTKIT_PROMOTE_TOLERANCE, default 0)
compares the new bundle with the serving one; the replaced bundle stays for `rollback`.
Catchup is off by default: only the latest week matters for a model.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, dag, task

from feastkit.jobs import default_args, start_date
from feastkit.settings import Settings

SETTINGS = Settings()


@dag(
    dag_id="train",
    schedule=CronDataIntervalTimetable(SETTINGS.schedule_train, timezone="UTC"),
    start_date=start_date(SETTINGS),
    catchup=False,
    max_active_runs=1,  # promotions must not interleave
    default_args=default_args(retries=1),
    dagrun_timeout=timedelta(hours=6),
    tags=["feastkit", "models"],
    doc_md=__doc__,
)
def train() -> None:
    @task(execution_timeout=timedelta(hours=4))
    def train_and_promote() -> list[dict[str, Any]]:
        """Train each feature service's model; promote it if not worse than the serving bundle."""
        from feastkit.jobs import fail_fast, job_settings, run_training

        with fail_fast():
            return run_training(job_settings())

    train_and_promote()


train()
