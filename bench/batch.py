"""Batch benchmark: point-in-time training sets and materialization, each against its floor.

PIT join: Feast's stock `duckdb` offline store vs feastkit's ASOF offline store plugin vs a
hand-written DuckDB ASOF LEFT JOIN on the same parquet files (the floor). Materialization:
Feast's local engine into Redis and sqlite vs a raw pipelined Redis write of Feast's exact
bytes (the floor); `feastkit-redis-write` times the guarded Redis write path alone (Arrow
batches in, compare-and-write script calls out). Every contender runs in its own process, so its peak RSS is its own.

    python bench/batch.py                                # defaults: a few minutes on 2 cores
    python bench/batch.py --entity-rows 1000000 --runs 1 # the full-scale PIT figure
    python bench/batch.py --only materialize --entities 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from common import Contender, report, run_child, table

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
TTL = timedelta(days=2)
PROJECT = "bench_batch"
REDIS_DB = 9  # the benchmark owns and flushes this Redis database
PIT_CONTENDERS = ("feast-duckdb", "feastkit-asof", "duckdb-asof-floor")
MAT_CONTENDERS = ("feast-redis", "feastkit-redis", "feastkit-redis-write", "feast-sqlite", "feastkit-sqlite",
                  "redis-pipeline-floor")
FEASTKIT_ENGINE = "feastkit.compute_engines.ArrowWriteComputeEngine"
USER_FEATURES = ["txn_count_7d", "amount_sum_7d", "amount_avg_30d", "amount_max_30d", "night_share_30d"]
MERCHANT_FEATURES = ["volume_7d", "fraud_rate_30d", "avg_ticket_30d"]
MAT_FEATURES = [f"f{i}" for i in range(10)]


# Data ------------------------------------------------------------------------------------------

def _feature_table(rng: np.random.Generator, key: str, n_keys: int, n_rows: int,
                   features: list[str], tie_share: float) -> pa.Table:
    """Rows at random times over DAYS; `tie_share` of them repeat a row's (key, event_ts) later."""
    base = int(n_rows * (1 - tie_share))
    keys = rng.integers(0, n_keys, base)
    ts = rng.integers(0, DAYS * 86400, base) * 1_000_000
    created = ts + rng.integers(0, 3600, base) * 1_000_000
    ties = rng.integers(0, base, n_rows - base)
    keys = np.concatenate([keys, keys[ties]])
    ts = np.concatenate([ts, ts[ties]])
    created = np.concatenate([created, created[ties] + rng.integers(1, 600, len(ties)) * 1_000_000])
    epoch = int(START.timestamp() * 1_000_000)
    columns = {key: keys.astype("int64"),
               "event_timestamp": pa.array(ts + epoch, pa.timestamp("us", tz="UTC")),
               "created": pa.array(created + epoch, pa.timestamp("us", tz="UTC"))}
    for i, name in enumerate(features):
        values = rng.gamma(2.0, 10.0 * (i + 1), n_rows).round(3)
        columns[name] = pa.array(values, mask=rng.random(n_rows) < 0.02)  # some nulls
    return pa.table(columns)


