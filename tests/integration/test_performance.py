"""The performance check on real pipelines: realized vs estimated (CBPE) metrics under a concept
shift (the estimate must miss it) and a covariate shift (it must track it), the prediction log
joined with chargebacks, and the command's exit codes and one-line refusals."""

from __future__ import annotations

import json
import subprocess
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feastkit.jobs import run_performance_check
from feastkit.prediction_log import NothingLogged
from feastkit.settings import Settings
from monitoring.performance import (
    PeriodPerformance,
    ServicePerformance,
    scored_log,
    service_performance,
)
from pipelines.synthetic import SyntheticConfig
from serving.app import ServingState, create_app
from tests.conftest import (
    Deployment,
    assert_one_line_error,
    build_features,
    copy_repo_definitions,
    feastkit_bin,
    make_settings,
    settings_env,
)
from tests.integration.serving_support import private_copy

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

SERVICE = "fraud_detection_v1"
DRIFT_START = datetime(2026, 4, 6, tzinfo=UTC)  # a Monday: three whole weeks of shift, after training's data
DRIFT_DAYS = 21


def _drifted_deployment(root: Path, kind: str) -> tuple[Settings, object, datetime]:
    """112 days of data with `kind` in the last three weeks, which training (mature labels only,
    30 days before the end) never sees; one trained fraud model."""
    from feastkit.store import apply_repo, open_store
    from pipelines.training import train_service

    config = SyntheticConfig(n_users=1500, n_merchants=120, days=112, seed=3, start=datetime(2026, 1, 5, tzinfo=UTC),
                             drift=(kind,), drift_start=DRIFT_START, drift_days=DRIFT_DAYS)
    copy_repo_definitions(root / "repo")
    settings = make_settings(root)
    _, end = build_features(settings, config)
    apply_repo(settings)
    store = open_store(settings)
    train_service(store, SERVICE, settings.clean_dir, settings.models_dir)
    return settings, store, end


def _shifted(tmp_path_factory: pytest.TempPathFactory, kind: str) -> tuple[Settings, ServicePerformance]:
    """The weekly performance with every label known (as of 45 days after the data's end)."""
    settings, store, end = _drifted_deployment(tmp_path_factory.mktemp(kind), kind)
    return settings, service_performance(store, settings, SERVICE, as_of=end + timedelta(days=45))


@pytest.fixture(scope="module")
def concept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, ServicePerformance]:
    return _shifted(tmp_path_factory, "concept")


@pytest.fixture(scope="module")
def merchant_mix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, ServicePerformance]:
    return _shifted(tmp_path_factory, "merchant_mix")


def _split(result: ServicePerformance) -> tuple[list[PeriodPerformance], list[PeriodPerformance]]:
    """Whole weeks before the shift, and the shifted weeks; every one mature."""
    assert all(p.mature and p.realized is not None for p in result.periods)
    before = [p for p in result.periods if p.start < DRIFT_START and p.rows > 5000]
    during = [p for p in result.periods if p.start >= DRIFT_START]
    assert len(before) >= 3 and len(during) == DRIFT_DAYS // 7
    return before, during


def _auc(p: PeriodPerformance, kind: str) -> float:
    source = p.realized if kind == "realized" else p.estimated
    return source["roc_auc"].value


@pytest.mark.parametrize("kind", ["concept", "merchant_mix"])
def test_before_any_shift_the_estimate_holds_the_realized_value(kind: str, request: pytest.FixtureRequest) -> None:
    _, result = request.getfixturevalue(kind)
    before, _ = _split(result)
    for p in before:
        assert p.estimated["roc_auc"].low <= _auc(p, "realized") <= p.estimated["roc_auc"].high, p.to_dict()
        assert abs(p.error["roc_auc"]) < 0.05 and abs(p.error["recall"]) < 0.1, p.to_dict()
        assert not p.dropped


def test_a_concept_shift_lowers_realized_performance_and_the_estimate_cannot_see_it(concept) -> None:
    _, result = concept
    before, during = _split(result)
    realized_before = np.mean([_auc(p, "realized") for p in before])
    for p in during:
        assert _auc(p, "realized") < realized_before - 0.08, p.to_dict()  # the model really got worse
        assert _auc(p, "realized") < p.estimated["roc_auc"].low, p.to_dict()  # the estimate missed it
        assert "roc_auc" in p.dropped  # and the realized drop fails the check
    assert np.mean([p.error["roc_auc"] for p in during]) > 0.05


def test_a_covariate_shift_is_tracked_by_the_estimate(merchant_mix) -> None:
    _, result = merchant_mix
    before, during = _split(result)
    assert all(p.rows < 0.5 * before[0].rows for p in during)  # ordinary merchants' traffic really left
    for p in during:
        assert p.estimated["roc_auc"].low <= _auc(p, "realized") <= p.estimated["roc_auc"].high, p.to_dict()
    moved_realized = np.mean([_auc(p, "realized") for p in during]) - np.mean([_auc(p, "realized") for p in before])
    moved_estimate = np.mean([_auc(p, "estimated") for p in during]) - np.mean([_auc(p, "estimated") for p in before])
    assert moved_estimate < -0.02 and moved_realized < -0.02  # both went down
    assert abs(moved_estimate - moved_realized) < 0.03  # by about as much


