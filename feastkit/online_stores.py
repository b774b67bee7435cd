"""Feast online store plugins: Feast's sqlite and Redis stores with a column-wise write path.

Both keep Feast's keys, values and tables, so `get_online_features` reads what they write
unchanged. `online_write_arrow` is what feastkit's compute engine
(`feastkit.compute_engines.ArrowWriteComputeEngine`) calls with whole Arrow batches; it returns
False when a batch has a type the column encoders do not cover, and the engine then takes
Feast's own conversion and `online_write_batch`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from feast import FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import to_naive_utc
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from feastkit import feast_compat
from feastkit.arrow_encoding import (
    encode_entity_keys,
    encode_timestamps,
    encode_values,
    event_micros,
    integers_as_feast_sees_them,
    naive_datetimes,
    optional_naive_datetimes,
    plan_batch,
)

_LOOKUP_BATCH = 500


class MonotonicSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Same options as Feast's sqlite store; select with `type: feastkit.online_stores.MonotonicSqliteOnlineStore`."""

    type: Literal["feastkit.online_stores.MonotonicSqliteOnlineStore"] = (  # type: ignore[assignment]
        "feastkit.online_stores.MonotonicSqliteOnlineStore"
    )


def _as_naive(value: Any) -> datetime | None:
    """A stored event_ts as naive UTC: Feast's sqlite adapter writes whole epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return to_naive_utc(value) if value.tzinfo else value
    if isinstance(value, int | float) or str(value).lstrip("-").isdigit():
        return datetime.fromtimestamp(float(value), tz=UTC).replace(tzinfo=None)
    return datetime.fromisoformat(str(value))


class MonotonicSqliteOnlineStore(SqliteOnlineStore):
    """Feast's sqlite online store, except that a write older than the stored value is skipped.

    Feast's sqlite store upserts unconditionally, so replaying an old interval (a backfill)
    would regress online values; Feast's Redis store already skips writes that are not newer.
    Equal timestamps still overwrite, so a rerun of the same interval is idempotent. Keys,
    values and tables are Feast's own: `get_online_features` reads them unchanged.
    """

    skipped_writes: int = 0

    def plan(self, config: Any, desired_registry_proto: Any) -> list:
        """No infrastructure objects, as for every store type but Feast's own "sqlite".

        `feast apply` records infrastructure in the registry only for `type: sqlite`; for any other
        type it creates the tables in `update()` and records nothing, so listing Feast's sqlite
        tables here made every `feast plan` report them as created. Feast's Redis store plans none.
        """
        return []

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if not data:
            return
        conn = feast_compat.sqlite_connection(self, config)
        table_name = feast_compat.sqlite_table_name(config.project, table,
                                                    config.registry.enable_online_feature_view_versioning)
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(row[0], entity_key_serialization_version=version) for row in data]
        kept = _newest_not_older(keys, [to_naive_utc(row[2]) for row in data], _stored_times(conn, table_name, keys))
        # a null created timestamp reaches here as NaT, which Feast's sqlite writer cannot bind
        keep = [row if not _is_nat(row[3]) else (row[0], row[1], row[2], None) for row in (data[i] for i in kept)]
        self._count_skipped(len(data) - len(keep), progress)
        if keep:
            super().online_write_batch(config, table, keep, progress)

    @staticmethod
    def _count_skipped(skipped: int, progress: Callable[[int], Any] | None) -> None:
        MonotonicSqliteOnlineStore.skipped_writes += skipped
        if skipped and progress:
            progress(skipped)

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
        conn = feast_compat.sqlite_connection(self, config)
        table_name = feast_compat.sqlite_table_name(config.project, table,
                                                    config.registry.enable_online_feature_view_versioning)
        keys = encode_entity_keys(batch, join_keys)
        event_times = naive_datetimes(event_micros(batch.column(plan.timestamp_field)))
        created_times = (optional_naive_datetimes(batch.column(plan.created_field)) if plan.created_field
                         else [None] * batch.num_rows)
        kept = _newest_not_older(keys, event_times, _stored_times(conn, table_name, keys))
        self._count_skipped(batch.num_rows - len(kept), progress)
        if not kept:
            return True
        # rows in (entity_key, feature_name) order: the upserts then walk the primary-key B-tree
        # sequentially instead of at random (about twice as fast on large batches)
        kept.sort(key=keys.__getitem__)
        take = pa.array(kept, pa.int64())
        names = sorted(name for name, _ in plan.features)
        types = dict(plan.features)
        columns = {name: batch.column(name).take(take) for name in names}
        values = [encode_values(columns[name], types[name]) for name in names]
        texts = [_value_texts(columns[name], types[name]) for name in names]
        rows: list[tuple] = []
        for r, i in enumerate(kept):
            key, event_ts, created_ts = keys[i], event_times[i], created_times[i]
            rows.extend((key, name, values[f][r], texts[f][r], event_ts, created_ts)
                        for f, name in enumerate(names))
        upsert = (f"INSERT INTO {feast_compat.sqlite_quote(table_name)} "
                  "(entity_key, feature_name, value, value_text, event_ts, created_ts) VALUES (?, ?, ?, ?, ?, ?) "
                  "ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
                  "value_text = excluded.value_text, event_ts = excluded.event_ts, "
                  "created_ts = excluded.created_ts;")
        with conn:
            conn.executemany(upsert, rows)
        if progress:
            progress(len(kept))
        return True


def _is_nat(value: Any) -> bool:
    return value is not None and value != value  # NaT is the one datetime unequal to itself


def _stored_times(conn: sqlite3.Connection, table_name: str, keys: list[bytes]) -> dict[bytes, datetime]:
    """The newest stored event time of each of these entity keys (none when the table is new)."""
    stored: dict[bytes, datetime] = {}
    unique = list(dict.fromkeys(keys))
    try:
        for i in range(0, len(unique), _LOOKUP_BATCH):
            batch = unique[i:i + _LOOKUP_BATCH]
            marks = ", ".join("?" * len(batch))
            for key, ts in conn.execute(
                f'SELECT entity_key, max(event_ts) FROM "{table_name}" '
                f"WHERE entity_key IN ({marks}) GROUP BY entity_key", batch):
                parsed = _as_naive(ts)
                if parsed is not None:
                    stored[bytes(key)] = parsed
    except sqlite3.OperationalError:
        return {}  # table not created yet: nothing to protect
    return stored


def _newest_not_older(keys: Sequence[bytes], event_times: Sequence[datetime],
                      stored: dict[bytes, datetime]) -> list[int]:
    """Row positions to write: each key's newest row (later rows win ties) unless the store is newer."""
    newest: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        j = newest.get(key)
        if j is None or event_times[i] >= event_times[j]:
            newest[key] = i
    return sorted(i for key, i in newest.items()
                  if (current := stored.get(key)) is None or event_times[i] >= current)


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


class FastRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store with a column-wise write path for materialization.

    Same keys (`serialize_entity_key` + project), same hash fields (murmur3 of `view:feature`,
    `_ts:view`), same value bytes, same rule: a row is written only when its event time is newer
    than the stored one and than an earlier row of the batch for the same key (unless
    `skip_dedup`), and `key_ttl_seconds` sets an expiry. Reads are Feast's.
    """

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
        micros = event_micros(batch.column(plan.timestamp_field))
        kept = (range(batch.num_rows) if store_config.skip_dedup
                else self._newer_rows(client, keys, ts_field, micros))
        stamps = encode_timestamps(micros)
        fields = [feast_compat.redis_field(f"{view_name}:{name}") for name, _ in plan.features]
        columns = [encode_values(batch.column(name), value_type) for name, value_type in plan.features]
        ttl = store_config.key_ttl_seconds
        with client.pipeline(transaction=False) as pipe:
            for i in kept:
                args: list[bytes] = [keys[i], ts_field, stamps[i]]
                for field, column in zip(fields, columns, strict=True):
                    args += (field, column[i])
                pipe.execute_command("HSET", *args)
                if ttl:
                    pipe.expire(name=keys[i], time=ttl)
            pipe.execute()
        if progress:
            progress(batch.num_rows)
        return True

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

    @staticmethod
    def _newer_rows(client: Any, keys: list[bytes], ts_field: bytes, micros: np.ndarray) -> list[int]:
        """Rows newer than the stored event time and than earlier rows of the batch for the same key."""
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, ts_field)
            previous = [reply[0] for reply in pipe.execute()]
        latest: dict[bytes, int] = {}
        kept = []
        for i, (key, stored, new) in enumerate(zip(keys, previous, (micros * 1000).tolist(), strict=True)):
            seen = latest.get(key, 0)
            if stored:
                stamp = Timestamp()
                stamp.ParseFromString(stored)
                seen = max(seen, stamp.seconds * 1_000_000_000 + stamp.nanos)
            if seen and new <= seen:
                continue
            latest[key] = new
            kept.append(i)
        return kept
