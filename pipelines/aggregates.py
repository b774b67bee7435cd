"""Raw events -> windowed feature tables (DuckDB): point-in-time correct and incremental by interval.

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
- The realtime view is the exception: one row per transaction, stamped with its own time,
  counting transactions in the 10 minutes up to and including it (what the stream pushes).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from feastkit.errors import FeastkitError
from pipelines.windows import (
    UTC_MICROS,
    Aggregate,
    entity_codes,
    entity_keys,
    micros,
    window_aggregates,
)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class ViewSpec:
    """One feature table: its grid, how far back it reads, and which clean tables feed it."""

    name: str
    entity: str
    grid: timedelta
    lookback: timedelta
    inputs: tuple[str, ...]


USER_TRANSACTION_STATS = ViewSpec("user_transaction_stats", "user_id", HOUR, timedelta(days=30),
                                  ("transactions",))
MERCHANT_RISK_STATS = ViewSpec("merchant_risk_stats", "merchant_id", HOUR, timedelta(days=90),
                               ("transactions", "fraud_labels"))
CUSTOMER_ACTIVITY = ViewSpec("customer_activity", "user_id", DAY, timedelta(days=180), ("activity",))
USER_REALTIME_ACTIVITY = ViewSpec("user_realtime_activity", "user_id", timedelta(0),
                                  timedelta(minutes=10), ("transactions",))
USER_PROFILE = ViewSpec("user_profile", "user_id", timedelta(0), timedelta(0), ("users",))

VIEWS: tuple[ViewSpec, ...] = (USER_TRANSACTION_STATS, MERCHANT_RISK_STATS, CUSTOMER_ACTIVITY,
                               USER_REALTIME_ACTIVITY, USER_PROFILE)
VIEWS_BY_NAME = {v.name: v for v in VIEWS}


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

    def can_stamp(self) -> str:
        """SQL: the events (on `ts`) that can put a row in the interval; their entities are read."""
        day, grid = micros(DAY), micros(self.grid)
        moved = [f"(ts > {_sql_time(self.start - grid - micros(w))} AND ts < {_sql_time(self.end - micros(w))})"
                 for w in self.moves]
        first_midnight, last_midnight = self.start // day * day + day, self.end // day * day
        if first_midnight <= last_midnight:
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
        lo = np.maximum(first[starts], self.start // day * day + day)
        hi = np.minimum(last[ends], self.end // day * day)
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


def _epoch_micros(dt: datetime) -> int:
    return micros(_utc(dt) - datetime(1970, 1, 1, tzinfo=UTC))


@dataclass(frozen=True)
class WindowedQuery:
    """A grid view: its events (k, ts, ...), where its rows go, the window aggregates at each
    row, and a SELECT over `{windowed}` (k, ts, aggregates) that names, casts and derives the
    view's features."""

    events: str
    stamps: RowStamps | EventStamps
    aggregates: tuple[Aggregate, ...]
    select: str
    stamp_shift: timedelta = timedelta(0)  # how far after its row's stamp each probe sits


def _windowed_rows(con: duckdb.DuckDBPyConnection, query: WindowedQuery, narrow: bool) -> tuple[str, list[int]]:
    """A SELECT of the view's rows, streamed from the window engine, and a counter of rows streamed.

    The events are read once, sorted by (k, ts) -- with `narrow`, only those of entities that
    can have a row in the interval, which pays off when the interval is short and most entities
    idle in it. `pipelines.windows` finds each chunk of entities' row stamps and evaluates the
    aggregates there (prefix sums, exact). The chunks stream straight into whatever statement
    uses the SELECT, so no table of all rows is ever held.
    """
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
    return query.select.format(windowed="windowed_stream"), counted


def _empty_windowed(events: pa.Table, aggregates: tuple[Aggregate, ...]) -> pa.Table:
    types = {"count": pa.int64(), "distinct": pa.int64(), "last": UTC_MICROS}
    return pa.table({"k": pa.array([], type=events.schema.field("k").type), "ts": pa.array([], type=UTC_MICROS),
                     **{a.name: pa.array([], type=types.get(a.kind, pa.float64())) for a in aggregates}})


