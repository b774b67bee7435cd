"""Newer-wins online writes under concurrent writers and in any process timezone, on real sqlite and Redis.

A pusher (Feast's `push` of each key's newer row, in small batches) and a replayer (Feast's
`materialize` of an older interval, over and over) write the same keys at the same time, each in
its own process, with TZ set to the zone under test. Afterwards every key must hold its newest
value and event time: a write path that reads the stored times and then writes loses pushes that
land in between, and a guard that decodes Feast's sqlite `event_ts` in the wrong zone keeps or
drops the wrong rows even without concurrency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, require_redis
from tests.integration import race_worker

pytestmark = pytest.mark.integration

ZONES = ["UTC", "America/Los_Angeles", "Asia/Tokyo"]
REDIS_DB = 12  # this module's own Redis database (flushed)


def _worker(role: str, work: Path, backend: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.integration.race_worker", role, str(work), backend,
                             str(REDIS_DB), ",".join(ZONES)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_concurrent_pushes_and_replays_leave_the_newest_value(backend: str, tmp_path: Path) -> None:
    """In each zone: 4,000 keys, each pushed once (newer) while the older interval is replayed."""
    if backend == "redis":
        import redis

        require_redis()
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    for i in range(len(ZONES)):
        folder = tmp_path / str(i)
        folder.mkdir()
        race_worker.old_rows().to_parquet(folder / "facts.parquet")
        race_worker.open_store(folder, backend, REDIS_DB).apply(race_worker.objects(folder))
    workers = {role: _worker(role, tmp_path, backend) for role in ("push", "replay")}
    for i in range(len(ZONES)):  # each round starts when both writers are set up for it
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
    for zone, offset, pushed, replayed in zip(ZONES, (0, 8 * 3600, -9 * 3600), results["push"], results["replay"],
                                              strict=True):
        print(zone, pushed, replayed)
        # the zone took effect in both writers, and the race really ran: all pushes landed during replays
        assert pushed["utc_offset"] == replayed["utc_offset"] == offset, (pushed, replayed)
        assert replayed["replays"] >= 2 and pushed["pushed_during_replays"] == race_worker.KEYS, (pushed, replayed)
        assert (replayed["wrong"], replayed["wrong_event_times"]) == (0, 0), (zone, pushed, replayed)
