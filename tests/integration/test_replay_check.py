"""Replay check on real traffic: served features vs the same features rebuilt offline.

Clean traffic gives 0 mismatches on every feature. Three real faults are each caught and named:
a stale materialization (the online store misses the latest interval), an on-demand view changed
without retraining (applied after the traffic was served), and a push that never reached the
offline side.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from feastkit import prediction_log as fmt
from feastkit.errors import FeastkitError
from feastkit.jobs import run_compact_log, run_replay_check
from feastkit.prediction_log import NothingLogged
from feastkit.settings import Settings
from monitoring.replay import ServiceReplay, replay_service
from serving.app import ServingState, create_app
from tests.conftest import Deployment, assert_one_line_error, feastkit_bin, settings_env
from tests.integration.serving_support import private_copy

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)


def _traffic(deployment: Deployment, n: int = 40) -> tuple[list[dict], list[dict]]:
    """Fraud transactions of recent users and merchants, a few minutes after the data's end; churn
    requests for the same users."""
    tx = pd.read_parquet(deployment.settings.clean_dir / "transactions.parquet")
    recent = tx[tx["event_timestamp"] >= pd.Timestamp(deployment.data_end) - pd.Timedelta(days=1)]
    sample = recent.drop_duplicates("user_id").head(n)
    at = deployment.data_end + 5 * MINUTE
    fraud = [{"transaction_id": f"r{i}", "user_id": int(r.user_id), "merchant_id": int(r.merchant_id),
              "amount": float(r.amount), "timestamp": (at + i * timedelta(seconds=7)).isoformat(), "channel": "pos"}
             for i, r in enumerate(sample.itertuples())]
    fraud.append({**fraud[0], "transaction_id": "unknown", "user_id": 9_999_999_123})  # missing on both sides
    churn = [{"user_id": int(u), "as_of": at.isoformat()} for u in sample["user_id"].head(10)]
    return fraud, churn


def _serve(settings: Settings, fraud: list[dict], churn: list[dict], push: dict | None = None) -> None:
    with TestClient(create_app(settings, ServingState.load(settings))) as c:
        if push is not None:
            r = c.post("/v1/push/user_realtime_push", json=push)
            assert r.status_code == 200, r.text
        r = c.post("/v1/predict/fraud:batch", json={"transactions": fraud[:-5]})
        assert r.status_code == 200, r.text
        for body in fraud[-5:]:
            assert c.post("/v1/predict/fraud", json=body).status_code == 200
        for body in churn:
            assert c.post("/v1/predict/churn", json=body).status_code == 200


def _window(deployment: Deployment) -> tuple:
    return deployment.data_end, deployment.data_end + timedelta(hours=1)


def _command(settings: Settings, start: datetime, end: datetime, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([feastkit_bin(), "replay-check", "--start", start.isoformat(), "--end", end.isoformat(),
                           *args], env={**settings_env(settings),
                                        "FEASTKIT_PREDICTION_LOG_DIR": str(settings.prediction_log_dir),
                                        "FEASTKIT_REPORTS_DIR": str(settings.reports_dir)},
                          capture_output=True, text=True, timeout=300)


def test_nothing_logged_is_one_line_and_exit_2_and_the_job_says_so(deployment: Deployment, tmp_path: Path) -> None:
    settings = _copy(deployment, tmp_path)
    start, end = _window(deployment)
    assert_one_line_error(_command(settings, start, end), "no prediction log", "serve predictions first")
    assert_one_line_error(_command(settings, start, end, "--max-mismatch-rate", "2"), "not a rate")
    with pytest.raises(NothingLogged):
        run_replay_check(settings, start, end)


def _by_feature(result: ServiceReplay) -> dict[str, int]:
    return {f.feature: f.mismatches for f in result.features}


@pytest.fixture(scope="module")
def traffic(deployment: Deployment) -> tuple[list[dict], list[dict]]:
    return _traffic(deployment)


def _copy(deployment: Deployment, tmp_path: Path, service: str = "fraud_detection_v1") -> Settings:
    return private_copy(deployment, tmp_path, fraud_service=service, prediction_log_dir=tmp_path / "log",
                        reports_dir=tmp_path / "reports")


def test_clean_traffic_replays_with_no_mismatch(deployment: Deployment, traffic, tmp_path: Path) -> None:
    # a write per scored group: many small files per hour, as a busy server leaves them
    settings = _copy(deployment, tmp_path).model_copy(update={"prediction_log_flush_rows": 1})
    _serve(settings, *traffic)
    store = ServingState.load(settings).models["fraud_detection_v1"].reader.store
    assert len(fmt.log_files(settings.prediction_log_dir, "fraud_detection_v1")) >= 2
    results = {}
    for service, rows in (("fraud_detection_v1", len(traffic[0])), ("churn_prediction_v1", len(traffic[1]))):
        result = results[service] = replay_service(store, settings.prediction_log_dir, service, *_window(deployment))
        assert result.rows == rows
        assert result.features and not result.failing, [f.to_dict() for f in result.features if f.mismatches]
        # the replay really compared values: every known entity's row carries a value on both sides
        assert all(f.compared == rows for f in result.features)
        present = {f.feature: f.both_present for f in result.features}
        if service == "fraud_detection_v1":
            assert all(n >= rows - 1 for ref, n in present.items()
                       if ref.startswith(("user_transaction_stats:", "merchant_risk_stats:"))), present
        else:
            assert present["customer_activity:purchase_count_30d"] == rows, present
    # the command: exit 0, reports written
    proc = _command(settings, *_window(deployment))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fraud_detection_v1: 41 logged prediction(s)" in proc.stdout
    report = json.loads(next(settings.reports_dir.glob("replay-*.json")).read_text())
    assert {s["service"] for s in report["services"]} == {"fraud_detection_v1", "churn_prediction_v1"}
    assert next(settings.reports_dir.glob("replay-*.html")).read_text().count("<table>") == 2
    # merged into a file per hour, the log replays to the same findings
    summary = run_compact_log(settings)
    assert summary["services"]["fraud_detection_v1"]["rows"] == len(traffic[0])
    for service, before in results.items():
        assert len(fmt.log_files(settings.prediction_log_dir, service)) == 1
        after = replay_service(store, settings.prediction_log_dir, service, *_window(deployment))
        assert [f.to_dict() for f in after.features] == [f.to_dict() for f in before.features]


def test_a_stale_materialization_is_caught(deployment: Deployment, traffic, tmp_path: Path) -> None:
    """The online store was last loaded six hours before the data's end."""
    from feastkit.store import open_store

    settings = _copy(deployment, tmp_path)
    con = sqlite3.connect(settings.repo_path / "data" / "online_store.db")
    tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        con.execute(f'DELETE FROM "{table}"')
    con.commit()
    con.close()
    store = open_store(settings)
    store.materialize(deployment.data_start, deployment.data_end - timedelta(hours=6))
    _serve(settings, *traffic)
    result = replay_service(store, settings.prediction_log_dir, "fraud_detection_v1", *_window(deployment))
    failing = {f.feature for f in result.failing}
    assert {"user_transaction_stats:txn_count_1d", "user_transaction_stats:amount_sum_1d"} <= failing, failing
    worst = max(result.failing, key=lambda f: f.mismatch_rate)
    assert worst.examples and worst.examples[0]["kind"] in ("values differ", "missing online, present offline")
    # the command exits 1 naming the features; the Airflow task's job fails with them
    proc = _command(settings, *_window(deployment), "--service", "fraud_detection_v1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MISMATCH user_transaction_stats:txn_count_1d" in proc.stdout
    with pytest.raises(FeastkitError, match="user_transaction_stats:txn_count_1d"):
        run_replay_check(settings, *_window(deployment))


def test_an_on_demand_view_changed_without_retraining_is_caught(deployment: Deployment, traffic,
                                                                tmp_path: Path) -> None:
    from feastkit.store import apply_repo, open_store

    settings = _copy(deployment, tmp_path)
    _serve(settings, *traffic)
    source = settings.repo_path / "on_demand.py"
    text = source.read_text()
    changed = text.replace("amount / avg if avg else 1.0", "amount / avg * 2.0 if avg else 2.0")
    assert changed != text
    source.write_text(changed)  # the ratio to the user's mean amount, now doubled
    apply_repo(settings)
    result = replay_service(open_store(settings), settings.prediction_log_dir, "fraud_detection_v1",
                            *_window(deployment))
    failing = {f.feature for f in result.failing}
    assert "transaction_request_features:amount_to_avg_ratio" in failing, _by_feature(result)
    assert not [f for f in failing if not f.startswith("transaction_request_features:")], failing


def test_a_push_that_never_reached_the_offline_side_is_caught(deployment: Deployment, traffic,
                                                              tmp_path: Path) -> None:
    from feastkit.store import open_store

    settings = _copy(deployment, tmp_path, service="fraud_detection_v2")
    fraud, churn = traffic
    user = fraud[0]["user_id"]
    at = (deployment.data_end + 2 * MINUTE).isoformat()
    push = {"events": [{"user_id": user, "txn_count_10m": 7, "amount_sum_10m": 4321.0, "event_timestamp": at}]}
    _serve(settings, fraud, churn, push=push)
    result = replay_service(open_store(settings), settings.prediction_log_dir, "fraud_detection_v2",
                            *_window(deployment))
    failing = {f.feature: f for f in result.failing}
    assert "user_realtime_activity:amount_sum_10m" in failing, _by_feature(result)
    example = failing["user_realtime_activity:amount_sum_10m"].examples[0]
    assert example["served"] == 4321.0
    assert not [f for f in failing if not f.startswith("user_realtime_activity:")], list(failing)
