"""Serving's time semantics against Feast historical retrieval: TTL to the microsecond, no value
stamped after the request's time, under process timezones west and east of UTC."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from feastkit.services import build_training_set
from serving.features import ServiceReader
from tests.conftest import ZONES, process_timezone
from tests.integration.serving_support import PrivateRedis

pytestmark = pytest.mark.integration

US = timedelta(microseconds=1)
TTL = timedelta(hours=2)
# one row per user, so the online store holds exactly the row historical retrieval can pick
STAMPS = {
    1: datetime(2026, 3, 1, 10, 0, 0, 250_000, tzinfo=UTC),   # mid-second
    2: datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC),            # whole second
    3: datetime(2026, 3, 1, 9, 59, 59, 999_999, tzinfo=UTC),  # one microsecond before a second
}

STORE_YAML = """project: servingtime
provider: local
registry:
  registry_type: file
  path: {root}/registry.db
  cache_ttl_seconds: 60
online_store:
{online}
offline_store:
  type: feastkit.offline_stores.AsofDuckDBOfflineStore
entity_key_serialization_version: 3
batch_engine:
  type: feastkit.compute_engines.ArrowWriteComputeEngine
materialization:
  pull_latest_features: true
  online_write_batch_size: 10000
"""
ONLINE = {
    "sqlite": "  type: feastkit.online_stores.MonotonicSqliteOnlineStore\n  path: {root}/online.db",
    "redis": "  type: feastkit.online_stores.FastRedisOnlineStore\n  connection_string: {redis}",
}


@pytest.fixture(params=ZONES)
def process_tz(request: pytest.FixtureRequest) -> Iterator[str]:
    """The process's local timezone for one test (Feast's sqlite store encodes event times in it)."""
    with process_timezone(request.param):
        yield request.param


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis.start_new(tmp_path_factory.mktemp("serving-time-redis"))
    yield server
    server.stop()


def tiny_store(root: Path, online: str, redis: PrivateRedis | None = None):
    """A Feast repo of one view (TTL 2 h) and two services (one with the fraud recipe), applied with
    Feast and materialized through the configured engine into the chosen online store."""
    from feast import (
        Entity,
        FeatureService,
        FeatureStore,
        FeatureView,
        Field,
        FileSource,
        ValueType,
    )
    from feast.types import Float64

    root.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"user_id": list(STAMPS), "score": [float(u) * 1.5 for u in STAMPS],
                          "event_timestamp": pd.to_datetime(list(STAMPS.values()), utc=True)})
    frame.to_parquet(root / "scores.parquet")
    block = ONLINE[online].format(root=root, redis=redis.connection_string() if redis else "")
    (root / "feature_store.yaml").write_text(STORE_YAML.format(root=root, online=block))
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(name="scores_source", path=str(root / "scores.parquet"),
                        timestamp_field="event_timestamp")
    view = FeatureView(name="scores", entities=[user], ttl=TTL, schema=[Field(name="score", dtype=Float64)],
                       source=source)
    plain = FeatureService(name="plain_scores", features=[view])
    fraud = FeatureService(name="fraud_scores", features=[view], tags={"model": "fraud"})
    store = FeatureStore(repo_path=str(root))
    store.apply([user, source, view, plain, fraud])
    store.materialize(datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), feature_views=["scores"])
    return store


def probes(stamp: datetime) -> list[datetime]:
    """Request times around both boundaries of a row's validity: its stamp and stamp + TTL."""
    return [at + d for at in (stamp, stamp + TTL) for d in (-US, timedelta(0), US)]


def served_and_trained(store, service: str, users: list[int]) -> tuple[list, list]:
    """(online value, training-set value) for each user at each probe time of its row."""
    rows, times = [], []
    for user in users:
        for at in probes(STAMPS[user]):
            rows.append({"user_id": user})
            times.append(at)
    reader = ServiceReader.build(store, service)
    online = [r["score"] for r in reader.read(rows, [t.timestamp() for t in times])]
    # the training set asks as the service's label recipe does: fraud one microsecond before
    offset = US if service == "fraud_scores" else timedelta(0)
    entity = pd.DataFrame({"user_id": [r["user_id"] for r in rows],
                           "event_timestamp": pd.to_datetime([t - offset for t in times], utc=True)})
    offline = build_training_set(store, service, entity)["score"]
    return online, [None if pd.isna(v) else float(v) for v in offline]


@pytest.mark.parametrize("service", ["plain_scores", "fraud_scores"])
def test_redis_serving_equals_training_at_the_microsecond_boundaries(
        service: str, process_tz: str, redis_server: PrivateRedis, tmp_path: Path) -> None:
    """Redis keeps event times to the microsecond: serving and training agree at stamp +- 1 us and at
    stamp + TTL +- 1 us, and a value stamped after the request's time is not served."""
    redis_server.client().flushdb()
    store = tiny_store(tmp_path, "redis", redis_server)
    online, offline = served_and_trained(store, service, list(STAMPS))
    assert online == offline, process_tz
    # both sides of each boundary are represented: the probes are not all valid or all missing
    assert None in offline and any(v is not None for v in offline)


