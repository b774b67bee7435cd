"""The prediction log format: every served prediction with the feature values it was scored on.

The server writes it (`serving/prediction_log.py`); monitoring reads it. One folder per feature
service under `FEASTKIT_PREDICTION_LOG_DIR` (default `<data>/prediction_log/`), holding Parquet files named by the hour of their rows'
request times (`<YYYYMMDDTHH>-<id>.parquet`), each written beside its final name and renamed into
place, so a reader, or a server killed mid-write, never leaves or sees a partial file.

The columns are Feast's feature-logging schema for the service (`FeatureServiceLoggingSource`:
join keys, request fields, and per feature `<view>__<feature>`, `__timestamp`, `__status` with
Feast's `FieldStatus` codes, plus `__log_timestamp`, `__log_date`, `__request_id`; every time in
microseconds, where Feast logs event times in whole seconds), followed by
what the prediction was: request time, row within the request, probability, decision, threshold,
model version. `log_source` is a Feast `FileSource` over a service's log.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from feast import FeatureStore, FileSource

from feastkit.errors import FeastkitError

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


def service_log_dir(log_dir: Path, service: str) -> Path:
    """Where a feature service's prediction log lives."""
    return Path(log_dir) / service


def hour_of(file: Path) -> datetime | None:
    """The request-time hour a log file's name says its rows fall in (None: not a log file)."""
    match = _HOUR_NAME.match(file.name)
    return datetime.strptime(match.group(1), "%Y%m%dT%H").replace(tzinfo=UTC) if match else None


def file_name(hour: datetime, unique: str) -> str:
    return f"{hour.astimezone(UTC):%Y%m%dT%H}-{unique}.parquet"


def log_files(log_dir: Path, service: str, start: datetime | None = None,
              end: datetime | None = None) -> list[Path]:
    """The log files of `service` whose hours overlap [start, end), oldest first."""
    folder = service_log_dir(log_dir, service)
    found = []
    for file in folder.glob("*.parquet") if folder.is_dir() else []:
        hour = hour_of(file)
        if hour is None:
            continue
        if (start is None or hour + timedelta(hours=1) > start) and (end is None or hour < end):
            found.append((hour, file.name, file))
    return [file for _, _, file in sorted(found)]


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
    return FileSource(name=f"prediction_log_{service}", path=str(service_log_dir(log_dir, service) / "*.parquet"),
                      timestamp_field=REQUEST_TIME, description=f"what was served for {service}")
