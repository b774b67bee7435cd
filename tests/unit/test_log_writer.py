"""The prediction log's writer process: entries over a pipe become hourly Parquet files, every row accounted for."""

from __future__ import annotations

import os
import pickle
import threading
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feastkit import prediction_log as fmt
from serving import log_writer as lw

HOUR = datetime(2026, 3, 1, 10, tzinfo=UTC).timestamp()
SCHEMA = pa.schema([
    pa.field("user_id", pa.int64()),
    pa.field("stats__count", pa.float64()),
    pa.field("stats__count__timestamp", fmt.MICROS),
    pa.field("stats__count__status", pa.int32()),
    pa.field(fmt.LOG_TIMESTAMP, fmt.MICROS),
    pa.field(fmt.LOG_DATE, pa.date32()),
    pa.field(fmt.REQUEST_ID, pa.string()),
    pa.field(fmt.REQUEST_TIME, fmt.MICROS),
    pa.field(fmt.ROW, pa.int32()),
    pa.field(fmt.PROBABILITY, pa.float64()),
    pa.field(fmt.DECISION, pa.string()),
    pa.field(fmt.THRESHOLD, pa.float64()),
    pa.field(fmt.MODEL_VERSION, pa.string()),
])
LAYOUT = lw.Layout(SCHEMA, ["user_id"], [("stats__count", "count")])


def _entry(request: str, at: float, users: list[int], value: Any = 2.0) -> lw.LogEntry:
    n = len(users)
    return lw.LogEntry("fraud", "v1", [request] * n, list(range(n)), [{"user_id": u} for u in users],
                       [at] * n, at + 0.5, {"count": [value] * n}, {"count": [int(at * 1e6) - 1] * n},
                       {"count": [fmt.PRESENT] * n}, [0.25] * n, ["approve"] * n, 0.5)


def test_numpy_values_reach_the_file_as_numbers(tmp_path: Path) -> None:
    """marshal would have sent a numpy scalar as its raw bytes (it takes anything with a buffer)."""
    writer = lw.LogWriter(tmp_path, flush_rows=10, flush_seconds=3600.0, report=lambda *m: None)
    writer.layouts[("fraud", "v1")] = LAYOUT
    for i, value in enumerate([np.float32(1.5), np.int64(7), np.float64(0.25)]):
        message = lw.encoded(_entry(f"r{i}", HOUR, [i], value=value))
        assert message[:1] == lw.ENTRY
        writer.add(pickle.loads(message[1:]))
    writer.write()
    table = pa.concat_tables([pq.read_table(f) for f in fmt.log_files(tmp_path, "fraud")])
    assert sorted(table.column("stats__count").to_pylist()) == [0.25, 1.5, 7.0]


def test_what_the_server_sent_is_written_when_its_pipe_ends(tmp_path: Path) -> None:
    """A server killed outright: the writer writes everything it received, then returns."""
    to_writer, writer_reads = os.pipe()[::-1]
    writer_writes, from_writer = os.pipe()[::-1]
    inbox, outbox = Connection(writer_reads, writable=False), Connection(writer_writes, readable=False)
    reports: list[tuple[Any, ...]] = []
    writer = lw.LogWriter(tmp_path, flush_rows=1_000_000, flush_seconds=3600.0, report=lambda *m: reports.append(m))
    thread = threading.Thread(target=lw.serve, args=(inbox, outbox, writer))
    thread.start()
    server = Connection(to_writer, readable=False)
    server.send_bytes(lw.LAYOUT + pickle.dumps((("fraud", "v1"), LAYOUT)))
    server.send_bytes(lw.encoded(_entry("r1", HOUR + 10, [1, 2])))
    server.send_bytes(lw.encoded(_entry("r2", HOUR + 3600 + 5, [3], value=np.float32(1.5))))  # the next hour
    server.send_bytes(lw.encoded(_entry("r3", HOUR + 20, [4], value=None)))
    server.close()  # no CLOSE: the pipe just ends
    thread.join(30)
    assert not thread.is_alive()
    assert reports == [("written", "fraud", 4)]
    files = fmt.log_files(tmp_path, "fraud")
    assert [fmt.hour_of(f) for f in files] == [datetime(2026, 3, 1, 10, tzinfo=UTC), datetime(2026, 3, 1, 11, tzinfo=UTC)]
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert table.schema.equals(SCHEMA)
    rows = sorted(table.to_pylist(), key=lambda r: r["user_id"])
    assert [r["user_id"] for r in rows] == [1, 2, 3, 4]
    assert [r["stats__count"] for r in rows] == [2.0, 2.0, 1.5, None]
    assert [r[fmt.REQUEST_ID] for r in rows] == ["r1", "r1", "r2", "r3"] and [r[fmt.ROW] for r in rows] == [0, 1, 0, 0]
    assert rows[0][fmt.REQUEST_TIME] == datetime.fromtimestamp(HOUR + 10, UTC)
    Connection(from_writer, writable=False).close()
    outbox.close()


def test_entries_without_a_layout_are_reported_failed_with_the_reason(tmp_path: Path) -> None:
    reports: list[tuple[Any, ...]] = []
    writer = lw.LogWriter(tmp_path, flush_rows=10, flush_seconds=3600.0, report=lambda *m: reports.append(m))
    writer.layouts[("fraud", "v1")] = LAYOUT
    writer.add(_entry("r1", HOUR, [1, 2]))
    writer.add(_entry("r2", HOUR, [3])._replace(version="v9"))  # a version whose layout never came
    assert writer.held_rows == 3
    writer.write()
    assert writer.held_rows == 0
    failed = [r for r in reports if r[0] == "failed"]
    assert [r[:3] for r in failed] == [("failed", "fraud", 1)] and "no log layout was sent for fraud version v9" in failed[0][3]
    assert [r for r in reports if r[0] == "written"] == [("written", "fraud", 2)]


def test_a_write_is_due_by_rows_or_by_time(tmp_path: Path) -> None:
    writer = lw.LogWriter(tmp_path, flush_rows=3, flush_seconds=3600.0, report=lambda *m: None)
    writer.layouts[("fraud", "v1")] = LAYOUT
    writer.add(_entry("r1", HOUR, [1, 2]))
    assert writer.seconds_to_write() > 3000
    writer.add(_entry("r2", HOUR, [3]))
    assert writer.seconds_to_write() == 0.0
