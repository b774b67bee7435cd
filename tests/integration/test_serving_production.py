"""Production behaviour of the prediction API: batch, push, metrics, logs, auth, limits, faults."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feastkit.errors import FeastkitError
from feastkit.settings import Settings
from serving.app import ServingState, create_app
from serving.logs import JsonFormatter
from serving.metrics import SERIES
from tests.conftest import (
    Deployment,
    feastkit_bin,
    make_settings,
    settings_env,
    start_server,
    stop_server,
)
from tests.integration.serving_support import PrivateRedis, private_copy
from tests.integration.test_api import _at, _known_user

with warnings.catch_warnings():  # starlette's note about a future httpx; not about this code
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

_USERS: dict[Path, int] = {}


def known_user(deployment: Deployment) -> int:
    """A user with transactions in the last day of data (looked up once per deployment)."""
    clean = deployment.settings.clean_dir
    if clean not in _USERS:
        _USERS[clean] = _known_user(deployment)
    return _USERS[clean]


def fraud_body(deployment: Deployment, **overrides: object) -> dict:
    body = {"transaction_id": "t-1", "user_id": known_user(deployment), "merchant_id": 501,
            "amount": 42.5, "timestamp": _at(deployment, 2), "channel": "pos"}
    body.update(overrides)
    return body


API_KEY = "fk-test-8c1d9a77e2b54f0e"
OTHER_KEY = "fk-test-2f4e6a8b0c1d3e5f"


@pytest.fixture(scope="module")
def copy_settings(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A private copy of the deployment (pushes here never reach the shared online store)."""
    return private_copy(deployment, tmp_path_factory.mktemp("serving-copy"),
                        fraud_service="fraud_detection_v2", max_batch_size=50,
                        max_request_bytes=64_000)


@pytest.fixture(scope="module")
def state(copy_settings: Settings) -> ServingState:
    return ServingState.load(copy_settings)


@pytest.fixture()
def client(copy_settings: Settings, state: ServingState) -> Iterator[TestClient]:
    with TestClient(create_app(copy_settings, state)) as c:
        yield c


@pytest.fixture()
def captured_logs() -> Iterator[io.StringIO]:
    """The JSON lines the serving logger writes during one test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("feastkit.serving")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def _samples(client: TestClient, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics", headers=headers).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    """Sum of a series' samples whose labels include `labels`."""
    return sum(v for (n, lab), v in samples.items()
               if n == name and set(labels.items()) <= set(lab))


# Batch -----------------------------------------------------------------------------------------


def test_fraud_batch_equals_single_predictions(client: TestClient, deployment: Deployment) -> None:
    user = known_user(deployment)
    bodies = [fraud_body(deployment, transaction_id=f"t-{i}", amount=20.0 + 37 * i,
                         timestamp=_at(deployment, 0.5 + i), user_id=user if i % 3 else 9_999_999 + i,
                         merchant_id=500 + i)
              for i in range(12)]
    singles = [client.post("/v1/predict/fraud?explain=true", json=b) for b in bodies]
    assert all(r.status_code == 200 for r in singles), singles[0].text
    batch = client.post("/v1/predict/fraud:batch?explain=true", json={"transactions": bodies})
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert len(predictions) == len(bodies)
    for single, batched in zip(singles, predictions, strict=True):
        single = single.json()
        assert batched["transaction_id"] == single["transaction_id"]
        assert batched["probability"] == pytest.approx(single["probability"], abs=1e-12)
        assert batched["decision"] == single["decision"]
        assert batched["missing_features"] == single["missing_features"]
        assert batched["features"] == single["features"]
    assert any(p["missing_features"] for p in predictions)      # unknown users in the mix
    assert any("txn_count_30d" not in p["missing_features"] for p in predictions)  # and known


def test_churn_batch_equals_single_predictions(client: TestClient, deployment: Deployment) -> None:
    user = known_user(deployment)
    bodies = [{"user_id": user + i, "as_of": _at(deployment, 1 + i)} for i in range(8)]
    bodies.append({"user_id": 9_999_999_999})
    singles = [client.post("/v1/predict/churn", json=b).json() for b in bodies]
    batch = client.post("/v1/predict/churn:batch", json={"users": bodies})
    assert batch.status_code == 200, batch.text
    for single, batched in zip(singles, batch.json()["predictions"], strict=True):
        assert batched["user_id"] == single["user_id"]
        assert batched["probability"] == pytest.approx(single["probability"], abs=1e-12)
        assert batched["missing_features"] == single["missing_features"]


