"""The `redis-cluster` profile on a real local Redis Cluster (3 masters + 3 replicas, started here):
materialization writes the bytes a single Redis holds, reads equal Feast's, the server predicts and
takes pushes on it, and the newer-wins guard holds there too."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis

from feastkit.online_stores import FastRedisOnlineStore
from feastkit.settings import Settings
from serving.app import ServingState, create_app
from serving.features import ServiceReader
from tests.conftest import Deployment, copy_repo_definitions, make_settings, start_server
from tests.integration.redis_cluster import LocalRedisCluster, all_hashes
from tests.integration.serving_support import PrivateRedis
from tests.integration.test_online import latest_offline
from tests.integration.test_serving_production import _at, _wait_for, fraud_body, known_user

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    started = LocalRedisCluster.start_new(tmp_path_factory.mktemp("redis-cluster"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis.start_new(tmp_path_factory.mktemp("single-redis"))
    yield server
    server.stop()


def _materialized(deployment: Deployment, root: Path, profile: str, connection: str) -> Deployment:
    from feastkit.store import apply_repo, materialize_servable, open_store

    copy_repo_definitions(root / "repo")
    settings = make_settings(root, data_dir=deployment.settings.data_dir, profile=profile,
                             redis_connection_string=connection, fraud_service="fraud_detection_v2",
                             prediction_log=False)
    apply_repo(settings)
    store = open_store(settings)
    materialize_servable(settings, deployment.data_end, store=store)
    return Deployment(settings, store, deployment.data_start, deployment.data_end)


@pytest.fixture(scope="module")
def on_cluster(deployment: Deployment, cluster: LocalRedisCluster,
               tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return _materialized(deployment, tmp_path_factory.mktemp("on-cluster"), "redis-cluster",
                         cluster.connection_string)


@pytest.fixture(scope="module")
def on_single(deployment: Deployment, single: PrivateRedis, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return _materialized(deployment, tmp_path_factory.mktemp("on-single"), "redis", f"127.0.0.1:{single.port}")


def test_the_cluster_holds_the_bytes_a_single_redis_holds(on_cluster: Deployment, on_single: Deployment,
                                                           cluster: LocalRedisCluster, single: PrivateRedis) -> None:
    assert on_cluster.store.config.online_store.redis_type.name == "redis_cluster"
    expected = all_hashes(single.client())
    assert len(expected) > 1000
    assert cluster.keys() == expected  # every key, field and value byte for byte
    # the keys really are spread: each master holds a share
    shares = [redis.Redis(port=port).dbsize() for port in cluster.masters()]
    assert len(shares) == 3 and all(n > len(expected) / 10 for n in shares), shares
    # rematerializing the same interval changes nothing (equal rows overwrite with equal bytes)
    from feastkit.store import materialize_servable

    materialize_servable(on_cluster.settings, on_cluster.data_end, store=on_cluster.store)
    assert cluster.keys() == expected


@pytest.mark.parametrize("service", ["fraud_detection_v2", "churn_prediction_v1"])
def test_reads_on_the_cluster_are_feasts_and_the_single_servers(on_cluster: Deployment, on_single: Deployment,
                                                               service: str) -> None:
    users = latest_offline(on_cluster, "user_transaction_stats", "user_id").index[-40:]
    merchants = latest_offline(on_cluster, "merchant_risk_stats", "merchant_id").index[-40:]
    reader = ServiceReader.build(on_cluster.store, service)
    rows = [{"user_id": int(u), "merchant_id": int(m)} for u, m in zip(users, merchants, strict=True)]
    rows += [{"user_id": -5, "merchant_id": int(merchants[0])}, dict(rows[0])]  # an unknown key, a duplicate
    rows = [{k: r[k] for k in reader.join_keys} for r in rows]
    got = reader.read_raw(rows)
    feast = on_cluster.store.get_online_features(features=reader.base_refs, entity_rows=rows
                                                 ).to_dict(include_event_timestamps=True)
    names = [ref.split(":")[1] for ref in reader.base_refs]
    assert any(v is not None for v in got[names[0]]) and any(v is None for v in got[names[0]])
    for name in names:
        assert got[name] == feast[name], name
    assert got == ServiceReader.build(on_single.store, service).read_raw(rows)


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, ServingState.load(settings)))


def test_the_server_predicts_and_takes_pushes_on_the_cluster_and_older_events_never_win(
        on_cluster: Deployment, on_single: Deployment, deployment: Deployment) -> None:
    user = known_user(deployment)
    at = _at(deployment, 3)
    body = fraud_body(deployment, user_id=user, timestamp=at)
    with _client(on_single.settings) as c:
        reference = c.post("/v1/predict/fraud?explain=true", json=body).json()
    with _client(on_cluster.settings) as c:
        assert c.get("/ready").status_code == 200
        before = c.post("/v1/predict/fraud?explain=true", json=body).json()
        assert before == {**reference, "features": before["features"]} and before["features"] == reference["features"]
        event = {"user_id": user, "txn_count_10m": 9, "amount_sum_10m": 2750.0,
                 "event_timestamp": (pd.Timestamp(at) - pd.Timedelta(minutes=1)).isoformat()}
        pushed = c.post("/v1/push/user_realtime_push", json={"events": [event]})
        assert pushed.status_code == 200, pushed.text
        after = c.post("/v1/predict/fraud?explain=true", json=body).json()
        assert after["features"]["txn_count_10m"] == 9 and after["probability"] != before["probability"]
        skipped = FastRedisOnlineStore.skipped_writes
        older = {**event, "txn_count_10m": 1, "event_timestamp": (pd.Timestamp(at) - pd.Timedelta(minutes=5)).isoformat()}
        assert c.post("/v1/push/user_realtime_push", json={"events": [older]}).status_code == 200
        assert FastRedisOnlineStore.skipped_writes == skipped + 1
        assert c.post("/v1/predict/fraud?explain=true", json=body).json()["features"]["txn_count_10m"] == 9


def test_a_batch_reads_each_node_in_one_round_trip(on_cluster: Deployment, deployment: Deployment,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import redis.connection

    users = [int(u) for u in latest_offline(on_cluster, "user_transaction_stats", "user_id").index[-30:]]
    bodies = [fraud_body(deployment, user_id=u, merchant_id=501 + i, transaction_id=f"b{i}")
              for i, u in enumerate(users)]
    with _client(on_cluster.settings) as c:
        assert c.post("/v1/predict/fraud", json=bodies[0]).status_code == 200  # connections made
        trips: dict[int, int] = {}
        original = redis.connection.AbstractConnection.send_packed_command

        def counted(connection: redis.connection.AbstractConnection, command: object,
                    check_health: bool = True) -> None:
            packed = command if isinstance(command, bytes | bytearray | memoryview) else b"".join(command)
            if b"HMGET" in bytes(packed):  # feature reads (the readiness probe pings meanwhile)
                trips[connection.port] = trips.get(connection.port, 0) + 1
            return original(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
        batch = c.post("/v1/predict/fraud:batch", json={"transactions": bodies})
        monkeypatch.undo()
    assert batch.status_code == 200, batch.text
    assert all("txn_count_30d" not in p["missing_features"] for p in batch.json()["predictions"])
    # 30 users and 30 merchants over 3 masters: every master read, each in one pipelined round trip
    assert len(trips) == 3 and set(trips.values()) == {1}, trips


def test_materialization_writes_each_master_through_its_own_pipeline_and_follows_redirects(
        on_cluster: Deployment, cluster: LocalRedisCluster, single: PrivateRedis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.cluster import ClusterPipeline, RedisCluster

    from feastkit import online_stores
    from feastkit.store import materialize_servable

    expected = all_hashes(single.client())
    cluster_pipelines = []
    real_execute = ClusterPipeline.execute
    monkeypatch.setattr(ClusterPipeline, "execute",
                        lambda self, *a, **k: cluster_pipelines.append(1) or real_execute(self, *a, **k))
    via_cluster: list[int] = []  # calls sent again through the cluster client
    real_run = online_stores._run_script

    def run(client: object, commands: list, redirected: list | None) -> int:
        if isinstance(client, RedisCluster):
            via_cluster.append(len(commands))
        return real_run(client, commands, redirected)

    monkeypatch.setattr(online_stores, "_run_script", run)
    cluster.flush()
    materialize_servable(on_cluster.settings, on_cluster.data_end, store=on_cluster.store)
    assert cluster.keys() == expected
    # every call went to the master serving its slot, in that master's own pipeline
    assert cluster_pipelines == [] and via_cluster == []
    # a stale slot map: every call sent to a master that does not serve its key is answered MOVED,
    # and goes again through the cluster client
    real_route = RedisCluster.get_node_from_key
    misrouted = []

    def wrong_master(self: RedisCluster, key: object, replica: bool = False) -> object:
        right = real_route(self, key, replica)
        misrouted.append(key)
        return next(n for n in self.get_primaries() if n.name != right.name)

    monkeypatch.setattr(RedisCluster, "get_node_from_key", wrong_master)
    cluster.flush()
    materialize_servable(on_cluster.settings, on_cluster.data_end, store=on_cluster.store)
    monkeypatch.undo()
    assert len(misrouted) == sum(via_cluster) >= len(expected) and cluster_pipelines  # every call redirected
    assert cluster.keys() == expected


def test_a_master_killed_under_traffic_gives_200_or_a_fast_503_and_the_server_recovers(
        on_cluster: Deployment, cluster: LocalRedisCluster, single: PrivateRedis, deployment: Deployment,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Last in this module: it leaves the cluster with 3 masters and 2 replicas."""
    from feastkit.store import materialize_servable

    cluster.flush()
    materialize_servable(on_cluster.settings, on_cluster.data_end, store=on_cluster.store)
    expected = all_hashes(single.client())
    assert cluster.keys() == expected
    timeout = 0.5
    monkeypatch.setenv("FEASTKIT_ONLINE_TIMEOUT_SECONDS", str(timeout))
    monkeypatch.setenv("FEASTKIT_ONLINE_RETRY_SECONDS", "0.5")
    monkeypatch.setenv("FEASTKIT_READY_PROBE_SECONDS", "0.2")
    monkeypatch.setenv("FEASTKIT_PREDICTION_LOG", "false")
    monkeypatch.setenv("FEASTKIT_FRAUD_SERVICE", "fraud_detection_v2")
    server = start_server(on_cluster.settings, tmp_path / "server.log")
    users = [int(u) for u in latest_offline(on_cluster, "user_transaction_stats", "user_id").index[-300:]]
    bodies = [fraud_body(deployment, user_id=u, transaction_id=f"f{i}") for i, u in enumerate(users)]
    answers: list[tuple[float, int, float, str]] = []  # (sent at, status, seconds, error)
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while not stop.is_set():
                started = time.monotonic()
                r = http.post(f"{server.url}/v1/predict/fraud", json=bodies[n % len(bodies)])
                answers.append((started, r.status_code, time.monotonic() - started,
                                "" if r.status_code == 200 else r.json().get("error", r.text)))
                n += 1

    sender = threading.Thread(target=traffic, daemon=True)
    try:
        sender.start()
        _wait_for(lambda: len(answers) >= 200, "answering before the kill")
        victim = cluster.masters()[0]
        killed_at = time.monotonic()
        cluster.kill(victim)
        cluster.wait_for_failover(victim)  # a replica took over the victim's slots
        assert victim not in cluster.masters() and len(cluster.masters()) == 3
        promoted_at = time.monotonic()
        _wait_for(lambda: sum(1 for a in answers if a[0] > promoted_at + 2.0) >= 300,
                  "sending after the failover", within=60)
        stop.set()
        sender.join(timeout=60)
        assert server.process.poll() is None  # the same server process throughout
    finally:
        stop.set()
        server.process.terminate()
        server.process.wait(timeout=30)
    statuses = {status for _, status, _, _ in answers}
    assert statuses <= {200, 503}, [a for a in answers if a[1] not in (200, 503)][:3]
    failed = [a for a in answers if a[1] == 503]
    assert all(seconds < timeout + 2.0 for _, _, seconds, _ in failed), max(a[2] for a in failed)
    assert all("online feature store unavailable" in error for *_, error in failed), failed[:3]
    before = [a for a in answers if a[0] + a[2] < killed_at]  # answered before the kill
    assert before and all(a[1] == 200 for a in before), [a for a in before if a[1] != 200][:3]
    # once the replica serves the slots, every request is answered again, without a restart
    last = [a for a in answers if a[0] > promoted_at + 2.0]
    assert last and all(a[1] == 200 for a in last), [a for a in last if a[1] != 200][:3]
    # asynchronous replication may have lost nothing or a little: materializing again restores it all
    materialize_servable(on_cluster.settings, on_cluster.data_end, store=on_cluster.store)
    assert cluster.keys() == expected
    print(f"failover: {len(answers)} requests, {len(failed)} answered 503 "
          f"(slowest {max((a[2] for a in failed), default=0):.3f} s), "
          f"{promoted_at - killed_at:.1f} s until a replica served the slots")
