"""Materialize feature intervals into the online store, triggered by the feature_pipeline Asset.

A run loads every interval the feature tables hold and this online store has not loaded yet (the
interval ledger kept beside the feature tables), whichever asset events triggered it: Airflow
hands a run only the events up to its asset queue entry, so an interval whose event arrived while
a run was active is loaded by the next run, never left for the next feature run. A manual run
without conf does the same; a run whose conf has `start`/`end` replays exactly that interval.
Explicit, chunked intervals, never `materialize-incremental` (Feast #2905, #4222; chunking bounds
memory, #6307). Replaying an older interval never overwrites a newer online value. Catchup does
not apply (asset-scheduled).
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
        "start": Param(None, type=["null", "string"], description="Replay: interval start (ISO, UTC); empty loads what is pending"),
        "end": Param(None, type=["null", "string"], description="Interval end, exclusive (ISO, UTC)"),
    },
    tags=["feastkit", "online-store"],
    doc_md=__doc__,
)
def materialize() -> None:
    @task(execution_timeout=timedelta(minutes=5))
    def intervals(params=None) -> list[list[str]]:
        """The interval the conf asks to replay; none (load what is pending) for asset and manual runs."""
        from feastkit.jobs import fail_fast, intervals_from_asset_events, log, requested_interval

        with fail_fast():
            events = get_current_context().get("triggering_asset_events") or {}
            extras = [dict(e.extra or {}) for asset in events for e in events[asset]]
            announced = intervals_from_asset_events(extras)
            log.info("triggered by %d asset event(s) announcing %s", len(extras),
                     [f"[{a.isoformat()}, {b.isoformat()})" for a, b in announced])
            chosen = requested_interval(params)
        return [] if chosen is None else [[chosen[0].isoformat(), chosen[1].isoformat()]]

    @task(execution_timeout=timedelta(hours=4))
    def load(chosen: list[list[str]]) -> dict[str, Any]:
        """Materialize the pending intervals (or the replayed one), chunk by chunk."""
        from feastkit.jobs import fail_fast, job_settings, run_materialize

        with fail_fast():
            replay = [(a, b) for a, b in chosen] or None
            return run_materialize(job_settings(), replay).as_dict()

    load(intervals())


materialize()