def _performance(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([feastkit_bin(), "performance", *args],
                          env={**settings_env(settings), "FEASTKIT_REPORTS_DIR": str(settings.reports_dir)},
                          capture_output=True, text=True, timeout=600)


def test_the_command_writes_reports_and_exits_1_on_a_drop(concept) -> None:
    settings, _ = concept  # the concept shift drops
    as_of = (pd.Timestamp(DRIFT_START) + pd.Timedelta(days=DRIFT_DAYS + 45)).isoformat()
    failed = _performance(settings, "--service", SERVICE, "--as-of", as_of)
    assert failed.returncode == 1, failed.stderr
    assert "DROP roc_auc" in failed.stdout and "realized" in failed.stdout
    report = Path(failed.stdout.split("json:")[1].strip())
    document = json.loads(report.read_text())
    service = document["services"][0]
    assert service["service"] == SERVICE and service["degraded"]
    assert {"spiegelhalter_p", "flagged_p", "ece", "calibrated"} <= set(service["calibration"])
    assert report.with_suffix(".html").read_text().count("data:image/png;base64,") == 1
    # by default labels are known as of the data's end: the last weeks are estimated, not realized
    default = _performance(settings, "--service", SERVICE, "--no-fail-on-drop")
    assert default.returncode == 0, default.stderr
    assert "estimated" in default.stdout
    assert_one_line_error(_performance(settings, "--service", "churn_prediction_v1"), "not a fraud service")
    assert_one_line_error(_performance(settings, "--maturity-days", "-1"), "negative")
    assert_one_line_error(_performance(settings, "--max-auc-drop", "3"), "not in [0, 1]")
    assert_one_line_error(_performance(settings, "--as-of", "2026-02-01"), "not 30 days old")
    assert _performance(settings, "--source", "labels").returncode == 2  # a usage error


# The prediction log, joined with chargebacks ----------------------------------------------------------

def test_logged_predictions_are_labelled_by_their_own_chargebacks(deployment: Deployment, tmp_path: Path) -> None:
    """Real transactions of the data's last days, served at their own times: each logged row is
    positive exactly when that transaction got a chargeback known by the as-of time."""
    settings = private_copy(deployment, tmp_path, fraud_service=SERVICE, prediction_log_dir=tmp_path / "log",
                            reports_dir=tmp_path / "reports", prediction_log_flush_seconds=0.2)
    with pytest.raises(NothingLogged):
        run_performance_check(settings, deployment.data_end + timedelta(days=61))
    clean = settings.clean_dir
    tx = pd.read_parquet(clean / "transactions.parquet")
    labels = pd.read_parquet(clean / "fraud_labels.parquet")
    recent = tx[tx["event_timestamp"] >= pd.Timestamp(deployment.data_end) - pd.Timedelta(days=3)]
    fraud = recent[recent["transaction_id"].isin(labels["transaction_id"])].head(15)
    legit = recent[~recent["transaction_id"].isin(labels["transaction_id"])].head(45)
    sample = pd.concat([fraud, legit]).sort_values("event_timestamp")
    assert len(fraud) >= 3
    bodies = [{"transaction_id": str(r.transaction_id), "user_id": int(r.user_id),
               "merchant_id": int(r.merchant_id), "amount": float(r.amount),
               "timestamp": pd.Timestamp(r.event_timestamp).isoformat()} for r in sample.itertuples()]
    with TestClient(create_app(settings, ServingState.load(settings))) as c:
        assert c.post("/v1/predict/fraud:batch", json={"transactions": bodies[:40]}).status_code == 200
        for body in bodies[40:]:
            assert c.post("/v1/predict/fraud", json=body).status_code == 200
    from feastkit.bundle import current_bundle

    bundle = current_bundle(settings.models_dir, SERVICE)
    as_of = deployment.data_end + timedelta(days=61)
    start = pd.Timestamp(sample["event_timestamp"].min()).to_pydatetime()
    end = pd.Timestamp(sample["event_timestamp"].max()).to_pydatetime() + timedelta(seconds=1)
    scored, left_out = scored_log(settings.prediction_log_dir, clean, SERVICE, bundle.version, start, end, as_of)
    assert left_out == 0 and len(scored) == len(sample)
    expected = sample.set_index(pd.to_datetime(sample["event_timestamp"], utc=True))["transaction_id"].isin(
        labels["transaction_id"]).astype("int64")
    got = scored.set_index(pd.to_datetime(scored["time"], utc=True))["label"]
    assert got.sort_index().tolist() == expected.sort_index().tolist()
    assert int(got.sum()) == len(fraud)
    # a chargeback not yet known at the as-of time is not a positive yet
    early, _ = scored_log(settings.prediction_log_dir, clean, SERVICE, bundle.version, start, end,
                          deployment.data_end)
    assert int(early["label"].sum()) < len(fraud)
    # the command's path over the log: every served row in one week, labels as of the as-of time
    from monitoring.performance import performance_check

    outcome = performance_check(settings, None, "log", start, end, as_of, store=deployment.store)
    assert [r.service for r in outcome.results] == [SERVICE]  # the only fraud service with a log
    (result,) = outcome.results
    assert sum(p.rows for p in result.periods) == len(sample) and result.left_out_rows == 0
    assert sum(p.positives_known for p in result.periods) == len(fraud)
    # rows logged by another model version are left out, and counted
    _, other = scored_log(settings.prediction_log_dir, clean, SERVICE, "some-other-version", start, end, as_of)
    assert other == len(sample)
