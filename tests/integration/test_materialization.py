"""feastkit's materialization path (Arrow write engine + store plugins) writes what Feast's stock path writes.

Same data, two repos: Feast's local engine with its `sqlite`/`redis` store, and
`ArrowWriteComputeEngine` with feastkit's store. Raw online contents must be identical (Redis:
every key, field and byte; sqlite: every row) and `get_online_features` must return the same values.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import redis_contents, require_redis

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, tzinfo=UTC)
STOCK_DB, FAST_DB = 13, 14  # this module's own Redis databases (flushed)
FEATURES = {"amount": "Float64", "ratio": "Float32", "count": "Int64", "small": "Int32", "flag": "Bool",
            "label": "String"}


def _write_data(path: Path, seed: int = 5) -> None:
    """300 users (int keys) x 4 days of rows, several per user per day, with ties, nulls and odd values."""
    rng = np.random.default_rng(seed)
    n = 4000
    users = rng.integers(0, 300, n)
    ts = (START + pd.to_timedelta(rng.integers(0, 4 * 86400, n), unit="s")).astype("datetime64[us, UTC]")
    created = ts + pd.to_timedelta(rng.integers(0, 600, n), unit="s")
    words = np.array(["", "low", "hé", "漢字", "x" * 64])
    frame = pa.table({
        "user_id": pa.array(users, pa.int64()),
        "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "created": pa.array(created, pa.timestamp("us", tz="UTC")),
        "amount": pa.array(rng.gamma(2, 30, n), mask=rng.random(n) < 0.1),
        "ratio": pa.array(rng.random(n).astype(np.float32), mask=rng.random(n) < 0.1),
        "count": pa.array(rng.integers(-5, 10**12, n), mask=rng.random(n) < 0.1),
        "small": pa.array(rng.integers(-100, 100, n).astype(np.int32)),
        "flag": pa.array(rng.random(n) < 0.3, mask=rng.random(n) < 0.1),
        "label": pa.array(words[rng.integers(0, len(words), n)], mask=rng.random(n) < 0.1),
    })
    pq.write_table(frame, path)


def _store(work: Path, name: str, online: dict, engine: str | None):
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, types
    from feast.value_type import ValueType

    folder = work / name
    folder.mkdir()
    config = RepoConfig(project="mat_equality", provider="local", repo_path=str(folder),
                        registry=str(folder / "registry.db"), online_store=online,
                        offline_store={"type": "feastkit.offline_stores.AsofDuckDBOfflineStore"},
                        entity_key_serialization_version=3,
                        materialization={"pull_latest_features": True, "online_write_batch_size": 700},
                        **({"batch_engine": {"type": engine}} if engine else {}))
    store = FeatureStore(config=config)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(name="facts", path=str(work / "facts.parquet"), timestamp_field="event_timestamp",
                        created_timestamp_column="created")
    view = FeatureView(name="user_facts", entities=[user], ttl=timedelta(days=10), source=source,
                       schema=[Field(name="user_id", dtype=types.Int64)] +
                              [Field(name=f, dtype=getattr(types, t)) for f, t in FEATURES.items()])
    store.apply([user, view])
    return store


def _materialize_days(store, days: list[int]) -> None:
    """One materialize call per day, in the order given (an older day after a newer one = a backfill)."""
    for day in days:
        a = START + timedelta(days=day)
        store.materialize(a, a + timedelta(days=1) - timedelta(microseconds=1), feature_views=["user_facts"])


def _online(store) -> pd.DataFrame:
    rows = [{"user_id": i} for i in range(-1, 301)]
    refs = [f"user_facts:{f}" for f in FEATURES]
    result = store.get_online_features(features=refs, entity_rows=rows).to_dict(include_event_timestamps=True)
    return pd.DataFrame(result)


def _sqlite_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute(
            "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts "
            "FROM mat_equality_user_facts").fetchall())


DAY_ORDERS = [[0, 1, 2, 3], [3, 1, 0, 2]]  # in order, and with backfills of older days


REDIS_OPTIONS = [{}, {"skip_dedup": True, "key_ttl_seconds": 7200}]


@pytest.mark.parametrize("options", REDIS_OPTIONS, ids=["default", "skip-dedup-and-key-ttl"])
@pytest.mark.parametrize("days", DAY_ORDERS, ids=["in-order", "with-backfills"])
def test_redis_fast_path_writes_feast_bytes(tmp_path: Path, days: list[int], options: dict) -> None:
    import redis

    require_redis()
    clients = {db: redis.Redis(host="127.0.0.1", port=6379, db=db) for db in (STOCK_DB, FAST_DB)}
    for client in clients.values():
        client.flushdb()
    _write_data(tmp_path / "facts.parquet")
    stock = _store(tmp_path, "stock", {"type": "redis", "connection_string": f"127.0.0.1:6379,db={STOCK_DB}",
                                       **options}, None)
    fast = _store(tmp_path, "fast", {"type": "feastkit.online_stores.FastRedisOnlineStore",
                                     "connection_string": f"127.0.0.1:6379,db={FAST_DB}", **options},
                  "feastkit.compute_engines.ArrowWriteComputeEngine")
    _materialize_days(stock, days)
    _materialize_days(fast, days)
    stock_contents, fast_contents = redis_contents(STOCK_DB), redis_contents(FAST_DB)
    assert len(stock_contents) == 300
    assert fast_contents == stock_contents
    pd.testing.assert_frame_equal(_online(fast), _online(stock))
    for db, client in clients.items():  # an expiry on every key exactly when it is configured
        ttls = {client.ttl(key) for key in client.scan_iter(count=10_000)}
        assert (min(ttls) > 0) if options else (ttls == {-1}), (db, sorted(ttls)[:3])


@pytest.mark.parametrize("days", DAY_ORDERS, ids=["in-order", "with-backfills"])
def test_sqlite_fast_path_writes_feast_rows(tmp_path: Path, days: list[int]) -> None:
    _write_data(tmp_path / "facts.parquet")
    stock = _store(tmp_path, "stock", {"type": "feastkit.online_stores.MonotonicSqliteOnlineStore",
                                       "path": str(tmp_path / "stock.db")}, None)
    fast = _store(tmp_path, "fast", {"type": "feastkit.online_stores.MonotonicSqliteOnlineStore",
                                     "path": str(tmp_path / "fast.db")},
                  "feastkit.compute_engines.ArrowWriteComputeEngine")
    _materialize_days(stock, days)
    _materialize_days(fast, days)
    stock_rows = _sqlite_rows(tmp_path / "stock.db")
    assert len(stock_rows) == 300 * len(FEATURES)
    assert _sqlite_rows(tmp_path / "fast.db") == stock_rows
    pd.testing.assert_frame_equal(_online(fast), _online(stock))
    # both paths also record the exact event time the guard compares, and agree on it
    exact = {path: _exact_times(tmp_path / f"{path}.db") for path in ("stock", "fast")}
    assert exact["fast"] == exact["stock"] and None not in exact["fast"].values()


def _exact_times(path: Path) -> dict[tuple, int]:
    with sqlite3.connect(path) as conn:
        return dict(((key, name), us) for key, name, us in conn.execute(
            "SELECT entity_key, feature_name, feastkit_event_us FROM mat_equality_user_facts"))


def test_in_order_sqlite_equals_feasts_own_store(tmp_path: Path) -> None:
    """In order, the guarded fast path leaves exactly what Feast's unguarded `sqlite` store leaves."""
    _write_data(tmp_path / "facts.parquet")
    stock = _store(tmp_path, "stock", {"type": "sqlite", "path": str(tmp_path / "stock.db")}, None)
    fast = _store(tmp_path, "fast", {"type": "feastkit.online_stores.MonotonicSqliteOnlineStore",
                                     "path": str(tmp_path / "fast.db")},
                  "feastkit.compute_engines.ArrowWriteComputeEngine")
    _materialize_days(stock, DAY_ORDERS[0])
    _materialize_days(fast, DAY_ORDERS[0])
    assert _sqlite_rows(tmp_path / "fast.db") == _sqlite_rows(tmp_path / "stock.db")


