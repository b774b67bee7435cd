"""The Airflow DAGs, run by a real Airflow 3 (dag.test() on a temporary AIRFLOW_HOME with sqlite)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from feastkit.settings import Settings
from tests.conftest import (
    REPO_ROOT,
    Deployment,
    copy_repo_definitions,
    make_settings,
    redis_contents,
    redis_url,
    require_redis,
    settings_env,
    start_server,
    stop_server,
    validation_as_of,
)

pytestmark = pytest.mark.integration

AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))
SERVING_REDIS_DB = int(os.environ.get("FEASTKIT_TEST_AIRFLOW_REDIS_DB", "12"))  # this module's own (flushed)
PROFILE_REDIS_DBS = {"redis": 4, "spark": 5}  # this module's own too (flushed)
SERVING_PG_DB = os.environ.get("FEASTKIT_TEST_AIRFLOW_PG_DB", "feastkit_airflow_test")
HEAVY = ("feast", "pandas", "sklearn", "duckdb", "pyarrow", "numpy")


# Airflow on a temporary home ------------------------------------------------------------------


def airflow_env(home: Path) -> dict[str, str]:
    return {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh AIRFLOW_HOME with a migrated sqlite metadata DB."""
    home = tmp_path_factory.mktemp("airflow-home")
    proc = subprocess.run([AIRFLOW_BIN, "db", "migrate"], env={**os.environ, **airflow_env(home)},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home


def run_dags(home: Path, settings: Settings, plan: list[dict[str, Any]],
             extra_env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """Run a plan of DAG runs in one Airflow process; (result, full log)."""
    proc = start_dags(home, settings, plan, extra_env)
    out, _ = proc.communicate()
    return parse_result(proc, out)


def start_dags(home: Path, settings: Settings, plan: list[dict[str, Any]],
               extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**settings_env(settings), "FEASTKIT_REGISTRY_URL": settings.registry_url,
           **airflow_env(home), **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "tests.integration.airflow_driver", json.dumps(plan)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse_result(proc: subprocess.Popen, out: str) -> tuple[dict[str, Any], str]:
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"the Airflow driver failed ({proc.returncode}):\n{out[-5000:]}"
    return json.loads(lines[-1].removeprefix("RESULT ")), out


def feature_run(interval_end: datetime) -> dict[str, Any]:
    """feature_pipeline for the hour ending at `interval_end` (CronDataIntervalTimetable)."""
    return {"dag_id": "feature_pipeline", "logical_date": interval_end.isoformat()}


# DAG integrity --------------------------------------------------------------------------------

_INTEGRITY = r"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
t0 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
out = {"seconds": time.perf_counter() - t0, "errors": {k: str(v) for k, v in bag.import_errors.items()},
       "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules],
       "stats": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tags": sorted(dag.tags), "owner": dag.owner, "max_active_runs": dag.max_active_runs,
        "timetable": type(dag.timetable).__name__, "catchup": dag.catchup, "fileloc": dag.fileloc,
        "tasks": {t.task_id: {"retries": t.retries, "timeout": t.execution_timeout.total_seconds()
                              if t.execution_timeout else None, "owner": t.owner,
                              "upstream": sorted(t.upstream_task_ids)} for t in dag.tasks},
        "sorted": [t.task_id for t in dag.topological_sort()]}
print("RESULT " + json.dumps(out))
"""


def test_dags_import_cleanly_and_declare_their_contract(airflow_home: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _INTEGRITY, str(REPO_ROOT / "dags"), json.dumps(HEAVY)],
                          env={**os.environ, **airflow_env(airflow_home)}, capture_output=True, text=True,
                          check=False, cwd=REPO_ROOT)
    result = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
    assert result["errors"] == {}
    assert set(result["dags"]) == {"feature_pipeline", "materialize", "train", "drift_check"}
    # thin DAG files: parsing imports no data or ML library (parse time stays well under a second)
    assert result["heavy"] == []
    assert set(result["stats"]) == {f"{d}.py" for d in result["dags"]}
    for dag_id, dag in result["dags"].items():
        assert "feastkit" in dag["tags"] and len(dag["tags"]) >= 2, dag_id
        assert dag["owner"] == "feastkit", dag_id
        assert dag["max_active_runs"] == 1, dag_id
        assert len(dag["sorted"]) == len(dag["tasks"]), dag_id  # topological sort: no cycles
        for task_id, t in dag["tasks"].items():
            assert t["retries"] >= 1 and t["timeout"] and t["owner"] == "feastkit", (dag_id, task_id)
    # interval semantics: a cron string would give data_interval_start == data_interval_end
    for dag_id in ("feature_pipeline", "train", "drift_check"):
        assert result["dags"][dag_id]["timetable"] == "CronDataIntervalTimetable", dag_id
    assert result["dags"]["materialize"]["timetable"] == "AssetTriggeredTimetable"
    assert result["dags"]["feature_pipeline"]["tasks"]["compute_features"]["upstream"] == ["validate"]
    assert result["dags"]["materialize"]["tasks"]["load"]["upstream"] == ["intervals"]
    # the log is merged before the checks read it, and a failed merge does not stop them
    for check in ("replay_check", "performance_check"):
        assert result["dags"]["drift_check"]["tasks"][check]["upstream"] == ["compact_prediction_log"]


def test_dag_files_name_no_view() -> None:
    # which views exist is the registry's business: the DAG files must not keep a second list
    for path in (REPO_ROOT / "dags").glob("*.py"):
        text = path.read_text()
        for view in ("user_transaction_stats", "merchant_risk_stats", "customer_activity", "user_profile"):
            assert view not in text, (path.name, view)


# A small pipeline deployment: features computed up to T0, online store materialized up to T0 --------


class Pipeline:
    def __init__(self, settings: Settings, t0: datetime) -> None:
        self.settings = settings
        self.t0 = t0


def computed_until(deployment: Deployment, settings: Settings, before_end: timedelta) -> datetime:
    """The deployment's raw events validated into `settings`' data folder, the repo applied, and
    every view computed up to `before_end` before the data's end (by the local engine); that time."""
    from feastkit.clean import data_range
    from feastkit.store import applied_specs, apply_repo, open_store
    from pipelines.aggregates import compute_features
    from pipelines.validation import validate_all

    shutil.copytree(deployment.settings.raw_dir, settings.raw_dir)
    validate_all(settings.raw_dir, settings.clean_dir, settings.quarantine_dir, as_of=validation_as_of())
    start, end = data_range(settings.clean_dir)
    t0 = end - before_end
    apply_repo(settings)
    compute_features(applied_specs(open_store(settings)), settings.clean_dir, settings.features_dir, start, t0)
    return t0


@pytest.fixture(scope="module")
def pipeline(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    from feastkit.store import materialize_servable

    saved = {k: v for k, v in os.environ.items() if k.startswith("FEASTKIT_")}
    root = tmp_path_factory.mktemp("airflow-pipeline")
    copy_repo_definitions(root / "repo")
    settings = make_settings(root)
    t0 = computed_until(deployment, settings, timedelta(hours=6))
    materialize_servable(settings, t0)
    yield Pipeline(settings, t0)
    for key in [k for k in os.environ if k.startswith("FEASTKIT_")]:
        del os.environ[key]
    os.environ.update(saved)


def expected_counts(clean_dir: Path, key: str, as_of: datetime) -> pd.DataFrame:
    """Transactions per entity in the last 1, 7 and 30 days before `as_of`, straight from the events."""
    tx = pd.read_parquet(clean_dir / "transactions.parquet", columns=[key, "amount", "event_timestamp"])
    ts = pd.to_datetime(tx["event_timestamp"], utc=True)
    end = pd.Timestamp(as_of)
    out = {}
    for days in (1, 7, 30):
        window = tx[(ts >= end - pd.Timedelta(days=days)) & (ts < end)]
        out[f"count_{days}d"] = window.groupby(key).size()
        if days == 1:
            out["amount_1d"] = window.groupby(key)["amount"].sum()
    return pd.DataFrame(out).fillna(0)


def online_values(settings: Settings, key: str, features: list[str], ids: list[int]) -> pd.DataFrame:
    from feastkit.store import open_store

    store = open_store(settings)
    got = store.get_online_features(features=features, entity_rows=[{key: i} for i in ids]).to_dict()
    return pd.DataFrame(got).set_index(key)


def online_dump(settings: Settings) -> str:
    """A digest of every row of the sqlite online store."""
    con = sqlite3.connect(settings.repo_path / "data" / "online_store.db")
    try:
        return hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()


def test_hourly_runs_then_backfill_give_the_latest_values(pipeline: Pipeline, airflow_home: Path) -> None:
    from pipelines.aggregates import read_view

    t0, settings = pipeline.t0, pipeline.settings
    hour = timedelta(hours=1)
    # materialize runs without conf load what the ledger says is pending (what the asset events
    # announced, and anything computed whose event found the asset queue taken)
    plan = [feature_run(t0 + hour), {"dag_id": "materialize"},
            feature_run(t0 + 2 * hour), {"dag_id": "materialize"},
            # backfill an earlier interval: recomputed, so pending again, and re-materialized
            feature_run(t0), {"dag_id": "materialize"}]
    result, log = run_dags(airflow_home, settings, plan)
    runs = result["runs"]
    assert [r["state"] for r in runs] == ["success"] * 6, log[-5000:]
    loaded = [r["returns"]["load"]["intervals"] for r in runs[1::2]]
    assert loaded == [[[(t0 + a * hour).isoformat(), (t0 + (a + 1) * hour).isoformat()]]
                      for a in (0, 1, -1)]
    assert all(r["returns"]["load"]["pending"] for r in runs[1::2])
    for fp, mat in zip(runs[0::2], runs[1::2], strict=True):
        assert fp["returns"]["compute_features"]["start"] == mat["returns"]["load"]["intervals"][0][0]
        validation = fp["returns"]["validate"]["transactions"]
        assert validation["rows_in"] == validation["accepted"] + validation["quarantined"]
    events = [e for e in result["asset_events"] if e["source_run_id"] == runs[0]["run_id"]]
    assert len(events) == 1 and {e["extra"]["end"] for e in events} == {(t0 + hour).isoformat()}
    assert events[0]["extra"]["rows"]["user_transaction_stats"] > 0

    # the backfilled interval really holds older rows of entities that changed since
    stats = read_view(settings.features_dir, "user_transaction_stats")
    ts = pd.to_datetime(stats["event_timestamp"], utc=True)
    backfilled = set(stats.loc[(ts > t0 - hour) & (ts <= t0), "user_id"])
    newer = stats[(ts > t0) & (ts <= t0 + 2 * hour)]
    assert backfilled & set(newer["user_id"]), "the backfill interval must overlap newer online rows"

    as_of = t0 + 2 * hour
    users = expected_counts(settings.clean_dir, "user_id", as_of)
    user_ids = sorted(int(u) for u in pd.read_parquet(settings.clean_dir / "users.parquet")["user_id"])
    got = online_values(settings, "user_id", ["user_transaction_stats:txn_count_1d",
                                              "user_transaction_stats:txn_count_7d",
                                              "user_transaction_stats:txn_count_30d",
                                              "user_transaction_stats:amount_sum_1d"], user_ids)
    active = users[users["count_30d"] > 0].index
    assert len(active) > 100
    frame = got.loc[active]
    assert frame["txn_count_30d"].notna().all(), "every active user has online features"
    pd.testing.assert_series_equal(frame["txn_count_1d"].astype(int), users.loc[active, "count_1d"].astype(int),
                                   check_names=False)
    pd.testing.assert_series_equal(frame["txn_count_7d"].astype(int), users.loc[active, "count_7d"].astype(int),
                                   check_names=False)
    pd.testing.assert_series_equal(frame["txn_count_30d"].astype(int),
                                   users.loc[active, "count_30d"].astype(int), check_names=False)
    pd.testing.assert_series_equal(frame["amount_sum_1d"].astype(float), users.loc[active, "amount_1d"],
                                   check_names=False, rtol=1e-6)

    merchants = expected_counts(settings.clean_dir, "merchant_id", as_of)
    mids = [int(m) for m in merchants[merchants["count_30d"] > 0].index]
    got_m = online_values(settings, "merchant_id", ["merchant_risk_stats:merchant_txn_count_1d",
                                                    "merchant_risk_stats:merchant_txn_count_30d"], mids)
    assert (got_m["merchant_txn_count_1d"].astype(int).to_numpy() == merchants.loc[mids, "count_1d"]).all()
    assert (got_m["merchant_txn_count_30d"].astype(int).to_numpy() == merchants.loc[mids, "count_30d"]).all()


def _day_files(features_dir: Path) -> dict[str, pd.DataFrame]:
    """Every day file's rows, sorted (a Spark-built file orders rows within a day differently)."""
    out = {}
    for path in sorted(features_dir.glob("[!.]*/*.parquet")):  # a table, not its version folders
        frame = pd.read_parquet(path)
        out[f"{path.parent.name}/{path.name}"] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return out


def test_the_dags_run_unchanged_on_the_spark_profile(deployment: Deployment, airflow_home: Path,
                                                      tmp_path: Path) -> None:
    """The same plan (an hourly feature_pipeline run, then materialize) on the redis profile and on
    the spark profile: on Spark, the views are computed by Spark and materialized by Feast's Spark
    engine into Redis, and the day files and the Redis contents equal the redis profile's."""
    require_redis()
    logs, contents, files = {}, {}, {}
    for profile, db in PROFILE_REDIS_DBS.items():
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
        root = tmp_path / profile
        copy_repo_definitions(root / "repo")
        settings = make_settings(root, profile=profile, redis_connection_string=redis_url(db), spark_buckets=4)
        # the history, by the local engine in both: the DAG's hour is what runs on Spark
        t0 = computed_until(deployment, settings, timedelta(hours=3))
        plan = [feature_run(t0 + timedelta(hours=1)), {"dag_id": "materialize"}]
        # one chunk for the whole history: each chunk is a Spark job (about 2 s for 3 views here)
        result, logs[profile] = run_dags(airflow_home, settings, plan, {"FEASTKIT_MATERIALIZE_CHUNK": "400d"})
        assert [r["state"] for r in result["runs"]] == ["success"] * 2, logs[profile][-5000:]
        contents[profile], files[profile] = redis_contents(db), _day_files(settings.features_dir)
    assert "Spark buckets" in logs["spark"] and "Spark buckets" not in logs["redis"]
    assert "spark offline store" in logs["spark"]  # Feast's Spark store read what its engine wrote
    assert len(contents["spark"]) > 500 and contents["spark"] == contents["redis"]
    assert files["spark"].keys() == files["redis"].keys()
    for name, frame in files["redis"].items():
        pd.testing.assert_frame_equal(files["spark"][name], frame, obj=name)


def test_a_corrupt_file_fails_the_task_and_leaves_the_online_store_untouched(
        pipeline: Pipeline, airflow_home: Path) -> None:
    from feastkit.store import open_store

    settings, hour = pipeline.settings, timedelta(hours=1)
    start, end = pipeline.t0 + 2 * hour, pipeline.t0 + 3 * hour
    raw = settings.raw_dir / "transactions.parquet"
    day = (end - timedelta(microseconds=1)).date().isoformat()
    feature_file = settings.features_dir / "user_transaction_stats" / f"part-{day}.parquet"
    open_store(settings)  # the registry's cached state is the same before and after
    before = online_dump(settings)
    saved = {raw: raw.read_bytes(), feature_file: feature_file.read_bytes()}
    try:
        for path, data in saved.items():
            path.write_bytes(data[: len(data) // 2])  # a truncated upload
        result, log = run_dags(airflow_home, settings, [
            feature_run(end),
            {"dag_id": "materialize", "conf": {"start": start.isoformat(), "end": end.isoformat()}}])
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
    fp, mat = result["runs"]
    assert fp["state"] == "failed" and fp["tasks"]["validate"] == "failed"
    assert fp["tasks"]["compute_features"] == "upstream_failed"
    assert mat["state"] == "failed" and mat["tasks"]["load"] == "failed"
    assert f"raw table file {raw} is not a readable parquet file" in log
    assert f"feature file {feature_file} is not a readable parquet file" in log
    assert "rerun the feature_pipeline DAG" in log
    assert log.count("feastkit: error:") == 2  # failed once each: no retries for bad data
    assert online_dump(settings) == before


def test_a_manual_run_loads_what_is_pending_and_an_hour_past_the_data_advances_nothing(
        pipeline: Pipeline, airflow_home: Path) -> None:
    from feastkit.clean import data_range
    from feastkit.store import open_store

    settings, t0, hour = pipeline.settings, pipeline.t0, timedelta(hours=1)
    _, data_end = data_range(settings.clean_dir)
    # two feature runs, then one manual materialize run without conf and without asset events
    # (Airflow 3.3 gives it no data interval): it loads both intervals, as one
    result, log = run_dags(airflow_home, settings, [feature_run(t0 + 3 * hour), feature_run(t0 + 4 * hour),
                                                    {"dag_id": "materialize"}])
    assert [r["state"] for r in result["runs"]] == ["success"] * 3, log[-5000:]
    load = result["runs"][2]["returns"]["load"]
    assert load["pending"] and load["intervals"] == [[(t0 + 2 * hour).isoformat(), (t0 + 4 * hour).isoformat()]]
    watermark = {fv.name: fv.most_recent_end_time for fv in open_store(settings).list_feature_views()}

    # what unpausing the DAG runs: the wall-clock hour, past the data (a 180-day window still
    # changes there, so some views get rows)
    late = data_end + timedelta(days=40)
    result, log = run_dags(airflow_home, settings, [feature_run(late), {"dag_id": "materialize"}])
    assert [r["state"] for r in result["runs"]] == ["success"] * 2, log[-5000:]
    # computed (the ledger says so), but past the data: nothing is loaded for it
    assert result["runs"][0]["returns"]["compute_features"]["recorded"]
    assert result["runs"][1]["returns"]["load"]["intervals"] == []
    assert {fv.name: fv.most_recent_end_time for fv in open_store(settings).list_feature_views()} == watermark


def test_the_registry_stays_flat_over_many_hourly_materializations(pipeline: Pipeline) -> None:
    from feastkit.store import materialize_interval, open_store

    settings, hour = pipeline.settings, timedelta(hours=1)
    registry = settings.repo_path / "data" / "registry.db"
    store = open_store(settings)
    views = sorted(fv.name for fv in store.list_feature_views() if fv.online)
    sizes = []
    for k in range(1, 25):  # replay 24 hours before t0, one hourly materialization each, every view
        end = pipeline.t0 - (k - 1) * hour
        materialize_interval(settings, end - hour, end, views=views, store=store)
        sizes.append(registry.stat().st_size)
    # Feast appends an interval per view and run (~60 bytes each): 16 more runs would add ~5 kB
    assert sizes[-1] - sizes[7] < 200, sizes
    for fv in open_store(settings).list_feature_views():
        if fv.name in views:
            assert len(fv.materialization_intervals) <= 2, (fv.name, fv.materialization_intervals)


# Serving while a long materialization runs ------------------------------------------------------


def _fresh_pg_database(name: str) -> str:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _registry_states(database: str) -> dict[str, str]:
    """Each feature view's lifecycle state as committed in the PostgreSQL registry (what every
    other process reads), straight from Feast's `feature_views` table."""
    import psycopg
    from feast.feature_view import FeatureViewState
    from feast.protos.feast.core.FeatureView_pb2 import FeatureView as FeatureViewProto

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as con:
        rows = con.execute("SELECT feature_view_name, feature_view_proto FROM feature_views").fetchall()
    states = {}
    for name, blob in rows:
        proto = FeatureViewProto()
        proto.ParseFromString(blob)
        states[name] = FeatureViewState.from_proto(proto.meta.state).name
    return states


def _feast_reads(store: Any) -> list[tuple[str, list, list[dict]]]:
    """One `get_online_features` call per online view (its first feature, one entity row): each
    goes through Feast's servable-state check for that view."""
    from feast.types import String

    reads = []
    for fv in store.list_feature_views():
        if fv.online and fv.features:
            row = {c.name: ("1" if c.dtype == String else 1) for c in fv.entity_columns}
            reads.append((fv.name, [f"{fv.name}:{fv.features[0].name}"], [row]))
    return reads


def test_predictions_keep_flowing_while_materialize_runs(deployment: Deployment, airflow_home: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunked materialization on the postgres-registry profile, while the server answers and
    Feast's own `get_online_features` reads every view: the registry state those readers gate on
    is polled from PostgreSQL throughout. Feast 0.67 sets each view to MATERIALIZING through
    `apply_feature_view`, which the SQL registry skips for an unchanged view (DESIGN.md pitfall
    12), so on this profile no other process ever sees MATERIALIZING: the test proves that
    (the states it saw are recorded and asserted), and that both kinds of reader keep
    answering with the same values. The profile's `serve_features_while_materializing: true`
    guards the case Feast does persist (a changed view, a killed run on another registry)."""
    import threading

    import redis

    from feastkit.store import apply_repo, materialize_servable, open_store
    from serving.examples import example_requests

    require_redis()
    redis.Redis(host="127.0.0.1", port=6379, db=SERVING_REDIS_DB).flushdb()
    copy_repo_definitions(tmp_path / "repo")
    settings = make_settings(tmp_path, data_dir=deployment.settings.data_dir, profile="postgres-registry",
                             redis_connection_string=redis_url(SERVING_REDIS_DB),
                             registry_url=_fresh_pg_database(SERVING_PG_DB))
    for key, value in settings_env(settings).items():
        if key.startswith("FEASTKIT_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("FEASTKIT_REGISTRY_URL", settings.registry_url)
    apply_repo(settings)
    end = deployment.data_end
    materialize_servable(settings, end)
    requests = [(path, body) for _, path, body in example_requests(settings)]
    feast_store = open_store(settings)
    feast_reads = _feast_reads(feast_store)
    assert feast_reads
    before_states = _registry_states(SERVING_PG_DB)
    assert set(before_states.values()) == {"AVAILABLE_ONLINE"}, before_states
    seen_states: dict[str, set[str]] = {name: set() for name in before_states}
    polls = [0]
    stop = threading.Event()

    def poll_registry() -> None:
        while not stop.is_set():
            for name, state in _registry_states(SERVING_PG_DB).items():
                seen_states.setdefault(name, set()).add(state)
            polls[0] += 1

    def feast_answers() -> list[Any]:
        feast_store.refresh_registry()  # the registry as committed now, not a cached copy
        out = []
        for _, features, rows in feast_reads:
            try:
                out.append(feast_store.get_online_features(features=features, entity_rows=rows).to_dict())
            except ValueError as exc:  # Feast's "... is in state 'MATERIALIZING' and cannot serve features"
                out.append(str(exc))
        return out

    server = start_server(settings, tmp_path / "server.log")
    poller = threading.Thread(target=poll_registry, daemon=True)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            def answers() -> list[tuple[int, Any]]:
                out = []
                for path, body in requests:
                    r = client.post(path, json=body)
                    body_json = r.json()
                    out.append((r.status_code, (body_json.get("probability"), body_json.get("decision"),
                                                tuple(body_json.get("missing_features", [])))
                                if r.status_code == 200 else body_json))
                return out

            baseline, feast_baseline = answers(), feast_answers()
            assert all(status == 200 for status, _ in baseline), baseline
            assert all(isinstance(got, dict) for got in feast_baseline), feast_baseline
            # re-materialize the last 7 days in 12-hour chunks (Feast moves each view to
            # MATERIALIZING for every chunk) while the server and Feast's reader keep answering
            poller.start()
            proc = start_dags(airflow_home, settings, [{"dag_id": "materialize", "conf": {
                "start": (end - timedelta(days=7)).isoformat(), "end": end.isoformat()}}],
                extra_env={"FEASTKIT_MATERIALIZE_CHUNK": "12h"})
            rounds, differences, feast_differences = 0, [], []
            while proc.poll() is None:
                got, feast_got = answers(), feast_answers()
                rounds += 1
                differences += [(req, g) for req, g, b in zip(requests, got, baseline, strict=True) if g != b]
                feast_differences += [(read[0], g) for read, g, b in
                                      zip(feast_reads, feast_got, feast_baseline, strict=True) if g != b]
                time.sleep(0.05)
            out = proc.stdout.read()
            proc.wait()
            stop.set()
            poller.join()
            result, log = parse_result(proc, out)
            after, feast_after = answers(), feast_answers()
    finally:
        stop.set()
        stop_server(server)
    assert result["runs"][0]["state"] == "success", log[-4000:]
    assert result["runs"][0]["returns"]["load"]["chunks"] == 14
    assert rounds >= 3 and polls[0] >= 14, (rounds, polls)
    print("registry states seen while materializing:", seen_states, "polls:", polls[0])
    # what the readers gate on: every view stayed servable in the committed registry throughout
    assert all(states == {"AVAILABLE_ONLINE"} for states in seen_states.values()), seen_states
    assert differences == [], differences[:3]
    assert feast_differences == [], feast_differences[:3]
    assert after == baseline and feast_after == feast_baseline
    assert "cannot serve features" not in server.log()


# Retraining: promote only if not worse, keep the previous bundle -----------------------------------


def test_training_promotes_only_if_not_worse_and_keeps_the_previous(deployment: Deployment,
                                                                     tmp_path: Path) -> None:
    from feastkit.bundle import current_bundle, rollback
    from feastkit.jobs import run_training

    service = "fraud_detection_v1"
    models = tmp_path / "models"
    shutil.copytree(deployment.settings.models_dir / service, models / service)
    settings = deployment.settings.model_copy(update={"models_dir": models})
    serving = current_bundle(models, service).version

    # a rule no model can meet (new >= old + 1): trained and saved, not promoted
    (worse,) = run_training(settings, promote_tolerance=-1.0, services=[service])
    assert not worse["promoted"] and worse["serving_version"] == serving
    assert (models / service / worse["version"]).is_dir()
    assert current_bundle(models, service).version == serving

    # same data, same seed: the same score is "not worse", so it is promoted
    (same,) = run_training(settings, services=[service])
    assert same["promoted"] and same["new_value"] == same["serving_value"], same
    assert current_bundle(models, service).version == same["version"]
    assert rollback(models, service) == serving
    assert current_bundle(models, service).version == serving
