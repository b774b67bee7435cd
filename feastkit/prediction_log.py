"""The prediction log format: every served prediction with the feature values it was scored on.

The server writes it (`serving/prediction_log.py`); monitoring reads it. One folder per feature
service under `FEASTKIT_PREDICTION_LOG_DIR` (default `<data>/prediction_log/`), holding Parquet files named by the hour of their rows'
request times (`<YYYYMMDDTHH>-<id>.parquet`), each written beside its final name and renamed into
place, so a reader, or a server killed mid-write, never leaves or sees a partial file.

A server writes a file every flush, so an hour holds hundreds of small files. `compact_log`
merges each past hour's files into one. The merged file records in its footer the names of the
files it holds (`feastkit.compacted_from`); `log_files` leaves out every file a present file
holds, so a reader sees each row once: before the merged file is renamed in, after, and when a
compaction was killed between the rename and the removal of its sources (the next compaction
removes them). `read_log_table` starts over when a file it listed was removed under it. One
compaction runs per service folder at a time (a `flock`); a server may keep writing meanwhile.
Feast's `FileSource` over the glob knows nothing of this: between a merged file's rename and the
removal of its sources (milliseconds) it reads their rows twice.

The columns are Feast's feature-logging schema for the service (`FeatureServiceLoggingSource`:
join keys, request fields, and per feature `<view>__<feature>`, `__timestamp`, `__status` with
Feast's `FieldStatus` codes, plus `__log_timestamp`, `__log_date`, `__request_id`; every time in
microseconds, where Feast logs event times in whole seconds), followed by
what the prediction was: request time, row within the request, probability, decision, threshold,
model version. `log_source` is a Feast `FileSource` over a service's log.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from feastkit.atomic import data_folder_lock, replacing
from feastkit.errors import FeastkitError
from feastkit.times import utc

if TYPE_CHECKING:  # Feast is imported where it is used: the log's writer process runs without it
    from feast import FeatureStore, FileSource

log = logging.getLogger(__name__)
T = TypeVar("T")

# Feast's FieldStatus codes (feast/protos/feast/serving/ServingService.proto)
PRESENT = 1
NULL_VALUE = 2
NOT_FOUND = 3        # no value for the key, or only one stamped after the request's time
OUTSIDE_MAX_AGE = 4  # older than the view's TTL at the request's time

REQUEST_ID = "__request_id"         # Feast's
LOG_TIMESTAMP = "__log_timestamp"   # Feast's: when the server scored the row
LOG_DATE = "__log_date"             # Feast's
REQUEST_TIME = "__request_time"     # the time features were read as of (the request's)
ROW = "__row"                       # the row's place in its request (0 for single predictions)
PROBABILITY = "__probability"
DECISION = "__decision"
THRESHOLD = "__threshold"
MODEL_VERSION = "__model_version"

class NothingLogged(FeastkitError):
    """No prediction was logged in the interval asked about: there is nothing to check."""


MICROS = pa.timestamp("us", tz="UTC")
_HOUR_NAME = re.compile(r"^(\d{8}T\d{2})-[0-9a-f]+\.parquet$")
COMPACTED_FROM = b"feastkit.compacted_from"  # footer key: the file names a merged file holds
READ_ATTEMPTS = 200  # a listing outrun by compactions is read again this often, waiting a little longer each time
COMPACTION_ROW_GROUP_ROWS = 65_536


def service_log_dir(log_dir: Path, service: str) -> Path:
    """Where a feature service's prediction log lives."""
    return Path(log_dir) / service


def hour_of(file: Path) -> datetime | None:
    """The request-time hour a log file's name says its rows fall in (None: not a log file)."""
    match = _HOUR_NAME.match(file.name)
    return datetime.strptime(match.group(1), "%Y%m%dT%H").replace(tzinfo=UTC) if match else None


def file_name(hour: datetime, unique: str) -> str:
    return f"{hour.astimezone(UTC):%Y%m%dT%H}-{unique}.parquet"


