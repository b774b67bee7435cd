"""The stream worker on real Redis Streams: a day of transactions, with duplicates, out-of-order events,
bad events and a SIGKILL, keeps the realtime view equal to `feastkit compute`, online and offline."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis

from feastkit.event_stream import StreamLayout, encode_event, publish
from feastkit.settings import Settings
from tests.conftest import (
    ZONES,
    Deployment,
    copy_repo_definitions,
    feastkit_bin,
    free_port,
    make_settings,
    process_timezone,
    require_redis,
    settings_env,
)

pytestmark = pytest.mark.integration

STREAM_DB = 6  # this module owns Redis db 6 and flushes it
VIEW = "user_realtime_activity"
FEATURES = ("txn_count_10m", "amount_sum_10m")


def stream_settings(root: Path, **extra: Any) -> Settings:
    return make_settings(root, stream_redis_url=f"redis://127.0.0.1:6379/{STREAM_DB}",
                         stream_prefix=f"test-{uuid.uuid4().hex[:6]}:", stream_lateness="2m",
                         stream_commit_seconds=0.2, stream_batch_events=40, **extra)


def stream_env(settings: Settings) -> dict[str, str]:
    return {**settings_env(settings), "FEASTKIT_STREAM_REDIS_URL": settings.stream_redis_url,
            "FEASTKIT_STREAM_PREFIX": settings.stream_prefix, "FEASTKIT_STREAM_LATENESS": settings.stream_lateness,
            "FEASTKIT_STREAM_COMMIT_SECONDS": str(settings.stream_commit_seconds),
            "FEASTKIT_STREAM_BATCH_EVENTS": str(settings.stream_batch_events),
            "FEASTKIT_STREAM_PARTITIONS": str(settings.stream_partitions)}


@pytest.fixture(scope="module")
def project(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Its own applied repo, sqlite online store and stream log over copies of the deployment's clean
    and feature tables."""
    from feastkit.store import apply_repo

    require_redis()
    redis.Redis(db=STREAM_DB).flushdb()
    root = tmp_path_factory.mktemp("stream")
    copy_repo_definitions(root / "repo")
    settings = stream_settings(root)
    shutil.copytree(deployment.settings.clean_dir, settings.clean_dir)
    shutil.copytree(deployment.settings.features_dir, settings.features_dir, symlinks=True)
    apply_repo(settings)
    return settings


def day_of_transactions(settings: Settings, deployment: Deployment) -> list[dict[str, Any]]:
    """One generated day, as the stream carries events (the clean table's columns, ISO times)."""
    day = (deployment.data_end - timedelta(days=20)).replace(hour=0, minute=0, second=0, microsecond=0)
    table = pq.read_table(settings.clean_dir / "transactions.parquet")
    ts = table.column("event_timestamp")
    table = table.filter(pc.and_(pc.greater_equal(ts, pa.scalar(day, ts.type)),
                                 pc.less(ts, pa.scalar(day + timedelta(days=1), ts.type))))
    rows = table.sort_by("event_timestamp").to_pylist()
    for row in rows:
        row["event_timestamp"] = row["event_timestamp"].isoformat()
    return rows


def perturbed(events: list[dict[str, Any]], seed: int = 3) -> list[dict[str, Any]]:
    """Arrival order: each event up to 50 s of event time late, and about one in twelve sent again
    up to 50 s after that; so no event arrives 100 s or more behind one seen before it (the worker
    allows 2 minutes)."""
    from datetime import datetime

    rng = random.Random(seed)
    arrivals = []
    for event in events:
        at = datetime.fromisoformat(event["event_timestamp"]).timestamp() + rng.uniform(0, 50)
        arrivals.append((at, event))
        if rng.random() < 1 / 12:
            arrivals.append((at + rng.uniform(0, 50), dict(event)))
    return [event for _, event in sorted(arrivals, key=lambda pair: pair[0])]


def batch_rows(settings: Settings, events: list[dict[str, Any]], out: Path) -> pa.Table:
    """What `feastkit compute` writes for the realtime view over exactly these transactions."""
    from feastkit.store import applied_specs, open_store
    from pipelines.aggregates import compute_view

    clean = out / "clean"
    clean.mkdir(parents=True)
    schema = pq.read_schema(settings.clean_dir / "transactions.parquet")
    unique = {e["transaction_id"]: e for e in events}
    rows = [{**e, "event_timestamp": datetime.fromisoformat(e["event_timestamp"])} for e in unique.values()]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), clean / "transactions.parquet")
    store = open_store(settings)
    spec = next(s for s in applied_specs(store) if s.name == VIEW)
    stamps = [r["event_timestamp"] for r in rows]
    compute_view(spec, clean, out / "features", min(stamps), max(stamps) + timedelta(seconds=1))
    table = pq.ParquetDataset(sorted(str(p) for p in (out / "features" / VIEW).glob("part-*.parquet"))).read()
    return table.sort_by([("user_id", "ascending"), ("event_timestamp", "ascending")])


