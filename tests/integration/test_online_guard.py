"""The newer-wins write guard, one write at a time, on real sqlite and Redis, in three process timezones.

Each test writes rows through both write paths of the store plugins (`online_write_arrow`, what
materialization uses, and `online_write_batch`, what pushes use) and reads them back through
Feast's `get_online_features`. The zone is switched in-process (`TZ` + `time.tzset()`), which is
what Feast's sqlite store reads when it turns event times into integers and back.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from feastkit import feast_compat
from feastkit.errors import FeastkitError
from tests.conftest import ZONES, process_timezone, require_redis
from tests.integration import race_worker

pytestmark = pytest.mark.integration

REDIS_DB = 11  # this module's own Redis database (flushed)
T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(params=ZONES)
def zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """The process runs in this zone for the test (and back to its own zone afterwards)."""
    with process_timezone(request.param):
        yield request.param


class Target:
    """A one-view repo on a real store, written through either path of its online store plugin."""

    def __init__(self, work: Path, backend: str) -> None:
        if backend == "redis":
            import redis

            require_redis()
            redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
        race_worker.old_rows().iloc[:0].to_parquet(work / "facts.parquet")
        self.store = race_worker.open_store(work, backend, REDIS_DB)
        self.store.apply(race_worker.objects(work))
        self.view = self.store.get_feature_view("facts")
        self.online = feast_compat.online_store(self.store)
        self.join_keys = {"user_id": self.view.entity_columns[0].dtype.to_value_type()}

    def write(self, path: str, rows: list[tuple[int, datetime, float]]) -> None:
        """Write (user, event time, value) rows in one batch through "arrow" or "rows"."""
        batch = pa.record_batch({
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "value": pa.array([r[2] for r in rows], pa.float64()),
            "tag": pa.array([f"v{r[2]}" for r in rows]),
            "event_timestamp": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
            "created": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
        })
        config = self.store.config
        if path == "arrow":
            assert self.online.online_write_arrow(config, self.view, batch, self.join_keys, None)
        else:
            self.online.online_write_batch(config, self.view,
                                           feast_compat.arrow_to_protos(batch, self.view, self.join_keys), None)

    def read(self, users: list[int]) -> list[tuple[float | None, int | None]]:
        """(value, event epoch seconds) of each user, as Feast's `get_online_features` returns them."""
        got = self.store.get_online_features(features=["facts:value", "facts:tag"],
                                             entity_rows=[{"user_id": u} for u in users]
                                             ).to_dict(include_event_timestamps=True)
        for value, tag in zip(got["value"], got["tag"], strict=True):  # one row: never a mix of two writes
            assert tag == (None if value is None else f"v{value}")
        return list(zip(got["value"], got["value__ts"], strict=True))


def _s(when: datetime) -> int:
    return int(when.timestamp())


@pytest.mark.parametrize("path", ["arrow", "rows"])
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_older_writes_are_skipped_and_equal_or_newer_ones_win(backend: str, path: str, zone: str,
                                                              tmp_path: Path) -> None:
    """Hours, seconds and single microseconds apart, in one batch and across batches."""
    target = Target(tmp_path, backend)
    hour, us = timedelta(hours=1), timedelta(microseconds=1)
    target.write(path, [(1, T, 1.0), (2, T, 1.0), (3, T, 1.0), (4, T + us, 1.0), (5, T, 1.0)])
    target.write("rows" if path == "arrow" else "arrow",  # the other path: a push after a materialization
                 [(1, T - 3 * hour, 2.0),  # hours older: skipped (within every zone's offset)
                  (2, T + 3 * hour, 2.0),  # hours newer: written
                  (3, T, 2.0),  # equal: overwrites (a rerun is idempotent, a correction lands)
                  (4, T, 2.0),  # one microsecond older, same second: skipped
                  (5, T + us, 2.0)])  # one microsecond newer, same second: written
    target.write(path, [(6, T + hour, 3.0), (6, T, 4.0), (7, T, 3.0), (7, T, 4.0)])  # in one batch
    assert target.read([1, 2, 3, 4, 5, 6, 7]) == [
        (1.0, _s(T)), (2.0, _s(T + 3 * hour)), (2.0, _s(T)), (1.0, _s(T)), (2.0, _s(T)),
        (3.0, _s(T + hour)), (4.0, _s(T))]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_guard_holds_across_a_daylight_saving_gap(backend: str, tmp_path: Path) -> None:
    """In Los Angeles the naive UTC times 02:00-03:00 of 2026-03-08 fall in the clocks' gap.

    Feast's sqlite `event_ts` then maps 02:30 and 03:30 to the same integer, and 02:30 above 03:15:
    the guard must compare the exact time, not those integers.
    """
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    try:
        target = Target(tmp_path, backend)
        gap, after = datetime(2026, 3, 8, 2, 30, tzinfo=UTC), datetime(2026, 3, 8, 3, 15, tzinfo=UTC)
        assert _s(gap.replace(tzinfo=None)) > _s(after.replace(tzinfo=None))  # Feast's integers run backwards
        target.write("arrow", [(1, gap, 1.0), (2, after, 1.0)])
        target.write("rows", [(1, after, 2.0), (2, gap, 2.0)])
        assert [value for value, _ in target.read([1, 2])] == [2.0, 1.0]
    finally:
        os.environ.pop("TZ", None)
        time.tzset()


