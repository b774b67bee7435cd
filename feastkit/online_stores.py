"""Feast online store plugins: Feast's sqlite and Redis stores with atomic newer-wins writes and a column-wise write path.

Both keep Feast's keys, values and tables, so `get_online_features` reads what they write
unchanged. Every write, materialization or push, compares and writes in one server-side step per
key: an older row never overwrites a newer one, whatever runs at the same time. `online_write_arrow`
is what feastkit's compute engine (`feastkit.compute_engines.ArrowWriteComputeEngine`) calls with
whole Arrow batches; it returns False when a batch has a type the column encoders do not cover, and
the engine then takes Feast's own conversion and `online_write_batch` (guarded the same way).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    adapt_datetime_epoch,
)
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import make_tzaware, to_naive_utc
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from redis.cluster import RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from feastkit import feast_compat
from feastkit.arrow_encoding import (
    encode_entity_keys,
    encode_timestamps,
    encode_values,
    event_micros,
    integers_as_feast_sees_them,
    plan_batch,
)
from feastkit.errors import FeastkitError

_EVENT_US = "feastkit_event_us"  # exact event time, UTC epoch microseconds (see MonotonicSqliteOnlineStore)
_feast_epoch_seconds: Callable[[datetime], int] = adapt_datetime_epoch  # how Feast's sqlite store binds a datetime


class MonotonicSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast's sqlite options plus the write lock wait; select with `type: feastkit.online_stores.MonotonicSqliteOnlineStore`."""

    type: Literal["feastkit.online_stores.MonotonicSqliteOnlineStore"] = (  # type: ignore[assignment]
        "feastkit.online_stores.MonotonicSqliteOnlineStore"
    )
    busy_timeout_seconds: float = 30.0
    """How long a write waits for another writer's lock before failing with "database is locked"."""