def latest_per_user(table: pa.Table) -> dict[int, tuple]:
    latest: dict[int, tuple] = {}
    for row in table.to_pylist():
        latest[row["user_id"]] = (row["event_timestamp"], *(row[f] for f in FEATURES))
    return latest


def online_values(settings: Settings, users: list[int]) -> dict[int, tuple]:
    from feastkit.store import open_store

    store = open_store(settings)
    got = store.get_online_features(features=[f"{VIEW}:{f}" for f in FEATURES],
                                    entity_rows=[{"user_id": u} for u in users]).to_dict()
    return {u: tuple(got[f][i] for f in FEATURES) for i, u in enumerate(users)}


def wait_committed(client: redis.Redis, stream: str, group: str, timeout: float = 120.0) -> None:
    """Until the group has read every entry and acknowledged (committed) every one it read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = next((g for g in client.xinfo_groups(stream) if g["name"] == group.encode()), None)
        if info is not None and info["lag"] == 0 and info["pending"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"the worker did not catch up with {stream}: {client.xinfo_groups(stream)}")


def start_worker(settings: Settings, log: Path, metrics_port: int = 0) -> subprocess.Popen:
    env = {**stream_env(settings), "FEASTKIT_STREAM_METRICS_PORT": str(metrics_port)}
    return subprocess.Popen([feastkit_bin(), "stream", "--consumer", "worker-a"], env=env,
                            stdout=log.open("a"), stderr=subprocess.STDOUT)


def worker_counts(port: int) -> dict[str, float]:
    """feastkit_stream_events_total by outcome, scraped from a running worker."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "feastkit_stream_events_total"}


