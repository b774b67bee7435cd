"""Any trained feature service is served on generated, typed routes, with no change in serving code.

A third feature service is added only to a temporary copy of the feature repo, applied, trained,
materialized and served by a real `feastkit serve` process next to the existing ones.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from feastkit.errors import FeastkitError
from feastkit.settings import Settings
from serving.app import ServingState, create_app
from serving.examples import example_requests, feature_table, run_examples
from tests.conftest import (
    Deployment,
    RunningServer,
    copy_repo_definitions,
    feastkit_bin,
    make_settings,
    settings_env,
    start_server,
    stop_server,
)
from tests.integration.test_api import _at, fraud_body

with warnings.catch_warnings():  # starlette's note about a future httpx; not about this code
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration
HTTP = httpx.Client(timeout=60)

SERVICE = "churn_recent_v1"
ROUTE = f"/v1/predict/{SERVICE}"
FEATURES = ["purchase_count_30d", "days_since_last_purchase"]
MAX_BATCH = 25
THIRD_SERVICE = f'''

churn_recent_v1 = FeatureService(
    name="{SERVICE}",
    features=[customer_activity[{FEATURES!r}]],
    description="Churn from the last 30 days of purchases only.",
    tags={{"model": "churn", "decisions": "leaves,stays"}},
)
'''


@dataclass
class ThirdService:
    settings: Settings
    server: RunningServer
    version: str


def _add_tags(repo: Path, service: str, tags: dict[str, str]) -> None:
    """Add tags to a feature service of the copied repo (the decisions tag, in these tests)."""
    services = repo / "services.py"
    text = services.read_text()
    end = text.index("}", text.index("tags={", text.index(f'name="{service}"')))
    extra = "".join(f', "{k}": "{v}"' for k, v in tags.items())  # last: wins over an existing key
    services.write_text(text[:end] + extra + text[end:])


@pytest.fixture(scope="module")
def third(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThirdService]:
    """The deployment's data with a repo copy that adds churn_recent_v1: applied, trained (the other
    bundles are the deployment's), materialized into its own sqlite store, served by `feastkit serve`."""
    from feastkit.store import apply_repo, materialize_servable, open_store
    from pipelines.training import train_service

    root = tmp_path_factory.mktemp("third-service")
    repo = copy_repo_definitions(root / "repo")
    with (repo / "services.py").open("a") as f:
        f.write(THIRD_SERVICE)
    _add_tags(repo, "churn_prediction_v1", {"decisions": "gone,kept"})  # the alias keeps its labels
    shutil.copytree(deployment.settings.models_dir, root / "models")
    settings = make_settings(root, data_dir=deployment.settings.data_dir, models_dir=root / "models",
                             max_batch_size=MAX_BATCH)
    apply_repo(settings)
    store = open_store(settings)
    result = train_service(store, SERVICE, settings.clean_dir, settings.models_dir)
    materialize_servable(settings, deployment.data_end, store=store)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FEASTKIT_MAX_BATCH_SIZE", str(MAX_BATCH))
        server = start_server(settings, root / "server.log")
    try:
        yield ThirdService(settings, server, result.path.name)
    finally:
        stop_server(server)


def _active_users(deployment: Deployment, n: int = 5) -> list[int]:
    """Users with a customer_activity row at the last snapshot (served, within the TTL)."""
    activity = feature_table(deployment.settings.features_dir, "customer_activity",
                             ["user_id", "event_timestamp", "purchase_count_30d"])
    latest = activity[activity["event_timestamp"] == activity["event_timestamp"].max()]
    return [int(u) for u in latest.sort_values("purchase_count_30d")["user_id"].tail(n)]


# The third service on a real server ------------------------------------------------------------


