"""Feast wiring: open the configured feature store, apply the repo, materialize explicit intervals."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from feastkit.errors import FeastkitError, ServiceUnavailable
from feastkit.settings import Settings
from feastkit.times import ONE_MICROSECOND, check_interval, require_aware, utc

if TYPE_CHECKING:
    from feast import FeatureStore

    from feastkit.declarations import ViewSpec


def feast_environment(settings: Settings) -> dict[str, str]:
    """Environment variables the feature repo and its profiles read (set for this process too)."""
    env = {
        "FEASTKIT_DATA_DIR": str(settings.data_dir),
        "FEASTKIT_REDIS_CONNECTION_STRING": settings.redis_connection_string,
        "FEASTKIT_REGISTRY_URL": settings.registry_url,
        "FEASTKIT_SPARK_MASTER": settings.spark_master,
        "FEASTKIT_SPARK_DRIVER_MEMORY": settings.spark_driver_memory,
        "FEASTKIT_SPARK_BUCKETS": str(settings.spark_buckets),
        # the Python of Spark's executors, where Feast's Spark store and engine start the session
        "PYSPARK_PYTHON": settings.spark_python or os.environ.get("PYSPARK_PYTHON") or sys.executable,
    }
    os.environ.update(env)
    return env


def quiet_feast() -> None:
    """Silence library chatter that is not for users (Feast resets warning filters on import)."""
    import feast  # noqa: F401  (import first: its modules install their own filters)

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*experimental.*")
    for name in ("feast", "feast.infra.offline_stores.file_source", "feast.repo_config"):
        logging.getLogger(name).setLevel(logging.ERROR)


def open_store(settings: Settings) -> FeatureStore:
    """The FeatureStore for the selected profile; fails with a hint when the repo is not applied."""
    from feast import FeatureStore

    quiet_feast()
    feast_environment(settings)
    yaml_path = settings.feature_store_yaml
    return FeatureStore(repo_path=str(settings.repo_path), fs_yaml_file=yaml_path)


def require_applied(store: FeatureStore) -> None:
    """Raise a clear error when the registry has no feature views yet."""
    try:
        views = store.list_feature_views()
    except Exception as exc:  # registry missing or unreachable
        raise FeastkitError(f"the feature registry cannot be read ({type(exc).__name__}: {exc})",
                            "run `feastkit apply` (or `cd feature_repo && feast apply`)") from None
    if not views:
        raise FeastkitError("the feature registry is empty", "run `feastkit apply` first")


def applied_specs(store: FeatureStore) -> list[ViewSpec]:
    """The declared views' specs as the applied registry holds them (what `feastkit compute` builds)."""
    from feastkit.declarations import specs_of

    require_applied(store)
    return specs_of(store.list_feature_views())


def repo_feature_views(repo_path: Path) -> list:
    """The feature views a repo's definitions declare, read as `feast apply` reads them, without
    touching any registry (benchmarks and tests build tables from a repo's declarations this way)."""
    from feastkit.feast_compat import parse_repo_definitions

    return list(parse_repo_definitions(repo_path).feature_views)


def repo_specs(repo_path: Path) -> list[ViewSpec]:
    """The specs of the views a repo's definitions declare (what `feast apply` would publish)."""
    from feastkit.declarations import specs_of

    return specs_of(repo_feature_views(repo_path))


def apply_repo(settings: Settings) -> str:
    """Run `feast apply` on the repo for the selected profile, exactly as a user would; returns its output."""
    # the profile and repo reach the definitions too: they pick each source's kind from the
    # profile's offline store (a SparkSource for Feast's Spark store, else a FileSource)
    env = {**os.environ, **feast_environment(settings), "FEASTKIT_PROFILE": settings.profile,
           "FEASTKIT_REPO_PATH": str(settings.repo_path)}
    feast_bin = Path(sys.executable).with_name("feast")
    cmd = [str(feast_bin) if feast_bin.exists() else "feast", "-c", str(settings.repo_path),
           "-f", str(settings.feature_store_yaml), "apply"]
    if settings.offline_store_type == "spark":
        # a SparkSource's validation reads its table in a Spark session, and fails where a feature
        # table is not computed yet (`feastkit compute` derives the tables from this very registry;
        # a FileSource's validation only warns). The window engine checks every declaration against
        # the clean tables when it computes (`pipelines.aggregates`), so nothing goes unchecked.
        cmd.append("--skip-source-validation")
    (settings.repo_path / "data").mkdir(exist_ok=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip().splitlines()
        declared = [line.removeprefix("error: ") for line in output if line.startswith("error: feature view")]
        if declared:  # a feastkit declaration error: one line naming the view and the field
            raise FeastkitError(f"`feast apply` refused a declaration: {declared[-1]}")
        tail = "\n".join(output[-5:])
        raise FeastkitError(f"`feast apply` failed:\n{tail}", "fix the definition it names and apply again")
    return re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)


