"""The prediction API through a real HTTP client against a running server process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest

from feastkit.errors import FeastkitError
from feastkit.store import apply_repo
from serving.app import ServingState
from tests.conftest import (
    Deployment,
    RunningServer,
    copy_repo_definitions,
    make_settings,
    start_server,
)

pytestmark = pytest.mark.integration
# Generous: these tests check behaviour, not speed, and CI machines are shared.
HTTP = httpx.Client(timeout=60)


def _at(deployment: Deployment, hours: float) -> str:
    return (pd.Timestamp(deployment.data_end) + pd.Timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _known_user(deployment: Deployment) -> int:
    tx = pd.read_parquet(deployment.settings.clean_dir / "transactions.parquet")
    recent = tx[tx["event_timestamp"] >= pd.Timestamp(deployment.data_end) - pd.Timedelta(days=1)]
    return int(recent["user_id"].value_counts().index[0])


def fraud_body(deployment: Deployment, **overrides: object) -> dict:
    body = {"transaction_id": "t-1", "user_id": _known_user(deployment), "merchant_id": 501,
            "amount": 42.5, "timestamp": _at(deployment, 2), "channel": "pos"}
    body.update(overrides)
    return body


def test_health_ready_and_docs(server: RunningServer) -> None:
    assert HTTP.get(f"{server.url}/health").json()["status"] == "ok"
    ready = HTTP.get(f"{server.url}/ready").json()
    assert ready["ready"] is True and ready["checks"]["online_store"] == "ok"
    schema = HTTP.get(f"{server.url}/openapi.json").json()
    assert {"/v1/predict/fraud", "/v1/predict/churn", "/health", "/ready"} <= set(schema["paths"])
    assert HTTP.get(f"{server.url}/docs").status_code == 200


def test_fraud_prediction_with_explanation(server: RunningServer, deployment: Deployment) -> None:
    r = HTTP.post(f"{server.url}/v1/predict/fraud", params={"explain": "true"},
                   json=fraud_body(deployment))
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0.0 <= body["probability"] <= 1.0
    assert body["decision"] in ("fraud", "legit")
    assert body["feature_service"] == "fraud_detection_v1"
    assert body["transaction_id"] == "t-1"
    assert body["missing_features"] == []
    assert body["features"]["txn_count_30d"] >= 1
    assert body["features"]["transaction_hour"] == int(_at(deployment, 2)[11:13])


def test_suspicious_transaction_scores_higher_than_a_normal_one(server: RunningServer,
                                                                deployment: Deployment) -> None:
    normal = HTTP.post(f"{server.url}/v1/predict/fraud", params={"explain": "true"},
                        json=fraud_body(deployment, timestamp=_at(deployment, 14))).json()
    usual = normal["features"]["amount_avg_30d"]
    odd = HTTP.post(f"{server.url}/v1/predict/fraud", json=fraud_body(
        deployment, amount=round(usual * 9, 2), timestamp=_at(deployment, 2.5), channel="web")).json()
    assert odd["probability"] > normal["probability"]


def test_unknown_user_is_predicted_with_defaults(server: RunningServer, deployment: Deployment) -> None:
    r = HTTP.post(f"{server.url}/v1/predict/fraud", json=fraud_body(deployment, user_id=9_999_999_999))
    assert r.status_code == 200, r.text
    assert "txn_count_30d" in r.json()["missing_features"]
    churn = HTTP.post(f"{server.url}/v1/predict/churn", json={"user_id": 9_999_999_999})
    assert churn.status_code == 200 and "purchase_count_30d" in churn.json()["missing_features"]


def test_churn_prediction(server: RunningServer, deployment: Deployment) -> None:
    user = _known_user(deployment)
    r = HTTP.post(f"{server.url}/v1/predict/churn", params={"explain": "true"},
                   json={"user_id": user, "as_of": _at(deployment, 1)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user and body["feature_service"] == "churn_prediction_v1"
    assert body["decision"] in ("likely_churn", "likely_stay")
    assert set(body["features"]) >= {"purchase_count_30d", "days_since_last_purchase"}


@pytest.mark.parametrize("change, field", [
    ({"amount": -5}, "amount"),
    ({"amount": "lots"}, "amount"),
    ({"amount": 1e12}, "amount"),
    ({"user_id": "abc"}, "user_id"),
    ({"user_id": None}, "user_id"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"timestamp": "2026-04-30 10:00:00"}, "timestamp"),  # no timezone
    ({"timestamp": 12345}, "timestamp"),
    ({"channel": "fax"}, "channel"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_fraud_requests_get_clear_422s(server: RunningServer, deployment: Deployment,
                                           change: dict, field: str) -> None:
    r = HTTP.post(f"{server.url}/v1/predict/fraud", json=fraud_body(deployment, **change))
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]


@pytest.mark.parametrize("missing", ["user_id", "merchant_id", "amount", "timestamp"])
def test_missing_fields_are_named(server: RunningServer, deployment: Deployment, missing: str) -> None:
    body = fraud_body(deployment)
    del body[missing]
    r = HTTP.post(f"{server.url}/v1/predict/fraud", json=body)
    assert r.status_code == 422 and missing in r.json()["error"] and "required" in r.json()["error"].lower()


@pytest.mark.parametrize("payload", [b"{not json", b"", b"[]", b'"text"', b"null"])
def test_malformed_bodies(server: RunningServer, payload: bytes) -> None:
    for path in ("/v1/predict/fraud", "/v1/predict/churn"):
        r = HTTP.post(f"{server.url}{path}", content=payload, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, payload, r.text)
        assert r.json()["error"].startswith("invalid request")


def test_wrong_method_and_route(server: RunningServer) -> None:
    assert HTTP.get(f"{server.url}/v1/predict/fraud").status_code == 405
    assert HTTP.post(f"{server.url}/v1/predict/nothing", json={}).status_code == 404
    assert "Traceback" not in server.log()


def _drifted_repo(tmp_path: Path, deployment: Deployment):
    """A registry where one batch feature's TTL and the on-demand code changed after training."""
    repo = copy_repo_definitions(tmp_path / "repo")
    fraud = repo / "fraud_features.py"
    text = fraud.read_text()
    view = text.index('name="merchant_risk_stats"')  # the view's TTL is the first one after its name
    ttl = text.index("ttl=timedelta(days=2)", view)
    fraud.write_text(text[:ttl] + "ttl=timedelta(days=3)" + text[ttl + len("ttl=timedelta(days=2)"):])
    odfv = repo / "on_demand.py"
    odfv.write_text(odfv.read_text().replace("night_end_hour = 6", "night_end_hour = 5"))
    settings = make_settings(tmp_path, data_dir=deployment.settings.data_dir,
                             models_dir=deployment.settings.models_dir)
    apply_repo(settings)
    return settings


def test_fingerprint_mismatch_refuses_to_start(tmp_path: Path, deployment: Deployment) -> None:
    settings = _drifted_repo(tmp_path, deployment)
    with pytest.raises(FeastkitError) as info:
        ServingState.load(settings)
    message = info.value.message
    assert "merchant_risk_stats:merchant_chargeback_rate_90d" in message
    assert "transaction_request_features:is_night" in message
    assert "user_transaction_stats" not in message  # unchanged features are not blamed
    assert "feastkit train --service fraud_detection_v1" in message
    with pytest.raises(RuntimeError) as failed:
        start_server(settings, tmp_path / "server.log", timeout=60)
    log = str(failed.value)
    assert "exited with 2" in log and "changed since" in log and "Traceback" not in log
