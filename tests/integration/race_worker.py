"""Writers for the online race tests: pushers of newer rows, a replayer of older intervals, a checker.

Each runs in its own process, against the same small Feast repo and online store:

    python -m tests.integration.race_worker push<j>|replay <work dir> <sqlite|redis|redis-cluster> <redis db> <zone,...> <pushers>

For each zone in turn (TZ set and `time.tzset()` called, in the folder <work dir>/<round>):
`push<j>` pushes the newer row of its share of the keys (every `pushers`-th key of a random order;
Feast's `push`, the store's `online_write_batch`) in small batches, from the replayer's second
replay on; `replay` materializes one older hour after another (the Arrow write engine; its column
writer declines this view, so the rows reach the store's `online_write_batch`, all keys in one large
batch) until every pusher is done, then counts the keys whose online value or event time is not the
newest one. Each hour's rows are newer than the hour before, so every replay reads the stored times
of all keys not pushed yet and writes them all: a push landing between that read and that write is
overwritten unless the compare and the write are one step. Each prints one JSON line per zone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # the first older hour: [START, START + 1h)
KEYS = 2000
HOURS = 30  # older hours: [START + h, START + h + 1h) holds every key's row for hour h
NEWER = START + timedelta(hours=HOURS + 1)  # pushed rows are stamped in [NEWER, NEWER + 1h), after every hour
PUSH_BATCH = 25
WRITE_BATCH = KEYS  # materialization's online_write_batch_size: one batch of every key per replay
PROJECT = "online_races"


def old_rows() -> pd.DataFrame:
    """Every key's row in each older hour (what a backfill replays, hour by hour)."""
    rng = np.random.default_rng(1)
    hours = np.repeat(np.arange(HOURS), KEYS)
    ts = START + pd.to_timedelta(hours * 3600 * 10**6 + rng.integers(0, 3600 * 10**6, KEYS * HOURS), unit="us")
    return pd.DataFrame({"user_id": np.tile(np.arange(KEYS, dtype="int64"), HOURS), "event_timestamp": ts,
                         "created": ts, "value": np.tile(np.arange(KEYS, dtype="float64"), HOURS) - hours - 1,
                         "tag": "old"})


def new_rows() -> pd.DataFrame:
    """The newer row of every key (what the pushes bring), distinct from the older one."""
    rng = np.random.default_rng(2)
    ts = NEWER + pd.to_timedelta(rng.integers(0, 3600 * 10**6, KEYS), unit="us")
    return pd.DataFrame({"user_id": np.arange(KEYS, dtype="int64"), "event_timestamp": ts,
                         "created": ts, "value": np.arange(KEYS, dtype="float64") + 0.5, "tag": "new"})


def objects(work: Path) -> list:
    from feast import Entity, FeatureView, Field, FileSource, PushSource, types
    from feast.value_type import ValueType

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    batch = FileSource(name="facts", path=str(work / "facts.parquet"), timestamp_field="event_timestamp",
                       created_timestamp_column="created")
    push = PushSource(name="facts_push", batch_source=batch)
    view = FeatureView(name="facts", entities=[user], ttl=timedelta(days=10), source=push,
                       schema=[Field(name="user_id", dtype=types.Int64), Field(name="value", dtype=types.Float64),
                               Field(name="tag", dtype=types.String)])
    return [user, view]


CLUSTER_NODES = "FEASTKIT_TEST_CLUSTER_NODES"  # "host:port,..." of the Redis Cluster under test


def open_store(work: Path, backend: str, redis_db: int):
    """The repo in `work` (its own registry, sqlite file and, on Redis, project name)."""
    from feast import FeatureStore, RepoConfig

    if backend == "sqlite":
        online = {"type": "feastkit.online_stores.MonotonicSqliteOnlineStore", "path": str(work / "online.db")}
    elif backend == "redis-cluster":  # the nodes of the test's local cluster
        online = {"type": "feastkit.online_stores.FastRedisOnlineStore", "redis_type": "redis_cluster",
                  "connection_string": os.environ[CLUSTER_NODES]}
    else:
        online = {"type": "feastkit.online_stores.FastRedisOnlineStore",
                  "connection_string": f"127.0.0.1:6379,db={redis_db}"}
    registry = {"path": str(work / "registry.db"), "cache_ttl_seconds": 3600,  # read once per writer
                "registry_store_type": "feastkit.registry_stores.AtomicFileRegistryStore"}
    config = RepoConfig(project=f"{PROJECT}_{work.name}", provider="local", repo_path=str(work), registry=registry,
                        online_store=online, entity_key_serialization_version=3,
                        offline_store={"type": "feastkit.offline_stores.AsofDuckDBOfflineStore"},
                        batch_engine={"type": "feastkit.compute_engines.ArrowWriteComputeEngine"},
                        materialization={"pull_latest_features": True, "online_write_batch_size": WRITE_BATCH})
    return FeatureStore(config=config)


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.01)


