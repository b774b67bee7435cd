"""Feast online store plugins: the sqlite store, guarded so an older event never overwrites a newer one."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from feast import FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig, _table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import to_naive_utc

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

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if not data:
            return
        conn = self._get_conn(config)
        table_name = _table_id(config.project, table, config.registry.enable_online_feature_view_versioning)
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(row[0], entity_key_serialization_version=version) for row in data]
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
            stored = {}  # table not created yet: nothing to protect
        # newest row per key within the batch (later rows win ties), then only if not older than stored
        newest: dict[bytes, int] = {}
        for i, (key, row) in enumerate(zip(keys, data, strict=True)):
            j = newest.get(key)
            if j is None or to_naive_utc(row[2]) >= to_naive_utc(data[j][2]):
                newest[key] = i
        keep = []
        for key, i in newest.items():
            current = stored.get(key)
            if current is None or to_naive_utc(data[i][2]) >= current:
                keep.append(data[i])
        skipped = len(data) - len(keep)
        MonotonicSqliteOnlineStore.skipped_writes += skipped
        if skipped and progress:
            progress(skipped)
        if keep:
            super().online_write_batch(config, table, keep, progress)