def _user_transaction_stats(start: int, end: int) -> WindowedQuery:
    d1, d7, d30 = DAY, timedelta(days=7), timedelta(days=30)
    return WindowedQuery(
        events="SELECT user_id AS k, ts, amount, merchant_id, device_id, hour(ts) < 6 AS night FROM tx",
        stamps=RowStamps(HOUR, (timedelta(0), d1, d7, d30), d30, start, end),
        aggregates=(
            Aggregate("txn_count_1d", "count", d1),
            Aggregate("txn_count_7d", "count", d7),
            Aggregate("txn_count_30d", "count", d30),
            Aggregate("amount_sum_1d", "sum", d1, "amount"),
            Aggregate("amount_sum_7d", "sum", d7, "amount"),
            Aggregate("amount_avg_30d", "avg", d30, "amount"),
            Aggregate("amount_std_30d", "std", d30, "amount"),
            Aggregate("amount_max_30d", "max", d30, "amount"),
            Aggregate("distinct_merchants_30d", "distinct", d30, "merchant_id"),
            Aggregate("distinct_devices_30d", "distinct", d30, "device_id"),
            Aggregate("night_count_30d", "count", d30, where="night"),
            Aggregate("last_txn_ts", "last", d30),
        ),
        select="""
        SELECT k AS user_id, ts AS event_timestamp, txn_count_1d, txn_count_7d, txn_count_30d,
            amount_sum_1d, amount_sum_7d, amount_avg_30d, amount_std_30d, amount_max_30d,
            distinct_merchants_30d, distinct_devices_30d,
            night_count_30d / nullif(txn_count_30d, 0)::DOUBLE AS night_txn_share_30d,
            epoch(last_txn_ts) AS last_txn_epoch
        FROM {windowed}""")


def _merchant_risk_stats(start: int, end: int) -> WindowedQuery:
    d1, d7, d30, d90 = (timedelta(days=n) for n in (1, 7, 30, 90))
    return WindowedQuery(
        events="SELECT merchant_id AS k, ts, amount, is_txn, is_cb FROM mev",
        stamps=RowStamps(HOUR, (timedelta(0), d1, d7, d30, d90), d90, start, end),
        aggregates=(
            Aggregate("merchant_txn_count_1d", "count", d1, where="is_txn"),
            Aggregate("merchant_txn_count_7d", "count", d7, where="is_txn"),
            Aggregate("merchant_txn_count_30d", "count", d30, where="is_txn"),
            Aggregate("txn_90d", "count", d90, where="is_txn"),
            Aggregate("merchant_avg_ticket_30d", "avg", d30, "amount", where="is_txn"),
            Aggregate("merchant_chargebacks_30d", "count", d30, where="is_cb"),
            Aggregate("merchant_chargebacks_90d", "count", d90, where="is_cb"),
        ),
        select="""
        SELECT k AS merchant_id, ts AS event_timestamp, merchant_txn_count_1d, merchant_txn_count_7d,
            merchant_txn_count_30d, merchant_avg_ticket_30d, merchant_chargebacks_30d, merchant_chargebacks_90d,
            merchant_chargebacks_90d / nullif(txn_90d, 0) AS merchant_chargeback_rate_90d
        FROM {windowed}""")


