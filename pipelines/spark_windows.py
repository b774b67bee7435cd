"""Windowed aggregates on Spark: the declared views' own window engine, run once per entity bucket.

Spark reads each raw source a view aggregates, tags every event with a bucket of its entity key
(`pmod(xxhash64(key), buckets)`) and hands each bucket's events, as one Arrow table, to
`groupBy(bucket).applyInArrow`. The function there is the local engine itself: the view's events
SQL over that bucket (DuckDB), `pipelines.windows` and the view's SELECT. A view's rows depend on
one entity's events only, so the union of the buckets' rows is the local run's rows, bit for bit
(`tests/integration/test_spark_aggregates.py`). Spark writes the rows as Parquet, one folder per
day file; the driver builds each day file from its folder, one day at a time
(`pipelines.aggregates._merge_staged_days`), so it never holds more than one day's rows.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from feastkit.clean import clean_table
from feastkit.declarations import EventSource, ViewSpec
from feastkit.errors import FeastkitError
from feastkit.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

_BUCKET = "_feastkit_bucket"
_SOURCE = "_feastkit_source"
# the Spark-side filter on event time only prunes; DuckDB applies the exact bounds inside a bucket
_PRUNE_MARGIN = timedelta(seconds=1)


def spark_session(master: str = "local[2]", driver_memory: str = "2g", app_name: str = "feastkit",
                  shuffle_partitions: int = 16) -> SparkSession:
    """A Spark session set up the way feastkit reads and writes: UTC, microsecond Parquet times, Arrow.

    `master` is any Spark master URL (`local[2]`, `spark://host:7077`, `yarn`, `k8s://...`); the
    executors need this project installed (`pip install feastkit[spark]`) to run the window engine.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise FeastkitError("the Spark engine needs pyspark", "pip install 'feastkit[spark]'") from None
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
               .config("spark.driver.memory", driver_memory)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false"))
    try:
        return builder.getOrCreate()
    except Exception as exc:  # the JVM did not start (no Java, a bad master URL, a port taken)
        raise FeastkitError(f"Spark did not start with master {master!r}: {' '.join(str(exc).split())[:300]}",
                            "install Java 17 (JAVA_HOME) and check FEASTKIT_SPARK_MASTER") from None


def _aggregated_sources(spec: ViewSpec) -> list[EventSource]:
    used = {a.source for a in spec.aggregations}
    return [s for s in spec.sources if s.name in used]


def _bucket_plan(con: duckdb.DuckDBPyConnection, spec: ViewSpec, clean_dir: Path, start: datetime,
                 end: datetime, narrow: bool, columns: tuple[tuple[str, ...], ...],
                 events: pa.Table) -> tuple[str, pa.Schema]:
    """Register one bucket's events of each source, split back out of the tagged union, on `con`;
    the SELECT of their staged rows through the same plan, window engine and view SELECT as a local
    run, and the schema of the engine's rows before the view's SELECT."""
    from pipelines.aggregates import _windowed_rows, staged_rows_sql, windowed_query

    relations: dict[str, str] = {}
    for i, (source, names) in enumerate(zip(_aggregated_sources(spec), columns, strict=True)):
        mine = events.filter(pc.equal(events.column(_SOURCE), i))
        con.register(f"bucket_source_{i}", mine.select([f"s{i}_{c}" for c in names]).rename_columns(list(names)))
        relations[source.name] = f"bucket_source_{i}"
    query = windowed_query(spec, clean_dir, start, end, relation_of=lambda s: relations[s.name])
    select, _, windowed_schema = _windowed_rows(con, query, narrow)
    return staged_rows_sql(spec, select), windowed_schema


def _bucket_rows(spec: ViewSpec, clean_dir: Path, start: datetime, end: datetime, narrow: bool,
                 columns: tuple[tuple[str, ...], ...], schema: pa.Schema, events: pa.Table) -> pa.Table:
    """One bucket's staged feature rows (runs on a Spark executor)."""
    from pipelines.aggregates import connect

    con = connect()
    try:
        select, _ = _bucket_plan(con, spec, clean_dir, start, end, narrow, columns, events)
        return con.sql(select).to_arrow_table().cast(schema)
    finally:
        con.close()


