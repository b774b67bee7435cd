"""A batch prediction reads Redis in one round trip, counted at the Redis client's socket boundary."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import redis.connection

from feastkit.store import apply_repo, materialize_servable, open_store
from serving.app import ServingState, create_app
from tests.conftest import Deployment, copy_repo_definitions, make_settings
from tests.integration.serving_support import PrivateRedis
from tests.integration.test_api import _at, _known_user

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_client(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The deployment's tables materialized into a redis-server of this module's own, served in-process."""
    root = tmp_path_factory.mktemp("serving-reads")
    server = PrivateRedis.start_new(root / "redis")
    try:
        copy_repo_definitions(root / "repo")
        settings = make_settings(root, data_dir=deployment.settings.data_dir, profile="redis",
                                 models_dir=deployment.settings.models_dir, fraud_service="fraud_detection_v2",
                                 redis_connection_string=server.connection_string(), registry_poll_seconds=0)
        apply_repo(settings)
        materialize_servable(settings, deployment.data_end, store=open_store(settings))
        with TestClient(create_app(settings, ServingState.load(settings))) as client:
            yield client
    finally:
        server.stop()


class RoundTrips:
    """Counts what redis-py sends over a socket: one call per command or per pipeline."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = redis.connection.AbstractConnection.send_packed_command

        def counted(connection: object, command: object, check_health: bool = True) -> None:
            self.count += 1
            return original(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)


def test_a_batch_reads_redis_in_one_round_trip(redis_client: TestClient, deployment: Deployment,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    user = _known_user(deployment)
    bodies = [{"transaction_id": f"b-{i}", "user_id": user, "merchant_id": 501 + i, "amount": 10.0 + i,
               "timestamp": _at(deployment, 2), "channel": "pos"} for i in range(30)]
    # warm: connections made, nothing else pending
    assert redis_client.post("/v1/predict/fraud", json=bodies[0]).status_code == 200
    trips = RoundTrips(monkeypatch)
    batch = redis_client.post("/v1/predict/fraud:batch?explain=true", json={"transactions": bodies})
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    # the read reached the store: the known user's features came back from Redis
    assert all("txn_count_30d" not in p["missing_features"] for p in predictions)
    assert predictions[0]["feature_service"] == "fraud_detection_v2"
    assert trips.count == 1, trips.count
    # the same rows one by one: one round trip each (the counter sees every read)
    trips.count = 0
    for body in bodies[:5]:
        assert redis_client.post("/v1/predict/fraud", json=body).status_code == 200
    assert trips.count == 5, trips.count