@pytest.mark.parametrize("service", ["plain_scores", "fraud_scores"])
def test_sqlite_serving_equals_training_at_the_microsecond_boundaries(
        service: str, process_tz: str, tmp_path: Path) -> None:
    """Feast's sqlite store keeps whole seconds (written in the process's local time): rows stamped
    on a whole second agree with training at every boundary, in every process timezone."""
    store = tiny_store(tmp_path, "sqlite")
    online, offline = served_and_trained(store, service, [2])
    assert online == offline, process_tz
    assert None in offline and any(v is not None for v in offline)


def test_sqlite_keeps_whole_seconds_of_event_times(tmp_path: Path) -> None:
    """What the sqlite store gives back: the event time truncated to its second (stated in the docs)."""
    store = tiny_store(tmp_path, "sqlite")
    raw = ServiceReader.build(store, "plain_scores").read_raw([{"user_id": u} for u in STAMPS])
    truncated = [(s - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1) * 1_000_000 for s in STAMPS.values()]
    assert raw["score__us"] == truncated


def test_a_value_stamped_after_the_request_time_is_missing(process_tz: str, redis_server: PrivateRedis,
                                                            tmp_path: Path) -> None:
    """The online store holds the newest value; a request about an earlier time must not get it."""
    redis_server.client().flushdb()
    store = tiny_store(tmp_path, "redis", redis_server)
    reader = ServiceReader.build(store, "plain_scores")
    stamp = STAMPS[2]
    before, at = reader.read([{"user_id": 2}] * 2, [(stamp - US).timestamp(), stamp.timestamp()])
    assert before["score"] is None
    assert at["score"] == 3.0


# Request times over HTTP: the live window, replay mode, and what the response says ---------------


def _tiny_bundle(store, models: Path) -> None:
    """A real (tiny) model bundle for `plain_scores`, fingerprinted against the registry and promoted."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from feastkit.bundle import FORMAT_VERSION, ModelBundle, feature_fingerprints, promote

    refs = ["scores:score"]
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [3.0], [4.0]]), [0, 0, 1, 1])
    manifest = {"format_version": FORMAT_VERSION, "version": "v1", "feature_service": "plain_scores",
                "feature_refs": refs, "defaults": {"score": 0.0}, "threshold": 0.5,
                "feature_fingerprints": feature_fingerprints(store, refs)}
    ModelBundle(model, manifest).save(models)
    promote(models, "plain_scores", "v1")


def _client(root: Path, **settings: object):
    import warnings

    from feastkit.settings import Settings
    from serving.app import create_app
    from tests.conftest import REPO_ROOT

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    config = Settings(project_root=REPO_ROOT, data_dir=root / "data", repo_path=root, models_dir=root / "models",
                      services="plain_scores", **settings)
    return TestClient(create_app(config))


@pytest.fixture()
def tiny_served(tmp_path: Path) -> Path:
    store = tiny_store(tmp_path, "sqlite")
    _tiny_bundle(store, tmp_path / "models")
    return tmp_path


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_live_serving_refuses_request_times_outside_the_window(process_tz: str, tiny_served: Path) -> None:
    now = datetime.now(UTC)
    with _client(tiny_served, replay=False, request_time_window="15m") as client:
        for at in (now - timedelta(hours=1), now + timedelta(minutes=20), STAMPS[2]):
            r = client.post("/v1/predict/plain_scores", json={"user_id": 2, "as_of": _iso(at)})
            assert r.status_code == 422, (process_tz, at, r.text)
            error = r.json()["error"]
            assert "FEASTKIT_REQUEST_TIME_WINDOW" in error and "FEASTKIT_REPLAY=true" in error, error
            assert ("before" if at < now else "after") in error, error
        for body in ({"user_id": 2}, {"user_id": 2, "as_of": _iso(now - timedelta(minutes=5))}):
            r = client.post("/v1/predict/plain_scores", json=body)
            assert r.status_code == 200, (process_tz, r.text)
        batch = client.post("/v1/predict/plain_scores:batch", json={"rows": [
            {"user_id": 2}, {"user_id": 2, "as_of": _iso(now - timedelta(days=3))}]})
        assert batch.status_code == 422 and "row 1:" in batch.json()["error"], batch.text


def test_replay_mode_scores_historical_times_and_says_what_was_missing(process_tz: str,
                                                                       tiny_served: Path) -> None:
    stamp = STAMPS[2]
    with _client(tiny_served, replay=True) as client:
        at = client.post("/v1/predict/plain_scores?explain=true", json={"user_id": 2, "as_of": _iso(stamp)})
        assert at.status_code == 200, at.text
        assert at.json()["missing_features"] == [] and at.json()["features"]["score"] == 3.0
        # stamped after the request's time: not served, and the response says so
        early = client.post("/v1/predict/plain_scores?explain=true",
                            json={"user_id": 2, "as_of": _iso(stamp - timedelta(seconds=1))})
        assert early.status_code == 200, early.text
        assert early.json()["missing_features"] == ["score"], (process_tz, early.json())


def test_replay_defaults_to_on_only_for_the_embedded_profile() -> None:
    from feastkit.settings import Settings

    assert Settings(profile="local").replay_mode is True
    assert Settings(profile="redis").replay_mode is False
    assert Settings(profile="redis", replay=True).replay_mode is True
    assert Settings(profile="local", replay=False).replay_mode is False