def test_a_locked_sqlite_store_fails_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """Another writer holding the lock past `busy_timeout_seconds`: a FeastkitError, never a silent write."""
    target = Target(tmp_path, "sqlite")
    target.store.config.online_store.busy_timeout_seconds = 0.2
    target.write("arrow", [(1, T, 1.0)])
    other = sqlite3.connect(tmp_path / "online.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for path in ("arrow", "rows"):
            with pytest.raises(FeastkitError, match="locked by another writer") as caught:
                target.write(path, [(1, T + timedelta(hours=1), 2.0)])
            assert "\n" not in str(caught.value) and "busy_timeout_seconds" in str(caught.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert target.read([1]) == [(1.0, _s(T))]
    # a lock released within the timeout is waited for
    other = sqlite3.connect(tmp_path / "online.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.3, lambda: (other.execute("ROLLBACK"), other.close()))
    release.start()
    target.store.config.online_store.busy_timeout_seconds = 30
    target.write("rows", [(1, T + timedelta(hours=1), 2.0)])
    release.join()
    assert target.read([1]) == [(2.0, _s(T + timedelta(hours=1)))]


class _StepReportsNoMoreRows(sqlite3.Connection):
    """A connection whose batched statement fails as CPython reported a write that stayed busy
    past the timeout in a full test run: a DatabaseError saying "no more rows available"."""

    def executemany(self, *args: object, **kwargs: object) -> sqlite3.Cursor:
        raise sqlite3.DatabaseError("no more rows available")


def test_a_busy_write_reported_as_no_more_rows_is_the_store_being_locked(tmp_path: Path) -> None:
    """Not a 500: the same one-line locked error as "database is locked", its cause an
    OperationalError (what serving maps to 503 and the push breaker), the logged reason naming it."""
    from feastkit.online_stores import MonotonicSqliteOnlineStore

    conn = sqlite3.connect(tmp_path / "online.db", factory=_StepReportsNoMoreRows)
    conn.execute("CREATE TABLE t (entity_key BLOB, feature_name TEXT, value BLOB, value_text TEXT, "
                 "event_ts timestamp, created_ts timestamp, feastkit_event_us INTEGER, "
                 "PRIMARY KEY (entity_key, feature_name))")
    with pytest.raises(FeastkitError, match="locked by another writer") as caught:
        MonotonicSqliteOnlineStore()._upsert(conn, "t", [(b"k", "f", b"v", None, 1, 1, 1)])
    assert "database is locked (no more rows available)" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert "busy_timeout_seconds" in str(caught.value) and "\n" not in str(caught.value)


def test_redis_writes_survive_a_flushed_script_cache(tmp_path: Path) -> None:
    """After SCRIPT FLUSH (a restart, a failover) the compare-and-write script is loaded again."""
    import redis

    target = Target(tmp_path, "redis")
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    for path, value in (("arrow", 1.0), ("rows", 2.0), ("arrow", 3.0)):
        client.script_flush()
        target.write(path, [(1, T + timedelta(minutes=value), value), (2, T - timedelta(minutes=value), value)])
    assert target.read([1, 2]) == [(3.0, _s(T + timedelta(minutes=3))), (1.0, _s(T - timedelta(minutes=1)))]


def test_redis_guard_decodes_times_before_the_epoch(tmp_path: Path) -> None:
    """Negative seconds are 10-byte varints in the Timestamp proto; the epoch itself is an empty one."""
    target = Target(tmp_path, "redis")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    before = epoch - timedelta(seconds=1, microseconds=500_000)
    target.write("arrow", [(1, before, 1.0), (2, epoch, 1.0)])
    target.write("rows", [(1, before - timedelta(microseconds=1), 2.0), (2, before, 2.0)])  # older: skipped
    target.write("arrow", [(1, epoch, 3.0), (2, epoch, 3.0)])  # newer, equal
    assert [value for value, _ in target.read([1, 2])] == [3.0, 3.0]