class SparkWindowEngine:
    """Computes a view's fresh rows for an interval on Spark (see the module docstring)."""

    def __init__(self, spark: SparkSession, buckets: int = 16) -> None:
        if buckets < 1:
            raise FeastkitError(f"spark buckets must be at least 1, got {buckets}",
                                "set FEASTKIT_SPARK_BUCKETS to a positive number (about 2-4 per executor core)")
        self.spark = spark
        self.buckets = buckets

    def describe(self) -> str:
        return f"Spark ({self.spark.sparkContext.master}, {self.buckets} entity buckets)"

    def _events(self, spec: ViewSpec, clean_dir: Path, lo: datetime, hi: datetime) -> tuple[DataFrame, list]:
        """The view's sources as one tagged union, and each source's columns (the caller has checked
        the declaration against the clean tables: `pipelines.aggregates._check_declaration`)."""
        from pyspark.sql import functions as F

        frames, columns = [], []
        for i, source in enumerate(_aggregated_sources(spec)):
            path = clean_table(clean_dir, source.table)
            frame = self.spark.read.parquet(str(path))
            ts = F.col(f"`{source.timestamp}`")
            frame = frame.where((ts >= F.lit(lo - _PRUNE_MARGIN)) & (ts < F.lit(hi + _PRUNE_MARGIN)))
            bucket = F.pmod(F.xxhash64(F.col(f"`{spec.entity_key}`")), F.lit(self.buckets))
            frames.append(frame.select(bucket.alias(_BUCKET), F.lit(i).alias(_SOURCE),
                                       *[F.col(f"`{c}`").alias(f"s{i}_{c}") for c in frame.columns]))
            columns.append(tuple(frame.columns))
        union = functools.reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), frames)
        return union, columns

    def stage_rows(self, con: duckdb.DuckDBPyConnection, spec: ViewSpec, clean_dir: Path, start: datetime,
                   end: datetime, narrow: bool, out: Path) -> tuple[int, pa.Schema]:
        """The view's fresh rows in [start, end), written by Spark under `out/<day folder>/`; their
        number, and the schema of the engine's rows before the view's SELECT (for its checks)."""
        from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
        from pyspark.sql.types import StructField, StructType

        from pipelines.aggregates import ENGINE_DAY, HOUR

        lo, hi = start - spec.lookback - spec.grid - HOUR, end
        union, columns = self._events(spec, clean_dir, lo, hi)
        plan = (spec, clean_dir, start, end, narrow, tuple(columns))
        # the rows' schemas: the same plan over no events, on the driver
        select, windowed_schema = _bucket_plan(con, *plan, to_arrow_schema(union.schema).empty_table())
        schema = con.sql(select).to_arrow_table().schema
        # every column nullable, as in the local run's files (Spark would write a column it knows
        # to be non-null as REQUIRED, and the day files would carry that on)
        spark_schema = StructType([StructField(f.name, f.dataType, True) for f in from_arrow_schema(schema)])
        grouped = union.groupBy(_BUCKET).applyInArrow(functools.partial(_bucket_rows, *plan, schema),
                                                      schema=spark_schema)
        try:
            grouped.write.mode("overwrite").partitionBy(ENGINE_DAY).parquet(str(out))
        except Exception as exc:
            raise FeastkitError(f"feature view '{spec.name}': the Spark job over [{start.isoformat()}, "
                                f"{end.isoformat()}) failed ({' '.join(str(exc).split())[:300]})",
                                "see the Spark log above; run `feastkit validate` if a clean table is at fault") from None
        files = sorted(out.glob(f"{ENGINE_DAY}=*/*.parquet"))
        rows = 0
        if files:
            listed = ", ".join(repr(str(f)) for f in files)
            rows = con.execute(f"SELECT count(*) FROM read_parquet([{listed}], hive_partitioning = false)"
                               ).fetchall()[0][0]
        log.info("feature view %s: %d rows from %d Spark buckets", spec.name, rows, self.buckets)
        return rows, windowed_schema


def spark_engine(settings: Settings) -> SparkWindowEngine:
    """The Spark engine on the session `settings` describe (FEASTKIT_SPARK_*)."""
    spark = spark_session(settings.spark_master, settings.spark_driver_memory,
                          shuffle_partitions=settings.spark_buckets)
    return SparkWindowEngine(spark, settings.spark_buckets)
