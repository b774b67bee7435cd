"""The prediction log's writer process: scored predictions in over a pipe, hourly Parquet files out.

The server (`serving/prediction_log.py`) starts one per server process (`main`), sends it each
scored group as one pickled `LogEntry`, then closes it. Converting rows of Python values to Arrow and Parquet is CPU work that held the server's
interpreter lock for milliseconds at a time, and a request arriving meanwhile waited for it (the
p99 cost measured in docs/serving.md); here it runs on an interpreter of its own. The process
imports neither Feast nor the server: the server sends each feature service's log layout before
its first entry.

What the process writes it reports back (`written`, or `failed` with the traceback), so the
server's counters reconcile. It writes every `flush_seconds`, or once `flush_rows` rows wait,
one file per service and request-time hour, each renamed into place. It ignores SIGINT and
SIGTERM: the server tells it to close after its own shutdown. When the server is gone (end of
the pipe, a SIGKILL included), it writes what it holds and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from multiprocessing.connection import Connection
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feastkit import prediction_log as fmt
from feastkit.atomic import replacing

# message kinds, the first byte of every message from the server
ENTRY = b"E"    # a pickled LogEntry (not marshal: it turns a numpy scalar into its bytes, silently)
LAYOUT = b"L"   # a pickled (key, Layout)
CLOSE = b"C"    # write everything, report, exit

WRITER_NICENESS = 10  # CPU weight about a tenth of the server's: enough to keep up at full load
CONVERT_ROWS = 1024  # entries waiting are turned into Arrow this many rows at a time
_US_PER_HOUR = 3_600_000_000


class LogEntry(NamedTuple):
    """One scored group (one online read, one model call), as the server's scoring thread had it."""

    service: str
    version: str
    request_ids: list[str | None]
    row_numbers: list[int]
    rows: list[dict[str, Any]]
    as_of: list[float]                   # request times, epoch seconds
    logged_at: float                     # epoch seconds
    values: dict[str, list[Any]]         # served values, per feature
    stamps: dict[str, list[int | None]]  # event times, epoch µs
    status: dict[str, list[int]]         # Feast's status codes
    probabilities: list[float]
    decisions: list[str]
    threshold: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.version)


@dataclass(frozen=True)
class Layout:
    """How a service's rows become columns of its log schema."""

    schema: pa.Schema
    inputs: list[str]                   # join keys and request fields, as the schema names them
    features: list[tuple[str, str]]     # (log column, served feature name)


def layout_of(store: Any, service: str) -> Layout:
    """A feature service's log layout, from the applied registry (run by the server, not here)."""
    schema = fmt.log_schema(store, service)
    features = fmt.feature_columns(store, service)
    taken = {c for col, _ in features for c in (col, f"{col}__timestamp", f"{col}__status")}
    inputs = [f.name for f in schema if f.name not in taken and not f.name.startswith("__")]
    return Layout(schema, inputs, features)


def table_of(layout: Layout, entries: list[LogEntry]) -> pa.Table:
    """Entries of one layout as one table of its schema, column by column."""
    def joined(parts: Any) -> list[Any]:
        return list(chain.from_iterable(parts))

    sizes = [len(e.rows) for e in entries]
    rows = joined(e.rows for e in entries)
    columns: dict[str, list[Any]] = {name: list(map(methodcaller("get", name), rows)) for name in layout.inputs}
    by_kind = [("", [e.values for e in entries], None), ("__timestamp", [e.stamps for e in entries], None),
               ("__status", [e.status for e in entries], fmt.NOT_FOUND)]
    for column, feature in layout.features:
        for suffix, parts, fill in by_kind:
            try:
                columns[column + suffix] = joined(map(itemgetter(feature), parts))
            except KeyError:  # a group read before a registry change: the feature is absent there
                columns[column + suffix] = joined(p.get(feature, [fill] * n) for p, n in zip(parts, sizes, strict=True))
    columns[fmt.LOG_TIMESTAMP] = joined([round(e.logged_at * 1_000_000)] * n for e, n in zip(entries, sizes, strict=True))
    columns[fmt.LOG_DATE] = joined([datetime.fromtimestamp(e.logged_at, UTC).date()] * n
                                   for e, n in zip(entries, sizes, strict=True))
    columns[fmt.REQUEST_ID] = joined(e.request_ids for e in entries)
    columns[fmt.REQUEST_TIME] = [round(at * 1_000_000) for at in joined(e.as_of for e in entries)]
    columns[fmt.ROW] = joined(e.row_numbers for e in entries)
    columns[fmt.PROBABILITY] = joined(e.probabilities for e in entries)
    columns[fmt.DECISION] = joined(e.decisions for e in entries)
    columns[fmt.THRESHOLD] = joined([e.threshold] * n for e, n in zip(entries, sizes, strict=True))
    columns[fmt.MODEL_VERSION] = joined([e.version] * n for e, n in zip(entries, sizes, strict=True))
    return pa.table({f.name: _array(columns[f.name], f.type) for f in layout.schema}, schema=layout.schema)