def test_batch_size_and_body_size_limits(client: TestClient, deployment: Deployment) -> None:
    too_many = [fraud_body(deployment)] * 51  # max_batch_size is 50 here
    r = client.post("/v1/predict/fraud:batch", json={"transactions": too_many})
    assert r.status_code == 413 and "at most 50" in r.json()["error"], r.text
    r = client.post("/v1/predict/churn:batch", json={"users": [{"user_id": 1}] * 51})
    assert r.status_code == 413
    assert client.post("/v1/predict/churn:batch", json={"users": []}).status_code == 422

    def small() -> Iterator[bytes]:  # a chunked body under the cap goes through
        yield b'{"users": [{"user_id": 1},'
        yield b' {"user_id": 2}]}'

    r = client.post("/v1/predict/churn:batch", content=small(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2, r.text
    huge = {"transactions": [fraud_body(deployment, transaction_id="x" * 60)] * 40,
            "padding": "y" * 70_000}
    r = client.post("/v1/predict/fraud:batch", json=huge)  # above max_request_bytes (64 000)
    assert r.status_code == 413 and "larger than 64000 bytes" in r.json()["error"]

    one = json.dumps(fraud_body(deployment)).encode()

    def chunks() -> Iterator[bytes]:  # no content-length: the cap counts streamed bytes
        yield b'{"transactions": ['
        for _ in range(2000):
            yield one + b","
        yield b"{}]}"

    r = client.post("/v1/predict/fraud:batch", content=chunks(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413


# Push ------------------------------------------------------------------------------------------


def test_push_makes_new_values_visible_to_the_next_prediction(client: TestClient,
                                                              deployment: Deployment) -> None:
    user = known_user(deployment)
    at = _at(deployment, 3)
    body = fraud_body(deployment, user_id=user, timestamp=at)
    before = client.post("/v1/predict/fraud?explain=true", json=body).json()
    assert before["feature_service"] == "fraud_detection_v2"
    assert "txn_count_10m" in before["missing_features"]  # the stream has been quiet for hours
    pushed_at = (pd.Timestamp(at) - pd.Timedelta(minutes=1)).isoformat()
    event = {"user_id": user, "txn_count_10m": 9, "amount_sum_10m": 2750.0,
             "event_timestamp": pushed_at}
    r = client.post("/v1/push/user_realtime_push", json={"events": [event]})
    assert r.status_code == 200, r.text
    assert r.json() == {"push_source": "user_realtime_push", "rows": 1,
                        "feature_views": ["user_realtime_activity"], "to": "online"}
    after = client.post("/v1/predict/fraud?explain=true", json=body).json()
    assert after["features"]["txn_count_10m"] == 9
    assert after["features"]["amount_sum_10m"] == 2750.0
    assert "txn_count_10m" not in after["missing_features"]
    assert after["probability"] != before["probability"]
    # an older event never replaces the newer value
    older = {**event, "txn_count_10m": 1, "event_timestamp":
             (pd.Timestamp(at) - pd.Timedelta(minutes=5)).isoformat()}
    assert client.post("/v1/push/user_realtime_push", json={"events": [older]}).status_code == 200
    again = client.post("/v1/predict/fraud?explain=true", json=body).json()
    assert again["features"]["txn_count_10m"] == 9


@pytest.mark.parametrize("event, named", [
    ({"txn_count_10m": 1, "amount_sum_10m": 1.0, "event_timestamp": "2026-03-01T00:00:00Z"},
     "user_id"),
    ({"user_id": 1, "txn_count_10m": "many", "amount_sum_10m": 1.0,
      "event_timestamp": "2026-03-01T00:00:00Z"}, "txn_count_10m"),
    ({"user_id": 1, "txn_count_10m": 1, "amount_sum_10m": 1.0,
      "event_timestamp": "2026-03-01 00:00:00"}, "event_timestamp"),
    ({"user_id": 1, "txn_count_10m": 1, "amount_sum_10m": 1.0,
      "event_timestamp": "2026-03-01T00:00:00Z", "surprise": 3}, "surprise"),
])
def test_push_validates_against_the_push_source_schema(client: TestClient, event: dict,
                                                       named: str) -> None:
    r = client.post("/v1/push/user_realtime_push", json={"events": [event]})
    assert r.status_code == 422, r.text
    assert named in r.json()["error"]


def test_unknown_push_source_lists_the_known_ones(client: TestClient) -> None:
    r = client.post("/v1/push/clicks", json={"events": [{"user_id": 1}]})
    assert r.status_code == 404
    assert "clicks" in r.json()["error"] and "user_realtime_push" in r.json()["detail"][0]


# Observability ---------------------------------------------------------------------------------


def test_metrics_expose_the_documented_series_and_they_move(client: TestClient,
                                                           deployment: Deployment) -> None:
    text = client.get("/metrics").text
    for series in SERIES:
        assert f"# TYPE {series} " in text, series
    before = _samples(client)
    assert client.post("/v1/predict/fraud", json=fraud_body(deployment)).status_code == 200
    assert client.post("/v1/predict/fraud", json=fraud_body(
        deployment, user_id=9_999_999_999)).status_code == 200
    assert client.post("/v1/predict/churn", json={"user_id": 9_999_999_998}).status_code == 200
    after = _samples(client)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("feastkit_http_request_duration_seconds_count", route="/v1/predict/fraud") == 2
    assert moved("feastkit_http_requests_total", route="/v1/predict/churn", status="200") == 1
    assert moved("feastkit_online_read_duration_seconds_count",
                 feature_service="fraud_detection_v2") == 2
    assert moved("feastkit_prediction_score_count", model="fraud_detection_v2") == 2
    assert moved("feastkit_prediction_score_count", model="churn_prediction_v1") == 1
    assert moved("feastkit_predictions_total", model="fraud_detection_v2") == 2
    assert moved("feastkit_missing_features_total", feature_service="fraud_detection_v2",
                 feature="txn_count_30d") == 1
    assert moved("feastkit_missing_features_total", feature_service="churn_prediction_v1") >= 1


def test_request_id_in_and_out_and_json_access_log(client: TestClient, deployment: Deployment,
                                                  captured_logs: io.StringIO) -> None:
    r = client.post("/v1/predict/fraud", json=fraud_body(deployment),
                    headers={"X-Request-ID": "order-7731"})
    assert r.headers["x-request-id"] == "order-7731"
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32
    bad = client.post("/v1/predict/fraud", json={"amount": -1})
    assert bad.json()["request_id"] == bad.headers["x-request-id"]
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    access = [e for e in lines if e["message"] == "request"]
    mine = next(e for e in access if e["request_id"] == "order-7731")
    assert mine["route"] == "/v1/predict/fraud" and mine["status"] == 200
    assert mine["duration_ms"] > 0 and mine["level"] == "info"
    assert any(e["request_id"] == generated and e["path"] == "/health" for e in access)


# Security --------------------------------------------------------------------------------------


PROTECTED = ["/v1/predict/fraud", "/v1/predict/fraud:batch", "/v1/predict/churn",
             "/v1/predict/churn:batch", "/v1/push/user_realtime_push"]
# read-only routes that need a key too when keys are configured (/metrics unless FEASTKIT_METRICS_PUBLIC)
PROTECTED_GET = ["/v1/monitoring/drift/latest", "/v1/monitoring/freshness", "/metrics"]


def _valid_bodies(deployment: Deployment) -> dict[str, dict]:
    tx = fraud_body(deployment)
    return {
        "/v1/predict/fraud": tx,
        "/v1/predict/fraud:batch": {"transactions": [tx, tx]},
        "/v1/predict/churn": {"user_id": 7},
        "/v1/predict/churn:batch": {"users": [{"user_id": 7}]},
        "/v1/push/user_realtime_push": {"events": [{
            "user_id": 424242, "txn_count_10m": 1, "amount_sum_10m": 3.5,
            "event_timestamp": _at(deployment, 0)}]},
    }


def test_api_keys_protect_predict_and_push_and_are_never_logged(
        copy_settings: Settings, state: ServingState, deployment: Deployment,
        captured_logs: io.StringIO) -> None:
    settings = copy_settings.model_copy(update={"api_keys": f"{API_KEY}, {OTHER_KEY}"})
    bodies = _valid_bodies(deployment)
    with TestClient(create_app(settings, state)) as c:
        for path in PROTECTED:
            none = c.post(path, json=bodies[path])
            assert none.status_code == 401 and "missing API key" in none.json()["error"], path
            assert none.headers["www-authenticate"] == "Bearer"
            wrong = c.post(path, json=bodies[path], headers={"X-API-Key": API_KEY + "x"})
            assert wrong.status_code == 401 and "not recognised" in wrong.json()["error"], path
            bearer_wrong = c.post(path, json=bodies[path],
                                  headers={"Authorization": f"Bearer {API_KEY[:-1]}"})
            assert bearer_wrong.status_code == 401, path
            ok = c.post(path, json=bodies[path], headers={"X-API-Key": API_KEY})
            assert ok.status_code == 200, (path, ok.text)
            ok = c.post(path, json=bodies[path], headers={"Authorization": f"Bearer {OTHER_KEY}"})
            assert ok.status_code == 200, (path, ok.text)
        for path in PROTECTED_GET:
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": OTHER_KEY + "x"}).status_code == 401, path
            # with a key the route runs (the monitoring routes answer 404/503 here: no report, no check)
            assert c.get(path, headers={"X-API-Key": API_KEY}).status_code != 401, path
        for open_path in ("/health", "/ready"):
            assert c.get(open_path).status_code == 200, open_path
        for schema_path in ("/openapi.json", "/docs"):  # the schema needs a key too
            assert c.get(schema_path).status_code == 401, schema_path
            assert c.get(schema_path, headers={"X-API-Key": API_KEY + "x"}).status_code == 401, schema_path
        assert c.get("/redoc").status_code == 404
        schema = c.get("/openapi.json", headers={"X-API-Key": API_KEY}).json()
        assert {"APIKeyHeader", "HTTPBearer"} <= set(schema["components"]["securitySchemes"])
        assert "/openapi.json" not in schema["paths"] and "/docs" not in schema["paths"]
        page = c.get("/docs", headers={"Authorization": f"Bearer {OTHER_KEY}"})
        assert page.status_code == 200 and "/v1/predict/fraud" in page.text  # the schema, inline
        failures = _value(_samples(c, headers={"X-API-Key": API_KEY}), "feastkit_auth_failures_total")
        assert failures == 3 * len(PROTECTED) + 2 * len(PROTECTED_GET) + 4
    logged = captured_logs.getvalue()
    assert "unauthorized" in logged and "/v1/push/user_realtime_push" in logged
    assert "/v1/monitoring/freshness" in logged
    for key in (API_KEY, OTHER_KEY, API_KEY + "x", API_KEY[:-1]):
        assert key not in logged


def test_metrics_can_be_left_public_with_keys_configured(copy_settings: Settings,
                                                        state: ServingState) -> None:
    settings = copy_settings.model_copy(update={"api_keys": API_KEY, "metrics_public": True})
    with TestClient(create_app(settings, state)) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/v1/monitoring/drift/latest").status_code == 401


def test_the_schema_can_be_left_public_with_keys_configured(copy_settings: Settings,
                                                           state: ServingState) -> None:
    settings = copy_settings.model_copy(update={"api_keys": API_KEY, "docs_public": True})
    with TestClient(create_app(settings, state)) as c:
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/docs").status_code == 200 and "/openapi.json" in c.get("/docs").text
        assert c.get("/metrics").status_code == 401
        assert c.get("/v1/monitoring/drift/latest").status_code == 401


def test_no_keys_configured_means_open_routes(client: TestClient, deployment: Deployment) -> None:
    r = client.post("/v1/predict/fraud", json=fraud_body(deployment), headers={"X-API-Key": "any"})
    assert r.status_code == 200


def test_monitoring_routes_name_no_filesystem_path(copy_settings: Settings, state: ServingState,
                                                  tmp_path: Path, captured_logs: io.StringIO) -> None:
    """Report files are named relative to the data folder; errors name no path (the log does)."""
    data = tmp_path / "data"
    settings = copy_settings.model_copy(update={"data_dir": data, "reports_dir": data / "reports"})

    def failing_check(store: object, at: object) -> list:
        raise FeastkitError(f"the registry at {tmp_path}/registry.db cannot be read", "run feastkit apply")

    with TestClient(create_app(settings, state, freshness=failing_check)) as c:
        missing = c.get("/v1/monitoring/drift/latest")
        assert missing.status_code == 404 and "feastkit drift" in missing.text
        (data / "reports").mkdir(parents=True)
        (data / "reports" / "latest.json").write_text("{not json")
        unreadable = c.get("/v1/monitoring/drift/latest")
        assert unreadable.status_code == 500 and "feastkit drift" in unreadable.text
        (data / "reports" / "latest.json").write_text(json.dumps({"schema_version": 1, "ok": True}))
        latest = c.get("/v1/monitoring/drift/latest")
        assert latest.status_code == 200 and latest.json()["report_html"] == "reports/latest.html"
        freshness = c.get("/v1/monitoring/freshness")
        assert freshness.status_code == 503
        for response in (missing, unreadable, latest, freshness):
            assert str(tmp_path) not in response.text and "/tmp" not in response.text, response.text
    assert f"{tmp_path}/registry.db" in captured_logs.getvalue()  # the operator still sees it


# Start-up refusals -----------------------------------------------------------------------------


def _serve_once(settings: Settings, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([feastkit_bin(), "serve", "--port", "1"], env=settings_env(settings),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_refuses_offline_pushes_into_a_glob_of_computed_files(deployment: Deployment, tmp_path: Path) -> None:
    """Feast's file offline append would duplicate a glob-sourced table on every push: refuse it."""
    settings = deployment.settings.model_copy(update={"push_to": "online_and_offline"})
    with pytest.raises(FeastkitError, match="online_and_offline is unsafe") as info:
        ServingState.load(settings)
    assert "user_realtime_push" in str(info.value) and "*.parquet" in str(info.value)
    proc = subprocess.run([feastkit_bin(), "serve", "--port", "1"], capture_output=True, text=True, timeout=120,
                          env={**settings_env(settings), "FEASTKIT_PUSH_TO": "online_and_offline"}, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "push online only" in proc.stderr


def test_refuses_to_start_without_a_registry_or_with_a_broken_bundle(
        deployment: Deployment, tmp_path: Path) -> None:
    from tests.conftest import copy_repo_definitions

    copy_repo_definitions(tmp_path / "fresh" / "repo")
    no_registry = make_settings(tmp_path / "fresh", data_dir=deployment.settings.data_dir)
    with pytest.raises(FeastkitError, match="feastkit apply"):
        ServingState.load(no_registry)
    proc = _serve_once(no_registry, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "feastkit: error:" in proc.stderr and "apply" in proc.stderr

    import shutil

    models = tmp_path / "models"
    shutil.copytree(deployment.settings.models_dir, models)
    service = models / deployment.settings.fraud_service
    current = (service / "CURRENT").read_text().strip()
    (service / current / "model.joblib").write_bytes(b"not a model")
    broken = deployment.settings.model_copy(update={"models_dir": models})
    with pytest.raises(FeastkitError, match="recorded at promotion"):  # refused before unpickling
        ServingState.load(broken)
    proc = _serve_once(broken, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "recorded at promotion" in proc.stderr and "feastkit train" in proc.stderr


# Fault tolerance with a real Redis server ------------------------------------------------------


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis.start_new(tmp_path / "redis")
    yield server
    server.stop()


def _timed_post(url: str, body: dict, timeout: float = 30.0) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = httpx.post(url, json=body, timeout=timeout)
    return r, time.monotonic() - started


def _wait_for(predicate, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not {what} after {within}s")


def _served_from(private_redis: PrivateRedis, deployment: Deployment, tmp_path: Path) -> Settings:
    """The deployment's feature tables, applied with the redis profile and materialized into a
    redis-server of the test's own (the shared one on 6379 is never stopped or frozen)."""
    from feastkit.store import apply_repo, materialize_servable, open_store
    from tests.conftest import copy_repo_definitions

    copy_repo_definitions(tmp_path / "copy" / "repo")
    settings = make_settings(tmp_path / "copy", data_dir=deployment.settings.data_dir,
                             profile="redis",
                             redis_connection_string=private_redis.connection_string())
    apply_repo(settings)
    materialize_servable(settings, deployment.data_end, store=open_store(settings))
    private_redis.snapshot()
    return settings


def _corrupt_user(settings: Settings, private_redis: PrivateRedis, like: int, user: int) -> None:
    """Give `user` the stored hash of user `like`, with every feature value replaced by bytes
    that are no Feast value (a corrupt write): reading it fails, but not for want of a store."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from feastkit.store import open_store

    store = open_store(settings)
    version = store.config.entity_key_serialization_version

    def key(user_id: int) -> bytes:
        return _redis_key(store.project, EntityKey(join_keys=["user_id"],
                                                   entity_values=[Value(int64_val=user_id)]), version)

    client = private_redis.client()
    stored = client.hgetall(key(like))
    assert stored, "the known user has no stored features"
    client.hset(key(user), mapping={field: value if field.startswith(b"_ts:") else b"\xff\xff\xff\xff"
                                    for field, value in stored.items()})


def _log_lines(server_log: str) -> list[dict]:
    return [json.loads(line) for line in server_log.splitlines() if line.startswith("{")]


def test_redis_down_or_slow_gives_fast_503_and_recovers_without_restart(
        deployment: Deployment, private_redis: PrivateRedis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    timeout = 0.5
    settings = _served_from(private_redis, deployment, tmp_path)
    monkeypatch.setenv("FEASTKIT_ONLINE_TIMEOUT_SECONDS", str(timeout))
    monkeypatch.setenv("FEASTKIT_ONLINE_RETRY_SECONDS", "0.5")
    monkeypatch.setenv("FEASTKIT_READY_PROBE_SECONDS", "0.2")
    server = start_server(settings, tmp_path / "server.log")
    address = private_redis.connection_string()
    try:
        url = f"{server.url}/v1/predict/fraud"
        body = fraud_body(deployment)
        # a client timeout far above the bound: the server, not the client, must cut the wait
        bound = timeout + 2.0
        ok, _ = _timed_post(url, body)
        assert ok.status_code == 200 and ok.json()["missing_features"] == [], ok.text

        # corrupt data is not an outage: 500 with the request id, traceback logged, still ready
        _corrupt_user(settings, private_redis, like=body["user_id"], user=7_000_000_001)
        broken = httpx.post(url, json={**body, "user_id": 7_000_000_001}, timeout=30,
                            headers={"X-Request-ID": "corrupt-value-1"})
        assert broken.status_code == 500, broken.text
        assert broken.json()["request_id"] == "corrupt-value-1"
        assert "Traceback" not in broken.text and "DecodeError" not in broken.text
        assert httpx.get(f"{server.url}/ready", timeout=30).status_code == 200
        assert httpx.post(url, json=body, timeout=30).status_code == 200  # no breaker opened

        # slow: the server is frozen, sockets stay open, nothing answers
        private_redis.pause()
        for _ in range(3):
            r, elapsed = _timed_post(url, body)
            assert r.status_code == 503, r.text
            assert elapsed < bound, elapsed
            assert "online feature store unavailable" in r.json()["error"]
            assert r.json()["detail"] and r.headers["retry-after"]
            assert address not in r.text and "Timeout" not in r.text  # no client error text
        _wait_for(lambda: httpx.get(f"{server.url}/ready", timeout=30).status_code == 503,
                  "not ready while Redis is frozen")
        ready = httpx.get(f"{server.url}/ready", timeout=30)
        assert ready.json()["ready"] is False
        assert ready.json()["checks"]["online_store"].startswith("unavailable")
        assert address not in ready.text and str(private_redis.port) not in ready.text
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        private_redis.resume()
        _wait_for(lambda: httpx.post(url, json=body, timeout=30).status_code == 200,
                  "recovered from a frozen Redis")

        # down: the process is gone, connections are refused
        private_redis.kill()
        for _ in range(3):
            r, elapsed = _timed_post(url, body)
            assert r.status_code == 503 and elapsed < bound, (r.text, elapsed)
            assert address not in r.text and "Connection" not in r.text
        _wait_for(lambda: httpx.get(f"{server.url}/ready", timeout=30).status_code == 503,
                  "not ready while Redis is down")
        down = httpx.get(f"{server.url}/ready", timeout=30)
        assert down.json()["ready"] is False and address not in down.text
        batch = httpx.post(f"{url}:batch", json={"transactions": [body, body]}, timeout=30)
        assert batch.status_code == 503

        # back on the same port with the same data: the same process serves again
        private_redis.start()
        _wait_for(lambda: httpx.get(f"{server.url}/ready", timeout=30).status_code == 200,
                  "ready again after Redis restarted")
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 200 and r.json()["missing_features"] == [], r.text
        assert server.process.poll() is None
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        errors = [line for line in metrics.splitlines()
                  if line.startswith("feastkit_online_store_errors_total{")]
        assert errors and any(float(line.rsplit(" ", 1)[1]) > 0 for line in errors)
        assert 'feastkit_unexpected_errors_total{route="/v1/predict/fraud"} 1.0' in metrics
    finally:
        stop_server(server)
    lines = _log_lines(server.log())
    # the unexpected error is logged once, with its traceback, under the caller's request id...
    unexpected = [e for e in lines if e["message"] == "unexpected error"]
    assert [e["request_id"] for e in unexpected] == ["corrupt-value-1"]
    assert unexpected[0]["traceback"].startswith("Traceback (most recent call last)")
    assert "DecodeError" in unexpected[0]["traceback"]
    # ...and the outages are logged as what they are, without a traceback
    assert any(e["message"] == "online store unavailable" for e in lines)
    assert [e for e in lines if "traceback" in e] == unexpected


def test_ready_answers_from_the_probe_and_never_waits_for_a_frozen_store(
        deployment: Deployment, private_redis: PrivateRedis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen Redis holds every read for the whole online timeout; /ready (and /health) keep
    answering from the probe's state, far inside that timeout, however many arrive at once."""
    from concurrent.futures import ThreadPoolExecutor

    timeout = 6.0  # the freeze each read waits out; /ready must answer well inside it
    settings = _served_from(private_redis, deployment, tmp_path)
    monkeypatch.setenv("FEASTKIT_ONLINE_TIMEOUT_SECONDS", str(timeout))
    monkeypatch.setenv("FEASTKIT_READY_PROBE_SECONDS", "0.2")
    server = start_server(settings, tmp_path / "server.log")

    # one pooled client, warmed up: the crowd below measures the server, not client set-up
    client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

    def timed_get(path: str) -> tuple[int, float, float]:
        started = time.monotonic()
        r = client.get(f"{server.url}{path}")
        finished = time.monotonic()
        return r.status_code, finished - started, finished

    def stuck_read() -> tuple[int, float, float]:
        started = time.monotonic()
        r = client.post(f"{server.url}/v1/predict/fraud", json=fraud_body(deployment))
        finished = time.monotonic()
        return r.status_code, finished - started, finished

    try:
        with ThreadPoolExecutor(max_workers=24) as pool:
            list(pool.map(timed_get, ["/health"] * 24))  # 24 open connections before the freeze
            private_redis.pause()
            # a read stuck behind the freeze, then a crowd of readiness and liveness checks
            stuck = pool.submit(stuck_read)
            checks = [pool.submit(timed_get, path) for path in ["/ready"] * 30 + ["/health"] * 10]
            answers = [c.result() for c in checks]
            stuck_status, stuck_seconds, stuck_finished = stuck.result()
        assert stuck_status == 503 and stuck_seconds >= timeout * 0.9  # the freeze held the read
        # every check was answered while that read was still waiting, each far inside the timeout
        assert max(finished for _, _, finished in answers) < stuck_finished, answers
        assert max(seconds for _, seconds, _ in answers) < timeout / 3, answers
        assert all(status == 200 for status, _, _ in answers[30:])
        # while frozen, once the probe has waited past the timeout, /ready says so (again at once)
        _wait_for(lambda: timed_get("/ready")[0] == 503, "not ready while frozen", within=3 * timeout)
        status, seconds, _ = timed_get("/ready")
        assert status == 503 and seconds < timeout / 3
        private_redis.resume()
        _wait_for(lambda: timed_get("/ready")[0] == 200, "ready after the freeze", within=3 * timeout)
    finally:
        private_redis.resume()
        client.close()
        stop_server(server)


def test_a_push_that_cannot_write_opens_only_the_push_breaker(
        deployment: Deployment, tmp_path: Path, captured_logs: io.StringIO) -> None:
    """Another writer holds the sqlite online store's write lock: pushes fail (503, their own
    breaker), while predictions and readiness, which only read, carry on. A copy and a state of
    its own: the lock must be on the very file this app writes."""
    import sqlite3

    from feastkit.store import open_store

    copy_settings = private_copy(deployment, tmp_path, fraud_service="fraud_detection_v2")
    # the push gives up on the lock after 2 s instead of the default 30 s
    yaml = copy_settings.feature_store_yaml
    yaml.write_text(yaml.read_text().replace("  path: data/online_store.db\n",
                                             "  path: data/online_store.db\n  busy_timeout_seconds: 2\n", 1))
    state = ServingState.load(copy_settings)
    store = open_store(copy_settings)
    assert store.config.online_store.busy_timeout_seconds == 2
    configured = Path(store.config.online_store.path)
    db_path = str(configured if configured.is_absolute() else copy_settings.repo_path / configured)
    event = {"user_id": 515151, "txn_count_10m": 2, "amount_sum_10m": 8.0,
             "event_timestamp": _at(deployment, 0)}
    with TestClient(create_app(copy_settings, state)) as c:
        locker = sqlite3.connect(db_path, timeout=0)
        try:
            locker.execute("BEGIN IMMEDIATE")  # holds the write lock; readers still read
            started = time.monotonic()
            pushed = c.post("/v1/push/user_realtime_push", json={"events": [event]})
            # a push that got through must say how: after how long, and into which file
            assert pushed.status_code == 503, (
                f"{pushed.text} after {time.monotonic() - started:.2f}s; lock holder in transaction: "
                f"{locker.in_transaction}; journal mode: {locker.execute('PRAGMA journal_mode').fetchall()}; "
                f"online store file {state.store.config.online_store.path} (locked: {db_path})")
            assert db_path not in pushed.text and "locked" not in pushed.text
            again = c.post("/v1/push/user_realtime_push", json={"events": [event]})
            assert again.status_code == 503  # failing fast on the push breaker
            prediction = c.post("/v1/predict/fraud", json=fraud_body(deployment))
            assert prediction.status_code == 200, prediction.text
            assert c.get("/ready").status_code == 200
            samples = _samples(c)
            assert _value(samples, "feastkit_store_breaker_open", operation="push") == 1
            assert _value(samples, "feastkit_store_breaker_open", operation="read") == 0
            assert _value(samples, "feastkit_online_store_errors_total", operation="push",
                          reason="write_failed") == 1
        finally:
            locker.rollback()
            locker.close()
    assert "database is locked" in captured_logs.getvalue()  # the reason is logged, not returned


def test_numpy_scorer_matches_the_bundle_on_the_same_features(state: ServingState,
                                                              deployment: Deployment) -> None:
    from serving.inference import Scorer

    user = known_user(deployment)
    epoch = pd.Timestamp(_at(deployment, 2)).timestamp()
    rows = [{"user_id": u, "merchant_id": m, "amount": a, "transaction_epoch": epoch}
            for u, m, a in [(user, 501, 42.5), (9_999_999_999, 501, 10.0), (user, 77_777, 900.0)]]
    features = state.fraud.reader.read(rows, [epoch] * len(rows))
    features.append({**features[0], "amount_zscore": "3.5", "txn_count_1d": None})
    expected_p, expected_missing = state.fraud.bundle.predict_proba(pd.DataFrame(features))
    scorer = Scorer(state.fraud.bundle)
    assert scorer.compiled is not None  # the demo model runs as compiled trees
    got_p, got_missing = scorer.predict_proba(features)
    assert got_missing == expected_missing
    # rows with different features missing (fraud_detection_v2's 10-minute counters are missing
    # in every row: none is valid at the request's time)
    assert any(expected_missing) and len({tuple(m) for m in expected_missing}) > 1
    assert got_p.tolist() == pytest.approx(expected_p.tolist(), abs=1e-12)
    x, _ = scorer.matrix(features)
    assert x.tolist() == state.fraud.bundle.matrix(pd.DataFrame(features))[0].tolist()