class MonotonicSqliteOnlineStore(SqliteOnlineStore):
    """Feast's sqlite online store, except that a write older than the stored value is skipped.

    Feast's sqlite store upserts unconditionally, so replaying an old interval (a backfill)
    would regress online values; Feast's Redis store already skips writes that are not newer.
    Equal timestamps still overwrite, so a rerun of the same interval is idempotent. Keys,
    values and tables are Feast's own: `get_online_features` reads them unchanged.

    Each batch is one `INSERT ... ON CONFLICT(entity_key, feature_name) DO UPDATE ... WHERE` statement
    (executed for every row in one transaction): the comparison and the write are one step inside
    sqlite, so a concurrent writer cannot slip between them. Nothing is read beforehand and no error
    is ignored; a writer waits up to `busy_timeout_seconds` for another's lock, then fails.

    The comparison is on the exact event time: Feast's `event_ts` column holds whole seconds of the
    naive UTC time read as the process's *local* time (`datetime.timestamp()`, DESIGN pitfall 10),
    which is written here exactly as Feast writes it, but as an order it is wrong in a daylight-saving
    gap (two UTC hours map to the same integers), loses sub-second order, and differs between
    processes in different zones. So each row also carries `feastkit_event_us` (UTC epoch
    microseconds, a column Feast's reads ignore), and the guard compares it; only rows stored
    without it (written by another store) fall back to comparing `event_ts`, which is right when
    every writer runs in the same zone.
    """

    skipped_writes: int = 0
    """Feature values not written because the stored value was newer (all instances of this process)."""

    _guarded_tables: set[str] | None = None
    _write_lock = threading.Lock()

    def plan(self, config: Any, desired_registry_proto: Any) -> list:
        """No infrastructure objects, as for every store type but Feast's own "sqlite".

        `feast apply` records infrastructure in the registry only for `type: sqlite`; for any other
        type it creates the tables in `update()` and records nothing, so listing Feast's sqlite
        tables here made every `feast plan` report them as created. Feast's Redis store plans none.
        """
        return []

    def update(self, config: RepoConfig, tables_to_delete: Sequence[FeatureView],
               tables_to_keep: Sequence[FeatureView], entities_to_delete: Sequence[Any],
               entities_to_keep: Sequence[Any], partial: bool) -> None:
        """Feast's tables, each with the exact event time column the write guard compares."""
        super().update(config, tables_to_delete, tables_to_keep, entities_to_delete, entities_to_keep, partial)
        conn = self._connection(config)
        versioning = config.registry.enable_online_feature_view_versioning
        for table in tables_to_keep:
            self._guard_column(conn, feast_compat.sqlite_table_name(config.project, table, versioning))
        for table in tables_to_delete:
            (self._guarded_tables or set()).discard(
                feast_compat.sqlite_table_name(config.project, table, versioning))

    def _connection(self, config: RepoConfig) -> sqlite3.Connection:
        conn = feast_compat.sqlite_connection(self, config)
        timeout_ms = int(getattr(config.online_store, "busy_timeout_seconds", 30.0) * 1000)
        conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
        return conn

    def _guard_column(self, conn: sqlite3.Connection, table_name: str) -> None:
        """Add `feastkit_event_us` to a Feast table that lacks it (once per table and connection)."""
        if self._guarded_tables is None:
            self._guarded_tables = set()
        if table_name in self._guarded_tables:
            return
        quoted = feast_compat.sqlite_quote(table_name)
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({quoted})")}
        if not columns:
            raise FeastkitError(f"the sqlite online store has no table {table_name}",
                                "apply the feature repo first: feastkit apply (or feast apply in feature_repo/)")
        if _EVENT_US not in columns:
            try:
                with conn:
                    conn.execute(f"ALTER TABLE {quoted} ADD COLUMN {_EVENT_US} INTEGER")
            except sqlite3.OperationalError as exc:
                if "duplicate column name" not in str(exc):  # another writer added it first
                    raise
        self._guarded_tables.add(table_name)

    def _upsert(self, conn: sqlite3.Connection, table_name: str, rows: list[tuple]) -> int:
        """Guarded upsert of (entity_key, feature_name, value, value_text, event_ts, created_ts, event_us)
        rows in one transaction; the number of rows the guard skipped."""
        self._guard_column(conn, table_name)
        columns = ["entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts", _EVENT_US]
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[2:])
        sql = (f"INSERT INTO {feast_compat.sqlite_quote(table_name)} ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' * len(columns))}) "
               f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {updates} "
               f"WHERE CASE WHEN {_EVENT_US} IS NULL THEN excluded.event_ts >= event_ts "
               f"ELSE excluded.{_EVENT_US} >= {_EVENT_US} END")
        try:
            with self._write_lock, conn:  # one connection per store: batches of threads do not mix
                written = conn.executemany(sql, rows).rowcount
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            busy = isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)
            # CPython's executemany can report a statement that stayed busy past the timeout as
            # "no more rows available" (a DatabaseError), seen with another writer holding the lock
            if busy or "no more rows available" in text:
                cause = exc if busy else sqlite3.OperationalError(f"database is locked ({text})")
                raise FeastkitError(
                    f"the sqlite online store stayed locked by another writer: {cause}",
                    "let the other materialization or push finish, raise online_store.busy_timeout_seconds "
                    "in feature_store.yaml, or use the Redis profile for concurrent writers") from cause
            raise
        skipped = len(rows) - written
        MonotonicSqliteOnlineStore.skipped_writes += skipped
        return skipped

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Feast's rows (pushes, and batches the column encoders decline), newer-wins in one statement."""
        if not data:
            return
        store_config = config.online_store
        if store_config.vector_enabled or getattr(store_config, "enable_openai_compatible_store", False):
            raise FeastkitError("the guarded sqlite online store writes no vector or value_num columns",
                                "use `type: sqlite` for vector search (it has no older-write guard)")
        conn = self._connection(config)
        table_name = feast_compat.sqlite_table_name(config.project, table,
                                                    config.registry.enable_online_feature_view_versioning)
        version = config.entity_key_serialization_version
        rows: list[tuple] = []
        for entity_key, values, timestamp, created in data:
            key = serialize_entity_key(entity_key, entity_key_serialization_version=version)
            event = to_naive_utc(timestamp)
            event_ts, event_us = _feast_epoch_seconds(event), (event - _EPOCH) // _MICROSECOND
            # a null created timestamp reaches here as NaT, which Feast's sqlite writer cannot bind
            created_ts = None if created is None or _is_nat(created) else _feast_epoch_seconds(to_naive_utc(created))
            for name, value in values.items():
                text, _ = extract_text_and_num(value, False)
                rows.append((key, name, value.SerializeToString(), text, event_ts, created_ts, event_us))
        self._upsert(conn, table_name, rows)
        if progress:
            progress(len(data))

    def online_write_arrow(self, config: RepoConfig, table: FeatureView, batch: pa.RecordBatch,
                           join_keys: dict[str, ValueType], progress: Callable[[int], Any] | None) -> bool:
        """Write a whole batch with column-encoded values; False when Feast's own path must do it."""
        store_config = config.online_store
        plan = plan_batch(batch, table, join_keys, config.entity_key_serialization_version)
        if (plan is None or store_config.vector_enabled
                or getattr(store_config, "enable_openai_compatible_store", False)):
            return False
        if batch.num_rows == 0:
            return True
        conn = self._connection(config)
        table_name = feast_compat.sqlite_table_name(config.project, table,
                                                    config.registry.enable_online_feature_view_versioning)
        keys = encode_entity_keys(batch, join_keys)
        micros = event_micros(batch.column(plan.timestamp_field))
        event_ts = _feast_seconds_of(micros)
        created_ts = (_feast_seconds_of(*_micros_and_nulls(batch.column(plan.created_field)))
                      if plan.created_field else [None] * batch.num_rows)
        event_us = micros.tolist()
        # rows in (entity_key, feature_name) order: the upserts then walk the primary-key B-tree
        # sequentially instead of at random (about twice as fast on large batches); the sort is
        # stable, so of two rows of one key with equal times the later one still wins
        order = sorted(range(batch.num_rows), key=keys.__getitem__)
        take = pa.array(order, pa.int64())
        names = sorted(name for name, _ in plan.features)
        types = dict(plan.features)
        columns = {name: batch.column(name).take(take) for name in names}
        values = [encode_values(columns[name], types[name]) for name in names]
        texts = [_value_texts(columns[name], types[name]) for name in names]
        rows: list[tuple] = []
        for r, i in enumerate(order):
            key, seconds, created, exact = keys[i], event_ts[i], created_ts[i], event_us[i]
            rows.extend((key, name, values[f][r], texts[f][r], seconds, created, exact)
                        for f, name in enumerate(names))
        self._upsert(conn, table_name, rows)
        if progress:
            progress(batch.num_rows)
        return True