def test_third_service_single_prediction(third: ThirdService, deployment: Deployment) -> None:
    user = _active_users(deployment)[-1]
    as_of = _at(deployment, 1)
    r = HTTP.post(f"{third.server.url}{ROUTE}", params={"explain": "true"},
                  json={"user_id": user, "as_of": as_of})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user
    assert body["feature_service"] == SERVICE and body["model_version"] == third.version
    assert 0.0 <= body["probability"] <= 1.0
    assert body["decision"] == ("leaves" if body["probability"] >= body["threshold"] else "stays")
    assert body["missing_features"] == []
    assert list(body["features"]) == FEATURES
    # the same values the churn model reads for this user at that time
    churn = HTTP.post(f"{third.server.url}/v1/predict/churn", params={"explain": "true"},
                      json={"user_id": user, "as_of": as_of}).json()
    assert {k: churn["features"][k] for k in FEATURES} == body["features"]
    # the alias keeps its labels although the service now has a decisions tag; its generated route uses it
    assert churn["decision"] in ("likely_churn", "likely_stay")
    generic = HTTP.post(f"{third.server.url}/v1/predict/churn_prediction_v1",
                        json={"user_id": user, "as_of": as_of}).json()
    assert generic["probability"] == churn["probability"]
    assert generic["decision"] == ("gone" if churn["decision"] == "likely_churn" else "kept")
    # as_of defaults to now (when the data is older than the TTL by then, all features are defaults)
    now = HTTP.post(f"{third.server.url}{ROUTE}", json={"user_id": user})
    assert now.status_code == 200, now.text
    if datetime.now(UTC) > deployment.data_end + timedelta(days=2):
        assert now.json()["missing_features"] == FEATURES


def test_third_service_batch_equals_single_predictions(third: ThirdService, deployment: Deployment) -> None:
    rows = [{"user_id": u, "as_of": _at(deployment, 1 + i)} for i, u in enumerate(_active_users(deployment))]
    rows.append({"user_id": 9_999_999_999, "as_of": _at(deployment, 1)})
    singles = [HTTP.post(f"{third.server.url}{ROUTE}?explain=true", json=row).json() for row in rows]
    batch = HTTP.post(f"{third.server.url}{ROUTE}:batch?explain=true", json={"rows": rows})
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert len(predictions) == len(rows)
    for single, batched in zip(singles, predictions, strict=True):
        assert batched == single
    assert predictions[-1]["missing_features"] == FEATURES
    assert all(p["missing_features"] == [] for p in predictions[:-1])


def test_concurrent_requests_get_the_answers_they_get_alone(third: ThirdService,
                                                           deployment: Deployment) -> None:
    """Requests arriving together are scored together (one read per model): same answers as alone."""
    from concurrent.futures import ThreadPoolExecutor

    users = _active_users(deployment, 8) + [9_999_999_999]
    calls = []
    for i, user in enumerate(users):
        as_of = _at(deployment, 1 + i % 3)
        calls += [(f"{ROUTE}?explain=true", {"user_id": user, "as_of": as_of}),
                  ("/v1/predict/churn", {"user_id": user, "as_of": as_of}),
                  ("/v1/predict/churn_prediction_v1?explain=true", {"user_id": user, "as_of": as_of}),
                  ("/v1/predict/fraud?explain=true",
                   fraud_body(deployment, user_id=user, timestamp=as_of, amount=10.0 + 40 * i)),
                  (f"{ROUTE}:batch", {"rows": [{"user_id": user, "as_of": as_of}, {"user_id": 1, "as_of": as_of}]})]
    alone = [HTTP.post(f"{third.server.url}{path}", json=body).json() for path, body in calls]

    def post(call: tuple[str, dict]) -> dict:
        with httpx.Client(timeout=60) as client:
            return client.post(f"{third.server.url}{call[0]}", json=call[1]).json()

    for _ in range(3):
        with ThreadPoolExecutor(len(calls)) as pool:
            together = list(pool.map(post, calls))
        assert together == alone