def new_file_name(hour: datetime) -> str:
    """A name no other log file has, for rows of `hour`: the writing time in hex microseconds
    (names sort in the order files were written), then a random part."""
    return file_name(hour, f"{int(time.time() * 1e6):x}{uuid.uuid4().hex[:8]}")


def _hour_files(log_dir: Path, service: str, start: datetime | None,
                end: datetime | None) -> dict[datetime, list[Path]]:
    """Every log file of `service` whose hour overlaps [start, end), by hour, in name order."""
    folder = service_log_dir(log_dir, service)
    by_hour: dict[datetime, list[Path]] = {}
    for file in folder.glob("*.parquet") if folder.is_dir() else []:
        hour = hour_of(file)
        if hour is None:
            continue
        if (start is None or hour + timedelta(hours=1) > start) and (end is None or hour < end):
            by_hour.setdefault(hour, []).append(file)
    return {hour: sorted(files, key=lambda f: f.name) for hour, files in sorted(by_hour.items())}


def compacted_from(file: Path) -> list[str]:
    """The names of the files a merged log file holds ([] for a file the server wrote)."""
    held = (pq.read_metadata(file).metadata or {}).get(COMPACTED_FROM)
    return json.loads(held) if held else []


def _current(files: list[Path]) -> tuple[list[Path], list[Path], set[str]]:
    """An hour's files split into those to read and those a merged file there already holds, and
    the names the hour's merged files hold. Raises FileNotFoundError when one was removed while its
    footer was read."""
    if len(files) < 2:
        return files, [], set()
    held = {name for file in files for name in compacted_from(file)}
    return [f for f in files if f.name not in held], [f for f in files if f.name in held], held


def _listing(log_dir: Path, service: str, start: datetime | None, end: datetime | None) -> list[Path]:
    return [f for files in _hour_files(log_dir, service, start, end).values() for f in _current(files)[0]]


def _outrunning_compactions(read: Callable[[], T]) -> T:
    """`read()`, started over after a short wait, growing each time, whenever a compaction removed
    a file it had listed (compactions merging without pause can outrun a reader many times)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read()
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(min(0.002 * (attempt + 1), 0.05))
    raise AssertionError("unreachable")


def log_files(log_dir: Path, service: str, start: datetime | None = None,
              end: datetime | None = None) -> list[Path]:
    """The log files of `service` whose hours overlap [start, end), oldest first, leaving out files
    a merged file holds (each logged row is in exactly one of the files returned)."""
    return _outrunning_compactions(lambda: _listing(log_dir, service, start, end))


def read_log_table(log_dir: Path, service: str, start: datetime | None = None,
                   end: datetime | None = None) -> pa.Table | None:
    """Every row logged for `service` in files whose hours overlap [start, end), each once, or None
    when there are none; safe under a running compaction (a listing it outran is read again)."""
    def read() -> pa.Table | None:
        files = _listing(log_dir, service, start, end)
        if not files:
            return None
        tables = [pq.read_table(f).replace_schema_metadata(None) for f in files]
        return pa.concat_tables(tables, promote_options="permissive")

    return _outrunning_compactions(read)


@dataclass(frozen=True)
class CompactedHour:
    """One hour of one service's log merged into one file."""

    service: str
    hour: datetime
    files_in: int        # files read (the merged file holds their rows)
    rows: int            # rows in == rows out
    file: Path
    leftovers: int = 0   # files an earlier, interrupted compaction had merged already, removed