_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def _feast_seconds_of(micros: np.ndarray, null: np.ndarray | None = None) -> list[int | None]:
    """Feast's sqlite `event_ts` integers (local-time reading of naive UTC) for epoch microseconds,
    computed once per distinct instant; None where `null` is set."""
    unique, inverse = np.unique(micros, return_inverse=True)
    seconds = [_feast_epoch_seconds(_EPOCH + timedelta(microseconds=u)) for u in unique.tolist()]
    out: list[int | None] = [seconds[i] for i in inverse.tolist()]
    if null is not None and null.any():
        for i in np.flatnonzero(null).tolist():
            out[i] = None
    return out


def _micros_and_nulls(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Epoch microseconds of a nullable timestamp column (0 where null) and its null mask."""
    return (event_micros(pc.fill_null(column, 0).cast(column.type)),
            column.is_null().to_numpy(zero_copy_only=False))


def _is_nat(value: Any) -> bool:
    return value is not None and value != value  # NaT is the one datetime unequal to itself


def _value_texts(column: pa.Array, value_type: ValueType) -> list[str | None]:
    """Feast's sqlite `value_text` column: str() of the stored value, None for a null."""
    if value_type in (ValueType.DOUBLE, ValueType.FLOAT):
        floats = column.to_numpy(zero_copy_only=False).astype(np.float64)
        return [None if f != f else str(f) for f in floats.tolist()]
    if value_type == ValueType.STRING:
        return column.to_pylist()
    if value_type in (ValueType.INT64, ValueType.INT32):
        ints = integers_as_feast_sees_them(column)
        if value_type == ValueType.INT32:
            ints = ints.astype(np.int32)
        return [None if null else str(v) for v, null in
                zip(ints.tolist(), column.is_null().to_numpy(zero_copy_only=False).tolist(), strict=True)]
    return [None if v is None else str(v) for v in column.to_pylist()]  # bool: "True" / "False"


class FastRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Same options as Feast's Redis store; select with `type: feastkit.online_stores.FastRedisOnlineStore`."""

    type: Literal["feastkit.online_stores.FastRedisOnlineStore"] = (  # type: ignore[assignment]
        "feastkit.online_stores.FastRedisOnlineStore"
    )


# Compare-and-write, one server-side step per key. KEYS: entity hashes; ARGV: the `_ts:<view>` field,
# the key expiry in seconds (0: none), the number n of feature fields, the n fields, then for each
# key its Timestamp proto and its n values. For each key in turn the stored and the new Timestamp are
# decoded (seconds and nanos varints; negative seconds as 10-byte two's complement) and compared as
# (seconds, nanos): an older row is skipped, an equal or newer one is written with Feast's HSET (and
# EXPIRE). Returns the number of keys written. A script runs whole, so no other command lands
# between a key's comparison and its write.
_NEWER_WINS_LUA = """
local function varint(data, i)
  local value, inverse, scale, count = 0, 0, 1, 0
  while true do
    local b = string.byte(data, i)
    i = i + 1
    count = count + 1
    if count <= 9 then
      local low = b % 128
      value = value + low * scale
      inverse = inverse + (127 - low) * scale
      scale = scale * 128
    end
    if b < 128 then break end
  end
  if count >= 10 then return -(inverse + 1), i end
  return value, i
end
local function stamp(data)
  local seconds, nanos, i = 0, 0, 1
  while i <= #data do
    local tag = string.byte(data, i)
    local v
    v, i = varint(data, i + 1)
    if tag == 8 then seconds = v elseif tag == 16 then nanos = v end
  end
  return seconds, nanos
end
local ts_field, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local written = 0
for j = 1, #KEYS do
  local at = 4 + n + (j - 1) * (n + 1)
  local new = ARGV[at]
  local stored = redis.call('HGET', KEYS[j], ts_field)
  local write = true
  if stored then
    local old_s, old_n = stamp(stored)
    local new_s, new_n = stamp(new)
    write = old_s < new_s or (old_s == new_s and old_n <= new_n)
  end
  if write then
    local args, m = {ts_field, new}, 2
    for f = 1, n do
      args[m + 1] = ARGV[3 + f]
      args[m + 2] = ARGV[at + f]
      m = m + 2
      if m >= 1000 then
        redis.call('HSET', KEYS[j], unpack(args, 1, m))
        args, m = {}, 0
      end
    end
    if m > 0 then redis.call('HSET', KEYS[j], unpack(args, 1, m)) end
    if ttl > 0 then redis.call('EXPIRE', KEYS[j], ttl) end
    written = written + 1
  end
end
return written
"""
_NEWER_WINS_SHA = hashlib.sha1(_NEWER_WINS_LUA.encode()).hexdigest()
_KEYS_PER_CALL = 64  # keys compared and written per script call (bounds how long one call holds the server)


class FastRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store with atomic newer-wins writes and a column-wise write path.

    Same keys (`serialize_entity_key` + project), same hash fields (murmur3 of `view:feature`,
    `_ts:view`), same value bytes; reads are Feast's. Feast's store reads the stored timestamps in
    one pipeline and writes in another, so a push landing in between is overwritten by an older
    materialized row. Here a small Lua script (`EVALSHA`, pipelined, loaded on first use and again
    after a `SCRIPT FLUSH`) compares each key's stored `_ts:` Timestamp with the row's and writes
    only when the row is as new or newer, in one server-side step: an older row is skipped and
    counted, an equal one overwrites (a rerun is idempotent), and of two rows of one key in a batch
    the newer (on a tie the later) stays. Materialization sends 64 keys per call (one per call on a
    Redis Cluster, where a call's keys must share a slot, each master's calls in a pipeline of its
    own), pushes one. `key_ttl_seconds` sets the expiry of written keys, as Feast does;
    `skip_dedup` writes without comparing, as Feast does. Materialization (`online_write_arrow`) and
    pushes (`online_write_batch`, also its async form) take the same script.
    """

    skipped_writes: int = 0
    """Rows not written because the stored row was newer (all instances of this process)."""

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Feast's rows (pushes, and batches the column encoders decline), newer-wins per key."""
        store_config = config.online_store
        if store_config.skip_dedup or not data:
            super().online_write_batch(config, table, data, progress)
            return
        view_name = feast_compat.redis_view_name(table, config)
        head = [f"_ts:{view_name}".encode(), b"%d" % (store_config.key_ttl_seconds or 0)]
        version = config.entity_key_serialization_version
        commands = []
        for entity_key, values, timestamp, _ in data:  # one key per call: rows may name other features
            stamp = Timestamp()
            stamp.FromDatetime(make_tzaware(timestamp))  # as Feast stores it
            names = list(values)
            commands.append((1, feast_compat.redis_key(config.project, entity_key, version), *head, len(names),
                             *(feast_compat.redis_field(f"{view_name}:{name}") for name in names),
                             stamp.SerializeToString(), *(values[name].SerializeToString() for name in names)))
        self._newer_wins(feast_compat.redis_client(self, store_config), commands)
        if progress:
            progress(len(data))

    async def online_write_batch_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """`online_write_batch` in a worker thread (Feast's async form reads, then writes)."""
        await asyncio.to_thread(self.online_write_batch, config, table, data, progress)

    def online_write_arrow(self, config: RepoConfig, table: FeatureView, batch: pa.RecordBatch,
                           join_keys: dict[str, ValueType], progress: Callable[[int], Any] | None) -> bool:
        """Write a whole batch with column-encoded values; False when Feast's own path must do it."""
        store_config = config.online_store
        plan = plan_batch(batch, table, join_keys, config.entity_key_serialization_version)
        if plan is None:
            return False
        if batch.num_rows == 0:
            return True
        client = feast_compat.redis_client(self, store_config)
        view_name = feast_compat.redis_view_name(table, config)
        ts_field = f"_ts:{view_name}".encode()
        project = config.project.encode("utf-8")
        keys = [key + project for key in encode_entity_keys(batch, join_keys)]
        stamps = encode_timestamps(event_micros(batch.column(plan.timestamp_field)))
        fields = [feast_compat.redis_field(f"{view_name}:{name}") for name, _ in plan.features]
        columns = [encode_values(batch.column(name), value_type) for name, value_type in plan.features]
        ttl = store_config.key_ttl_seconds
        if store_config.skip_dedup:  # Feast's unguarded single pipeline
            with client.pipeline(transaction=False) as pipe:
                for i, key in enumerate(keys):
                    args: list[bytes] = [key, ts_field, stamps[i]]
                    for field, column in zip(fields, columns, strict=True):
                        args += (field, column[i])
                    pipe.execute_command("HSET", *args)
                    if ttl:
                        pipe.expire(name=key, time=ttl)
                pipe.execute()
        else:
            per_call = 1 if store_config.redis_type == RedisType.redis_cluster else _KEYS_PER_CALL  # one slot
            head = (ts_field, b"%d" % (ttl or 0), len(fields), *fields)
            rows = list(zip(stamps, *columns, strict=True))
            commands = [(len(keys[at:at + per_call]), *keys[at:at + per_call], *head,
                         *(cell for row in rows[at:at + per_call] for cell in row))
                        for at in range(0, len(keys), per_call)]
            self._newer_wins(client, commands)
        if progress:
            progress(batch.num_rows)
        return True

    @staticmethod
    def _newer_wins(client: Any, commands: list[tuple]) -> int:
        """Run the compare-and-write script once per command (numkeys, keys..., its ARGV); the
        number of rows skipped as older. On a single Redis: one pipeline. On a Redis Cluster: one
        plain pipeline per master, holding the calls whose slot it serves (redis-py's cluster
        pipeline spends Python time per command: materialization ran 4x slower than on one
        node); a call answered MOVED or ASK (slots moving, a failover), or a master that cannot be
        reached, goes again through the cluster client, which follows redirects."""
        if isinstance(client, RedisCluster):
            by_node: dict[str, tuple[Any, list[tuple]]] = {}
            for args in commands:
                node = client.get_node_from_key(args[1])  # a call's keys share one slot
                by_node.setdefault(node.name, (node, []))[1].append(args)
            skipped, again = 0, []
            for node, part in by_node.values():
                try:
                    skipped += _run_script(client.get_redis_connection(node), part, again)
                except (RedisConnectionError, RedisTimeoutError):
                    again.extend(part)  # rerunning a call that did run is harmless: equal rows rewrite
            if again:
                skipped += _run_script(client, again, None)
        else:
            skipped = _run_script(client, commands, None)
        FastRedisOnlineStore.skipped_writes += skipped
        return skipped

    def online_read_many(self, config: RepoConfig,
                         reads: Sequence[tuple[FeatureView, list[EntityKeyProto], list[str]]]) -> list[list]:
        """Several views' `online_read` in one pipelined round trip; each result is what
        `online_read(config, view, entity_keys, features)` returns for that view."""
        commands: list[tuple[bytes, list]] = []
        parts = []
        for table, entity_keys, features in reads:
            view_name = feast_compat.redis_view_name(table, config)
            names, fields = feast_compat.redis_hash_fields(self, table, list(features), view_name)
            keys = feast_compat.redis_entity_keys(self, config, entity_keys)
            parts.append((view_name, names, len(commands), len(keys)))
            commands.extend((key, fields) for key in keys)
        replies = feast_compat.redis_read_hash_fields(self, config, commands)
        return [feast_compat.redis_values_to_protos(self, replies[at:at + n], view_name, names)
                for view_name, names, at, n in parts]


_REDIRECTS = (AskError, MovedError, TryAgainError)  # AskError covers MovedError; listed for the reader


def _run_script(client: Any, commands: list[tuple], redirected: list[tuple] | None) -> int:
    """The compare-and-write calls in one pipeline of `client`; the rows skipped as older. A
    flushed script cache (NOSCRIPT) is reloaded and the calls it refused are sent again. With
    `redirected` given, calls answered MOVED/ASK/TRYAGAIN are put there instead of failing."""
    pending = commands
    skipped = 0
    for _ in range(3):
        with client.pipeline(transaction=False) as pipe:
            for args in pending:
                pipe.execute_command("EVALSHA", _NEWER_WINS_SHA, *args)
            replies = pipe.execute(raise_on_error=False)
        if redirected is not None:
            redirected.extend(args for args, r in zip(pending, replies, strict=True) if isinstance(r, _REDIRECTS))
            replies = [None if isinstance(r, _REDIRECTS) else r for r in replies]
        errors = [r for r in replies if isinstance(r, Exception)]
        skipped += sum(args[0] - r for args, r in zip(pending, replies, strict=True) if isinstance(r, int))
        if not errors:
            return skipped
        if not all(isinstance(r, NoScriptError) for r in errors):
            raise next(r for r in errors if not isinstance(r, NoScriptError))
        client.script_load(_NEWER_WINS_LUA)
        pending = [args for args, r in zip(pending, replies, strict=True) if isinstance(r, NoScriptError)]
    raise FeastkitError("the Redis server keeps dropping feastkit's write script (NOSCRIPT after loading it)",
                        "check that nothing runs SCRIPT FLUSH in a loop and that scripting is enabled")
