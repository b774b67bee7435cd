"""Feast offline store plugin: the DuckDB store with point-in-time joins done as DuckDB ASOF joins."""

from __future__ import annotations

import uuid
import weakref
from datetime import datetime
from pathlib import Path
from typing import Literal

import ibis
import numpy as np
import pandas as pd
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import IbisRetrievalJob
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from ibis.expr import datatypes as dt

from feastkit import times
from feastkit.feast_compat import (
    duckdb_read_source,
    duckdb_write_source,
    entity_df_to_utc,
    entity_schema,
    entity_timestamp_range,
)

STORE_TYPE = "feastkit.offline_stores.AsofDuckDBOfflineStore"
_ROW = "__feastkit_asof_row"
_TS = "__feastkit_asof_ts"
_CREATED = "__feastkit_asof_created"


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Same options as Feast's duckdb store; select with `type: feastkit.offline_stores.AsofDuckDBOfflineStore`."""

    type: Literal["feastkit.offline_stores.AsofDuckDBOfflineStore"] = STORE_TYPE  # type: ignore[assignment]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _feature_columns(feature_view: FeatureView, feature_refs: list[str],
                     full_feature_names: bool) -> list[tuple[str, str]]:
    """(source column, output column) for the requested features of one view, in request order."""
    prefix = feature_view.projection.name_to_use()
    names = [ref.split(":")[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
    base = feature_view.projection.name_alias or feature_view.name
    return [(n, f"{base}__{n}" if full_feature_names else n) for n in names]


def _feature_side_sql(feature_view: FeatureView, config: RepoConfig, columns: list[tuple[str, str]],
                      entity_range: tuple[datetime, datetime]) -> tuple[str, dict[str, str], bool]:
    """SQL for one view's rows: entity-side key names, the timestamps (UTC) and renamed features.

    The source is read with Feast's own duckdb reader and field mapping, so every source format
    the stock store reads is read the same way here. Rows that no entity row can see (newer than
    the latest entity time, or expired before the earliest) are pruned before the join.
    """
    source = feature_view.batch_source
    table = duckdb_read_source(source, str(config.repo_path))
    for old_name, new_name in source.field_mapping.items():
        if old_name in table.columns:
            table = table.rename({new_name: old_name})
    key_map = feature_view.projection.join_key_map or {e.name: e.name for e in feature_view.entity_columns}
    created = source.created_timestamp_column or None
    utc = dt.Timestamp(timezone="UTC")
    selection = {entity_key: table[key] for key, entity_key in key_map.items()}
    selection[_TS] = table[source.timestamp_field].cast(utc)
    if created:
        # Feast orders created timestamps DESC NULLS LAST: a missing one loses every tie
        selection[_CREATED] = table[created].cast(utc).fill_null(
            ibis.literal("-infinity").cast(utc))
    selection.update({out: table[col] for col, out in columns})
    table = table.select(**selection)
    logged = _stream_log(feature_view, key_map, columns, table.schema())
    if logged is not None:
        if not created:  # the table's rows lose every tie to a logged row of the same time
            table = table.mutate(**{_CREATED: ibis.literal("-infinity").cast(utc)})
            created = _CREATED
        table = table.union(logged.select(*table.columns))
    earliest, latest = (times.utc(t) for t in entity_range)  # naive entity times are UTC, as Feast reads them
    keep = [table[_TS].notnull(), table[_TS] <= ibis.literal(latest, type=utc)]
    if feature_view.ttl:
        keep.append(table[_TS] >= ibis.literal(earliest - feature_view.ttl, type=utc))
    table = table.filter(*keep)
    return ibis.to_sql(table, dialect="duckdb"), key_map, bool(created)


def _stream_log(feature_view: FeatureView, key_map: dict[str, str], columns: list[tuple[str, str]],
                schema: ibis.Schema) -> ibis.Table | None:
    """The rows the stream worker wrote for a stream-fed view (`feastkit stream`), shaped like the
    view's side of the join, or None when it has none: training and the replay check then read
    what the stream served, next to what `feastkit compute` wrote. For one (entity, time) the
    latest `created` wins, and a logged row wins over the table's row (equal when both saw the
    same transactions)."""
    from feastkit.declarations import STREAM_LOG_TAG, stream_log_files

    folder = (feature_view.tags or {}).get(STREAM_LOG_TAG)
    if not folder or not stream_log_files(folder):
        return None
    utc = dt.Timestamp(timezone="UTC")
    log = ibis.read_parquet(str(Path(folder) / "date=*" / "part-*.parquet"), hive_partitioning=False)
    selection = {entity_key: log[key].cast(schema[entity_key]) for key, entity_key in key_map.items()}
    selection[_TS] = log["event_timestamp"].cast(utc)
    selection[_CREATED] = log["created"].cast(utc)
    selection.update({out: log[col].cast(schema[out]) for col, out in columns})
    return log.select(**selection)


def _asof_query(entity_name: str, entity_columns: list[str], event_timestamp_col: str,
                sides: list[tuple[str, dict[str, str], bool, list[str], int | None]]) -> str:
    """One DuckDB statement: the entity rows ASOF LEFT JOINed to each view, TTL applied, caller's order."""
    entity_ts = f"CAST(e.{_quote(event_timestamp_col)} AS TIMESTAMPTZ)"
    selects = [f"e.{_quote(c)}" for c in entity_columns]
    joins = []
    for i, (sql, key_map, has_created, outputs, ttl_us) in enumerate(sides):
        alias = f"f{i}"
        keys = [f"e.{_quote(k)} = {alias}.{_quote(k)}" for k in key_map.values()]
        if has_created:
            # (event_ts, created_ts) pairs compare lexicographically: the latest event wins and
            # an equal event timestamp is broken by the latest created timestamp
            keys.append(f"({entity_ts}, TIMESTAMPTZ 'infinity') >= "
                        f"({alias}.{_TS}, {alias}.{_CREATED})")
        else:
            keys.append(f"{entity_ts} >= {alias}.{_TS}")
        joins.append(f"ASOF LEFT JOIN ({sql}) AS {alias} ON {' AND '.join(keys)}")
        for out in outputs:
            column = f"{alias}.{_quote(out)}"
            if ttl_us:
                # Feast's TTL: a row is valid while event_ts + ttl >= the entity timestamp
                column = (f"CASE WHEN {alias}.{_TS} + to_microseconds({ttl_us}) >= {entity_ts} "
                          f"THEN {column} END")
            selects.append(f"{column} AS {_quote(out)}")
    return (f"SELECT {', '.join(selects)}\nFROM {_quote(entity_name)} AS e\n" + "\n".join(joins)
            + f"\nORDER BY e.{_quote(_ROW)}")


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's duckdb offline store whose historical retrieval runs DuckDB ASOF LEFT JOINs.

    Semantics are Feast's: a feature row joins an entity row when its key matches and
    entity_ts - ttl <= event_ts <= entity_ts; the latest event timestamp wins and ties go to
    the latest created timestamp; rows without a valid match get nulls; on-demand views run
    after the join (Feast's RetrievalJob applies them). Unlike the stock store, the rows come
    back in the caller's order. Everything else is the stock duckdb store.
    """

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        supported = (isinstance(entity_df, pd.DataFrame) and not filter_by_created_timestamp
                     and all(isinstance(fv.batch_source, FileSource) for fv in feature_views))
        if not supported:
            # SQL entity frames, created-timestamp cut-offs and non-file sources: the stock path
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project,
                full_feature_names=full_feature_names,
                filter_by_created_timestamp=filter_by_created_timestamp)
        assert isinstance(entity_df, pd.DataFrame)
        event_timestamp_col = offline_utils.infer_event_timestamp_from_entity_df(
            entity_schema(entity_df))
        timestamp_range = entity_timestamp_range(entity_df, event_timestamp_col)
        frame = entity_df_to_utc(entity_df.copy(deep=False), event_timestamp_col)
        entity_columns = list(frame.columns)
        frame[_ROW] = np.arange(len(frame), dtype="int64")

        sides = []
        for fv in feature_views:
            columns = _feature_columns(fv, feature_refs, full_feature_names)
            sql, key_map, has_created = _feature_side_sql(fv, config, columns, timestamp_range)
            ttl_us = times.micros(fv.ttl) if fv.ttl else None
            sides.append((sql, key_map, has_created, [out for _, out in columns], ttl_us))

        backend = ibis.get_backend()  # the connection Feast's reader registered the sources on
        name = f"feastkit_asof_{uuid.uuid4().hex}"
        # loaded through ibis exactly as the stock store loads it (same column types)
        backend.create_table(f"{name}_entities", ibis.memtable(frame), temp=True)
        query = _asof_query(f"{name}_entities", entity_columns, event_timestamp_col, sides)
        # a temporary view, so Feast's ibis job converts the result exactly as the stock store's
        backend.con.execute(f"CREATE TEMPORARY VIEW {_quote(name)} AS {query}")
        table = backend.table(name)

        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        for odfv in (o for o in odfvs if o.mode == "substrait"):
            table = odfv.transform_ibis(table, full_feature_names)
        job = IbisRetrievalJob(
            table,
            [o for o in odfvs if o.mode != "substrait"],
            full_feature_names,
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=list(set(entity_df.columns) - {event_timestamp_col}),
                min_event_timestamp=timestamp_range[0],
                max_event_timestamp=timestamp_range[1],
            ),
            data_source_writer=duckdb_write_source,
            staging_location=config.offline_store.staging_location,
            staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
            repo_path=str(config.repo_path),
        )
        # the view and the registered entity frame live exactly as long as the job that reads them
        weakref.finalize(job, _release, backend.con, name)
        return job


def _release(con: object, name: str) -> None:
    try:
        con.execute(f"DROP VIEW IF EXISTS {_quote(name)}")  # type: ignore[attr-defined]
        con.execute(f"DROP TABLE IF EXISTS {_quote(name + '_entities')}")  # type: ignore[attr-defined]
    except Exception:  # connection already closed: nothing left to free
        pass
