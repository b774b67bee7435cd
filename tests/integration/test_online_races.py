"""Newer-wins online writes under concurrent writers and in any process timezone, on real sqlite, Redis and a Redis Cluster.

Pushers (Feast's `push` of each key's newer row, in small batches, several processes on Redis)
and a replayer (Feast's `materialize` of one older hour after another, every key in one large
batch) write the same keys at the same time, each in its own process, with TZ set to the zone
under test. Every replay writes all keys not pushed yet, so a write path that reads the stored
times and then writes (Feast's Redis store, feastkit's before its compare-and-write script)
loses the pushes that land in between: hundreds of keys per zone. Afterwards every key must hold
its newest value and event time; a guard that decodes Feast's sqlite `event_ts` in the wrong zone
keeps or drops the wrong rows even without concurrency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, require_redis
from tests.integration import race_worker

pytestmark = pytest.mark.integration

ZONES = ["UTC", "America/Los_Angeles", "Asia/Tokyo"]
REDIS_DB = int(os.environ.get("FEASTKIT_TEST_RACES_REDIS_DB", "12"))  # this module's own Redis database (flushed)


PUSHERS = {"sqlite": 1, "redis": 3, "redis-cluster": 3}  # pusher processes


def _worker(role: str, work: Path, backend: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.integration.race_worker", role, str(work), backend,
                             str(REDIS_DB), ",".join(ZONES), str(PUSHERS[backend])], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture
def cluster_nodes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """On the redis-cluster backend, a local cluster of this test's own (3 masters + 3 replicas)."""
    if request.node.callspec.params["backend"] != "redis-cluster":
        yield ""
        return
    from tests.integration.redis_cluster import LocalRedisCluster

    cluster = LocalRedisCluster.start_new(tmp_path_factory.mktemp("race-cluster"))
    try:
        yield cluster.connection_string
    finally:
        cluster.stop()


@pytest.mark.parametrize("backend", ["sqlite", "redis", "redis-cluster"])
def test_concurrent_pushes_and_replays_leave_the_newest_value(backend: str, cluster_nodes: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """In each zone: 2,000 keys, each pushed once (newer) while older hours are replayed."""
    monkeypatch.setenv(race_worker.CLUSTER_NODES, cluster_nodes)  # for the stores opened here and the writers
    env = dict(os.environ)
    if backend == "redis":
        import redis

        require_redis()
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    for i in range(len(ZONES)):
        folder = tmp_path / str(i)
        folder.mkdir()
        race_worker.old_rows().to_parquet(folder / "facts.parquet")
        race_worker.open_store(folder, backend, REDIS_DB).apply(race_worker.objects(folder))
    roles = [f"push{j}" for j in range(PUSHERS[backend])] + ["replay"]
    workers = {role: _worker(role, tmp_path, backend, env) for role in roles}
    for i in range(len(ZONES)):  # each round starts when every writer is set up for it
        for role, proc in workers.items():
            while not (tmp_path / str(i) / f"{role}.ready").exists():
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                time.sleep(0.01)
        (tmp_path / str(i) / "go").touch()
    results = {}
    for role, proc in workers.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results[role] = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    pushes = [results[f"push{j}"] for j in range(PUSHERS[backend])]
    wrong = {}
    for zone, offset, replayed, *pushed in zip(ZONES, (0, 8 * 3600, -9 * 3600), results["replay"], *pushes,
                                               strict=True):
        print(zone, replayed, pushed)
        # the zone took effect in every writer, and the race really ran: all pushes landed during replays
        assert {p["utc_offset"] for p in pushed} == {replayed["utc_offset"]} == {offset}, (pushed, replayed)
        assert replayed["replays"] >= 2, (pushed, replayed)
        assert sum(p["pushed_during_replays"] for p in pushed) == race_worker.KEYS, (pushed, replayed)
        wrong[zone] = (replayed["wrong"], replayed["wrong_event_times"])
    # keys whose value / event time is not the newest, per zone
    assert wrong == {zone: (0, 0) for zone in ZONES}, wrong