def make_pit_data(work: Path, scale: float, entity_rows: int, seed: int, users: int) -> None:
    """users (7.2M x scale rows) + merchants (1.44M x scale), ~1% created ties, and the entity frame.

    `users` x scale keys (merchants: a fifth of that) set the density: 10,000 users gives 720 rows
    per user over 30 days (an hourly grid), so each entity row has ~48 candidate rows in the TTL.

    Files are reused when their flags match, so a second run at another entity count keeps the views.
    """
    rng = np.random.default_rng(seed)
    n_users = max(int(users * scale), 10)
    n_merchants = max(n_users // 5, 10)
    views_marker, views_spec = work / "pit-views.json", {"scale": scale, "seed": seed, "users": users}
    if not views_marker.exists() or json.loads(views_marker.read_text()) != views_spec:
        pq.write_table(_feature_table(rng, "user_id", n_users, int(7_200_000 * scale), USER_FEATURES,
                                      0.01), work / "users.parquet")
        pq.write_table(_feature_table(rng, "merchant_id", n_merchants, int(1_440_000 * scale),
                                      MERCHANT_FEATURES, 0.01), work / "merchants.parquet")
        _apply_pit_repo(work)
        views_marker.write_text(json.dumps(views_spec))
    entities_marker = work / "pit-entities.json"
    entities_spec = {**views_spec, "entity_rows": entity_rows}
    if entities_marker.exists() and json.loads(entities_marker.read_text()) == entities_spec:
        return
    rng = np.random.default_rng([seed, entity_rows])
    epoch = int((START + timedelta(days=1)).timestamp())
    entities = pd.DataFrame({
        "user_id": rng.integers(0, int(n_users * 1.01), entity_rows),  # ~1% unknown users
        "merchant_id": rng.integers(0, int(n_merchants * 1.01), entity_rows),
        "event_timestamp": pd.to_datetime(rng.integers(epoch, epoch + (DAYS - 1) * 86400, entity_rows),
                                          unit="s", utc=True),
        "row_id": np.arange(entity_rows, dtype="int64"),
    })
    entities.to_parquet(work / "entities.parquet")
    entities_marker.write_text(json.dumps(entities_spec))


def _repo_config(work: Path, offline: str, online: dict | None = None, batch_size: int | None = None,
                 engine: str = "local"):
    from feast import RepoConfig

    materialization = {"pull_latest_features": True}
    if batch_size:
        materialization["online_write_batch_size"] = batch_size
    return RepoConfig(project=PROJECT, provider="local", repo_path=str(work),
                      registry=str(work / "registry.db"),
                      online_store=online or {"type": "sqlite", "path": str(work / "online.db")},
                      offline_store={"type": offline}, entity_key_serialization_version=3,
                      materialization=materialization, batch_engine={"type": engine})


def _view(name: str, key: str, features: list[str], path: Path, ttl: timedelta):
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Float64, Int64
    from feast.value_type import ValueType

    entity = Entity(name=key.removesuffix("_id"), join_keys=[key], value_type=ValueType.INT64)
    source = FileSource(name=f"{name}_source", path=str(path), timestamp_field="event_timestamp",
                        created_timestamp_column="created")
    view = FeatureView(name=name, entities=[entity], ttl=ttl, source=source,
                       schema=[Field(name=key, dtype=Int64)] +
                              [Field(name=f, dtype=Float64) for f in features])
    return entity, view


def _apply_pit_repo(work: Path) -> None:
    from feast import FeatureStore

    (work / "registry.db").unlink(missing_ok=True)
    objects = [*_view("user_stats", "user_id", USER_FEATURES, work / "users.parquet", TTL),
               *_view("merchant_stats", "merchant_id", MERCHANT_FEATURES, work / "merchants.parquet", TTL)]
    FeatureStore(config=_repo_config(work, "duckdb")).apply(objects)


def pit_feature_refs() -> list[str]:
    return [f"user_stats:{f}" for f in USER_FEATURES] + [f"merchant_stats:{f}" for f in MERCHANT_FEATURES]


FLOOR_SQL = """
SELECT e.*, {selects}
FROM entities AS e
ASOF LEFT JOIN read_parquet('{users}') AS u
  ON e.user_id = u.user_id AND (e.event_timestamp, TIMESTAMPTZ 'infinity') >= (u.event_timestamp, u.created)
ASOF LEFT JOIN read_parquet('{merchants}') AS m
  ON e.merchant_id = m.merchant_id
 AND (e.event_timestamp, TIMESTAMPTZ 'infinity') >= (m.event_timestamp, m.created)
ORDER BY e.row_id
"""


def child_pit(contender: str, work: Path, out: Path | None) -> None:
    """One timed point-in-time retrieval (the entity frame is read before the clock starts)."""
    import warnings

    warnings.filterwarnings("ignore")
    entities = pd.read_parquet(work / "entities.parquet")
    if contender == "duckdb-asof-floor":
        import duckdb

        ttl = f"INTERVAL {int(TTL.total_seconds())} SECOND"
        selects = ", ".join(
            [f"CASE WHEN u.event_timestamp >= e.event_timestamp - {ttl} THEN u.{f} END AS {f}"
             for f in USER_FEATURES] +
            [f"CASE WHEN m.event_timestamp >= e.event_timestamp - {ttl} THEN m.{f} END AS {f}"
             for f in MERCHANT_FEATURES])
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        started = time.perf_counter()
        con.register("entities", entities)
        result = con.execute(FLOOR_SQL.format(selects=selects, users=work / "users.parquet",
                                              merchants=work / "merchants.parquet")).df()
        seconds = time.perf_counter() - started
    else:
        from feast import FeatureStore

        offline = "duckdb" if contender == "feast-duckdb" else "feastkit.offline_stores.AsofDuckDBOfflineStore"
        store = FeatureStore(config=_repo_config(work, offline))
        refs = pit_feature_refs()
        started = time.perf_counter()
        result = store.get_historical_features(entity_df=entities, features=refs).to_df()
        seconds = time.perf_counter() - started
    if out is not None:
        result.sort_values("row_id").reset_index(drop=True).to_parquet(out)
    report({"seconds": seconds, "rows_in": len(entities), "rows_out": len(result),
            "in_order": bool((result["row_id"].to_numpy() == entities["row_id"].to_numpy()).all())
            if len(result) == len(entities) else False})


def _same_values(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    columns = ["row_id", "user_id", "merchant_id", *USER_FEATURES, *MERCHANT_FEATURES]
    try:
        pd.testing.assert_frame_equal(a[columns], b[columns], check_dtype=False)
        ts_a = pd.to_datetime(a["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
        ts_b = pd.to_datetime(b["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
        return bool((ts_a == ts_b).all())
    except AssertionError as exc:
        print(f"  values differ: {str(exc)[:300]}", file=sys.stderr)
        return False


def bench_pit(args: argparse.Namespace, work: Path) -> str:
    started = time.perf_counter()
    make_pit_data(work, args.scale, args.entity_rows, args.seed, args.users)
    print(f"PIT data ready in {time.perf_counter() - started:.0f}s: users {int(7_200_000 * args.scale):,} "
          f"rows, merchants {int(1_440_000 * args.scale):,} rows, {args.entity_rows:,} entity rows",
          flush=True)
    contenders = {name: Contender(name) for name in PIT_CONTENDERS if name in args.pit}
    checks: dict[str, str] = {}
    for run in range(args.runs):
        for name, contender in contenders.items():
            out = work / f"result-{name}.parquet" if run == 0 and args.check else None
            measured = run_child([__file__, "child-pit", name, str(work), str(out or "")])
            if measured["rows_out"] != measured["rows_in"]:
                contender.note = f"(rows out {measured['rows_out']:,} != in)"
            elif name != "feast-duckdb" and not measured["in_order"]:
                contender.note = "(not in the caller's order)"
            contender.seconds.append(measured["seconds"])
            contender.peak_mb.append(measured["peak_rss_mb"])
            print(f"  run {run + 1}: {name:20s} {measured['seconds']:8.2f}s "
                  f"{measured['peak_rss_mb']:8.0f} MB", flush=True)
    if args.check:
        floor = pd.read_parquet(work / "result-duckdb-asof-floor.parquet") \
            if "duckdb-asof-floor" in contenders else None
        for name in contenders:
            if floor is not None and name != "duckdb-asof-floor":
                same = _same_values(pd.read_parquet(work / f"result-{name}.parquet"), floor)
                checks[name] = "identical to the floor" if same else "DIFFERS from the floor"
    lines = [table(f"Point-in-time join: 2 views ({int(7_200_000 * args.scale):,} + "
                   f"{int(1_440_000 * args.scale):,} rows over {int(args.users * args.scale):,} users and "
                   f"{max(int(args.users * args.scale) // 5, 10):,} merchants, TTL 2 days, ~1% "
                   f"created-timestamp ties) x "
                   f"{args.entity_rows:,} entity rows", list(contenders.values()),
                   floor="duckdb-asof-floor", default="feast-duckdb", units=args.entity_rows,
                   unit_name="entity rows/s")]
    lines += [f"- {name}: values {verdict} (cell for cell, sorted by row id)" for name, verdict in checks.items()]
    return "\n".join(lines)


# Materialization --------------------------------------------------------------------------------

def make_mat_data(work: Path, entities: int, seed: int) -> None:
    """One row per entity x 10 float features inside one day (what a daily chunk materializes)."""
    marker = work / "mat.json"
    spec = {"entities": entities, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return
    rng = np.random.default_rng(seed)
    epoch = int(START.timestamp() * 1_000_000)
    ts = epoch + rng.integers(0, 86400, entities) * 1_000_000
    columns = {"entity_id": np.arange(entities, dtype="int64"),
               "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
               "created": pa.array(ts, pa.timestamp("us", tz="UTC"))}
    for i, name in enumerate(MAT_FEATURES):
        columns[name] = rng.normal(i, 1.0, entities).round(4)
    pq.write_table(pa.table(columns), work / "mat.parquet", row_group_size=100_000)
    marker.write_text(json.dumps(spec))


def _mat_store(work: Path, contender: str, batch_size: int):
    from feast import FeatureStore

    redis = f"127.0.0.1:6379,db={REDIS_DB}"
    online = {"feast-redis": {"type": "redis", "connection_string": redis},
              "redis-pipeline-floor": {"type": "redis", "connection_string": redis},
              "feastkit-redis": {"type": "feastkit.online_stores.FastRedisOnlineStore", "connection_string": redis},
              "feastkit-redis-write": {"type": "feastkit.online_stores.FastRedisOnlineStore",
                                       "connection_string": redis},
              "feast-sqlite": {"type": "sqlite", "path": str(work / "mat_online.db")},
              "feastkit-sqlite": {"type": "feastkit.online_stores.MonotonicSqliteOnlineStore",
                                  "path": str(work / "mat_online.db")}}[contender]
    (work / "mat_online.db").unlink(missing_ok=True)
    config = _repo_config(work, "duckdb", online=online, batch_size=batch_size,
                          engine=FEASTKIT_ENGINE if contender.startswith("feastkit") else "local")
    config.registry.path = str(work / "mat_registry.db")
    (work / "mat_registry.db").unlink(missing_ok=True)
    store = FeatureStore(config=config)
    entity, view = _view("mat_stats", "entity_id", MAT_FEATURES, work / "mat.parquet", timedelta(days=2))
    store.apply([entity, view])
    return store, view


def _redis_digest(sample: int = 200) -> str:
    """Digest of a fixed sample of stored hashes: equal digests = byte-identical writes."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    keys = sorted(client.scan_iter(count=10_000))[:sample]
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key)
        for field, value in sorted(client.hgetall(key).items()):
            digest.update(field + b"=" + value)
    return f"{client.dbsize()}:{digest.hexdigest()[:16]}"


def _sqlite_digest(path: Path) -> str:
    """Digest of every stored row: equal digests = identical sqlite contents."""
    import sqlite3

    digest = hashlib.sha256()
    with sqlite3.connect(path) as conn:
        table_name = f"{PROJECT}_mat_stats"
        for row in conn.execute(f"SELECT entity_key, feature_name, value, value_text, event_ts, created_ts "
                                f"FROM {table_name} ORDER BY entity_key, feature_name"):
            digest.update(repr(row).encode())
        count = conn.execute(f"SELECT count(*) FROM {table_name}").fetchone()[0]
    return f"{count}:{digest.hexdigest()[:16]}"


def child_mat(contender: str, work: Path, batch_size: int) -> None:
    """One timed materialization of the whole table (setup and payload building before the clock)."""
    import warnings

    warnings.filterwarnings("ignore")
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    store, view = _mat_store(work, contender, batch_size)
    rows = pq.read_metadata(work / "mat.parquet").num_rows
    if contender == "redis-pipeline-floor":
        payload = _feast_redis_payload(store, view, work)
        started = time.perf_counter()
        for i in range(0, len(payload), batch_size):
            with client.pipeline(transaction=False) as pipe:
                for key, mapping in payload[i:i + batch_size]:
                    pipe.hset(key, mapping=mapping)
                pipe.execute()
        seconds = time.perf_counter() - started
    elif contender == "feastkit-redis-write":  # the store's write path alone, from Arrow batches
        from feastkit.feast_compat import online_store

        batches = pq.read_table(work / "mat.parquet").to_batches(max_chunksize=batch_size)
        join_keys = {"entity_id": view.entity_columns[0].dtype.to_value_type()}
        writer = online_store(store)
        started = time.perf_counter()
        for batch in batches:
            assert writer.online_write_arrow(store.config, view, batch, join_keys, None)
        seconds = time.perf_counter() - started
    else:
        started = time.perf_counter()
        store.materialize(START - timedelta(days=1), START + timedelta(days=1), feature_views=[view.name])
        seconds = time.perf_counter() - started
    digest = _redis_digest() if "redis" in contender else _sqlite_digest(work / "mat_online.db")
    report({"seconds": seconds, "rows": rows, "digest": digest})


def _feast_redis_payload(store, view, work: Path) -> list[tuple[bytes, dict]]:
    """Feast's exact Redis keys and hash fields for every row, built with Feast's own encoders."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType
    from google.protobuf.timestamp_pb2 import Timestamp

    from feastkit.feast_compat import redis_field, redis_key

    frame = pd.read_parquet(work / "mat.parquet")
    fields = {f: redis_field(f"{view.name}:{f}") for f in MAT_FEATURES}
    values = {f: [v.SerializeToString() for v in
                  python_values_to_proto_values(frame[f].tolist(), ValueType.DOUBLE)] for f in MAT_FEATURES}
    keys = python_values_to_proto_values(frame["entity_id"].tolist(), ValueType.INT64)
    ts_field = f"_ts:{view.name}"
    payload = []
    for i, (key, when) in enumerate(zip(keys, frame["event_timestamp"], strict=True)):
        stamp = Timestamp()
        stamp.FromDatetime(when.to_pydatetime())
        entity_key = EntityKeyProto(join_keys=["entity_id"], entity_values=[key])
        mapping = {ts_field: stamp.SerializeToString()}
        mapping.update({fields[f]: values[f][i] for f in MAT_FEATURES})
        payload.append((redis_key(PROJECT, entity_key, entity_key_serialization_version=3), mapping))
    return payload


def bench_materialize(args: argparse.Namespace, work: Path) -> str:
    make_mat_data(work, args.entities, args.seed)
    rows = args.entities
    contenders = {name: Contender(name) for name in MAT_CONTENDERS if name in args.mat}
    digests: dict[str, str] = {}
    for run in range(args.runs):
        for name, contender in contenders.items():
            measured = run_child([__file__, "child-mat", name, str(work), str(args.batch_size)])
            contender.seconds.append(measured["seconds"])
            contender.peak_mb.append(measured["peak_rss_mb"])
            if measured["digest"]:
                digests[name] = measured["digest"]
            print(f"  run {run + 1}: {name:22s} {measured['seconds']:8.2f}s "
                  f"{measured['peak_rss_mb']:8.0f} MB", flush=True)
    lines = [table(f"Materialization: {rows:,} entities x {len(MAT_FEATURES)} features, local engine, "
                   f"online_write_batch_size={args.batch_size:,}", list(contenders.values()),
                   floor="redis-pipeline-floor", default="feast-redis", units=rows * len(MAT_FEATURES),
                   unit_name="feature values/s")]
    if "feast-sqlite" in contenders and "feastkit-sqlite" in contenders:
        ratio = contenders["feast-sqlite"].median_s / contenders["feastkit-sqlite"].median_s
        lines.append(f"- feastkit-sqlite vs feast-sqlite: {ratio:.1f}x faster")
    for store in ("redis", "sqlite"):
        same = {name: d for name, d in digests.items() if store in name}
        if len(same) < 2:
            continue
        if len(set(same.values())) == 1:
            lines.append(f"- {', '.join(sorted(same))}: identical {store} contents (digest {next(iter(same.values()))})")
        else:
            lines.append(f"- {store} contents DIFFER: {same}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child-pit":
        child_pit(argv[1], Path(argv[2]), Path(argv[3]) if argv[3] else None)
        return
    if argv and argv[0] == "child-mat":
        child_mat(argv[1], Path(argv[2]), int(argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["pit", "materialize"], help="run one benchmark only")
    parser.add_argument("--entity-rows", type=int, default=100_000, help="entity rows of the PIT join")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="feature rows: 7.2M x scale (users) + 1.44M x scale (merchants)")
    parser.add_argument("--users", type=int, default=10_000,
                        help="user keys at scale 1 (merchants: a fifth); fewer keys = denser views")
    parser.add_argument("--entities", type=int, default=200_000, help="entities to materialize")
    parser.add_argument("--batch-size", type=int, default=10_000, help="online_write_batch_size")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender (the median is shown)")
    parser.add_argument("--pit", nargs="+", default=list(PIT_CONTENDERS), choices=PIT_CONTENDERS)
    parser.add_argument("--mat", nargs="+", default=list(MAT_CONTENDERS), choices=MAT_CONTENDERS)
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip comparing result values with the floor")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep generated data here (reused when flags match)")
    args = parser.parse_args(argv)
    if min(args.entity_rows, args.entities, args.runs, args.batch_size, args.users) < 1 or args.scale <= 0:
        parser.error("sizes, runs and scale must be positive")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="feastkit-bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = []
    try:
        if args.only in (None, "pit"):
            sections.append(bench_pit(args, work))
            print("\n" + sections[-1] + "\n", flush=True)
        if args.only in (None, "materialize"):
            sections.append(bench_materialize(args, work))
            print("\n" + sections[-1] + "\n", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n\n".join(sections))


if __name__ == "__main__":
    main()
