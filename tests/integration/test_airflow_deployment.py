"""The DAGs under a real Airflow 3 deployment: scheduler, DAG processor, API server, triggerer and a
CeleryExecutor worker as separate processes, RabbitMQ as the broker, a PostgreSQL metadata database
of their own (created and dropped here), set up as docs/orchestration.md describes.

A backfill of six hourly feature_pipeline runs (`--max-active-runs 1`) announces each interval on
the feature-tables Asset; the asset-triggered materialize runs (the scheduler's own asset path)
load every computed interval, also those whose events arrived while a run was active. Then a run
fails on a corrupt raw file, the file is fixed, the run cleared with Airflow's CLI, and the state
converges: the online store equals counts computed straight from the raw events.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from feastkit.settings import Settings
from pipelines.synthetic import SyntheticConfig, generate, write
from tests.conftest import (
    REPO_ROOT,
    copy_repo_definitions,
    free_port,
    make_settings,
    validation_as_of,
)

pytestmark = pytest.mark.integration

AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))
# this module's own metadata database (distinct from every other test module's)
METADATA_DB = os.environ.get("FEASTKIT_TEST_AIRFLOW_DB", "feastkit_airflow_deployment")
PG = "postgres@127.0.0.1:5432"
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
DATA = SyntheticConfig(n_users=300, n_merchants=30, days=21, seed=23, start=datetime(2026, 3, 1, tzinfo=UTC))
HOUR = timedelta(hours=1)
TIMEOUT = 1200.0  # seconds for the backfill to be loaded on a loaded 2-core machine


# The deployment ---------------------------------------------------------------------------------


@dataclass
class AirflowDeployment:
    home: Path
    env: dict[str, str]
    db_url: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen([AIRFLOW_BIN, *args], env=self.env, cwd=REPO_ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"airflow {name} exited:\n{self.log(name)[-3000:]}"

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([AIRFLOW_BIN, *args], env=self.env, cwd=REPO_ROOT, capture_output=True,
                              text=True, check=False, timeout=300)
        assert not check or proc.returncode == 0, f"airflow {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    def query(self, sql: str, *params: Any) -> list[tuple]:
        import psycopg

        with psycopg.connect(f"postgresql://{PG}/{METADATA_DB}") as con:
            return list(con.execute(sql, params).fetchall())

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.alive()
            got = check()
            if got:
                return got
            assert time.monotonic() < deadline, f"timed out waiting for {what}; runs: {self.runs()}"
            time.sleep(2)

    def runs(self, dag_id: str | None = None) -> list[dict[str, Any]]:
        rows = self.query("""SELECT r.id, r.dag_id, r.run_id, r.state, r.run_type, r.data_interval_start,
                                    r.data_interval_end, r.backfill_id
                             FROM dag_run r WHERE %s::text IS NULL OR r.dag_id = %s ORDER BY r.id""", dag_id, dag_id)
        keys = ("id", "dag_id", "run_id", "state", "run_type", "start", "end", "backfill_id")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def returned(self, dag_id: str, run_id: str, task_id: str) -> Any:
        rows = self.query("SELECT value FROM xcom WHERE dag_id=%s AND run_id=%s AND task_id=%s AND key='return_value'",
                          dag_id, run_id, task_id)
        return rows[0][0] if rows else None

    def announced(self, dag_run_id: int) -> list[list[str]]:
        """The intervals in the asset events that triggered a run (what the scheduler handed it)."""
        rows = self.query("""SELECT e.extra FROM dagrun_asset_event d JOIN asset_event e ON e.id = d.event_id
                             WHERE d.dag_run_id = %s ORDER BY e.id""", dag_run_id)
        return sorted({(x["start"], x["end"]) for (x,) in rows if x and "start" in x})

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return dict(self.query("SELECT task_id, state FROM task_instance WHERE dag_id=%s AND run_id=%s",
                               dag_id, run_id))


def _database(action: str) -> None:
    import psycopg

    with psycopg.connect(f"postgresql://{PG}/test", autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{METADATA_DB}" WITH (FORCE)')
        if action == "create":
            con.execute(f'CREATE DATABASE "{METADATA_DB}"')


@dataclass
class Pipeline:
    settings: Settings
    t0: datetime  # features computed and loaded up to here before Airflow starts
    data_end: datetime


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Raw events -> clean -> features and the online store up to t0 = 8 hours before the data's end."""
    from feastkit.clean import data_range
    from feastkit.store import applied_specs, apply_repo, materialize_servable, open_store
    from pipelines.aggregates import compute_features
    from pipelines.validation import validate_all

    saved = {k: v for k, v in os.environ.items() if k.startswith("FEASTKIT_")}
    root = tmp_path_factory.mktemp("airflow-deployment")
    copy_repo_definitions(root / "repo")
    settings = make_settings(root)
    write(generate(DATA), settings.raw_dir)
    validate_all(settings.raw_dir, settings.clean_dir, settings.quarantine_dir, as_of=validation_as_of(DATA))
    start, end = data_range(settings.clean_dir)
    t0 = end - 8 * HOUR
    apply_repo(settings)
    compute_features(applied_specs(open_store(settings)), settings.clean_dir, settings.features_dir, start, t0)
    materialize_servable(settings, t0)
    yield Pipeline(settings, t0, end)
    for key in [k for k in os.environ if k.startswith("FEASTKIT_")]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture(scope="module")