def set_zone(zone: str) -> int:
    """Switch this process to a timezone; its UTC offset in seconds at START, to prove it took effect."""
    os.environ["TZ"] = zone
    time.tzset()
    return int(START.replace(tzinfo=None).timestamp() - START.timestamp())


def push(work: Path, store, index: int, pushers: int) -> dict:
    from feast.data_source import PushMode

    rows = new_rows()
    order = np.random.default_rng(3).permutation(KEYS)[index::pushers]
    (work / f"push{index}.ready").touch()
    _wait_for(work / "go")
    _wait_for(work / "replaying")  # the replayer is past its first replay: pushes meet steady replays
    during, started = 0, time.perf_counter()
    try:
        for i in range(0, len(order), PUSH_BATCH):
            _push(store, rows.iloc[order[i:i + PUSH_BATCH]], PushMode.ONLINE)
            during += len(order[i:i + PUSH_BATCH]) if not (work / "replay.done").exists() else 0
    finally:
        (work / f"push{index}.done").touch()  # also when a push fails: the replayer stops
    return {"pushed_during_replays": during, "push_seconds": round(time.perf_counter() - started, 2)}


def _push(store, rows: pd.DataFrame, mode) -> None:
    """Feast's push. The replayer's materialize commits the registry meanwhile, by rename
    (`AtomicFileRegistryStore`), so a registry refresh here never reads it half-written."""
    store.push("facts_push", rows, to=mode)


def replay(work: Path, store, pushers: int) -> dict:
    def hour(h: int) -> None:
        begin = START + timedelta(hours=min(h, HOURS - 1))  # past the last hour: that hour again
        store.materialize(begin, begin + timedelta(hours=1), feature_views=["facts"])

    hour(0)  # warm: replays are then short
    (work / "replay.ready").touch()
    _wait_for(work / "go")
    rounds, started = 0, time.perf_counter()
    while not all((work / f"push{j}.done").exists() for j in range(pushers)):
        rounds += 1
        hour(rounds)
        (work / "replaying").touch()
    (work / "replay.done").touch()
    return {"replays": rounds, "replay_seconds": round(time.perf_counter() - started, 2), **check(store)}


def check(store) -> dict:
    """Keys whose online value or event time (as Feast returns it) is not the newest row's."""
    expected = new_rows()
    online = store.get_online_features(features=["facts:value", "facts:tag"],
                                       entity_rows=[{"user_id": int(k)} for k in expected["user_id"]]
                                       ).to_dict(include_event_timestamps=True)
    seconds = (expected["event_timestamp"].astype("int64") // 10**9).tolist()  # epoch seconds, as Feast returns
    wrong = [k for k in range(KEYS) if online["value"][k] != expected["value"][k] or online["tag"][k] != "new"]
    wrong_ts = [k for k in range(KEYS) if online["value__ts"][k] != seconds[k]]
    return {"wrong": len(wrong), "wrong_event_times": len(wrong_ts)}


def main(argv: list[str]) -> None:
    """For each zone in turn (round i in <work>/<i>): switch to it, write as `role`, print the result."""
    import warnings

    warnings.filterwarnings("ignore")
    role, work, backend, redis_db, zones = argv[0], Path(argv[1]), argv[2], int(argv[3]), argv[4].split(",")
    pushers = int(argv[5])
    for i, zone in enumerate(zones):
        offset = set_zone(zone)
        folder = work / str(i)
        if role != "replay":  # the replayer's first materialize has committed the registry
            _wait_for(folder / "replay.ready")
        store = open_store(folder, backend, redis_db)
        store.list_feature_views()  # read the registry now, then only from its cache
        result = (replay(folder, store, pushers) if role == "replay" else
                  push(folder, store, int(role.removeprefix("push")), pushers))
        print("RESULT", json.dumps({"zone": zone, "utc_offset": offset, **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