def test_a_day_through_the_stream_equals_compute_online_and_offline(
        project: Settings, deployment: Deployment, tmp_path: Path) -> None:
    from pipelines.stream import read_stream_log

    settings = project
    client = redis.Redis(db=STREAM_DB)
    layout = StreamLayout(settings.stream_prefix, "transactions")
    stream = layout.stream_key(0)
    day = day_of_transactions(settings, deployment)
    arrivals = perturbed(day)
    assert len(arrivals) > len(day) + 50 and len(day) > 1000, (len(day), len(arrivals))
    thirds = [arrivals[: len(arrivals) // 3], arrivals[len(arrivals) // 3: 2 * len(arrivals) // 3],
              arrivals[2 * len(arrivals) // 3:]]
    user = day[0]["user_id"]
    first = day[0]["event_timestamp"]
    bad = [  # each must reach the dead-letter stream with its reason, and change nothing
        ({"transaction_id": 1, "user_id": user, "event_timestamp": first}, "schema"),       # no amount
        ({"transaction_id": 2, "user_id": user, "amount": "12", "event_timestamp": first}, "schema"),
        ({"transaction_id": 3, "user_id": 99_999_999, "amount": 5.0, "event_timestamp": first}, "unknown_entity"),
        ({"transaction_id": 4, "user_id": user, "amount": 5.0, "event_timestamp": "yesterday"}, "schema"),
    ]
    log = tmp_path / "worker.log"
    sent: list[dict[str, Any]] = []

    def send(events: list[dict[str, Any]]) -> None:
        publish(client, layout, "user_id", events)
        sent.extend(events)

    def check(label: str) -> None:
        wait_committed(client, stream, settings.stream_group)
        expected = latest_per_user(batch_rows(settings, sent, tmp_path / label))
        got = online_values(settings, sorted(expected))
        want = {u: v[1:] for u, v in expected.items()}
        assert got == want, (label, {u: (got[u], want[u]) for u in want if got[u] != want[u]})

    port = free_port()
    worker = start_worker(settings, log, port)
    try:
        send(thirds[0])
        for payload, _ in bad[:3]:
            client.xadd(stream, encode_event(payload))
        client.xadd(stream, {"event": b'{"transaction_id": 5, "user_id": %d, "amount": NaN, '
                                      b'"event_timestamp": "%s"}' % (user, first.encode())})
        client.xadd(stream, encode_event(bad[3][0]))
        too_late = {**day[0], "transaction_id": 6, "event_timestamp": day[0]["event_timestamp"]}
        client.xadd(stream, encode_event(too_late))  # hours behind the latest event seen by now
        check("first-third")
        unique = len({e["transaction_id"] for e in thirds[0]})
        assert worker_counts(port) == {"accepted": unique, "duplicate": len(thirds[0]) - unique,
                                       "late": 1, "dead_letter": 5}

        # SIGKILL mid-way through the second third: the restart resumes from the last commit
        send(thirds[1])
        interrupted = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = next(g for g in client.xinfo_groups(stream) if g["name"] == settings.stream_group.encode())
            if 0 < info["lag"] < len(thirds[1]) - 40 and info["pending"] > 0:
                interrupted = True
                break
            time.sleep(0.002)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        assert interrupted, "the worker finished the second third before it could be killed mid-way"
        worker = start_worker(settings, log)
        check("second-third")

        send(thirds[2])
        check("last-third")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(timeout=30) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            worker.kill()
            raise

    # the offline log holds exactly the batch table's rows
    batch = batch_rows(settings, sent, tmp_path / "whole-day")
    logged = read_stream_log(settings.stream_log_dir / VIEW)
    stamps = logged.column("event_timestamp")
    bounds = pc.min_max(batch.column("event_timestamp"))
    logged = logged.filter(pc.and_(pc.greater_equal(stamps, bounds["min"]), pc.less_equal(stamps, bounds["max"])))
    assert logged.num_rows == batch.num_rows == len({e["transaction_id"] for e in sent}) - _shared_times(sent)
    assert logged.cast(batch.schema).equals(batch)

    # every bad event is in the dead-letter stream with its reason; nothing else is
    dead = client.xrange(StreamLayout.dead_letter_key(stream))
    reasons = sorted(fields[b"reason"].decode() for _, fields in dead)
    assert reasons == sorted([r for _, r in bad] + ["non_finite", "late"]), reasons
    assert all(fields[b"detail"] for _, fields in dead)


def _shared_times(events: list[dict[str, Any]]) -> int:
    """Transactions of one user at one instant share one row: how many rows fewer than transactions."""
    unique = {e["transaction_id"]: e for e in events}
    return len(unique) - len({(e["user_id"], e["event_timestamp"]) for e in unique.values()})


@pytest.mark.parametrize("zone", ZONES)
def test_duplicates_lateness_and_restart_in_process(project: Settings, tmp_path: Path, zone: str) -> None:
    """Counts by outcome, a window that expires, and a restart that neither loses nor doubles; in a
    process running in UTC, west and east of it (the windows, the lateness and the online store's
    newer-wins guard compare exact UTC microseconds)."""
    with process_timezone(zone):
        _duplicates_lateness_and_restart(project, tmp_path, ZONES.index(zone))


def _duplicates_lateness_and_restart(project: Settings, tmp_path: Path, day: int) -> None:
    from datetime import UTC

    from feastkit.store import open_store
    from pipelines.stream import StreamWorker

    settings = stream_settings(tmp_path, data_dir=project.data_dir, repo_path=project.repo_path)
    client = redis.Redis(db=STREAM_DB)
    store = open_store(settings)
    layout = StreamLayout(settings.stream_prefix, "transactions")
    user = pq.read_table(settings.clean_dir / "users.parquet").column("user_id")[0].as_py()
    base = datetime(2026, 6, 1 + day, 12, 0, tzinfo=UTC)  # each zone's run after the one before

    def event(i: int, seconds: float, amount: float = 10.0) -> dict[str, Any]:
        return {"transaction_id": f"t{i}", "user_id": user, "merchant_id": 1, "amount": amount,
                "channel": "web", "device_id": "d", "event_timestamp": (base + timedelta(seconds=seconds)).isoformat()}

    def online() -> tuple:
        got = store.get_online_features(features=[f"{VIEW}:{f}" for f in FEATURES],
                                        entity_rows=[{"user_id": user}]).to_dict()
        return tuple(got[f][0] for f in FEATURES)

    worker = StreamWorker(settings, store, client, consumer="in-process")
    worker.start()
    publish(client, layout, "user_id", [event(1, 0), event(2, 60, 5.0), event(2, 60, 5.0), event(1, 0)])
    report = worker.step()
    assert (report.accepted, report.duplicates) == (2, 2)
    assert online() == (2, 15.0)
    worker.commit()

    # 30 s late (inside the 2 minutes): applied where it belongs, the latest row corrected
    publish(client, layout, "user_id", [event(3, 30, 1.0)])
    assert worker.step().accepted == 1
    assert online() == (3, 16.0)
    # uncommitted when the worker dies: a new worker reprocesses it from the committed state
    worker = StreamWorker(settings, store, client, consumer="in-process")
    worker.start()
    assert worker.step().accepted == 1   # t3 again, from the backlog, counted once
    assert online() == (3, 16.0)
    worker.commit()

    # 11 minutes on, the window has moved on; 3 minutes behind the latest is past the lateness
    publish(client, layout, "user_id", [event(4, 660, 2.0), event(5, 480, 7.0)])
    report = worker.step()
    assert (report.accepted, report.late) == (1, 1)
    assert online() == (2, 7.0)  # [60 s, 660 s] holds t2 and t4; t1 and t3 left the window
    publish(client, layout, "user_id", [event(6, 800, 1.0)])
    worker.step()
    assert online() == (2, 3.0)
    worker.commit()
    # bounded: nothing older than the window plus the lateness (800 s - 12 min) is held
    assert sorted(worker.partitions[0].entities[user]) == ["t4", "t6"]

    # a fresh worker loads the committed windows and has nothing left to read
    again = StreamWorker(settings, store, client, consumer="in-process")
    again.start()
    assert sorted(again.partitions[0].entities[user]) == ["t4", "t6"]
    assert again.step().entries == 0
    assert len(json.loads(client.hget(again.partitions[0].state_key, json.dumps(user)))) == 2


def test_the_api_appends_what_it_scores_and_the_next_prediction_sees_it(
        project: Settings, deployment: Deployment) -> None:
    """FEASTKIT_STREAM_PUBLISH: a scored transaction reaches the stream, the worker applies it, and
    fraud_detection_v2 scores the user's next transaction with it counted. A broker that is down
    costs the predictions nothing: the lost events are counted."""
    import warnings

    from prometheus_client.parser import text_string_to_metric_families

    from feastkit.store import open_store
    from pipelines.stream import StreamWorker
    from serving.app import ServingState, create_app
    from tests.integration.test_serving_production import fraud_body

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    settings = project.model_copy(update={"stream_publish": True, "fraud_service": "fraud_detection_v2",
                                          "stream_prefix": f"test-{uuid.uuid4().hex[:6]}:"})
    if not settings.models_dir.exists():  # the deployment's bundles: same definitions, same fingerprints
        shutil.copytree(deployment.settings.models_dir, settings.models_dir)
    client = redis.Redis(db=STREAM_DB)
    stream = StreamLayout(settings.stream_prefix, "transactions").stream_key(0)
    first = fraud_body(deployment, transaction_id="loop-1")
    later = {**first, "transaction_id": "loop-2",
             "timestamp": (datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
                           + timedelta(minutes=1)).isoformat()}

    def published(c: TestClient) -> dict[str, float]:
        return {s.labels["outcome"]: s.value for f in text_string_to_metric_families(c.get("/metrics").text)
                for s in f.samples if s.name == "feastkit_stream_published_total"}

    with TestClient(create_app(settings, ServingState.load(settings))) as c:
        assert c.post("/v1/predict/fraud?explain=true", json=first).status_code == 200
        deadline = time.monotonic() + 10
        while client.xlen(stream) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        (_, fields), = client.xrange(stream)
        event = json.loads(fields[b"event"])
        assert event["transaction_id"] == "loop-1" and event["user_id"] == first["user_id"]
        assert event["amount"] == first["amount"] and event["channel"] == first["channel"]
        assert datetime.fromisoformat(event["event_timestamp"]) == \
            datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
        worker = StreamWorker(settings, open_store(settings), client, consumer="loop")
        worker.start()
        assert worker.step().accepted == 1
        answer = c.post("/v1/predict/fraud?explain=true", json=later).json()
        assert answer["features"]["txn_count_10m"] == 1, answer
        assert answer["features"]["amount_sum_10m"] == first["amount"]
        assert published(c).get("appended", 0) >= 1 and "broker_error" not in published(c)
        worker.commit()

    # training reads what the stream served: the logged row, though compute never saw loop-1
    import pandas as pd

    at = pd.Timestamp(later["timestamp"]) - pd.Timedelta(microseconds=1)
    store = open_store(settings)
    offline = store.get_historical_features(
        entity_df=pd.DataFrame({"user_id": [first["user_id"]], "event_timestamp": [at]}),
        features=[f"{VIEW}:{f}" for f in FEATURES]).to_df()
    assert (offline["txn_count_10m"].tolist(), offline["amount_sum_10m"].tolist()) == ([1], [first["amount"]])

    down = settings.model_copy(update={"stream_redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down, ServingState.load(down))) as c:
        answers = [c.post("/v1/predict/fraud", json={**first, "transaction_id": f"x{i}"}).status_code
                   for i in range(3)]
        assert answers == [200, 200, 200]
        deadline = time.monotonic() + 15
        while published(c).get("broker_error", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert published(c).get("broker_error") == 3.0