def airflow(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowDeployment]:
    home = tmp_path_factory.mktemp("airflow-home")
    db_url = f"postgresql+psycopg://{PG}/{METADATA_DB}"
    api_port = free_port()
    settings = pipeline.settings
    env = {
        **os.environ, "PYTHONPATH": str(REPO_ROOT), "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"postgresql+psycopg_async://{PG}/{METADATA_DB}",
        "AIRFLOW__CELERY__BROKER_URL": BROKER,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg://{PG}/{METADATA_DB}",
        # a queue of its own on the shared broker
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"feastkit-{METADATA_DB}-{os.getpid()}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        # a loaded machine: the execution API's first answers can take tens of seconds, and a
        # retried "start task" call after a client timeout is refused (the task already started)
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "180",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "FEASTKIT_DATA_DIR": str(settings.data_dir), "FEASTKIT_REPO_PATH": str(settings.repo_path),
        "FEASTKIT_MODELS_DIR": str(settings.models_dir), "FEASTKIT_PROFILE": settings.profile,
        "FEASTKIT_DAG_START_DATE": DATA.start.date().isoformat(),
        "FEASTKIT_MATERIALIZE_CHUNK": "15m",  # several chunks per hour: runs overlap the next events
    }
    _database("create")
    deployment = AirflowDeployment(home, env, db_url)
    try:
        deployment.cli("db", "migrate")
        deployment.start("api-server", "api-server", "--port", str(api_port), "--workers", "1")
        deployment.start("scheduler", "scheduler")
        deployment.start("dag-processor", "dag-processor")
        deployment.start("triggerer", "triggerer")
        deployment.start("celery-worker", "celery", "worker", "--queues", env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"],
                         "--concurrency", "2", "--without-mingle", "--without-gossip")
        deployment.wait_for("the DAG processor to parse dags/", lambda: {r[0] for r in deployment.query(
            "SELECT dag_id FROM dag")} >= {"feature_pipeline", "materialize"}, timeout=300)
        yield deployment
    finally:
        deployment.stop()
        for name in deployment.procs:
            shutil.copy(home / f"{name}.log", pipeline.settings.data_dir / f"airflow-{name}.log")
        _database("drop")


# An independent computation ---------------------------------------------------------------------


def expected_counts(clean_dir: Path, as_of: datetime) -> pd.DataFrame:
    """Transactions per user in the 1, 7 and 30 days before `as_of`, straight from the events."""
    tx = pd.read_parquet(clean_dir / "transactions.parquet", columns=["user_id", "amount", "event_timestamp"])
    ts = pd.to_datetime(tx["event_timestamp"], utc=True)
    end = pd.Timestamp(as_of)
    out = {}
    for days in (1, 7, 30):
        out[f"txn_count_{days}d"] = tx[(ts >= end - pd.Timedelta(days=days)) & (ts < end)].groupby("user_id").size()
    return pd.DataFrame(out).fillna(0).astype(int)


def assert_online_equals_events(settings: Settings, as_of: datetime) -> int:
    from feastkit.store import open_store

    want = expected_counts(settings.clean_dir, as_of)
    want = want[want["txn_count_30d"] > 0]
    got = open_store(settings).get_online_features(
        features=[f"user_transaction_stats:{c}" for c in want.columns],
        entity_rows=[{"user_id": int(u)} for u in want.index]).to_df().set_index("user_id")
    assert got.notna().all().all(), "every active user has online features"
    pd.testing.assert_frame_equal(got[want.columns].astype(int), want, check_names=False, check_index_type=False)
    return len(want)


def pending(settings: Settings) -> dict[str, Any]:
    from feastkit.jobs import pending_intervals
    from feastkit.store import open_store

    return pending_intervals(settings, open_store(settings))


def settled(airflow: AirflowDeployment, settings: Settings, feature_runs: int) -> bool:
    """The backfill's runs are done, no materialize run is active or about to be, and nothing is pending.

    An asset event that arrived while a materialize run was active waits in `asset_dag_run_queue`
    until the scheduler makes its run (in the same transaction that removes it): between the two
    runs nothing is queued or running, and without this check the test read the state there and
    found the next run `running` a moment later."""
    feature = [r for r in airflow.runs("feature_pipeline") if r["backfill_id"] is not None]
    busy = [r for r in airflow.runs() if r["state"] in ("queued", "running")]
    waiting = airflow.query("SELECT count(*) FROM asset_dag_run_queue")[0][0]
    return len(feature) >= feature_runs and not busy and not waiting and not pending(settings)


# The test ---------------------------------------------------------------------------------------