def compact_log(log_dir: Path, service: str, before: datetime | str | None = None,
                lock_timeout: float = 600.0) -> list[CompactedHour]:
    """Merge each hour of `service`'s log that ends by `before` (default: the start of the current
    UTC hour) and has more than one file into one file; the rows, their order (files in name order,
    rows in file order) and the schema are kept. Returns what was merged."""
    folder = service_log_dir(log_dir, service)
    if not folder.is_dir():
        return []
    before = utc(before) if before is not None else datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    done: list[CompactedHour] = []
    with data_folder_lock(folder, f"prediction log compaction of {service}", lock_timeout):
        for hour, files in _hour_files(log_dir, service, None, None).items():
            if hour + timedelta(hours=1) > before:  # not over yet
                continue
            current, leftovers, held = _current(files)  # only a compaction removes files, and it holds the lock
            for file in leftovers:
                file.unlink(missing_ok=True)
            if len(current) < 2:
                if leftovers and current:
                    done.append(CompactedHour(service, hour, 0, pq.read_metadata(current[0]).num_rows,
                                              current[0], len(leftovers)))
                continue
            done.append(_merge(folder, service, hour, current, held, len(leftovers)))
    return done


def logged_services(log_dir: Path) -> list[str]:
    """The services with a folder in the prediction log."""
    return sorted(p.name for p in Path(log_dir).iterdir() if p.is_dir()) if Path(log_dir).is_dir() else []


def _merge(folder: Path, service: str, hour: datetime, files: list[Path], held: set[str],
           leftovers: int) -> CompactedHour:
    """`files` into one file; `held` are the names merged files among them already hold."""
    tables = [pq.read_table(f).replace_schema_metadata(None) for f in files]
    rows_in = sum(t.num_rows for t in tables)
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise FeastkitError(
            f"the prediction log files of {service} for {hour:%Y-%m-%d %H}:00 UTC have incompatible columns "
            f"({exc}); they were left as they are",
            "a feature changed its type between two servers' writes: read those files separately, or move the "
            "older ones out of the folder before compacting") from None
    holds = sorted(held | {f.name for f in files})
    table = table.replace_schema_metadata({COMPACTED_FROM: json.dumps(holds).encode()})
    target = folder / new_file_name(hour)
    with replacing(target) as tmp:
        pq.write_table(table, tmp, row_group_size=COMPACTION_ROW_GROUP_ROWS)
        written = pq.read_metadata(tmp).num_rows
        if written != rows_in:  # never rename in a file that lost rows
            raise FeastkitError(f"compacting {service} {hour:%Y-%m-%d %H}:00 wrote {written} of {rows_in} rows",
                                "the sources were left as they are; check the disk and run again")
    for file in files:  # the merged file holds them from here on: readers skip them until they are gone
        file.unlink(missing_ok=True)
    log.info("prediction log %s %s: %d files, %d rows -> %s", service, f"{hour:%Y-%m-%dT%H}", len(files),
             rows_in, target.name)
    return CompactedHour(service, hour, len(files), rows_in, target, leftovers)


def feature_columns(store: FeatureStore, service: str) -> list[tuple[str, str]]:
    """(log column, served feature name) for every feature of the service, in Feast's order."""
    return [(f"{projection.name_to_use()}__{feature.name}", feature.name)
            for projection in store.get_feature_service(service).feature_view_projections
            for feature in projection.features]


def log_schema(store: FeatureStore, service: str) -> pa.Schema:
    """Feast's feature-logging schema of the service, then the prediction's own columns."""
    from feast.feature_logging import FeatureServiceLoggingSource

    feast_schema = FeatureServiceLoggingSource(store.get_feature_service(service), store.project
                                               ).get_schema(store.registry)
    exact = [pa.field(f.name, MICROS) if pa.types.is_timestamp(f.type) else f for f in feast_schema]
    ours = [pa.field(REQUEST_TIME, MICROS), pa.field(ROW, pa.int32()),
            pa.field(PROBABILITY, pa.float64()), pa.field(DECISION, pa.string()),
            pa.field(THRESHOLD, pa.float64()), pa.field(MODEL_VERSION, pa.string())]
    return pa.schema(exact + ours)


def log_source(log_dir: Path, service: str) -> FileSource:
    """A Feast data source over a service's prediction log (timestamp: the request time)."""
    from feast import FileSource

    return FileSource(name=f"prediction_log_{service}", path=str(service_log_dir(log_dir, service) / "*.parquet"),
                      timestamp_field=REQUEST_TIME, description=f"what was served for {service}")