def _array(values: list[Any], type_: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. numpy scalars or bools for a numeric field
        return pa.array([None if v is None else (v.item() if hasattr(v, "item") else v) for v in values]
                        ).cast(type_, safe=False)


Report = Callable[..., None]


class LogWriter:
    """Entries waiting, their Arrow tables, and the writes; `report(kind, service, rows[, text])`
    is told of every row's end."""

    def __init__(self, log_dir: Path, flush_rows: int, flush_seconds: float, report: Report) -> None:
        self.log_dir = Path(log_dir)
        self.flush_rows = max(1, flush_rows)
        self.flush_seconds = max(0.01, flush_seconds)
        self.report = report
        self.layouts: dict[tuple[str, str], Layout] = {}
        self._waiting: dict[tuple[str, str], list[LogEntry]] = {}
        self._waiting_rows = 0
        self._converted: dict[str, list[pa.Table]] = {}
        self._converted_rows = 0
        self._last_write = time.monotonic()

    @property
    def held_rows(self) -> int:
        return self._waiting_rows + self._converted_rows

    def add(self, entry: LogEntry) -> None:
        self._waiting.setdefault(entry.key, []).append(entry)
        self._waiting_rows += len(entry.rows)
        if self._waiting_rows >= CONVERT_ROWS:
            self.convert()

    def seconds_to_write(self) -> float:
        if self.held_rows >= self.flush_rows:
            return 0.0
        return max(0.0, self._last_write + self.flush_seconds - time.monotonic())

    def convert(self) -> None:
        waiting, self._waiting, self._waiting_rows = self._waiting, {}, 0
        for (service, version), entries in waiting.items():
            for part in _runs(entries, CONVERT_ROWS):
                rows = sum(len(e.rows) for e in part)
                try:
                    layout = self.layouts.get((service, version))
                    if layout is None:
                        raise LookupError(f"no log layout was sent for {service} version {version}")
                    table = table_of(layout, part)
                except Exception:
                    self.report("failed", service, rows, traceback.format_exc())
                    continue
                self._converted.setdefault(service, []).append(table)
                self._converted_rows += rows

    def write(self) -> None:
        """Write everything held: one file per service and request-time hour."""
        self.convert()
        converted, self._converted, self._converted_rows = self._converted, {}, 0
        self._last_write = time.monotonic()
        for service, tables in converted.items():
            rows = sum(t.num_rows for t in tables)
            done = 0  # rows in files written (a failure part-way fails only the files left)
            try:
                table = pa.concat_tables(tables, promote_options="permissive")
                for file_table, path in _files(self.log_dir, service, table):
                    with replacing(path) as tmp:
                        pq.write_table(file_table, tmp)
                    done += file_table.num_rows
            except Exception:
                self.report("failed", service, rows - done, traceback.format_exc())
            if done:
                self.report("written", service, done)


def _files(log_dir: Path, service: str, table: pa.Table) -> list[tuple[pa.Table, Path]]:
    """The table cut by request-time hour, each piece with its file's path."""
    folder = fmt.service_log_dir(log_dir, service)
    hours = pc.divide(table.column(fmt.REQUEST_TIME).cast(pa.int64()), _US_PER_HOUR)
    out = []
    for hour in sorted(set(hours.to_pylist())):
        piece = table.filter(pc.equal(hours, hour))
        start = datetime.fromtimestamp(hour * 3600, UTC)
        out.append((piece, folder / fmt.new_file_name(start)))
    return out


def _runs(entries: list[LogEntry], rows: int) -> list[list[LogEntry]]:
    """Consecutive runs of whole entries of about `rows` rows (a larger entry is a run of its own)."""
    out: list[list[LogEntry]] = []
    current: list[LogEntry] = []
    size = 0
    for entry in entries:
        if current and size + len(entry.rows) > rows:
            out.append(current)
            current, size = [], 0
        current.append(entry)
        size += len(entry.rows)
    if current:
        out.append(current)
    return out


def encoded(entry: LogEntry) -> bytes:
    """An entry as one message (25 µs for a single prediction of 40 features, measured)."""
    return ENTRY + pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)


def serve(inbox: Connection, outbox: Connection, writer: LogWriter) -> None:
    """Take messages until the server closes (or is gone), writing as due."""
    while True:
        if inbox.poll(writer.seconds_to_write() if writer.held_rows else None):
            try:
                message = inbox.recv_bytes()
            except (EOFError, OSError):  # the server is gone: write its tail
                writer.write()
                return
            kind, body = message[:1], message[1:]
            if kind == ENTRY:
                writer.add(pickle.loads(body))
            elif kind == LAYOUT:
                key, layout = pickle.loads(body)
                writer.layouts[key] = layout
            elif kind == CLOSE:
                writer.write()
                _send(outbox, ("closed",))
                return
        if writer.held_rows and writer.seconds_to_write() == 0.0:
            writer.write()


def _send(outbox: Connection, message: tuple[Any, ...]) -> None:
    with contextlib.suppress(OSError):  # the server is gone; the files are what counts now
        outbox.send_bytes(pickle.dumps(message))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inbox-fd", type=int, required=True)
    parser.add_argument("--outbox-fd", type=int, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--flush-rows", type=int, required=True)
    parser.add_argument("--flush-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    # the server's shutdown (Ctrl-C, SIGTERM to the group) closes this process once it has sent all
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # background work: on a busy host the server's and its clients' threads come first
    os.nice(WRITER_NICENESS)
    inbox = Connection(args.inbox_fd, writable=False)
    outbox = Connection(args.outbox_fd, readable=False)
    writer = LogWriter(args.log_dir, args.flush_rows, args.flush_seconds,
                       lambda *message: _send(outbox, message))
    serve(inbox, outbox, writer)
