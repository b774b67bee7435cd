"""Writer and compactor processes for the prediction log compaction tests: real concurrent runs over one folder."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from feastkit import prediction_log as fmt
from feastkit.atomic import replace_bytes, replacing

SERVICE = "fraud_detection_v2"
FIRST_HOUR = datetime(2026, 1, 1, tzinfo=UTC)
HOURS = 3
ROWS_PER_FILE = 5
SCHEMA = pa.schema([pa.field(fmt.REQUEST_ID, pa.string()), pa.field(fmt.REQUEST_TIME, fmt.MICROS),
                    pa.field("user_id", pa.int64()), pa.field("user__txn_count_1d", pa.float64())])


def file_rows(index: int) -> pa.Table:
    """The rows of the `index`-th file a server writes: ids index*5 .. index*5+4, in hour index % 3."""
    hour = FIRST_HOUR + timedelta(hours=index % HOURS)
    ids = range(index * ROWS_PER_FILE, (index + 1) * ROWS_PER_FILE)
    return pa.table({fmt.REQUEST_ID: [f"r{i}" for i in ids],
                     fmt.REQUEST_TIME: [hour + timedelta(seconds=i % 3600) for i in ids],
                     "user_id": list(ids), "user__txn_count_1d": [i / 7 for i in ids]}, schema=SCHEMA)


def write_file(log_dir: Path, index: int) -> Path:
    """Write the `index`-th file as the server does: beside its final name, renamed into place."""
    table = file_rows(index)
    hour = FIRST_HOUR + timedelta(hours=index % HOURS)
    path = fmt.service_log_dir(log_dir, SERVICE) / fmt.file_name(hour, f"{index:012x}")
    with replacing(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _wait_for(go: Path) -> None:
    while not go.exists():
        time.sleep(0.001)


def writer(log_dir: Path, go: Path, files: int, committed: Path) -> None:
    """Write `files` files; after each, record how many are in place."""
    _wait_for(go)
    for index in range(files):
        write_file(log_dir, index)
        replace_bytes(committed, str(index + 1).encode())


def compactor(log_dir: Path, go: Path, stop: Path) -> None:
    """Merge every hour, again and again, until `stop` exists; print how many merges it made."""
    _wait_for(go)
    merges = 0
    future = FIRST_HOUR + timedelta(days=365)
    while not stop.exists():
        merges += sum(1 for m in fmt.compact_log(log_dir, SERVICE, before=future) if m.files_in)
    print(f"MERGES {merges}", flush=True)


if __name__ == "__main__":
    role, log_dir, go, *rest = sys.argv[1:]
    if role == "writer":
        writer(Path(log_dir), Path(go), int(rest[0]), Path(rest[1]))
    else:
        compactor(Path(log_dir), Path(go), Path(rest[0]))
