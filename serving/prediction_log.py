"""The prediction log's server side: scored predictions queued off the request path, handed to a writer process.

The scoring thread hands each scored group (one online read, one model call) to `submit`: one
pickle of the group's lists (25 µs for a single prediction of 40 features) and a queue append
under a lock, nothing more. Past `FEASTKIT_PREDICTION_LOG_QUEUE_ROWS` rows not yet written
(queued here or held by the writer), the group is not logged and its rows are counted as dropped;
requests never wait for the log. A sender thread moves the queue into a pipe to the writer
process (`serving/log_writer.py`), which turns entries into Arrow and writes Parquet on an
interpreter of its own: in the server the conversion held the interpreter lock for
milliseconds, and requests arriving meanwhile waited (docs/serving.md has the figures). The
writer writes every `FEASTKIT_PREDICTION_LOG_FLUSH_SECONDS` (or once
`FEASTKIT_PREDICTION_LOG_FLUSH_ROWS` rows wait), one file per request-time hour, each renamed
into place, and reports each row's end; a failed write (disk full) is logged here with the
writer's traceback. Shutdown (`close`) sends what is queued and waits for the writer to write it;
a server killed outright leaves the writer to write what it holds and exit. A writer that dies
is started again, and the rows it held are counted as failed. Every submitted row ends in
`feastkit_prediction_log_rows_total` as written or dropped (by reason), so the two reconcile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import serving
from feastkit.settings import Settings
from serving.log_writer import CLOSE, LAYOUT, Layout, LogEntry, encoded, layout_of

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics
    from serving.scoring import LoadedModel

log = logging.getLogger(__name__)

SEND_PAUSE_SECONDS = 0.02  # the sender gathers entries this long between sends
RESTART_SECONDS = 1.0      # a writer that died is started again at most this often


@dataclass
class _Writer:
    """One writer process and what the server knows of it."""

    process: subprocess.Popen
    outbox: Connection                  # to the process
    inbox: Connection                   # from it
    started: float
    layouts: set[tuple[str, str]] = field(default_factory=set)  # sent to this process
    in_flight: int = 0                  # rows sent, their end not reported yet
    ended: bool = False                 # its pipe closed (it exited, or died)
    closed: bool = False                # it reported a clean close
    receiver: threading.Thread | None = None


class PredictionLog:
    """The bounded queue, the sender thread and the writer process of one server process."""

    def __init__(self, settings: Settings, metrics: ServingMetrics) -> None:
        self.log_dir = Path(settings.prediction_log_dir)
        self.max_rows = max(1, settings.prediction_log_queue_rows)
        self.flush_rows = max(1, settings.prediction_log_flush_rows)
        self.flush_seconds = max(0.01, settings.prediction_log_flush_seconds)
        self.metrics = metrics
        # (layout key, encoded entry, rows): bytes, which the garbage collector never scans (a
        # queue of Python lists and dicts made every collection walk it, measured as lost throughput)
        self._queue: deque[tuple[tuple[str, str], bytes, int]] = deque()
        self._queued_rows = 0
        self._models: dict[tuple[str, str], LoadedModel] = {}  # a model per layout key, for its layout
        self._layouts: dict[tuple[str, str], Layout] = {}  # read from the registry once, sent to every writer
        self._cond = threading.Condition()
        self._closed = False
        self._writer: _Writer | None = None
        self._thread: threading.Thread | None = None
        metrics.log_queued.set_function(lambda: float(self.unwritten_rows))

    @property
    def unwritten_rows(self) -> int:
        """Rows submitted whose end (written or failed) is not known yet."""
        writer = self._writer
        return self._queued_rows + (writer.in_flight if writer is not None and not writer.ended else 0)

    @property
    def writer_pid(self) -> int | None:
        writer = self._writer
        return writer.process.pid if writer is not None else None

    # the request side ---------------------------------------------------------------------------

    def submit(self, model: LoadedModel, entry: LogEntry) -> bool:
        """Queue a scored group (of `model`'s service and version); False (and counted as dropped)
        when the queue is full or closed."""
        size = len(entry.rows)
        if self._refused(size):  # before the pickle: a dropped group costs nothing more
            return False
        payload = encoded(entry)
        with self._cond:
            if self._refused(size):
                return False
            self._models.setdefault(entry.key, model)
            self._queue.append((entry.key, payload, size))
            self._queued_rows += size
            if len(self._queue) == 1:
                self._cond.notify()
        return True

    def _refused(self, size: int) -> bool:
        """True (and the rows counted as dropped) when the log is closed or has no room for them."""
        with self._cond:
            if not self._closed and self.unwritten_rows + size <= self.max_rows:
                return False
            self.metrics.log_rows.labels("closed" if self._closed else "queue_full").inc(size)
            return True

    # the sender ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="feastkit-prediction-log", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 60.0) -> None:
        """Stop taking rows, have the writer write what is queued, and wait for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify()
            if self._thread is None and not self._queue:
                return
        self.start()  # (a log never started still writes what was queued)
        assert self._thread is not None
        self._thread.join(max(0.0, deadline - time.monotonic()))
        writer = self._writer
        if writer is not None:
            if writer.receiver is not None:
                writer.receiver.join(max(0.0, deadline - time.monotonic()))
            try:
                writer.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("prediction log: the writer process did not finish in %.0f s; stopping it", timeout)
                writer.process.kill()
                writer.process.wait()
            self._writer_ended(writer)
        with self._cond:  # rows no writer took (it could not be started)
            left, self._queued_rows = self._queued_rows, 0
            self._queue.clear()
        if left:
            log.error("prediction log: %d row(s) were never written (no writer process)", left)
            self.metrics.log_rows.labels("write_failed").inc(left)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._queue), timeout=1.0)
                closing, queued = self._closed, bool(self._queue)
            # the writer starts with the first row to write (a server that logs nothing starts none)
            writer = self._live_writer() if queued else self._writer
            if writer is not None and not writer.ended:
                self._send_queued(writer)
                if closing:
                    with contextlib.suppress(OSError):
                        writer.outbox.send_bytes(CLOSE)
                    return
            elif closing:
                return  # nothing to write, or no writer to write it: close() counts what is left
            time.sleep(SEND_PAUSE_SECONDS)  # gather: fewer wake-ups of this thread, and the GIL is free

    def _live_writer(self) -> _Writer | None:
        writer = self._writer
        if writer is not None and not writer.ended:
            return writer
        if writer is not None and time.monotonic() - writer.started < RESTART_SECONDS:
            return None
        try:
            self._writer = writer = self._start_writer()
        except OSError:
            log.exception("prediction log: the writer process cannot be started")
            return None
        return writer

    def _send_queued(self, writer: _Writer) -> None:
        while True:
            with self._cond:
                if writer.ended or not self._queue:
                    return
                key, payload, rows = self._queue.popleft()
                self._queued_rows -= rows
                writer.in_flight += rows  # from here the writer's end of it counts the rows
            try:
                if key not in writer.layouts:
                    layout = self._layouts.get(key)
                    if layout is None:
                        model = self._models[key]
                        layout = self._layouts[key] = layout_of(model.reader.store, model.service)
                    writer.outbox.send_bytes(LAYOUT + pickle.dumps((key, layout)))
                    writer.layouts.add(key)
                writer.outbox.send_bytes(payload)
            except OSError:
                return  # the process is gone: its receiver counts what it held, this row included
            except Exception:
                log.exception("prediction log: %d row(s) of %s could not be written", rows, key[0])
                self._ended_rows(writer, rows, "write_failed")

    # the writer process -------------------------------------------------------------------------

    def _start_writer(self) -> _Writer:
        to_writer, writer_reads = os.pipe()[::-1]
        writer_writes, from_writer = os.pipe()[::-1]
        # the process imports this package as the server did, wherever that was installed from
        package_root = str(Path(serving.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from serving.log_writer import main; main(sys.argv[1:])",
                 "--inbox-fd", str(writer_reads),
                 "--outbox-fd", str(writer_writes), "--log-dir", str(self.log_dir),
                 "--flush-rows", str(self.flush_rows), "--flush-seconds", repr(self.flush_seconds)],
                pass_fds=(writer_reads, writer_writes), stdin=subprocess.DEVNULL, env=env)
        except OSError:
            for fd in (to_writer, writer_reads, writer_writes, from_writer):
                os.close(fd)
            raise
        os.close(writer_reads)
        os.close(writer_writes)
        writer = _Writer(process, Connection(to_writer, readable=False), Connection(from_writer, writable=False),
                         time.monotonic())
        writer.receiver = threading.Thread(target=self._receive, args=(writer,),
                                           name="feastkit-prediction-log-reports", daemon=True)
        writer.receiver.start()
        return writer

    def _receive(self, writer: _Writer) -> None:
        """What the writer reports: rows written or failed, then a clean close (or the pipe's end)."""
        while True:
            try:
                message = pickle.loads(writer.inbox.recv_bytes())
            except (EOFError, OSError):
                break
            if message[0] == "written":
                self._ended_rows(writer, message[2], "written")
            elif message[0] == "failed":
                _, service, rows, text = message
                log.error("prediction log: %d row(s) of %s could not be written\n%s", rows, service, text)
                self._ended_rows(writer, rows, "write_failed")
            elif message[0] == "closed":
                writer.closed = True
                break
        self._writer_ended(writer)

    def _ended_rows(self, writer: _Writer, rows: int, outcome: str) -> None:
        with self._cond:
            writer.in_flight -= rows
        self.metrics.log_rows.labels(outcome).inc(rows)

    def _writer_ended(self, writer: _Writer) -> None:
        """The writer's pipe closed: what it still held is lost (nothing, after a clean close)."""
        with self._cond:
            if writer.ended:
                return
            writer.ended = True
            lost, writer.in_flight = writer.in_flight, 0
        for connection in (writer.outbox, writer.inbox):
            with contextlib.suppress(OSError):
                connection.close()
        if lost or not writer.closed:
            log.error("prediction log: the writer process ended (exit code %s) holding %d unwritten row(s); "
                      "they are counted as write_failed and a new writer is started",
                      writer.process.poll(), lost)
        if lost:
            self.metrics.log_rows.labels("write_failed").inc(lost)