def _customer_activity(start: int, end: int) -> WindowedQuery:
    d30, d60, d90, d180 = (timedelta(days=n) for n in (30, 60, 90, 180))
    return WindowedQuery(
        events="""SELECT user_id AS k, ts, event_type = 'purchase' AS is_p, event_type = 'return' AS is_r,
                         event_type = 'view' AS is_v, amount FROM act""",
        # a row every midnight while an event of the last 180 days (and the day it happened) is in reach
        stamps=RowStamps(DAY, (), d180 + DAY, start, end),
        aggregates=(
            Aggregate("purchase_count_30d", "count", d30, where="is_p"),
            Aggregate("purchase_count_60d", "count", d60, where="is_p"),
            Aggregate("purchase_count_180d", "count", d180, where="is_p"),
            Aggregate("return_count_180d", "count", d180, where="is_r"),
            Aggregate("view_count_30d", "count", d30, where="is_v"),
            Aggregate("avg_purchase_value_90d", "avg", d90, "amount", where="is_p"),
            Aggregate("last_purchase_ts", "last", d180, where="is_p"),
        ),
        select="""
        SELECT k AS user_id, ts AS event_timestamp,
            purchase_count_30d,
            purchase_count_60d - purchase_count_30d AS purchase_count_prev_30d,
            (purchase_count_30d - (purchase_count_60d - purchase_count_30d))
                / (purchase_count_60d - purchase_count_30d + 1.0) AS purchase_trend_30d,
            avg_purchase_value_90d,
            (epoch_us(ts) - epoch_us(last_purchase_ts)) / 86400000000.0 AS days_since_last_purchase,
            return_count_180d / nullif(purchase_count_180d, 0)::DOUBLE AS return_rate_180d,
            view_count_30d
        FROM {windowed}""")