def parse_duration(text: str) -> timedelta:
    """'90m', '6h', '1d' -> timedelta."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
        delta = timedelta(**{unit: value})
    except (KeyError, ValueError, IndexError):
        raise FeastkitError(f"'{text}' is not a duration", "write it like 90m, 6h or 1d") from None
    if value <= 0:
        raise FeastkitError(f"duration '{text}' must be positive", "write it like 90m, 6h or 1d")
    return delta


def chunks(start: datetime, end: datetime, size: timedelta) -> Iterator[tuple[datetime, datetime]]:
    """Consecutive [a, b) pieces of [start, end), each at most `size` long."""
    a = start
    while a < end:
        b = min(a + size, end)
        yield a, b
        a = b


@dataclass(frozen=True)
class MaterializeReport:
    """Which views were written for which interval, in how many chunks."""

    start: datetime
    end: datetime
    views: list[str]
    chunks: int

    def line(self) -> str:
        return (f"materialized {len(self.views)} view(s) for [{self.start:%Y-%m-%d %H:%M}, "
                f"{self.end:%Y-%m-%d %H:%M}) UTC in {self.chunks} chunk(s): {', '.join(self.views)}")


def check_views(store: FeatureStore, views: list[str] | None) -> list[str]:
    """The online feature views to materialize (all when `views` is empty), or a clear error for
    an unknown name or a registry with nothing to materialize."""
    require_applied(store)
    known = {fv.name for fv in store.list_feature_views() if fv.online}
    if not known:
        raise FeastkitError("the registry has no online feature view, so there is nothing to materialize",
                            "declare a view with online=True in feature_repo/ and run `feastkit apply`")
    chosen = sorted(known) if not views else list(views)
    unknown = sorted(set(chosen) - known)
    if unknown:
        raise FeastkitError(f"unknown feature view(s) {unknown}", f"choose from {sorted(known)}")
    return chosen


def check_online_store(store: FeatureStore) -> None:
    """Fail before anything is read or written when the online store does not answer (Redis: PING).

    Raises ServiceUnavailable (retryable, so a scheduler retries it) naming the hosts, never the
    password of the connection string.
    """
    try:
        from feast.infra.online_stores.redis import RedisOnlineStore
    except ImportError:  # no redis extra: no Redis store can be configured
        return
    from feastkit import feast_compat

    online = feast_compat.online_store(store)
    if not isinstance(online, RedisOnlineStore):
        return
    config = store.config.online_store
    try:
        feast_compat.redis_client(online, config).ping()
    except Exception as exc:
        import redis

        if not isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            raise
        hosts = ",".join(p.strip() for p in str(config.connection_string).split(",") if "=" not in p)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ServiceUnavailable(f"the Redis online store at {hosts} does not answer ({reason})",
                                 "start Redis, or set FEASTKIT_REDIS_CONNECTION_STRING to where it runs") from exc


ONE_BATCH_ROWS = 10_000  # a view with at most this many rows (or one write batch) is loaded in one call

Span = tuple[datetime, datetime, int]  # first row time, last row time, rows of one parquet row group


def row_spans(store: FeatureStore, views: list[str]) -> dict[str, list[Span] | None]:
    """Per view, the (first, last, rows) of every parquet row group of its batch source, from the
    files' statistics (no row is read); None for a view where that cannot be known (another kind
    of source, a file without statistics)."""
    import glob

    import pyarrow.parquet as pq

    from feastkit.declarations import is_file_source

    out: dict[str, list[Span] | None] = {}
    for fv in store.list_feature_views():
        if fv.name not in views:
            continue
        out[fv.name] = None
        source = fv.batch_source
        if not is_file_source(source) or not source.timestamp_field:
            continue
        path = source.path if os.path.isabs(source.path) else os.path.join(str(store.repo_path), source.path)
        files = sorted(glob.glob(path)) if glob.has_magic(path) else [path] if os.path.isfile(path) else []
        spans: list[Span] | None = []
        for file in files:
            try:
                meta = pq.read_metadata(file)
            except Exception as exc:
                text = str(exc).splitlines()[0][:160] if str(exc) else ""
                raise FeastkitError(f"feature file {file} of view '{fv.name}' is not a readable parquet file "
                                    f"({type(exc).__name__}: {text})",
                                    "recompute it (`feastkit compute --start ... --end ...`) or restore it") from None
            if source.timestamp_field not in meta.schema.names:
                spans = None
                break
            column = meta.schema.names.index(source.timestamp_field)
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                stats = group.column(column).statistics
                if group.num_rows == 0:
                    continue
                if stats is None or not stats.has_min_max or not isinstance(stats.min, datetime):
                    spans = None
                    break
                spans.append((utc(stats.min), utc(stats.max), group.num_rows))
            if spans is None:
                break
        out[fv.name] = spans
    return out


def one_batch_views(store: FeatureStore, spans: dict[str, list[Span] | None]) -> list[str]:
    """The views whose whole table fits in one online write batch: chunking them saves no memory."""
    limit = max(store.config.materialization_config.online_write_batch_size or 0, ONE_BATCH_ROWS)
    return sorted(v for v, s in spans.items() if s is not None and sum(n for _, _, n in s) <= limit)


def plan_chunks(spans: list[Span] | None, start: datetime, end: datetime,
                size: timedelta) -> list[tuple[datetime, datetime]]:
    """The [a, b) chunks materializing [start, end) takes: pieces of `size` on start's grid from
    the last boundary before the first row (a start long before the data costs no Feast call),
    and each run of pieces no row group touches merged into one. Without statistics (None):
    every piece of [start, end). Always at least one chunk, the last ending at `end`."""
    if spans is None:
        return list(chunks(start, end, size))
    last_piece = start + ((end - start - ONE_MICROSECOND) // size) * size
    a = start
    first = min((lo for lo, _, _ in spans), default=None)
    if first is not None and first - ONE_MICROSECOND > start:
        a = min(start + ((first - ONE_MICROSECOND - start) // size) * size, last_piece)

    def empty(lo: datetime, hi: datetime) -> bool:  # no row stamped in [lo, hi], either convention
        return not any(s_lo <= hi and s_hi >= lo for s_lo, s_hi, _ in spans)

    out: list[tuple[datetime, datetime]] = []
    while a < end:
        b = min(a + size, end)
        while b < end and empty(a, min(b + size, end)):
            b = min(b + size, end)
        out.append((a, b))
        a = b
    return out


def materialize_interval(settings: Settings, start: datetime, end: datetime,
                         views: list[str] | None = None, chunk: timedelta | None = None,
                         store: FeatureStore | None = None) -> MaterializeReport:
    """Load the feature rows that belong to [start, end) into the online store, chunk by chunk.

    Rows of views tagged `row_timestamp: window_end` belong to the interval when
    start < T <= end (the same rows `feastkit compute` writes for it); other rows when
    start <= T < end.

    Explicit intervals instead of `materialize-incremental`: reruns and backfills are
    deterministic, the watermark cannot be corrupted by `feast apply` or a future end date,
    and chunking bounds memory on long ranges.
    """
    start, end = check_interval(require_aware(start, "materialization start"),
                                require_aware(end, "materialization end"), fix="pass --start earlier than --end")
    store = store or open_store(settings)
    chosen = check_views(store, views)
    check_online_store(store)
    size = chunk or parse_duration(settings.materialize_chunk)
    spans = row_spans(store, chosen)
    whole = one_batch_views(store, spans)
    if whole and len(whole) < len(chosen):  # small tables in one call, the others chunked
        rest = [v for v in chosen if v not in whole]
        materialize_interval(settings, start, end, whole, end - start, store)
        report = materialize_interval(settings, start, end, rest, size, store)
        return MaterializeReport(start, end, chosen, report.chunks)
    merged = [span for v in chosen for span in (spans.get(v) or [])]
    planned = plan_chunks(None if any(spans.get(v) is None for v in chosen) else merged, start, end,
                          end - start if whole else size)
    window_end = {fv.name for fv in store.list_feature_views()
                  if fv.tags.get("row_timestamp") == "window_end"}
    at_end = [v for v in chosen if v in window_end]
    at_event = [v for v in chosen if v not in window_end]
    one = ONE_MICROSECOND
    n = 0
    from feastkit.ledger import Ledger

    since = Ledger(settings.features_dir).seq()  # before any feature row is read
    for a, b in planned:
        # Feast's bounds are inclusive at both ends. Rows stamped at a window's end belong to
        # (a, b]; rows stamped at their event time belong to [a, b). Either way a row belongs to
        # exactly one interval, the one whose compute run wrote it.
        if at_end:
            store.materialize(start_date=a + one, end_date=b, feature_views=at_end)
        if at_event:
            store.materialize(start_date=a, end_date=b - one, feature_views=at_event)
        n += 1
    record_loaded(settings, store, chosen, (start, end), since)
    return MaterializeReport(start, end, chosen, n)


# What has been loaded: feastkit's ledger, and Feast's registry kept bounded ------------------------


def online_store_key(store: FeatureStore) -> str:
    """Which online store a FeatureStore writes to, as the interval ledger names it."""
    config = store.config.online_store
    kind = getattr(config, "type", type(config).__name__)
    where = getattr(config, "connection_string", None)
    if where is None and getattr(config, "path", None) is not None:
        path = Path(config.path)
        where = str(path if path.is_absolute() else (Path(store.repo_path) / path).resolve())
    return f"{store.project}|{kind}|{where or ''}"


def record_loaded(settings: Settings, store: FeatureStore, views: list[str],
                  interval: tuple[datetime, datetime], since: int | None = None) -> None:
    """Record in the ledger that `views` are loaded for `interval` (as read after compute record
    `since`), and keep Feast's registry bounded."""
    from feastkit.ledger import Ledger

    Ledger(settings.features_dir).record_loaded(online_store_key(store), views, interval, since)
    compact_materialization_intervals(store, views)