def test_a_backfill_under_a_real_scheduler_loads_every_interval_and_converges_after_a_fix(
        pipeline: Pipeline, airflow: AirflowDeployment) -> None:
    from feastkit.store import open_store

    settings, t0 = pipeline.settings, pipeline.t0
    # unpausing runs the latest wall-clock hour (catchup is off), months past the data: the
    # materialize run it triggers loads nothing
    airflow.cli("dags", "unpause", "materialize")
    airflow.cli("dags", "unpause", "feature_pipeline")
    airflow.wait_for("the unpaused hour", lambda: [r for r in airflow.runs("feature_pipeline")
                                                   if r["state"] in ("success", "failed")], timeout=600)
    wall = airflow.runs("feature_pipeline")[0]
    assert wall["state"] == "success" and wall["start"] > pipeline.data_end, wall
    airflow.wait_for("the unpaused hour's materialize run", lambda: not [
        r for r in airflow.runs() if r["state"] in ("queued", "running")], timeout=600)

    # six hourly intervals, one run at a time, as documented
    first, last = t0, t0 + 5 * HOUR
    airflow.cli("backfill", "create", "--dag-id", "feature_pipeline", "--from-date", first.isoformat(),
                "--to-date", last.isoformat(), "--max-active-runs", "1")
    airflow.wait_for("the backfill to be loaded", lambda: settled(airflow, settings, 6))
    feature = [r for r in airflow.runs("feature_pipeline") if r["backfill_id"] is not None]
    assert [r["state"] for r in feature] == ["success"] * 6, feature
    assert sorted(r["start"] for r in feature) == [t0 + k * HOUR for k in range(6)]

    materialize = [r for r in airflow.runs("materialize")]
    assert materialize and all(r["run_type"] == "asset_triggered" for r in materialize), materialize
    assert all(r["state"] == "success" for r in materialize), materialize
    def hours(intervals: list[Any]) -> set[datetime]:
        return {t0 + k * HOUR for k in range(-1, 7) for a, b in intervals
                if datetime.fromisoformat(a) <= t0 + k * HOUR < datetime.fromisoformat(b)}

    loaded: set[datetime] = set()
    unannounced = 0  # hours a run loaded although no event it was handed announced them
    for run in materialize:
        report = airflow.returned("materialize", run["run_id"], "load")
        assert report["pending"], report
        got = hours(report["intervals"])
        loaded |= got
        unannounced += len(got - hours(airflow.announced(run["id"])))
    assert loaded == {t0 + k * HOUR for k in range(6)}
    during = airflow.query("""SELECT count(*) FROM asset_event e JOIN dag_run r ON r.dag_id = 'materialize'
                              AND e.timestamp > r.start_date AND e.timestamp < r.end_date""")[0][0]
    print(f"{len(materialize)} asset-triggered materialize run(s) for 7 feature runs; {during} asset "
          f"event(s) arrived while a materialize run was active; {unannounced} hour(s) loaded by a run "
          "whose events did not announce them")

    as_of = t0 + 6 * HOUR
    assert assert_online_equals_events(settings, as_of) > 100
    for fv in open_store(settings).list_feature_views():
        if fv.name in ("user_transaction_stats", "merchant_risk_stats"):
            # the unpaused hour past the data advanced nothing; the registry stays bounded
            assert fv.most_recent_end_time is not None and fv.most_recent_end_time <= as_of, fv.name
            assert len(fv.materialization_intervals) <= 2, (fv.name, fv.materialization_intervals)

    # Airflow allows one running backfill per DAG, and its scheduler marks a finished one complete
    # on a 30-second timer, so the next backfill waits for that
    airflow.wait_for("the backfill to be marked complete", lambda: not airflow.query(
        "SELECT id FROM backfill WHERE dag_id = 'feature_pipeline' AND completed_at IS NULL"), timeout=300)

    # one run fails on a corrupt raw file; fix the file, clear the run: the state converges
    raw = settings.raw_dir / "transactions.parquet"
    good = raw.read_bytes()
    raw.write_bytes(good[: len(good) // 2])
    at = t0 + 6 * HOUR
    airflow.cli("backfill", "create", "--dag-id", "feature_pipeline", "--from-date", at.isoformat(),
                "--to-date", at.isoformat(), "--max-active-runs", "1")
    failed = airflow.wait_for("the run on the corrupt file to fail", lambda: [
        r for r in airflow.runs("feature_pipeline") if r["start"] == at and r["state"] == "failed"], timeout=600)[0]
    states = airflow.task_states("feature_pipeline", failed["run_id"])
    assert states["validate"] == "failed" and states["compute_features"] == "upstream_failed", states
    tries = airflow.query("SELECT try_number FROM task_instance WHERE run_id=%s AND task_id='validate'",
                          failed["run_id"])[0][0]
    assert tries == 1, "bad data fails at once, without retries"
    raw.write_bytes(good)
    airflow.cli("tasks", "clear", "feature_pipeline", "--start-date", at.isoformat(), "--end-date",
                at.isoformat(), "--only-failed", "--downstream", "--yes")
    airflow.wait_for("the cleared run to be loaded", lambda: [
        r for r in airflow.runs("feature_pipeline") if r["start"] == at and r["state"] == "success"]
        and not [r for r in airflow.runs() if r["state"] in ("queued", "running")] and not pending(settings))
    assert assert_online_equals_events(settings, at + HOUR) > 100
    assert json.dumps(pending(settings)) == "{}"
