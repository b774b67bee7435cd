"""Raw events -> windowed feature tables, as declared in feature_repo/: point-in-time correct and incremental.

Conventions (the PIT contract every view follows):
- A feature row stamped T describes the entity using only events with timestamp in [T - w, T)
  for each window w, and only labels whose availability time is < T. It never sees the future.
- Rows sit on a grid (hourly, or daily for churn), and a row is written at grid points where
  a value can change (the first grid point after an event enters a window and the first
  after it leaves one) plus a heartbeat every midnight while the entity has events in its
  longest window. Between rows the value is constant, so Feast's "latest row at or before
  the entity timestamp" gives the exact value at any time, and a 2-day TTL never hides one.
- A run over the interval [start, end) writes exactly the rows with start < T <= end, read
  from events in [start - lookback, end). Running the intervals one by one gives the same
  tables as one run over their union, bit for bit (sums are exact: see pipelines/windows.py).
- A view declared with `grid=None` (the realtime view) has one row per event, stamped with its
  own time, counting the events in the window up to and including it (what the stream pushes).
- What each view computes is its declaration in feature_repo/ (`feastkit.declarations`), read
  back from the applied registry: nothing here names a view or a feature. A table records the
  definition its rows were computed under; after a change the table is recomputed whole.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from feastkit.atomic import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    data_folder_lock,
    replace_bytes,
    replacing,
    swap_folder,
)
from feastkit.clean import EVENT_TABLES, clean_table, data_range
from feastkit.declarations import DeclarationError, EventSource, ViewSpec
from feastkit.errors import FeastkitError
from feastkit.ledger import Ledger
from feastkit.settings import Settings
from feastkit.times import epoch_micros, micros, require_aware
from pipelines.windows import (
    UTC_MICROS,
    Aggregate,
    entity_codes,
    entity_keys,
    window_aggregates,
)

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
DEFINITION_FILE = "_definition.json"  # the spec a table's rows were computed under
ENGINE_DAY = "_feastkit_day"  # the day folders a RowsEngine stages its rows in


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC, without the terminal progress bar."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SET TimeZone='UTC'")
    return con


@dataclass(frozen=True)
class RowStamps:
    """Where a grid view writes rows in the interval (start, end], per entity (times in epoch us).

    Change points: an event at t can change a value at the first grid point after t + w, for w
    in `moves` (0: it enters the windows; each window: it leaves it). Heartbeats: every midnight
    M with one of the entity's events in [M - reach, M) -- so a live entity has a row at least
    daily and the view's TTL can be short (stale pipelines show up as missing features, and
    historical retrieval joins far fewer candidate rows), but none across longer idle gaps.
    """

    grid: timedelta
    moves: tuple[timedelta, ...]
    reach: timedelta
    start: int
    end: int

    @property
    def midnights(self) -> tuple[int, int]:
        """The first and the last midnight in the interval (start, end]; none when first > last."""
        day = micros(DAY)
        return self.start // day * day + day, self.end // day * day

    @property
    def holds_midnight(self) -> bool:
        """Whether the interval (start, end] holds a midnight: its heartbeats."""
        first, last = self.midnights
        return first <= last

    def can_stamp(self) -> str:
        """SQL: the events (on `ts`) that can put a row in the interval; their entities are read."""
        grid = micros(self.grid)
        moved = [f"(ts > {_sql_time(self.start - grid - micros(w))} AND ts < {_sql_time(self.end - micros(w))})"
                 for w in self.moves]
        first_midnight, last_midnight = self.midnights
        if self.holds_midnight:
            moved.append(f"(ts >= {_sql_time(first_midnight - micros(self.reach))} "
                         f"AND ts < {_sql_time(last_midnight)})")
        return " OR ".join(moved) or "FALSE"

    def __call__(self, keys: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stamps (keys, ts) of a run of events sorted by (key, ts), sorted the same way."""
        day, grid = micros(DAY), micros(self.grid)
        entity = entity_codes(keys)
        found_entity, found_ts = [], []
        for move in self.moves:
            point = (ts + micros(move)) // grid * grid + grid
            inside = (point > self.start) & (point <= self.end)
            found_entity.append(entity[inside])
            found_ts.append(point[inside])
        # heartbeats: each event covers the midnights (t, t + reach]; overlapping covers of an
        # entity merge into islands (both ends only grow along an entity's sorted events)
        first = ts // day * day + day
        last = (ts + micros(self.reach)) // day * day
        opens = np.ones(len(ts), dtype=bool)
        opens[1:] = (entity[1:] != entity[:-1]) | (first[1:] > last[:-1])
        starts = np.flatnonzero(opens)
        ends = np.r_[starts[1:], len(ts)] - 1
        first_midnight, last_midnight = self.midnights
        lo = np.maximum(first[starts], first_midnight)
        hi = np.minimum(last[ends], last_midnight)
        count = np.maximum((hi - lo) // day + 1, 0)
        offsets = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        found_entity.append(np.repeat(entity[starts], count))
        found_ts.append(np.repeat(lo, count) + offsets * day)
        entity, stamp = np.concatenate(found_entity), np.concatenate(found_ts)
        order = np.lexsort((stamp, entity))
        entity, stamp = entity[order], stamp[order]
        keep = np.ones(len(stamp), dtype=bool)
        keep[1:] = (entity[1:] != entity[:-1]) | (stamp[1:] != stamp[:-1])
        return entity_keys(keys)[entity[keep]], stamp[keep]


def _sql_time(epoch_us: int) -> str:
    return f"TIMESTAMP '{datetime(1970, 1, 1) + timedelta(microseconds=epoch_us)}'"


class RowsEngine(Protocol):
    """Computes a windowed view's fresh rows another way: on Spark (`pipelines.spark_windows`) or
    over entity buckets in turn (`BucketedWindowEngine`)."""

    def describe(self) -> str:
        """Where the rows are computed, for people (`feastkit compute` prints it)."""
        ...

    def stage_rows(self, con: duckdb.DuckDBPyConnection, spec: ViewSpec, clean_dir: Path, start: datetime,
                   end: datetime, narrow: bool, out: Path) -> tuple[int, pa.Schema]:
        """Write the view's fresh rows in [start, end) as Parquet under `out/_feastkit_day=YYYY-MM-DD/`
        (the day of `day_sql`), in any order; the number of rows, and the engine's row schema
        before the view's SELECT (for its checks)."""
        ...


@dataclass(frozen=True)
class WindowedQuery:
    """A grid view: its events (k, ts, ...), where its rows go, the window aggregates at each
    row, and a SELECT over `{windowed}` (k, ts, aggregates) that names, casts and derives the
    view's features."""

    events: str
    stamps: RowStamps | EventStamps | ProbeStamps
    aggregates: tuple[Aggregate, ...]
    select: str
    stamp_shift: timedelta = timedelta(0)  # how far after its row's stamp each probe sits


def _windowed_rows(con: duckdb.DuckDBPyConnection, query: WindowedQuery,
                   narrow: bool) -> tuple[str, list[int], pa.Schema]:
    """A SELECT of the view's rows, streamed from the window engine, and a counter of rows streamed.

    The events are read once, sorted by (k, ts) -- with `narrow`, only those of entities that
    can have a row in the interval, which pays off when the interval is short and most entities
    idle in it. `pipelines.windows` finds each chunk of entities' row stamps and evaluates the
    aggregates there (prefix sums, exact). The chunks stream straight into whatever statement
    uses the SELECT, so no table of all rows is ever held.
    """
    # at a midnight nearly every entity with events gets its heartbeat row: narrowing would read the
    # events twice to drop almost none of them (the rows are the same either way)
    narrow = narrow and not query.stamps.holds_midnight
    only = f"WHERE k IN (SELECT k FROM events WHERE {query.stamps.can_stamp()})" if narrow else ""
    events = con.sql(f"""WITH events AS ({query.events})
                         SELECT * REPLACE (epoch_us(ts) AS ts) FROM events {only} ORDER BY k, ts""").to_arrow_table()
    schema = _empty_windowed(events, query.aggregates).schema
    shift = pa.scalar(micros(query.stamp_shift), pa.duration("us"))
    counted = [0]
    try:
        chunks = window_aggregates(events, list(query.aggregates), query.stamps)
    except ValueError as exc:
        raise FeastkitError(f"cannot aggregate these events: {exc}",
                            "compute features from tables written by `feastkit validate`") from exc

    def batches() -> Iterator[pa.RecordBatch]:
        for chunk in chunks:
            if query.stamp_shift:
                chunk = chunk.set_column(1, "ts", pc.subtract(chunk.column("ts"), shift))
            counted[0] += chunk.num_rows
            yield from chunk.cast(schema).to_batches()

    con.register("windowed_stream", pa.RecordBatchReader.from_batches(schema, batches()))
    return query.select.format(windowed="windowed_stream"), counted, schema


def _empty_windowed(events: pa.Table, aggregates: tuple[Aggregate, ...]) -> pa.Table:
    types = {"count": pa.int64(), "distinct": pa.int64(), "approx_distinct": pa.int64(), "last": UTC_MICROS}

    def output_type(agg: Aggregate) -> pa.DataType:
        if agg.kind == "last_value":
            return events.schema.field(agg.column).type
        if agg.kind == "last_n":  # the engine gives numbers as doubles, other values as they are
            column = events.schema.field(agg.column).type
            numeric = pa.types.is_integer(column) or pa.types.is_floating(column) or pa.types.is_decimal(column)
            return pa.list_(pa.float64() if numeric else column)
        return types.get(agg.kind, pa.float64())

    return pa.table({"k": pa.array([], type=events.schema.field("k").type), "ts": pa.array([], type=UTC_MICROS),
                     **{a.name: pa.array([], type=output_type(a)) for a in aggregates}})


@dataclass(frozen=True)
class EventStamps:
    """Rows of an event-driven view: one per distinct (entity, event time) in [start, end), each
    probed `after` its stamp so that a window [T' - w, T') also holds the events at T itself."""

    after: int
    start: int
    end: int
    holds_midnight = False  # rows only at events: no heartbeats

    def can_stamp(self) -> str:
        return f"(ts >= {_sql_time(self.start)} AND ts < {_sql_time(self.end)})"

    def __call__(self, keys: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inside = (ts >= self.start) & (ts < self.end)
        keys, ts = keys[inside], ts[inside]
        first = np.ones(len(ts), dtype=bool)
        first[1:] = (keys[1:] != keys[:-1]) | (ts[1:] != ts[:-1])
        return keys[first], ts[first] + self.after


_DUCKDB_TYPES = {"Int64": "BIGINT", "Int32": "INTEGER", "Float64": "DOUBLE", "Float32": "FLOAT",
                 "String": "VARCHAR", "Bool": "BOOLEAN", "UnixTimestamp": "TIMESTAMPTZ", "Bytes": "BLOB"}


def duckdb_type(feast_type: str) -> str:
    """The DuckDB type of a Feast type name (Array(X) -> X[])."""
    if feast_type.startswith("Array(") and feast_type.endswith(")"):
        return duckdb_type(feast_type[6:-1]) + "[]"
    if feast_type not in _DUCKDB_TYPES:
        raise FeastkitError(f"feature type {feast_type} is not supported by `feastkit compute`",
                            f"use one of {sorted(_DUCKDB_TYPES)} or Array(...) of them")
    return _DUCKDB_TYPES[feast_type]


def _events_sql(spec: ViewSpec, clean_dir: Path, lo: str, hi: str,
                relation_of: Callable[[EventSource], str] | None = None
                ) -> tuple[str, dict[str, tuple[str, str | None]]]:
    """The view's events (k, ts, value and filter columns) from its raw sources in [lo, hi), and per
    aggregation the (value column, filter column) it reads there. A source is read from its clean
    table, or from the relation `relation_of(source)` names (the stream worker's buffered events).

    Several sources are stacked (UNION ALL BY NAME); an aggregation only sees the rows of its own
    source, and rows that no aggregation selects are left out, since they cannot change a value.
    """
    several = len({a.source for a in spec.aggregations}) > 1
    # value columns keep their own names (errors then name them) unless two sources share one
    sources_of: dict[str, set[str]] = {}
    for agg in spec.aggregations:
        if agg.column is not None:
            sources_of.setdefault(agg.column, set()).add(agg.source)
    reads: dict[str, tuple[str, str | None]] = {}
    parts = []
    for source in spec.sources:
        aggs = [a for a in spec.aggregations if a.source == source.name]
        if not aggs:
            continue
        columns: dict[str, str] = {}
        filters: dict[str, str] = {}
        for agg in aggs:
            value = None
            if agg.column is not None:
                own = len(sources_of[agg.column]) == 1 and agg.column not in ("k", "ts")
                value = columns.setdefault(agg.column, agg.column if own else f"{source.name}.{agg.column}")
            mask = None
            if agg.where is not None or several:
                condition = agg.where or "TRUE"
                mask = filters.setdefault(condition, f"m_{source.name}_{len(filters)}")
            reads[agg.name] = (value, mask)
        keep = "" if any(a.where is None for a in aggs) else \
            "WHERE " + " OR ".join(f"({condition})" for condition in filters)
        selected = [f'"{column}" AS "{alias}"' for column, alias in columns.items()]
        selected += [f"coalesce(({condition}), FALSE) AS {alias}" for condition, alias in filters.items()]
        ts = f'"{source.timestamp}"'
        parts.append(f"""SELECT k, ts{''.join(', ' + c for c in selected)} FROM (
                           SELECT *, "{spec.entity_key}" AS k, make_timestamp(epoch_us({ts}::TIMESTAMPTZ)) AS ts
                           FROM {relation_of(source) if relation_of else
                                 f"read_parquet('{clean_table(clean_dir, source.table)}')"}
                           WHERE {ts} >= {lo} AND {ts} < {hi}) {keep}""")
    return " UNION ALL BY NAME ".join(parts), reads


def _select_sql(spec: ViewSpec) -> str:
    """The view's columns from the engine's rows: its key, the stamp and each feature, cast to its type."""
    kinds = {a.name: a.function for a in spec.aggregations}
    columns = []
    for feature in spec.features:
        if feature.expression is not None:
            value = f"({feature.expression})"
        elif kinds[feature.name] == "last_time":
            value = f"epoch({feature.name})"  # a timestamp in the engine, epoch seconds as a feature
        else:
            value = feature.name
        columns.append(f"{value}::{duckdb_type(feature.dtype)} AS {feature.name}")
    return (f"SELECT k AS {spec.entity_key}, event_timestamp, {', '.join(columns)} "
            "FROM (SELECT *, ts AS event_timestamp FROM {windowed})")


def windowed_query(spec: ViewSpec, clean_dir: Path, start: datetime, end: datetime,
                   relation_of: Callable[[EventSource], str] | None = None) -> WindowedQuery:
    """The engine's plan for one view and interval, derived from the view's declaration.

    On a grid, rows go where a value can change and at midnight heartbeats (`RowStamps`); a view
    with one row per event counts the events up to and including it (windows one microsecond
    longer, probed one microsecond after the event).
    """
    lo = f"TIMESTAMPTZ '{(start - spec.lookback - spec.grid - HOUR).isoformat()}'"
    hi = f"TIMESTAMPTZ '{end.isoformat()}'"
    events, reads = _events_sql(spec, clean_dir, lo, hi, relation_of)
    per_event = spec.grid_us == 0
    aggregates = []
    for agg in spec.aggregations:
        value, mask = reads[agg.name]
        window = timedelta(microseconds=agg.window_us + (1 if per_event else 0))
        extra = {"n": agg.n} if agg.n is not None else {}
        aggregates.append(Aggregate(agg.name, agg.kind, window, value, mask, **extra))
    a, b = epoch_micros(start), epoch_micros(end)
    if per_event:
        stamps: RowStamps | EventStamps = EventStamps(1, a, b)
    elif spec.grid < DAY:
        windows = sorted({timedelta(microseconds=g.window_us) for g in spec.aggregations})
        stamps = RowStamps(spec.grid, (timedelta(0), *windows), spec.lookback, a, b)
    else:  # grid points are midnights: the heartbeats cover every change
        stamps = RowStamps(spec.grid, (), spec.lookback + spec.grid, a, b)
    return WindowedQuery(events, stamps, tuple(aggregates), _select_sql(spec),
                         timedelta(microseconds=1) if per_event else timedelta(0))



@dataclass(frozen=True)
class ProbeStamps:
    """Rows of an event-driven view at chosen (entity, event time in epoch us) points only, probed
    one microsecond after each like `EventStamps` (the stream worker's new and corrected rows)."""

    points: frozenset[tuple[object, int]]
    holds_midnight = False  # rows only at the points: no heartbeats

    def can_stamp(self) -> str:
        return "TRUE"

    def __call__(self, keys: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = np.ones(len(ts), dtype=bool)
        first[1:] = (keys[1:] != keys[:-1]) | (ts[1:] != ts[:-1])
        keys, ts = keys[first], ts[first]
        wanted = np.fromiter(((k, int(t)) in self.points for k, t in zip(keys.tolist(), ts.tolist(), strict=True)),
                             dtype=bool, count=len(ts))
        return keys[wanted], ts[wanted] + 1


def rows_at(spec: ViewSpec, events: dict[str, pa.Table], points: frozenset[tuple[object, int]],
            con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
    """A per-event view's rows (`grid=None`) at the given (entity key, event time in epoch us)
    points, from in-memory raw events, by the very query and window engine `feastkit compute` runs.

    `events` maps each of the view's event sources to a table of its clean table's columns; the
    stream worker passes the events it holds for the entities it updates. A point must be one of
    those events' (key, time); the rows come out as `compute` writes them (key, event_timestamp,
    features), sorted by key and time.
    """
    if spec.grid_us:
        raise FeastkitError(f"feature view '{spec.name}' is on a grid, not a row per event",
                            "only views declared with grid=None are computed per event")
    if not points:
        return pa.table({})
    con = con or connect()
    names = {}
    for i, source in enumerate(spec.sources):
        if source.name in events:
            names[source.name] = f"stream_events_{i}"
            con.register(names[source.name], events[source.name])
    try:
        return _rows_at(con, spec, names, points)
    finally:
        for name in names.values():
            con.unregister(name)
        con.unregister("windowed_stream")


def _rows_at(con: duckdb.DuckDBPyConnection, spec: ViewSpec, names: dict[str, str],
             points: frozenset[tuple[object, int]]) -> pa.Table:
    missing = [s.name for s in spec.sources if s.name not in names and
               any(a.source == s.name for a in spec.aggregations)]
    if missing:
        raise FeastkitError(f"feature view '{spec.name}': no events given for source(s) {', '.join(missing)}",
                            "pass a table of each event source the view aggregates")
    times = [t for _, t in points]
    start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=min(times))
    end = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=max(times) + 1)
    query = windowed_query(spec, Path(), start, end, relation_of=lambda source: names[source.name])
    select, _, _ = _windowed_rows(con, replace(query, stamps=ProbeStamps(points)), narrow=False)
    return con.sql(f"SELECT * FROM ({select}) ORDER BY 1, 2").to_arrow_table()


@dataclass(frozen=True)
class ComputeReport:
    """What one run wrote: rows per view for the interval, the files it rewrote, and the span each
    view now counts as computed over in the interval ledger (the whole data for a table rebuilt
    under a changed definition)."""

    start: datetime
    end: datetime
    rows: dict[str, int]
    files: dict[str, int]
    computed: dict[str, tuple[datetime, datetime]]

    def lines(self) -> list[str]:
        return [f"{name:<24} {n:>9,} rows  ({self.files[name]} day file(s) rewritten)"
                for name, n in self.rows.items()]


def event_tables(specs: list[ViewSpec]) -> list[tuple[str, str]]:
    """The (clean table, timestamp column) of every windowed view's event sources, once each."""
    found: dict[tuple[str, str], None] = {}
    for spec in specs:
        if spec.kind == "windowed":
            for source in spec.sources:
                found[(source.table, source.timestamp)] = None
    return list(found)


def default_range(specs: list[ViewSpec], clean_dir: Path) -> tuple[datetime, datetime]:
    """The span `feastkit compute` covers by default: that of the activity tables (transactions,
    shop activity), so late labels arriving after the last transaction do not stretch it; a project
    whose views read other tables gets the span of those."""
    tables = event_tables(specs)
    primary = [t for t in EVENT_TABLES if t in tables]
    return data_range(clean_dir, primary or tables or EVENT_TABLES)


def _bounds_predicate(spec: ViewSpec) -> str:
    """Which rows of a day file a run over [start, end) owns (and so replaces)."""
    if spec.grid_us > 0:
        return "event_timestamp > $start AND event_timestamp <= $end"
    return "event_timestamp >= $start AND event_timestamp < $end"


_NUMERIC_FUNCTIONS = ("sum", "avg", "std", "var")
_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                  "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")


def _check_declaration(con: duckdb.DuckDBPyConnection, spec: ViewSpec, clean_dir: Path) -> None:
    """Name the view and the field when a declaration does not fit its raw tables."""
    for source in spec.sources:
        path = clean_table(clean_dir, source.table)
        try:
            described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
        except duckdb.Error as exc:
            raise FeastkitError(f"clean table '{source.table}' at {path} is not a readable Parquet file "
                                f"({str(exc).splitlines()[0][:160]})",
                                "run `feastkit validate` to write it again from the raw tables") from None
        columns = [r[0] for r in described]
        types = {r[0]: str(r[1]) for r in described}
        for agg in spec.aggregations:
            if (agg.source == source.name and agg.function in _NUMERIC_FUNCTIONS and agg.column in types
                    and not types[agg.column].startswith(_NUMERIC_TYPES)):
                raise FeastkitError(
                    f"clean table '{source.table}' at {path}: column '{agg.column}' holds {types[agg.column]}, "
                    f"not numbers, so feature view '{spec.name}' cannot compute {agg.function} '{agg.name}'",
                    "write the column as numbers in the raw table and run `feastkit validate` "
                    "(`feastkit compute` without --skip-validation)")
        needed = [(source.timestamp, "its timestamp field"), (spec.entity_key, "the entity's join key")]
        needed += [(a.column, f"feature '{a.name}'") for a in spec.aggregations
                   if a.source == source.name and a.column is not None]
        for column, what in needed:
            if column not in columns:
                raise DeclarationError(
                    f"feature view '{spec.name}': {what} reads column '{column}', which raw table "
                    f"'{source.table}' does not have (columns: {', '.join(columns)})",
                    "fix the column name in feature_repo/, then `feast apply`")
        for agg in spec.aggregations:
            if agg.source == source.name and agg.where is not None:
                try:
                    con.execute(f"""SELECT ({agg.where})::BOOLEAN FROM (SELECT *, make_timestamp(epoch_us(
                                    "{source.timestamp}"::TIMESTAMPTZ)) AS ts FROM read_parquet('{path}')) LIMIT 0""")
                except duckdb.Error as exc:
                    raise DeclarationError(
                        f"feature view '{spec.name}', feature '{agg.name}': filter {agg.where!r} does not "
                        f"apply to raw table '{source.table}' ({str(exc).splitlines()[0][:200]})",
                        "write the filter as DuckDB SQL over that table's columns (`ts` is the event time)") from None


def _check_select(con: duckdb.DuckDBPyConnection, spec: ViewSpec, schema: pa.Schema) -> None:
    """Name the feature whose derived expression does not apply to the view's aggregations."""
    con.register("windowed_probe", schema.empty_table())
    for feature in spec.features:
        if feature.expression is None:
            continue
        try:
            con.execute(f"SELECT ({feature.expression})::{duckdb_type(feature.dtype)} FROM "
                        "(SELECT *, ts AS event_timestamp FROM windowed_probe)")
        except duckdb.Error as exc:
            raise DeclarationError(
                f"feature view '{spec.name}', feature '{feature.name}': expression {feature.expression!r} "
                f"fails ({str(exc).splitlines()[0][:200]})",
                "write it as DuckDB SQL over the view's aggregations, helpers and event_timestamp") from None
    con.unregister("windowed_probe")


def compute_view(spec: ViewSpec, clean_dir: Path, features_dir: Path, start: datetime,
                 end: datetime, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
                 engine: RowsEngine | None = None) -> tuple[int, int, tuple[datetime, datetime]]:
    """Compute one view's rows for [start, end) and merge them into its day files; (rows, files,
    the span entered in the interval ledger as computed, `feastkit.ledger`).

    When the view's table holds rows computed under another definition (or under an unrecorded
    one), the whole table is recomputed from every raw event instead, so rows of two definitions
    never mix. Runs under the lock of the data folder holding clean_dir; every file is replaced by
    rename, and a table rebuilt whole replaces the old one in one rename (`features/<view>` is a
    symlink to the folder of the current version). The ledger entry is made under the same lock,
    whoever runs the computation (a DAG task, `feastkit compute`, `run-interval`), so the next
    materialization loads what was computed and not yet loaded. `engine` computes a windowed view's
    fresh rows another way (`rows_engine`); None runs the window engine here in one pass.
    """
    start, end = require_aware(start, "interval start"), require_aware(end, "interval end")
    if end <= start:
        raise FeastkitError(f"empty interval: end {end} is not after start {start}",
                            "pass --start earlier than --end")
    with data_folder_lock(clean_dir.parent, "compute", lock_timeout):
        out_dir = features_dir / spec.name
        _remove_leftovers(features_dir, spec.name)
        if not out_dir.exists():
            features_dir.mkdir(parents=True, exist_ok=True)
            swap_folder(out_dir, _new_version(features_dir, spec.name))
        ledger = Ledger(features_dir)
        span = (start, end)
        if spec.kind == "reference":
            rows, files = _write_reference_view(spec, clean_dir, out_dir)
            _record_definition(out_dir, spec)
        elif any(out_dir.glob("part-*.parquet")) and _recorded_definition(out_dir) != spec.digest:
            rows, files, span = _recompute_view(spec, clean_dir, features_dir, start, end, engine)
            ledger.forget_loaded([spec.name])  # rows of the new definition are loaded nowhere yet
        else:
            rows, files = _merge_interval(spec, clean_dir, out_dir, start, end, engine)
        ledger.record_computed([spec.name], span)
        return rows, files, span


_VERSION_MARK = ".v-"
_STAGING_PREFIX = ".staging-"


def _new_version(features_dir: Path, name: str) -> Path:
    fresh = features_dir / f".{name}{_VERSION_MARK}{uuid.uuid4().hex[:12]}"
    fresh.mkdir(parents=True)
    return fresh


def _remove_leftovers(features_dir: Path, name: str) -> None:
    """Staging folders and unused versions left by a run that died (the lock is held: no run is live)."""
    out_dir = features_dir / name
    current = out_dir.resolve() if out_dir.exists() else None
    for folder in features_dir.glob(f".{name}{_VERSION_MARK}*"):
        if folder.resolve() != current:
            shutil.rmtree(folder, ignore_errors=True)
    for old in features_dir.glob(f".{name}.*.old"):
        shutil.rmtree(old, ignore_errors=True)
    if out_dir.is_dir():
        for staging in out_dir.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(staging, ignore_errors=True)
        for tmp in out_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _recorded_definition(out_dir: Path) -> str | None:
    path = out_dir / DEFINITION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("digest")
    except (ValueError, AttributeError):
        return None


def _record_definition(out_dir: Path, spec: ViewSpec) -> None:
    replace_bytes(out_dir / DEFINITION_FILE,
                  json.dumps({"digest": spec.digest, "spec": json.loads(spec.to_json())}, indent=1).encode())


def _recompute_view(spec: ViewSpec, clean_dir: Path, features_dir: Path, start: datetime,
                    end: datetime, engine: RowsEngine | None) -> tuple[int, int, tuple[datetime, datetime]]:
    """Build the whole table under the current definition in a new version folder, then point the
    table at it in one rename: readers see the old table or the new one, never none or a mix.
    Returns (rows, files, the span computed)."""
    lo, hi = default_range([spec], clean_dir)
    lo, hi = min(lo, start), max(hi, end)
    fresh = _new_version(features_dir, spec.name)
    try:
        rows, files = _merge_interval(spec, clean_dir, fresh, lo, hi, engine)
        _record_definition(fresh, spec)
        previous = swap_folder(features_dir / spec.name, fresh)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    log.info("feature view %s: recomputed over [%s, %s) under its current definition %s",
             spec.name, lo.isoformat(), hi.isoformat(), spec.digest)
    return rows, files, (lo, hi)


def _merge_interval(spec: ViewSpec, clean_dir: Path, out_dir: Path, start: datetime,
                    end: datetime, engine: RowsEngine | None = None) -> tuple[int, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    con = connect()
    # this run's own staging folder, beside the day files (so each move is a rename) and outside
    # the `*.parquet` glob Feast reads
    staging = out_dir / f"{_STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    engine_dir = staging.with_name(staging.name + "-engine")  # where an engine stages its rows
    try:
        _check_declaration(con, spec, clean_dir)
        params = {"start": start, "end": end}
        narrow = end - start < spec.lookback
        if engine is None:
            # events are computed on in UTC wall-clock TIMESTAMPs: TIMESTAMPTZ arithmetic goes through
            # the ICU calendar and costs several times more; feature rows come out as TIMESTAMPTZ
            fresh, counted, schema = _windowed_rows(con, windowed_query(spec, clean_dir, start, end), narrow)
        else:
            staged_rows, schema = engine.stage_rows(con, spec, clean_dir, start, end, narrow, engine_dir)
            counted = [staged_rows]
        _check_select(con, spec, schema)
        # rows of this interval can only live in the day files of its days (a row stamped T sits in
        # the file of T's day, or of T - 1us on a grid): those are rewritten even with no fresh row
        first_day, last_day = start.date(), (end - timedelta(microseconds=1)).date()
        old = sorted(f for f in out_dir.glob("part-*.parquet")
                     if first_day.isoformat() <= f.stem.removeprefix("part-") <= last_day.isoformat())
        try:
            if engine is None:
                kept = (f"SELECT * FROM read_parquet([{', '.join(repr(str(f)) for f in old)}]) "
                        f"WHERE NOT ({_bounds_predicate(spec)}) UNION ALL BY NAME " if old else "")
                # no global sort: fresh rows arrive grouped by entity and in time order within it
                con.execute(f"""COPY (SELECT *, {day_sql(spec)} AS day FROM ({kept} {fresh}))
                              TO '{staging}' (FORMAT parquet, PARTITION_BY (day))""", params if old else None)
            else:
                _merge_staged_days(con, spec, old, engine_dir, staging, params)
        except duckdb.Error as exc:
            raise FeastkitError(f"feature view '{spec.name}': computing [{start.isoformat()}, {end.isoformat()}) "
                                f"failed on the clean tables in {clean_dir} or its day files in {out_dir} "
                                f"({str(exc).splitlines()[0][:200]})",
                                "run `feastkit validate` (or `feastkit compute` without --skip-validation); "
                                "a corrupt day file is rebuilt by removing it and computing its days again") from None
        touched = {date.fromisoformat(f.stem.removeprefix("part-")) for f in old}
        touched |= {date.fromisoformat(d.name.removeprefix("day=")) for d in staging.glob("day=*")}
        for d in sorted(touched):
            target = out_dir / f"part-{d.isoformat()}.parquet"
            written = sorted((staging / f"day={d.isoformat()}").glob("*.parquet"))
            if len(written) > 1:
                raise RuntimeError(f"expected one staged file for {spec.name} {d}, got {len(written)}")
            if written:
                with replacing(target) as tmp:
                    written[0].rename(tmp)
            else:
                target.unlink(missing_ok=True)
        if not (out_dir / DEFINITION_FILE).is_file():
            _record_definition(out_dir, spec)
    finally:
        con.close()
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(engine_dir, ignore_errors=True)
    return counted[0], len(touched)


def day_sql(spec: ViewSpec) -> str:
    """The day file a feature row belongs in: the day of T (of T - 1us on a grid), as a DATE computed
    from epoch microseconds, which needs no calendar."""
    return (f"(DATE '1970-01-01' + ((epoch_us(event_timestamp) - {int(spec.grid_us > 0)})"
            " // 86400000000)::INTEGER)")


def staged_rows_sql(spec: ViewSpec, select: str) -> str:
    """The view's rows from `select` with the day folder an engine stages each in (`ENGINE_DAY`)."""
    return f"SELECT *, strftime({day_sql(spec)}, '%Y-%m-%d') AS {ENGINE_DAY} FROM ({select})"


def _merge_staged_days(con: duckdb.DuckDBPyConnection, spec: ViewSpec, old: list[Path], engine_dir: Path,
                       staging: Path, params: dict[str, datetime]) -> None:
    """Stage each day file from an engine's rows (`engine_dir/_feastkit_day=YYYY-MM-DD/*.parquet`, in
    any order), one day at a time: the old file's rows this run does not own, then the day's fresh
    rows by entity, then time. The rows and schema of the one pass's partitioned COPY, with no more
    than one day's rows sorted at once; only the order of rows within a day may differ (that COPY
    writes them in the order its threads reach them)."""
    old_by_day = {f.stem.removeprefix("part-"): f for f in old}
    fresh_days = {d.name.removeprefix(f"{ENGINE_DAY}="): d for d in engine_dir.glob(f"{ENGINE_DAY}=*")}
    key = spec.entity_key
    for day in sorted(set(old_by_day) | set(fresh_days)):
        parts = []
        if day in old_by_day:
            parts.append(f"SELECT * FROM read_parquet('{old_by_day[day]}') WHERE NOT ({_bounds_predicate(spec)})")
        files = sorted(fresh_days[day].glob("*.parquet")) if day in fresh_days else []
        if files:
            listed = ", ".join(repr(str(f)) for f in files)
            parts.append(f'SELECT * FROM (SELECT * FROM read_parquet([{listed}], hive_partitioning = false) '
                         f'ORDER BY "{key}", event_timestamp)')
        union = " UNION ALL BY NAME ".join(parts)
        # a partitioned COPY, as the local run's: a plain one writes columns without nulls as
        # REQUIRED; and a day left with no rows gets no file, as in a local run
        con.execute(f"""COPY (SELECT *, DATE '{day}' AS day FROM ({union})) TO '{staging}'
                        (FORMAT parquet, PARTITION_BY (day), OVERWRITE_OR_IGNORE)""",
                    params if day in old_by_day else None)


def _write_reference_view(spec: ViewSpec, clean_dir: Path, out_dir: Path) -> tuple[int, int]:
    """A dimension table (one row per entity, stamped when it came to be) is rewritten whole."""
    source = spec.sources[0]
    path = out_dir / "part-all.parquet"
    columns = ", ".join(f"({f.expression})::{duckdb_type(f.dtype)} AS {f.name}" for f in spec.features)
    con = connect()
    try:
        _check_declaration(con, spec, clean_dir)
        with replacing(path) as tmp:
            try:
                con.execute(f"""COPY (SELECT "{spec.entity_key}", "{source.timestamp}"::TIMESTAMPTZ AS event_timestamp,
                                  {columns} FROM read_parquet('{clean_table(clean_dir, source.table)}')
                                  ORDER BY "{spec.entity_key}") TO '{tmp}' (FORMAT parquet)""")
            except duckdb.Error as exc:
                raise DeclarationError(f"feature view '{spec.name}': its expressions fail on raw table "
                                       f"'{source.table}' ({str(exc).splitlines()[0][:200]})",
                                       "write each feature as DuckDB SQL over that table's columns") from None
        return con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0], 1
    finally:
        con.close()


class BucketedWindowEngine:
    """The local window engine over one bucket of entities at a time (`hash(key) % buckets`): the
    events held at once, and the engine's chunk buffers, are a bucket's. Each bucket's rows are
    staged per day and the day files built one day at a time, as for Spark. Selected with
    FEASTKIT_COMPUTE_BUCKETS above 1; the single pass (1) is faster while the events fit."""

    def __init__(self, buckets: int) -> None:
        if buckets < 2:
            raise FeastkitError(f"a bucketed run needs at least 2 buckets, got {buckets}",
                                "set FEASTKIT_COMPUTE_BUCKETS to 1 (one pass) or more")
        self.buckets = buckets

    def describe(self) -> str:
        return f"the local engine ({self.buckets} entity buckets)"

    def stage_rows(self, con: duckdb.DuckDBPyConnection, spec: ViewSpec, clean_dir: Path, start: datetime,
                   end: datetime, narrow: bool, out: Path) -> tuple[int, pa.Schema]:
        rows, schema = 0, None
        for bucket in range(self.buckets):
            def relation_of(source: EventSource, bucket: int = bucket) -> str:
                return (f"(SELECT * FROM read_parquet('{clean_table(clean_dir, source.table)}') "
                        f'WHERE hash("{spec.entity_key}") % {self.buckets} = {bucket})')

            part = connect()
            try:
                select, counted, schema = _windowed_rows(
                    part, windowed_query(spec, clean_dir, start, end, relation_of), narrow)
                part.execute(f"""COPY ({staged_rows_sql(spec, select)}) TO '{out}' (FORMAT parquet,
                                 PARTITION_BY ({ENGINE_DAY}), OVERWRITE_OR_IGNORE,
                                 FILENAME_PATTERN 'bucket{bucket}_{{i}}')""")
            finally:
                part.close()
            rows += counted[0]
        assert schema is not None
        return rows, schema


def compute_features(specs: list[ViewSpec], clean_dir: Path, features_dir: Path, start: datetime | None = None,
                     end: datetime | None = None, views: list[str] | None = None,
                     lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
                     engine: RowsEngine | None = None) -> ComputeReport:
    """Compute every (or the named) declared view for [start, end); defaults to the whole data range.

    `specs` come from the applied registry (`feastkit.declarations.specs_of(store.list_feature_views())`).
    The run holds the lock of the data folder holding clean_dir: a second run over the same data
    waits for it (up to `lock_timeout` seconds), so runs never rewrite the same files at once.
    `engine` computes windowed views' rows another way (`rows_engine`: Spark, or entity buckets).
    """
    with data_folder_lock(clean_dir.parent, "compute", lock_timeout):
        return _compute_features(specs, clean_dir, features_dir, start, end, views, lock_timeout, engine)


def _compute_features(specs: list[ViewSpec], clean_dir: Path, features_dir: Path, start: datetime | None,
                      end: datetime | None, views: list[str] | None, lock_timeout: float,
                      engine: RowsEngine | None) -> ComputeReport:
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(views or []) - set(by_name))
    if unknown:
        raise FeastkitError(f"unknown feature view(s) {unknown}",
                            f"choose from {sorted(by_name)} (views declared in feature_repo/ and applied)")
    if not specs:
        raise FeastkitError("the registry holds no view declared with feastkit.declarations",
                            "declare views in feature_repo/ and run `feast apply` (or `feastkit apply`)")
    if start is None or end is None:
        lo, hi = default_range(specs, clean_dir)
        start, end = start or lo, end or hi
    rows, files, computed = {}, {}, {}
    for spec in specs:
        if views and spec.name not in views:
            continue
        rows[spec.name], files[spec.name], computed[spec.name] = compute_view(
            spec, clean_dir, features_dir, start, end, lock_timeout, engine)
    return ComputeReport(require_aware(start, "interval start"), require_aware(end, "interval end"), rows, files,
                         computed)


def rows_engine(settings: Settings) -> RowsEngine | None:
    """The engine `settings` select for windowed views: Spark (the `spark` profile or
    FEASTKIT_AGGREGATE_ENGINE=spark), the bucketed local engine (FEASTKIT_COMPUTE_BUCKETS > 1), or
    None for the local engine's single pass."""
    if settings.aggregate_engine_name == "spark":
        from pipelines.spark_windows import spark_engine

        return spark_engine(settings)
    return BucketedWindowEngine(settings.compute_buckets) if settings.compute_buckets > 1 else None


def read_view(features_dir: Path, name: str) -> pd.DataFrame:
    """Every row of a feature table, sorted by time and entity (for checks and tests)."""
    files = sorted((features_dir / name).glob("*.parquet"))
    if not files:
        raise FeastkitError(f"feature table '{name}' is empty", "run `feastkit compute` first")
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return frame.sort_values(["event_timestamp", frame.columns[0]], kind="stable").reset_index(drop=True)