def test_unknown_entity_is_predicted_with_the_bundle_defaults(third: ThirdService,
                                                              deployment: Deployment) -> None:
    from feastkit.bundle import current_bundle

    r = HTTP.post(f"{third.server.url}{ROUTE}", params={"explain": "true"},
                  json={"user_id": 9_999_999_999, "as_of": _at(deployment, 1)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["missing_features"] == FEATURES
    assert body["features"] == {name: None for name in FEATURES}
    bundle = current_bundle(third.settings.models_dir, SERVICE)
    expected, missing = bundle.predict_proba(pd.DataFrame([{}]))  # every value from the defaults
    assert missing == [FEATURES]
    assert body["probability"] == pytest.approx(float(expected[0]), abs=1e-12)


@pytest.mark.parametrize("body, field, words", [
    ({}, "user_id", "required"),
    ({"as_of": "2026-03-01T00:00:00Z"}, "user_id", "required"),
    ({"user_id": "abc"}, "user_id", "integer"),
    ({"user_id": 2**63}, "user_id", "less than"),
    ({"user_id": None}, "user_id", "integer"),
    ({"user_id": 1, "as_of": "2026-03-01 00:00:00"}, "as_of", "timezone"),
    ({"user_id": 1, "as_of": "1990-01-01T00:00:00Z"}, "as_of", "between"),
    ({"user_id": 1, "merchant_id": 5}, "merchant_id", "extra"),
])
def test_invalid_requests_name_the_field(third: ThirdService, body: dict, field: str, words: str) -> None:
    r = HTTP.post(f"{third.server.url}{ROUTE}", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error.startswith("invalid request") and field in error and words in error.lower(), error
    batch = HTTP.post(f"{third.server.url}{ROUTE}:batch", json={"rows": [{"user_id": 1}, body]})
    assert batch.status_code == 422 and f"rows.1.{field}" in batch.json()["error"], batch.text


def test_oversized_and_empty_batches(third: ThirdService) -> None:
    r = HTTP.post(f"{third.server.url}{ROUTE}:batch", json={"rows": [{"user_id": 1}] * (MAX_BATCH + 1)})
    assert r.status_code == 413, r.text
    assert f"at most {MAX_BATCH}" in r.json()["error"]
    ok = HTTP.post(f"{third.server.url}{ROUTE}:batch", json={"rows": [{"user_id": 1}] * MAX_BATCH})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == MAX_BATCH
    assert HTTP.post(f"{third.server.url}{ROUTE}:batch", json={"rows": []}).status_code == 422
    assert HTTP.post(f"{third.server.url}{ROUTE}:batch", json=[{"user_id": 1}]).status_code == 422


def test_openapi_documents_the_generated_routes(third: ThirdService) -> None:
    schema = HTTP.get(f"{third.server.url}/openapi.json").json()
    assert {ROUTE, f"{ROUTE}:batch", "/v1/predict/fraud", "/v1/predict/churn",
            "/v1/predict/fraud_detection_v1", "/v1/predict/fraud_detection_v2",
            "/v1/predict/churn_prediction_v1"} <= set(schema["paths"])
    components = schema["components"]["schemas"]

    def resolve(ref: dict) -> dict:
        return components[ref["$ref"].rsplit("/", 1)[1]]

    operation = schema["paths"][ROUTE]["post"]
    request = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
    assert set(request["properties"]) == {"user_id", "as_of"} and request["required"] == ["user_id"]
    assert "shopper for churn" in request["properties"]["user_id"]["description"]  # the entity's
    assert request["examples"] and "user_id" in request["examples"][0]
    assert request["additionalProperties"] is False
    response = resolve(operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert response["properties"]["decision"]["enum"] == ["leaves", "stays"]
    assert {"user_id", "probability", "threshold", "model_version", "feature_service",
            "missing_features", "features"} <= set(response["properties"])
    assert {"401", "413", "422", "503"} <= set(operation["responses"])
    batch = resolve(schema["paths"][f"{ROUTE}:batch"]["post"]["requestBody"]["content"]
                    ["application/json"]["schema"])
    assert batch["properties"]["rows"]["maxItems"] == MAX_BATCH
    fraud = resolve(schema["paths"]["/v1/predict/fraud_detection_v1"]["post"]["requestBody"]["content"]
                    ["application/json"]["schema"])
    assert set(fraud["required"]) == {"user_id", "merchant_id", "amount", "transaction_epoch"}
    assert fraud["properties"]["amount"]["description"] == "Transaction amount in EUR."  # request source's


def test_ready_lists_every_loaded_model(third: ThirdService) -> None:
    checks = HTTP.get(f"{third.server.url}/ready").json()["checks"]
    models = {k.split(":", 1)[1] for k in checks if k.startswith("model:")}
    assert models == {SERVICE, "fraud_detection_v1", "fraud_detection_v2", "churn_prediction_v1"}
    assert checks[f"model:{SERVICE}"] == third.version
    assert {"fraud_model", "churn_model"} <= set(checks) and checks["online_store"] == "ok"


def test_demo_requests_reach_every_served_service(third: ThirdService) -> None:
    sent = run_examples(third.settings, third.server.url)
    assert all(response["status"] == 200 for _, _, response in sent), sent
    titles = [title for title, _, _ in sent]
    assert any(t.startswith(f"{SERVICE}:") for t in titles) and any(t.startswith("fraud_detection_v2:")
                                                                     for t in titles)
    mine = next(response for title, _, response in sent if title.startswith(f"{SERVICE}:"))
    assert mine["missing_features"] == [] and mine["feature_service"] == SERVICE
    proc = subprocess.run([feastkit_bin(), "demo-requests", "--url", third.server.url],
                          env=settings_env(third.settings), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert f'"feature_service": "{SERVICE}"' in proc.stdout and "fraud-like" in proc.stdout


# Which services are served ---------------------------------------------------------------------


def test_a_single_model_project_serves_its_model_and_no_aliases(third: ThirdService,
                                                                deployment: Deployment) -> None:
    only = third.settings.model_copy(update={"services": SERVICE})
    state = ServingState.load(only)
    assert list(state.models) == [SERVICE] and state.fraud is None and state.churn is None
    with TestClient(create_app(only, state)) as client:
        paths = set(client.get("/openapi.json").json()["paths"])
        assert sorted(p for p in paths if p.startswith("/v1/predict/")) == [ROUTE, f"{ROUTE}:batch"]
        assert client.post("/v1/predict/fraud", json=fraud_body(deployment)).status_code == 404
        ready = client.get("/ready").json()
        assert ready["checks"] == {f"model:{SERVICE}": third.version, "online_store": "ok", "registry": "ok"}
        user = _active_users(deployment)[-1]
        r = client.post(ROUTE, json={"user_id": user, "as_of": _at(deployment, 1)})
        assert r.status_code == 200 and r.json()["missing_features"] == [], r.text
    # the demo of a project whose only model is this one: real predictions on its generated route
    examples = example_requests(only)
    assert [path for _, path, _ in examples] == [f"{ROUTE}?explain=true"]
    assert examples[0][2]["user_id"] in set(feature_table(deployment.settings.features_dir, "customer_activity",
                                                          ["user_id"])["user_id"])


def test_refuses_to_start_without_a_servable_bundle(third: ThirdService, tmp_path: Path) -> None:
    def refusal(settings: Settings) -> str:
        with pytest.raises(FeastkitError) as info:
            ServingState.load(settings)
        return info.value.message

    empty = third.settings.model_copy(update={"models_dir": tmp_path / "no-models"})
    assert "has a promoted model" in refusal(empty) and "feastkit train" in refusal(empty)
    listed = third.settings.model_copy(update={"services": f"{SERVICE},fraud_detection_v1",
                                               "models_dir": tmp_path / "no-models"})
    message = refusal(listed)
    assert "FEASTKIT_SERVICES" in message and SERVICE in message and "feastkit train --service" in message
    unknown = third.settings.model_copy(update={"services": "no_such_service"})
    assert "unknown feature service 'no_such_service'" in refusal(unknown)
    named = third.settings.model_copy(update={"services": SERVICE, "fraud_service": "fraud_detection_v2"})
    assert "FEASTKIT_FRAUD_SERVICE" in refusal(named)
    proc = subprocess.run([feastkit_bin(), "serve", "--port", "1"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path,
                          env={**settings_env(third.settings), "FEASTKIT_SERVICES": f"{SERVICE},nope"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr


# The generated route of an existing service equals its alias ----------------------------------


def test_generic_fraud_route_equals_the_fraud_alias(server: RunningServer, deployment: Deployment) -> None:
    schema = HTTP.get(f"{server.url}/openapi.json").json()
    response = schema["paths"]["/v1/predict/fraud_detection_v1"]["post"]["responses"]["200"]
    name = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    positive = schema["components"]["schemas"][name]["properties"]["decision"]["enum"][0]
    for hours, overrides in ((2, {}), (2.5, {"amount": 2400.0, "channel": "web"}),
                             (14, {"user_id": 9_999_999_999})):
        alias_body = fraud_body(deployment, timestamp=_at(deployment, hours), **overrides)
        at = datetime.fromisoformat(alias_body["timestamp"].replace("Z", "+00:00"))
        generic_body = {"user_id": alias_body["user_id"], "merchant_id": alias_body["merchant_id"],
                        "amount": alias_body["amount"], "transaction_epoch": at.timestamp(),
                        "as_of": alias_body["timestamp"]}
        alias = HTTP.post(f"{server.url}/v1/predict/fraud?explain=true", json=alias_body)
        generic = HTTP.post(f"{server.url}/v1/predict/fraud_detection_v1?explain=true", json=generic_body)
        assert alias.status_code == generic.status_code == 200, (alias.text, generic.text)
        a, g = alias.json(), generic.json()
        assert g["probability"] == a["probability"]
        assert g["features"] == a["features"] and g["missing_features"] == a["missing_features"]
        assert (g["threshold"], g["model_version"], g["feature_service"]) == \
               (a["threshold"], a["model_version"], a["feature_service"])
        assert (g["decision"] == positive) == (a["decision"] == "fraud")
        assert (g["user_id"], g["merchant_id"]) == (alias_body["user_id"], alias_body["merchant_id"])
