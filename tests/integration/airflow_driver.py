"""Run DAGs of dags/ with Airflow's dag.test() in one process and print their outcome as JSON.

Usage: python -m tests.integration.airflow_driver '[{"dag_id": ..., "logical_date": ..., "conf": ...}]'
AIRFLOW_HOME (with a migrated metadata DB), AIRFLOW__CORE__DAGS_FOLDER and FEASTKIT_* come from
the environment. The last stdout line is `RESULT <json>`: per run, the run state, task states,
task return values and seconds taken; plus every asset event recorded, with its extra.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any


def main(plan: list[dict[str, Any]]) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag()
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    runs: list[dict[str, Any]] = []
    for step in plan:
        dag = bag.get_dag(step["dag_id"])
        if step.get("from_assets_of_previous_run"):
            # what the scheduler would hand an asset-triggered run: the interval in the events' extra
            step = {**step, "conf": interval_from_assets(runs[-1]["run_id"])}
        logical = datetime.fromisoformat(step["logical_date"]) if step.get("logical_date") else None
        t0 = time.monotonic()
        kwargs: dict[str, Any] = {"run_conf": step.get("conf")}
        if logical is not None:
            kwargs["logical_date"] = logical
        dr = dag.test(**kwargs)
        seconds = time.monotonic() - t0
        with create_session() as session:
            tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances(session=session)}
            values = {x.task_id: x.value for x in session.query(XComModel).filter(
                XComModel.dag_id == dr.dag_id, XComModel.run_id == dr.run_id,
                XComModel.key == "return_value")}
        runs.append({"dag_id": dr.dag_id, "run_id": dr.run_id, "state": str(dr.state), "tasks": tis,
                     "returns": values, "seconds": round(seconds, 1),
                     "interval": [str(dr.data_interval_start), str(dr.data_interval_end)]})
    with create_session() as session:
        events = [{"asset": name, "extra": extra, "source_run_id": run_id}
                  for name, extra, run_id in session.query(AssetModel.name, AssetEvent.extra,
                                                           AssetEvent.source_run_id)
                  .join(AssetEvent, AssetEvent.asset_id == AssetModel.id).order_by(AssetEvent.id)]
    return {"runs": runs, "asset_events": events}


def interval_from_assets(run_id: str) -> dict[str, str]:
    """The one interval announced by the asset events a run emitted."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        extras = [e.extra for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == run_id)]
    intervals = {(e["start"], e["end"]) for e in extras}
    if len(intervals) != 1:
        raise SystemExit(f"run {run_id} announced {len(intervals)} intervals: {intervals}")
    (start, end), = intervals
    return {"start": start, "end": end}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1])), default=str))
