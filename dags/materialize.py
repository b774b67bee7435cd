"""Materialize feature intervals into the online store, triggered by the feature_pipeline Asset.

A run loads exactly the intervals announced by the triggering asset events (or, for a manual
run or backfill, the `start`/`end` in its conf) as explicit, chunked intervals, never
`materialize-incremental` (Feast #2905, #4222; chunking bounds memory, #6307). Replaying an
older interval never overwrites a newer online value. Catchup does not apply (asset-scheduled).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task

from feastkit.jobs import FEATURES_ASSET_NAME, FEATURES_ASSET_URI, default_args

FEATURES = Asset(name=FEATURES_ASSET_NAME, uri=FEATURES_ASSET_URI, group="feastkit_features")


@dag(
    dag_id="materialize",
    schedule=[FEATURES],  # the feature tables updated for an interval
    max_active_runs=1,  # one writer at a time; order does not matter for correctness
    default_args=default_args(retries=3),
    dagrun_timeout=timedelta(hours=6),
    params={
        "start": Param(None, type=["null", "string"], description="Interval start (ISO, UTC) for a manual run"),
        "end": Param(None, type=["null", "string"], description="Interval end, exclusive (ISO, UTC)"),
    },
    tags=["feastkit", "online-store"],
    doc_md=__doc__,
)
def materialize() -> None:
    @task(execution_timeout=timedelta(minutes=5))
    def intervals(params=None, data_interval_start=None, data_interval_end=None) -> list[list[str]]:
        """The intervals to load: from the triggering asset events, else the conf, else the run."""
        from feastkit.jobs import check_interval, fail_fast, intervals_from_asset_events

        with fail_fast():
            events = get_current_context().get("triggering_asset_events") or {}
            extras = [dict(e.extra or {}) for asset in events for e in events[asset]]
            found = intervals_from_asset_events(extras)
            if not found and params and params.get("start") and params.get("end"):
                found = [check_interval(params["start"], params["end"])]
            if not found:
                found = [check_interval(data_interval_start, data_interval_end)]
        return [[a.isoformat(), b.isoformat()] for a, b in found]

    @task(execution_timeout=timedelta(hours=4))
    def load(chosen: list[list[str]]) -> dict[str, Any]:
        """Materialize each interval, chunk by chunk, into the configured online store."""
        from feastkit.jobs import fail_fast, job_settings, run_materialize

        with fail_fast():
            return run_materialize(job_settings(), [(a, b) for a, b in chosen]).as_dict()

    load(intervals())


materialize()