def test_null_created_timestamps_are_written_as_null(tmp_path: Path) -> None:
    """Rows without a created timestamp: Feast's sqlite writer fails to bind NaT; both feastkit paths store NULL."""
    _write_data(tmp_path / "facts.parquet")
    table = pq.read_table(tmp_path / "facts.parquet")
    created = table.column("created").to_pylist()
    created[::7] = [None] * len(created[::7])
    table = table.set_column(table.schema.get_field_index("created"), "created",
                             pa.array(created, pa.timestamp("us", tz="UTC")))
    pq.write_table(table, tmp_path / "facts.parquet")
    stock = _store(tmp_path, "stock", {"type": "feastkit.online_stores.MonotonicSqliteOnlineStore",
                                       "path": str(tmp_path / "stock.db")}, None)
    fast = _store(tmp_path, "fast", {"type": "feastkit.online_stores.MonotonicSqliteOnlineStore",
                                     "path": str(tmp_path / "fast.db")},
                  "feastkit.compute_engines.ArrowWriteComputeEngine")
    _materialize_days(stock, DAY_ORDERS[0])
    _materialize_days(fast, DAY_ORDERS[0])
    rows = _sqlite_rows(tmp_path / "fast.db")
    assert rows == _sqlite_rows(tmp_path / "stock.db")
    assert len(rows) == 300 * len(FEATURES)
    assert any(row[5] is None for row in rows) and any(row[5] is not None for row in rows)