@dataclass(frozen=True)
class EventStamps:
    """Rows of an event-driven view: one per distinct (entity, event time) in [start, end), each
    probed `after` its stamp so that a window [T' - w, T') also holds the events at T itself."""

    after: int
    start: int
    end: int

    def can_stamp(self) -> str:
        return f"(ts >= {_sql_time(self.start)} AND ts < {_sql_time(self.end)})"

    def __call__(self, keys: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inside = (ts >= self.start) & (ts < self.end)
        keys, ts = keys[inside], ts[inside]
        first = np.ones(len(ts), dtype=bool)
        first[1:] = (keys[1:] != keys[:-1]) | (ts[1:] != ts[:-1])
        return keys[first], ts[first] + self.after


def _user_realtime_activity(start: int, end: int) -> WindowedQuery:
    # the transactions of the 10 minutes up to and including each transaction (what the stream pushes)
    window = timedelta(minutes=10, microseconds=1)
    return WindowedQuery(
        events="SELECT user_id AS k, ts, amount FROM tx",
        stamps=EventStamps(1, start, end),
        aggregates=(Aggregate("txn_count_10m", "count", window),
                    Aggregate("amount_sum_10m", "sum", window, "amount")),
        select="SELECT k AS user_id, ts AS event_timestamp, txn_count_10m, amount_sum_10m FROM {windowed}",
        stamp_shift=timedelta(microseconds=1))


def _user_profile_sql() -> str:
    return """
    SELECT user_id, signup_timestamp AS event_timestamp,
           epoch(signup_timestamp)::DOUBLE AS account_created_epoch
    FROM users
    """


_WINDOWED = {
    "user_transaction_stats": _user_transaction_stats,
    "merchant_risk_stats": _merchant_risk_stats,
    "customer_activity": _customer_activity,
    "user_realtime_activity": _user_realtime_activity,
}


@dataclass(frozen=True)
class ComputeReport:
    """What one run wrote: rows per view for the interval, and the files it rewrote."""

    start: datetime
    end: datetime
    rows: dict[str, int]
    files: dict[str, int]

    def lines(self) -> list[str]:
        return [f"{name:<24} {n:>9,} rows  ({self.files[name]} day file(s) rewritten)"
                for name, n in self.rows.items()]


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise FeastkitError(f"timestamp {dt} has no timezone", "pass UTC timestamps, e.g. 2026-01-01T00:00Z")
    return dt.astimezone(UTC)


def data_range(clean_dir: Path) -> tuple[datetime, datetime]:
    """[start, end) covering every clean event, on whole hours."""
    con = connect()
    try:
        lo, hi = con.execute(f"""
            SELECT min(ts), max(ts) FROM (
              SELECT event_timestamp AS ts FROM read_parquet('{_input(clean_dir, 'transactions')}')
              UNION ALL SELECT event_timestamp FROM read_parquet('{_input(clean_dir, 'activity')}'))
        """).fetchone()
    finally:
        con.close()
    if lo is None:
        raise FeastkitError(f"no clean events in {clean_dir}", "run `feastkit generate` and `feastkit validate`")
    start = pd.Timestamp(lo).floor("h").to_pydatetime()
    end = (pd.Timestamp(hi).floor("h") + pd.Timedelta(hours=1)).to_pydatetime()
    return start, end


def _input(clean_dir: Path, table: str) -> Path:
    path = clean_dir / f"{table}.parquet"
    if not path.is_file():
        raise FeastkitError(f"clean table '{table}' not found at {path}",
                            "run `feastkit validate` (or `feastkit compute`, which validates first)")
    return path


def _register_inputs(con: duckdb.DuckDBPyConnection, spec: ViewSpec, clean_dir: Path,
                     start: datetime, end: datetime) -> None:
    lo = f"TIMESTAMPTZ '{(start - spec.lookback - spec.grid - HOUR).isoformat()}'"
    hi = f"TIMESTAMPTZ '{end.isoformat()}'"
    # events carry UTC wall-clock TIMESTAMPs built from epoch microseconds: casting TIMESTAMPTZ to
    # TIMESTAMP, like arithmetic on TIMESTAMPTZ, goes through the ICU calendar (0.2 s per 7M rows)
    if "transactions" in spec.inputs:
        con.execute(f"""CREATE OR REPLACE TEMP VIEW tx AS SELECT user_id, merchant_id, amount, device_id,
                        make_timestamp(epoch_us(event_timestamp)) AS ts FROM read_parquet('{_input(clean_dir, 'transactions')}')
                        WHERE event_timestamp >= {lo} AND event_timestamp < {hi}""")
    if "fraud_labels" in spec.inputs:
        con.execute(f"""CREATE OR REPLACE TEMP VIEW labels AS SELECT merchant_id, make_timestamp(epoch_us(label_timestamp)) AS label_ts
                        FROM read_parquet('{_input(clean_dir, 'fraud_labels')}')
                        WHERE is_fraud = 1 AND label_timestamp >= {lo} AND label_timestamp < {hi}""")
        # a merchant's events: its transactions and the chargebacks that became known
        con.execute("""CREATE OR REPLACE TEMP VIEW mev AS
                       SELECT merchant_id, ts, amount, TRUE AS is_txn, FALSE AS is_cb FROM tx
                       UNION ALL SELECT merchant_id, label_ts, NULL, FALSE, TRUE FROM labels""")
    if "activity" in spec.inputs:
        con.execute(f"""CREATE OR REPLACE TEMP VIEW act AS SELECT user_id, event_type, amount,
                        make_timestamp(epoch_us(event_timestamp)) AS ts FROM read_parquet('{_input(clean_dir, 'activity')}')
                        WHERE event_timestamp >= {lo} AND event_timestamp < {hi}""")
    if "users" in spec.inputs:
        con.execute(f"""CREATE OR REPLACE TEMP VIEW users AS SELECT user_id, signup_timestamp::TIMESTAMPTZ AS signup_timestamp
                        FROM read_parquet('{_input(clean_dir, 'users')}')""")


def _bounds_predicate(spec: ViewSpec) -> str:
    """Which rows of a day file a run over [start, end) owns (and so replaces)."""
    if spec.grid > timedelta(0):
        return "event_timestamp > $start AND event_timestamp <= $end"
    return "event_timestamp >= $start AND event_timestamp < $end"


def compute_view(spec: ViewSpec, clean_dir: Path, features_dir: Path, start: datetime,
                 end: datetime) -> tuple[int, int]:
    """Compute one view's rows for [start, end) and merge them into its day files; (rows, files)."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise FeastkitError(f"empty interval: end {end} is not after start {start}",
                            "pass --start earlier than --end")
    out_dir = features_dir / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec is USER_PROFILE:
        return _write_reference_view(spec, clean_dir, out_dir)
    con = connect()
    try:
        _register_inputs(con, spec, clean_dir, start, end)
        params = {"start": start, "end": end}
        # events are computed on in UTC wall-clock TIMESTAMPs: TIMESTAMPTZ arithmetic goes through
        # the ICU calendar and costs several times more; feature rows come out as TIMESTAMPTZ
        fresh, counted = _windowed_rows(con, _WINDOWED[spec.name](_epoch_micros(start), _epoch_micros(end)),
                                        narrow=end - start < spec.lookback)
        # the day of T (of T - 1us on a grid), from epoch microseconds, which needs no calendar
        day_expr = (f"(DATE '1970-01-01' + ((epoch_us(event_timestamp) - {int(spec.grid > timedelta(0))})"
                    " // 86400000000)::INTEGER)")
        # rows of this interval can only live in the day files of its days (a row stamped T sits in
        # the file of T's day, or of T - 1us on a grid): those are rewritten even with no fresh row
        first_day, last_day = start.date(), (end - timedelta(microseconds=1)).date()
        old = sorted(f for f in out_dir.glob("part-*.parquet")
                     if first_day.isoformat() <= f.stem.removeprefix("part-") <= last_day.isoformat())
        kept = (f"SELECT * FROM read_parquet([{', '.join(repr(str(f)) for f in old)}]) "
                f"WHERE NOT ({_bounds_predicate(spec)}) UNION ALL BY NAME " if old else "")
        staging = out_dir / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        # no global sort: fresh rows arrive grouped by entity and in time order within it
        con.execute(f"""COPY (SELECT *, {day_expr} AS day FROM ({kept} {fresh}))
                      TO '{staging}' (FORMAT parquet, PARTITION_BY (day))""", params if old else None)
        touched = {date.fromisoformat(f.stem.removeprefix("part-")) for f in old}
        touched |= {date.fromisoformat(d.name.removeprefix("day=")) for d in staging.glob("day=*")}
        for d in sorted(touched):
            target = out_dir / f"part-{d.isoformat()}.parquet"
            written = sorted((staging / f"day={d.isoformat()}").glob("*.parquet"))
            if len(written) > 1:
                raise RuntimeError(f"expected one staged file for {spec.name} {d}, got {len(written)}")
            if written:
                written[0].replace(target)
            else:
                target.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        con.close()
    return counted[0], len(touched)


def _write_reference_view(spec: ViewSpec, clean_dir: Path, out_dir: Path) -> tuple[int, int]:
    """A dimension table (one row per entity, stamped when it came to be) is rewritten whole."""
    con = connect()
    try:
        _register_inputs(con, spec, clean_dir, datetime.now(UTC), datetime.now(UTC))
        path = out_dir / "part-all.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        con.execute(f"COPY ({_user_profile_sql()} ORDER BY {spec.entity}) TO '{tmp}' (FORMAT parquet)")
        tmp.replace(path)
        return con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0], 1
    finally:
        con.close()


def compute_features(clean_dir: Path, features_dir: Path, start: datetime | None = None,
                     end: datetime | None = None, views: list[str] | None = None) -> ComputeReport:
    """Compute every (or the named) feature table for [start, end); defaults to the whole data range."""
    if start is None or end is None:
        lo, hi = data_range(clean_dir)
        start, end = start or lo, end or hi
    unknown = sorted(set(views or []) - set(VIEWS_BY_NAME))
    if unknown:
        raise FeastkitError(f"unknown feature view(s) {unknown}", f"choose from {sorted(VIEWS_BY_NAME)}")
    rows, files = {}, {}
    for spec in VIEWS:
        if views and spec.name not in views:
            continue
        rows[spec.name], files[spec.name] = compute_view(spec, clean_dir, features_dir, start, end)
    return ComputeReport(_utc(start), _utc(end), rows, files)


def read_view(features_dir: Path, name: str) -> pd.DataFrame:
    """Every row of a feature table, sorted by time and entity (for checks and tests)."""
    spec = VIEWS_BY_NAME[name]
    files = sorted((features_dir / name).glob("*.parquet"))
    if not files:
        raise FeastkitError(f"feature table '{name}' is empty", "run `feastkit compute` first")
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return frame.sort_values(["event_timestamp", spec.entity], kind="stable").reset_index(drop=True)
