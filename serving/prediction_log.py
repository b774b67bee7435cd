"""The prediction log writer: predictions queued off the request path, written as Parquet by one thread.

The scoring thread hands each scored group (one online read, one model call) to `submit`: a list
append under a lock, nothing more. Past `FEASTKIT_PREDICTION_LOG_QUEUE_ROWS` waiting rows the
group is not logged, and its rows are counted as dropped; requests never wait for the log. A
writer thread turns the queue into one Arrow table per feature service (`feastkit.prediction_log`'s
format) every half second, 64 rows at a time with the GIL released in between, so the queue of
Python objects stays short and a request never waits for a whole conversion, and every
`FEASTKIT_PREDICTION_LOG_FLUSH_SECONDS` (or once `FEASTKIT_PREDICTION_LOG_FLUSH_ROWS` rows wait)
writes what it converted: one file per request-time hour, each renamed into place. A failed write (disk full) is logged with its traceback and its rows counted as dropped.
Shutdown (`close`) writes what is queued. Every submitted row ends in the metric
`feastkit_prediction_log_rows_total` as written or dropped (by reason), so the two reconcile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feastkit import prediction_log as fmt
from feastkit.atomic import replacing
from feastkit.settings import Settings
from serving.features import ReadDetail

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics
    from serving.scoring import LoadedModel

log = logging.getLogger(__name__)

_US_PER_HOUR = 3_600_000_000
CONVERT_SECONDS = 0.5  # queued predictions become Arrow this often (written every flush interval)
CONVERT_CHUNK_ROWS = 64  # converted this many rows at a time, the GIL released between chunks
CONVERT_PAUSE_SECONDS = 0.0002


@dataclass
class LoggedGroup:
    """Rows scored together, as the scoring thread had them."""

    model: LoadedModel
    request_ids: list[str | None]
    row_numbers: list[int]
    rows: list[dict[str, Any]]
    as_of: list[float]               # request times, epoch seconds
    logged_at: float                 # epoch seconds
    detail: ReadDetail               # served values, event times and statuses, per feature
    probabilities: list[float]
    decisions: list[str]

    @property
    def size(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class _Layout:
    """How a service's rows become columns of its log schema."""

    schema: pa.Schema
    inputs: list[str]                   # join keys and request fields, as the schema names them
    features: list[tuple[str, str]]     # (log column, served feature name)