def compact_materialization_intervals(store: FeatureStore, views: list[str] | None = None) -> dict[str, int]:
    """Merge touching and overlapping materialization intervals in Feast's registry (Feast #5800).

    Feast appends one interval per `materialize` call, so hourly runs grow the registry by 8,760
    entries per view a year, until it passes a database blob limit. Merged, a contiguous history
    is one interval per view and the registry's size stays flat; what Feast derives from the list
    (`most_recent_end_time`, freshness) is unchanged. Intervals one microsecond apart touch (the
    inclusive bounds of consecutive chunks). Returns the interval count per rewritten view.
    """
    from feastkit.feast_compat import replace_materialization_intervals

    merged: dict[str, list[tuple[datetime, datetime]]] = {}
    for fv in store.list_feature_views():
        if views is not None and fv.name not in views:
            continue
        current = list(fv.materialization_intervals)
        out: list[tuple[datetime, datetime]] = []
        for a, b in sorted((utc(a), utc(b)) for a, b in current):
            if out and a <= out[-1][1] + ONE_MICROSECOND:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        if len(out) < len(current):
            merged[fv.name] = out
    if merged:
        replace_materialization_intervals(store, merged)
    return {name: len(items) for name, items in merged.items()}


def last_materialized_end(store: FeatureStore, views: list[str] | None = None) -> datetime | None:
    """The exclusive end of what every chosen view has materialized (None if any view has nothing)."""
    ends = []
    for fv in store.list_feature_views():
        if not fv.online or (views and fv.name not in views):
            continue
        end = fv.most_recent_end_time
        if end is None:
            return None
        ends.append(utc(end) + ONE_MICROSECOND)
    return min(ends) if ends else None


EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def materialize_servable(settings: Settings, end: datetime, views: list[str] | None = None,
                         store: FeatureStore | None = None) -> list[MaterializeReport]:
    """Materialize only what can still be served at `end`: each view's last TTL (all of a no-TTL view)."""
    store = store or open_store(settings)
    check_views(store, views)
    by_start: dict[datetime, list[str]] = {}
    for fv in store.list_feature_views():
        if not fv.online or (views and fv.name not in views):
            continue
        ttl = fv.ttl or timedelta(0)
        start = EARLIEST if ttl <= timedelta(0) else end - ttl - timedelta(hours=1)
        by_start.setdefault(start, []).append(fv.name)
    from feastkit.ledger import Ledger

    since = Ledger(settings.features_dir).seq()
    reports = []
    for start, names in sorted(by_start.items()):
        # dimension views without TTL are small: one chunk; windowed views are chunked
        chunk = end - start if start == EARLIEST else None
        reports.append(materialize_interval(settings, start, end, sorted(names), chunk, store))
    # what is older than a view's TTL cannot be served: as far as pending work goes, everything
    # up to `end` is loaded
    loaded = [name for names in by_start.values() for name in names]
    Ledger(settings.features_dir).record_loaded(online_store_key(store), loaded, (EARLIEST, utc(end)), since)
    return reports