class PredictionLog:
    """The bounded queue and the writer thread of one server."""

    def __init__(self, settings: Settings, metrics: ServingMetrics) -> None:
        self.log_dir = Path(settings.prediction_log_dir)
        self.max_rows = max(1, settings.prediction_log_queue_rows)
        self.flush_rows = max(1, settings.prediction_log_flush_rows)
        self.flush_seconds = max(0.01, settings.prediction_log_flush_seconds)
        self.metrics = metrics
        self._pending: list[LoggedGroup] = []
        self._pending_rows = 0
        # converted to Arrow, not written yet: C memory the garbage collector never scans (a queue of
        # Python lists and dicts made every collection walk it, measured as lost throughput)
        self._converted: dict[str, list[pa.Table]] = {}
        self._converted_rows = 0
        self._last_write = time.monotonic()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._layouts: dict[tuple[str, str], _Layout] = {}
        metrics.log_queued.set_function(lambda: float(self._pending_rows + self._converted_rows))

    # the request side ---------------------------------------------------------------------------

    def submit(self, group: LoggedGroup) -> bool:
        """Queue a scored group; False (and counted as dropped) when the queue is full or closed."""
        with self._cond:
            if self._closed or self._pending_rows + self._converted_rows + group.size > self.max_rows:
                reason = "closed" if self._closed else "queue_full"
                self.metrics.log_rows.labels(reason).inc(group.size)
                return False
            self._pending.append(group)
            self._pending_rows += group.size
            if self._pending_rows >= self.flush_rows:
                self._cond.notify()
        return True

    # the writer side ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="feastkit-prediction-log", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 60.0) -> None:
        """Stop taking rows and write what is queued."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()  # whatever the thread left (it was never started, or the join timed out)

    def flush(self) -> int:
        """Write every queued row now; the number of rows written."""
        with self._write_lock:
            self._convert()
            return self._write()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._pending_rows >= self.flush_rows,
                                    timeout=min(self.flush_seconds, CONVERT_SECONDS))
                closed = self._closed
            with self._write_lock:
                self._convert()
                due = time.monotonic() - self._last_write >= self.flush_seconds
                if closed or due or self._converted_rows >= self.flush_rows:
                    self._write()
            if closed:
                return

    def _convert(self) -> None:
        """Queued groups -> one Arrow table per service, kept until the next write."""
        with self._cond:
            groups, self._pending = self._pending, []
        by_service: dict[str, list[LoggedGroup]] = {}
        for group in groups:
            by_service.setdefault(group.model.service, []).append(group)
        chunks = [(service, part) for service, groups_of_service in by_service.items()
                  for part in _chunks(groups_of_service, CONVERT_CHUNK_ROWS)]
        for index, (service, part) in enumerate(chunks):
            if index:
                _let_requests_run()
            rows = sum(g.size for g in part)
            try:
                table = self._table(part)
            except Exception:
                log.exception("prediction log: %d row(s) of %s could not be written", rows, service)
                self.metrics.log_rows.labels("write_failed").inc(rows)
                table = None
            with self._cond:
                self._pending_rows -= rows
                if table is not None:
                    self._converted.setdefault(service, []).append(table)
                    self._converted_rows += rows

    def _write(self) -> int:
        """Write the converted tables: one file per service and request-time hour."""
        with self._cond:
            converted, self._converted = self._converted, {}
        self._last_write = time.monotonic()
        written = 0
        for service, tables in converted.items():
            rows = sum(t.num_rows for t in tables)
            done = 0  # rows in files written (a failure part-way fails only the files left)
            try:
                table = pa.concat_tables(tables, promote_options="permissive")
                for file_table, path in self._files(service, table):
                    with replacing(path) as tmp:
                        pq.write_table(file_table, tmp)
                    done += file_table.num_rows
            except Exception:
                log.exception("prediction log: %d row(s) of %s could not be written", rows - done, service)
                self.metrics.log_rows.labels("write_failed").inc(rows - done)
            finally:
                if done:
                    self.metrics.log_rows.labels("written").inc(done)
                written += done
                with self._cond:
                    self._converted_rows -= rows
        return written

    def _layout(self, model: LoadedModel) -> _Layout:
        key = (model.service, model.bundle.version)
        layout = self._layouts.get(key)
        if layout is None:
            store = model.reader.store
            schema = fmt.log_schema(store, model.service)
            features = fmt.feature_columns(store, model.service)
            taken = {c for col, _ in features for c in (col, f"{col}__timestamp", f"{col}__status")}
            inputs = [f.name for f in schema if f.name not in taken and not f.name.startswith("__")]
            layout = self._layouts[key] = _Layout(schema, inputs, features)
        return layout

    def _table(self, groups: list[LoggedGroup]) -> pa.Table:
        layouts = {id(g): self._layout(g.model) for g in groups}
        layout = layouts[id(groups[0])]
        if any(other.schema != layout.schema for other in layouts.values()):
            # a registry change between groups: one table per schema
            return pa.concat_tables([self._table([g]) for g in groups], promote_options="permissive")
        schema = layout.schema
        # column by column over all groups, in C (chain, map, itemgetter): per-group Python loops
        # over every feature cost ~100 us per single prediction, measured
        columns: dict[str, list[Any]] = {}

        def joined(parts: Any) -> list[Any]:
            return list(chain.from_iterable(parts))

        details = [g.detail for g in groups]
        sizes = [g.size for g in groups]
        rows = joined(g.rows for g in groups)
        for name in layout.inputs:
            columns[name] = list(map(methodcaller("get", name), rows))
        by_kind = [("", [d.values for d in details], None), ("__timestamp", [d.stamps for d in details], None),
                   ("__status", [d.status for d in details], fmt.NOT_FOUND)]
        for column, feature in layout.features:
            for suffix, parts, fill in by_kind:
                try:
                    columns[column + suffix] = joined(map(itemgetter(feature), parts))
                except KeyError:  # a group read before a registry change: the feature is absent there
                    columns[column + suffix] = joined(p.get(feature, [fill] * n) for p, n in zip(parts, sizes, strict=True))
        columns[fmt.LOG_TIMESTAMP] = joined([round(g.logged_at * 1_000_000)] * g.size for g in groups)
        columns[fmt.LOG_DATE] = joined([datetime.fromtimestamp(g.logged_at, UTC).date()] * g.size for g in groups)
        columns[fmt.REQUEST_ID] = joined(g.request_ids for g in groups)
        columns[fmt.REQUEST_TIME] = [round(at * 1_000_000) for at in joined(g.as_of for g in groups)]
        columns[fmt.ROW] = joined(g.row_numbers for g in groups)
        columns[fmt.PROBABILITY] = joined(g.probabilities for g in groups)
        columns[fmt.DECISION] = joined(g.decisions for g in groups)
        columns[fmt.THRESHOLD] = joined([g.model.bundle.threshold] * g.size for g in groups)
        columns[fmt.MODEL_VERSION] = joined([g.model.bundle.version] * g.size for g in groups)
        return pa.table({f.name: _array(columns[f.name], f.type) for f in schema}, schema=schema)

    def _files(self, service: str, table: pa.Table) -> list[tuple[pa.Table, Path]]:
        """The table cut by request-time hour, each piece with its file's path."""
        folder = fmt.service_log_dir(self.log_dir, service)
        hours = pc.divide(table.column(fmt.REQUEST_TIME).cast(pa.int64()), _US_PER_HOUR)
        out = []
        for hour in sorted(set(hours.to_pylist())):
            piece = table.filter(pc.equal(hours, hour))
            start = datetime.fromtimestamp(hour * 3600, UTC)
            out.append((piece, folder / fmt.new_file_name(start)))
        return out


def _array(values: list[Any], type_: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. numpy scalars or bools for a numeric field
        return pa.array([None if v is None else (v.item() if hasattr(v, "item") else v) for v in values]
                        ).cast(type_, safe=False)


def _let_requests_run() -> None:
    """Release the GIL for a moment between conversion chunks, so that a request arriving during
    a conversion waits for one chunk rather than the whole queue (p99 at one request in flight had
    been 5.2 ms with the log on, 2.4 ms off; docs/serving.md has what chunks gave)."""
    time.sleep(CONVERT_PAUSE_SECONDS)


def _chunks(groups: list[LoggedGroup], rows: int) -> list[list[LoggedGroup]]:
    """Consecutive runs of whole groups of about `rows` rows (a group larger than that is one run)."""
    out: list[list[LoggedGroup]] = []
    current: list[LoggedGroup] = []
    size = 0
    for group in groups:
        if current and size + group.size > rows:
            out.append(current)
            current, size = [], 0
        current.append(group)
        size += group.size
    if current:
        out.append(current)
    return out
