"""The stream worker: keeps stream-fed views fresh from Redis Streams, row for row what `feastkit compute` writes.

A view declared with `stream_event_id=` (and `grid=None`, a push source) is stream-fed. For each
one, the worker reads its event source's stream in a consumer group (`XREADGROUP`, batched), holds
each entity's events of the last window plus the allowed lateness, and after every batch
recomputes the rows the batch changed with `pipelines.aggregates.rows_at` -- the very query and
window engine `feastkit compute` runs, so streaming equals batch by construction, not by a
second implementation. Then:

- online: each changed entity's latest row, written as materialization writes it (the guarded
  online stores' atomic newer-wins write: an older row never overwrites a newer one);
- offline log: every new or corrected row, with the time it was computed (`created`), as Parquet
  under `<data>/stream_log/<view>/`; the latest `created` per (entity, event time) is the row;
- commit: every `stream_commit_seconds`, the offline rows are written, then the windows of the
  entities that changed and the acknowledgements go to Redis in one MULTI/EXEC. A worker killed
  at any point restarts from the last commit and reprocesses the unacknowledged entries (its own
  pending ones, and any it claims): nothing is counted twice, nothing lost.

Duplicates (an event id already in the entity's window) are counted and skipped. An event up to
`stream_lateness` behind the latest event seen in its partition is applied where it belongs, and
the rows it changes are recomputed; a later one, and any event that breaks the source's schema,
names an unknown entity or carries a non-finite number, goes to the partition's dead-letter
stream with its reason and is counted. Nothing stops the worker but a signal.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from feastkit import feast_compat
from feastkit.atomic import replacing
from feastkit.clean import clean_table
from feastkit.declarations import (
    STREAM_EVENT_ID_TAG,
    STREAM_LOG_TAG,
    DeclarationError,
    ViewSpec,
    stream_log_files,
)
from feastkit.errors import FeastkitError
from feastkit.event_stream import EVENT_FIELD, StreamLayout, StreamSource, stream_sources
from feastkit.feast_compat import arrow_to_protos
from feastkit.settings import Settings
from feastkit.times import epoch_micros
from pipelines.aggregates import connect, rows_at

log = logging.getLogger(__name__)

CREATED = "created"          # the offline log's column: when the worker computed the row
_WATERMARK_FIELD = "\x00max_event_us"  # the state hash's field for the latest event time seen
_SWEEP_SECONDS = 60.0        # how often every held entity's expired events are dropped


class BadEvent(ValueError):
    """An event the worker cannot apply; `reason` is its dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StreamFedView:
    """A view the stream keeps fresh, as the applied registry declares it."""

    spec: ViewSpec
    push_source: str
    longest_window_us: int
    log_dir: Path          # the offline log, as the registry records it
    feature_view: Any      # the applied Feast view (what online writes go to)


@dataclass(frozen=True)
class EventSchema:
    """What an event of a source must carry: the columns the views read, typed as its clean table."""

    source: str
    entity_key: str
    event_id: str
    timestamp: str
    columns: dict[str, pa.DataType]      # the columns kept per event (entity key and timestamp included)
    required: tuple[str, ...]            # entity key, timestamp, and every column an aggregation reads

    def parse(self, payload: bytes | str | None) -> tuple[str, Any, int, dict[str, Any]]:
        """(event id, entity key, event time in epoch us, column values) of an entry, or BadEvent."""
        if payload is None:
            raise BadEvent("schema", f"the entry has no '{EVENT_FIELD}' field")
        try:
            event = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadEvent("schema", f"the '{EVENT_FIELD}' field is not JSON ({exc})") from None
        if not isinstance(event, dict):
            raise BadEvent("schema", "the event is not a JSON object")
        missing = [c for c in (self.event_id, *self.required) if event.get(c) is None]
        if missing:
            raise BadEvent("schema", f"missing field(s) {', '.join(missing)}")
        event_id = event[self.event_id]
        if isinstance(event_id, bool) or not isinstance(event_id, str | int) or len(str(event_id)) > 128:
            raise BadEvent("schema", f"{self.event_id} must be a string or an integer of at most 128 characters")
        values: dict[str, Any] = {}
        for column, dtype in self.columns.items():
            if column == self.timestamp:
                continue
            values[column] = _typed(column, event.get(column), dtype)
        stamp = event[self.timestamp]
        try:
            when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise BadEvent("schema", f"{self.timestamp} must be an ISO 8601 time with a timezone, not {stamp!r}")
        return str(event_id), values[self.entity_key], epoch_micros(when), values

    def table(self, events: list[tuple[int, dict[str, Any]]]) -> pa.Table:
        """The held events as a table of the clean table's columns (what `rows_at` reads)."""
        columns = {}
        for column, dtype in self.columns.items():
            if column == self.timestamp:
                columns[column] = pa.array([t for t, _ in events], type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
            else:
                columns[column] = pa.array([row[column] for _, row in events], type=dtype)
        return pa.table(columns)


def _typed(column: str, value: Any, dtype: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_integer(dtype):
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
            raise BadEvent("schema", f"{column} must be a 64-bit integer, not {value!r}")
        return value
    if pa.types.is_floating(dtype):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadEvent("schema", f"{column} must be a number, not {value!r}")
        if not math.isfinite(value):
            raise BadEvent("non_finite", f"{column} is {value!r}: it must be a finite number")
        return float(value)
    if pa.types.is_boolean(dtype):
        if not isinstance(value, bool):
            raise BadEvent("schema", f"{column} must be true or false, not {value!r}")
        return value
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        if not isinstance(value, str) or len(value) > 1024:
            raise BadEvent("schema", f"{column} must be a string of at most 1024 characters")
        return value
    raise BadEvent("schema", f"{column}: the stream cannot carry the type {dtype}")


def stream_fed_views(store: Any) -> list[StreamFedView]:
    """The applied views declared stream-fed, with their spec and push source."""
    fed = []
    for view in store.list_feature_views():
        if not (view.tags or {}).get(STREAM_EVENT_ID_TAG):
            continue
        spec = ViewSpec.of(view)
        push = getattr(view.stream_source, "name", None)
        if spec is None or spec.grid_us or push is None:
            raise DeclarationError(f"feature view '{view.name}' is tagged stream-fed but has no per-event spec "
                                   "or push source", "declare it with windowed_view(grid=None, push_source=..., "
                                   "stream_event_id=...) and run `feast apply`")
        log_dir = (view.tags or {}).get(STREAM_LOG_TAG)
        if not log_dir:
            raise DeclarationError(f"feature view '{view.name}' has no {STREAM_LOG_TAG} tag",
                                   "run `feastkit apply` with this feastkit (it records the view's stream log)")
        fed.append(StreamFedView(spec, push, max(a.window_us for a in spec.aggregations), Path(log_dir), view))
    pushes = [v.push_source for v in fed]
    shared = sorted({p for p in pushes if pushes.count(p) > 1})
    if shared:
        raise DeclarationError(f"push source(s) {', '.join(shared)} feed more than one stream-fed view",
                               "give each stream-fed view its own push_source")
    return sorted(fed, key=lambda v: v.spec.name)


def _filter_columns(spec: ViewSpec, names: set[str]) -> set[str]:
    words: set[str] = set()
    for agg in spec.aggregations:
        if agg.where:
            words |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", agg.where))
    return words & names


def event_schema(source: StreamSource, views: list[StreamFedView], clean_dir: Path) -> EventSchema:
    """One source's event schema: the columns its stream-fed views read, typed as its clean table."""
    schema = pq.read_schema(clean_table(clean_dir, source.table))
    names = set(schema.names)
    needed = {source.entity_key, source.timestamp, *source.value_columns}
    required = set(needed)
    for view in views:
        needed |= _filter_columns(view.spec, names)
    unknown = sorted(needed - names)
    if unknown:
        raise DeclarationError(f"source '{source.name}': the stream-fed views read column(s) {', '.join(unknown)} "
                               f"its clean table {source.table} does not have", "fix the aggregations' columns")
    columns = {c: schema.field(c).type for c in schema.names if c in needed}
    return EventSchema(source.name, source.entity_key, source.event_id, source.timestamp, columns,
                       tuple(c for c in schema.names if c in required))


class KnownEntities:
    """The entity keys a reference table lists (users), re-read when its file changes."""

    def __init__(self, path: Path | None, column: str) -> None:
        self.path, self.column = path, column
        self._mtime: float | None = None
        self._keys: set[Any] = set()
        self._checked = 0.0

    def __contains__(self, key: Any) -> bool:
        if self.path is None:
            return True
        now = time.monotonic()
        if now - self._checked > 10.0 or (key not in self._keys and now - self._checked > 1.0):
            self._checked = now
            mtime = self.path.stat().st_mtime if self.path.is_file() else None
            if mtime != self._mtime:
                self._mtime = mtime
                self._keys = set(pq.read_table(self.path, columns=[self.column]).column(0).to_pylist()) \
                    if mtime is not None else set()
        return key in self._keys


def known_entities(store: Any, entity_key: str, clean_dir: Path) -> KnownEntities:
    """Known keys of an entity: the clean table behind a reference view of that entity, if there is one."""
    for view in store.list_feature_views():
        spec = ViewSpec.of(view)
        if spec is not None and spec.kind == "reference" and spec.entity_key == entity_key and spec.sources:
            return KnownEntities(clean_dir / f"{spec.sources[0].table}.parquet", entity_key)
    return KnownEntities(None, entity_key)


class StreamMetrics:
    """The worker's Prometheus metrics (docs/streaming.md), on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter("feastkit_stream_events", "Stream entries by outcome: accepted, duplicate, late, "
                              "dead_letter (schema, unknown entity, non-finite).", ["stream", "outcome"],
                              registry=self.registry)
        self.rows = Counter("feastkit_stream_rows", "Rows written by view and destination (online, offline).",
                            ["view", "to"], registry=self.registry)
        self.errors = Counter("feastkit_stream_errors", "Failed batches by kind; the batch is reprocessed "
                              "from the last commit.", ["kind"], registry=self.registry)
        self.lag = Gauge("feastkit_stream_lag_entries", "Entries appended to the stream not yet read by the group.",
                         ["stream"], registry=self.registry)
        self.pending = Gauge("feastkit_stream_pending_entries", "Entries read but not yet committed.",
                             ["stream"], registry=self.registry)
        self.entities = Gauge("feastkit_stream_active_entities", "Entities with events held in their windows.",
                              ["stream"], registry=self.registry)
        self.event_age = Histogram("feastkit_stream_event_age_seconds", "Now minus the event's time when its "
                                   "row reached the online store.", ["view"], registry=self.registry,
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600))
        self.commit_seconds = Histogram("feastkit_stream_commit_seconds", "Time to write the offline rows and "
                                        "commit state and acknowledgements.", registry=self.registry)


@dataclass
class Partition:
    """One partition's stream and what the worker holds of it."""

    stream: str
    state_key: str
    dead_key: str
    entities: dict[Any, dict[str, tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    max_event_us: int = -(2**62)
    changed: set[Any] = field(default_factory=set)       # entities whose windows changed since the commit
    acks: list[str] = field(default_factory=list)        # entries applied since the commit
    backlog: str | None = "0"                             # next id of this consumer's pending entries to reread


@dataclass
class StepReport:
    """What one read did."""

    entries: int = 0
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    dead: int = 0


class StreamWorker:
    """Consumes the partitions it owns and keeps every stream-fed view's rows online and in the log."""

    def __init__(self, settings: Settings, store: Any, client: Any, *, consumer: str | None = None,
                 partitions: list[int] | None = None, metrics: StreamMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from feastkit.store import parse_duration

        self.settings, self.store, self.client, self.clock = settings, store, client, clock
        self.views = stream_fed_views(store)
        if not self.views:
            raise FeastkitError("no feature view is stream-fed", "declare one with windowed_view(grid=None, "
                                "push_source=..., stream_event_id=...) and run `feastkit apply`")
        sources = stream_sources(v.feature_view for v in self.views)
        if len(sources) > 1:
            raise FeastkitError(f"stream-fed views read {len(sources)} sources ({', '.join(s.name for s in sources)})",
                                "run one worker per source: this one reads one stream")
        self.schema = event_schema(sources[0], self.views, settings.clean_dir)
        self.known = known_entities(store, self.schema.entity_key, settings.clean_dir)
        self.layout = StreamLayout(settings.stream_prefix, self.schema.source, settings.stream_partitions)
        self.lateness_us = int(parse_duration(settings.stream_lateness).total_seconds() * 1_000_000)
        self.hold_us = self.lateness_us + max(v.longest_window_us for v in self.views)
        self.group = settings.stream_group
        self.consumer = consumer or default_consumer()
        owned = partitions if partitions is not None else list(range(self.layout.partitions))
        self.partitions = [Partition(k, StreamLayout.state_key(k, self.group), StreamLayout.dead_letter_key(k))
                           for k in (self.layout.stream_key(p) for p in owned)]
        self.metrics = metrics or StreamMetrics()
        self._online = feast_compat.online_store(store)
        self._con = connect()
        self.offline: dict[str, list[pa.Table]] = {}
        self._last_commit = time.monotonic()
        self._last_sweep = time.monotonic()
        self._last_created = 0
        self.started = False

    # start-up ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the groups, take over this partition's unacknowledged entries, load the committed windows."""
        from redis.exceptions import ResponseError

        for part in self.partitions:
            try:
                self.client.xgroup_create(part.stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            # the partition is this worker's alone: entries another consumer name read and never
            # acknowledged (an earlier run under another name) become this one's to reprocess
            start_id = "0-0"
            while True:
                reply = self.client.xautoclaim(part.stream, self.group, self.consumer, min_idle_time=0,
                                               start_id=start_id, count=1000)
                start_id = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                if start_id == "0-0":
                    break
            self._load(part)
        self.started = True

    def reset(self) -> None:
        """Delete the owned partitions' streams, dead letters and this group's committed windows."""
        for part in self.partitions:
            self.client.delete(part.stream, part.dead_key, part.state_key)
        self.started = False

    def _load(self, part: Partition) -> None:
        part.entities.clear()
        part.changed.clear()
        part.acks.clear()
        part.backlog = "0"
        part.max_event_us = -(2**62)
        for raw_key, raw in self.client.hgetall(part.state_key).items():
            name = raw_key.decode()
            if name == _WATERMARK_FIELD:
                part.max_event_us = int(raw)
                continue
            held = json.loads(raw)
            part.entities[json.loads(name)] = {i: (t, row) for i, t, row in held}

    # the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event, idle_exit_seconds: float | None = None) -> None:
        """Read, apply and commit until `stop` is set (or nothing arrived for `idle_exit_seconds`)."""
        if not self.started:
            self.start()
        idle_since = time.monotonic()
        block_ms = max(1, int(self.settings.stream_commit_seconds * 1000))
        while not stop.is_set():
            try:
                report = self.step(block_ms=block_ms)
                if time.monotonic() - self._last_commit >= self.settings.stream_commit_seconds:
                    self.commit()
                    self.lag()
            except Exception as exc:  # the store or Redis failed: reprocess from the last commit
                self._recover(exc)
                stop.wait(1.0)
                continue
            if report.entries:
                idle_since = time.monotonic()
            elif idle_exit_seconds is not None and time.monotonic() - idle_since >= idle_exit_seconds:
                break
        self.commit()

    def step(self, block_ms: int = 0) -> StepReport:
        """One XREADGROUP over the owned partitions (this consumer's backlog first), applied; it waits
        up to `block_ms` for entries (0: it returns at once)."""
        report = StepReport()
        while True:
            rereading = any(p.backlog for p in self.partitions)
            streams = {p.stream: (p.backlog or ">") for p in self.partitions}
            reply = self.client.xreadgroup(self.group, self.consumer, streams,
                                           count=self.settings.stream_batch_events,
                                           block=None if rereading or block_ms <= 0 else block_ms)
            by_stream = {(k.decode() if isinstance(k, bytes) else k): entries for k, entries in (reply or [])}
            for part in self.partitions:
                entries = by_stream.get(part.stream, [])
                if part.backlog is not None:  # entries read before the last commit, never acknowledged
                    part.backlog = entries[-1][0].decode() if entries else None
                if entries:
                    self._apply(part, entries, report)
            if report.entries or not rereading:
                break
        self._observe()
        return report

    def _apply(self, part: Partition, entries: list[tuple[bytes, dict[bytes, bytes]]], report: StepReport) -> None:
        dead: list[tuple[str, str, str, bytes | None]] = []
        arrived: dict[Any, list[int]] = {}
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            part.acks.append(entry_id)
            report.entries += 1
            payload = (fields or {}).get(EVENT_FIELD.encode())  # a trimmed entry has no fields
            try:
                event_id, key, ts, row = self.schema.parse(payload)
                if key not in self.known:
                    raise BadEvent("unknown_entity", f"{self.schema.entity_key} {key!r} is not a known entity")
            except BadEvent as exc:
                dead.append((entry_id, exc.reason, exc.detail, payload))
                continue
            held = part.entities.get(key)
            if held is not None and event_id in held:
                report.duplicates += 1
                self.metrics.events.labels(part.stream, "duplicate").inc()
                continue
            if ts < part.max_event_us - self.lateness_us:
                behind = (part.max_event_us - ts) / 1e6
                dead.append((entry_id, "late", f"{behind:.3f}s behind the latest event, past the allowed "
                             f"lateness {self.settings.stream_lateness}", payload))
                continue
            part.entities.setdefault(key, {})[event_id] = (ts, row)
            part.max_event_us = max(part.max_event_us, ts)
            arrived.setdefault(key, []).append(ts)
            part.changed.add(key)
            report.accepted += 1
            self.metrics.events.labels(part.stream, "accepted").inc()
        if dead:
            self._dead_letter(part, dead, report)
        if arrived:
            self._write_rows(part, arrived)
        self._evict(part, arrived)

    def _dead_letter(self, part: Partition, dead: list[tuple[str, str, str, bytes | None]],
                     report: StepReport) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry_id, reason, detail, payload in dead:
            pipe.xadd(part.dead_key, {"entry": entry_id, "reason": reason, "detail": detail,
                                      EVENT_FIELD: payload if payload is not None else b""},
                      maxlen=self.settings.stream_max_length, approximate=True)
            outcome = "late" if reason == "late" else "dead_letter"
            if reason == "late":
                report.late += 1
            else:
                report.dead += 1
            self.metrics.events.labels(part.stream, outcome).inc()
            log.warning(f"stream event {entry_id} set aside ({reason}): {detail}",
                        extra={"stream": part.stream, "entry": entry_id, "reason": reason})
        pipe.execute()

    def _write_rows(self, part: Partition, arrived: dict[Any, list[int]]) -> None:
        """Recompute the rows the new events change -- each one's own, and the entity's later rows
        whose window holds it -- push each entity's latest online, and log them all offline."""
        held = [(t, row) for key in arrived for t, row in part.entities[key].values()]
        events = {self.schema.source: self.schema.table(held)}
        created = self._created_us()
        for view in self.views:
            points = set()
            latest: dict[Any, int] = {}
            for key, new in arrived.items():
                new = sorted(new)
                times = {t for t, _ in part.entities[key].values()}
                latest[key] = max(times)
                for t in times:
                    before = bisect.bisect_right(new, t)  # the new events at or before t
                    if before and t - new[before - 1] <= view.longest_window_us:
                        points.add((key, t))
            rows = rows_at(view.spec, events, frozenset(points), con=self._con)
            if not rows.num_rows:
                continue
            keys = rows.column(view.spec.entity_key).to_pylist()
            stamps = pc.cast(rows.column("event_timestamp"), pa.int64()).to_pylist()
            newest = [i for i, (k, t) in enumerate(zip(keys, stamps, strict=True)) if t == latest[k]]
            if newest:
                self._write_online(view, rows.take(pa.array(newest)))
                now_us = self.clock() * 1e6
                for i in newest:
                    self.metrics.event_age.labels(view.spec.name).observe(max(0.0, (now_us - stamps[i]) / 1e6))
            stamped = rows.append_column(CREATED, pa.array([created] * rows.num_rows, pa.int64())
                                         .cast(pa.timestamp("us", tz="UTC")))
            self.offline.setdefault(view.spec.name, []).append(stamped)

    def _write_online(self, view: StreamFedView, rows: pa.Table) -> None:
        """Each entity's latest row into the online store the way materialization writes: the
        guarded stores' column-wise newer-wins write (Feast's rows for types it does not cover).
        What the view's push source would do, without Feast reading the registry on every call."""
        feature_view = view.feature_view
        join_keys = {e.name: e.dtype.to_value_type() for e in feature_view.entity_columns}
        config = self.store.config
        for batch in rows.to_batches(max_chunksize=10_000):
            write_arrow = getattr(self._online, "online_write_arrow", None)
            if write_arrow is None or not write_arrow(config, feature_view, batch, join_keys, None):
                self._online.online_write_batch(config=config, table=feature_view,
                                                data=arrow_to_protos(batch, feature_view, join_keys), progress=None)
        self.metrics.rows.labels(view.spec.name, "online").inc(rows.num_rows)

    def _created_us(self) -> int:
        self._last_created = max(self._last_created + 1, int(self.clock() * 1_000_000))
        return self._last_created

    def _evict(self, part: Partition, touched: dict[Any, list[int]]) -> None:
        """Drop events no future row can see; all held entities every minute, else the touched ones."""
        horizon = part.max_event_us - self.hold_us
        sweep = time.monotonic() - self._last_sweep >= _SWEEP_SECONDS
        for key in list(part.entities) if sweep else list(touched):
            held = part.entities[key]
            expired = [i for i, (t, _) in held.items() if t < horizon]
            if expired:
                for i in expired:
                    del held[i]
                part.changed.add(key)
            if not held:
                del part.entities[key]
        if sweep:
            self._last_sweep = time.monotonic()

    # commit and recovery -------------------------------------------------------------------
    def commit(self) -> None:
        """Offline rows to Parquet, then changed windows and acknowledgements to Redis, atomically."""
        started = time.perf_counter()
        logs = {v.spec.name: v.log_dir for v in self.views}
        for view, tables in self.offline.items():
            if tables:
                self._write_offline(view, logs[view], pa.concat_tables(tables))
        self.offline = {}
        for part in self.partitions:
            if not part.acks and not part.changed:
                continue
            pipe = self.client.pipeline(transaction=True)
            keep = {json.dumps(k): json.dumps([[i, t, row] for i, (t, row) in held.items()])
                    for k in part.changed if (held := part.entities.get(k))}
            gone = [json.dumps(k) for k in part.changed if k not in part.entities]
            if keep:
                pipe.hset(part.state_key, mapping=keep)
            if gone:
                pipe.hdel(part.state_key, *gone)
            pipe.hset(part.state_key, _WATERMARK_FIELD, str(part.max_event_us))
            if part.acks:
                pipe.xack(part.stream, self.group, *part.acks)
            pipe.execute()
            part.changed.clear()
            part.acks.clear()
        self._last_commit = time.monotonic()
        self.metrics.commit_seconds.observe(time.perf_counter() - started)

    def _write_offline(self, view: str, log_dir: Path, table: pa.Table) -> None:
        days = pc.strftime(table.column("event_timestamp"), format="%Y-%m-%d").to_pylist()
        for day in sorted(set(days)):
            part = table.filter(pc.equal(pa.array(days), day))
            target = log_dir / f"date={day}" / \
                f"part-{self._last_created}-{uuid.uuid4().hex[:8]}.parquet"
            with replacing(target) as tmp:
                pq.write_table(part, tmp)
            self.metrics.rows.labels(view, "offline").inc(part.num_rows)

    def _recover(self, exc: Exception) -> None:
        kind = type(exc).__name__
        self.metrics.errors.labels(kind).inc()
        log.error("stream batch failed; reprocessing from the last commit",
                  extra={"error": f"{kind}: {exc}"})
        self.offline = {}
        try:
            for part in self.partitions:
                self._load(part)
        except Exception as again:  # Redis itself is down: try again on the next round
            log.error("cannot reload the committed windows", extra={"error": f"{type(again).__name__}: {again}"})

    def _observe(self) -> None:
        for part in self.partitions:
            self.metrics.entities.labels(part.stream).set(len(part.entities))
            self.metrics.pending.labels(part.stream).set(len(part.acks))

    def lag(self) -> dict[str, int]:
        """Entries not yet read by the group, per owned stream (Redis 7's XINFO GROUPS `lag`)."""
        out = {}
        for part in self.partitions:
            for group in self.client.xinfo_groups(part.stream):
                name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
                if name == self.group:
                    lag = group.get("lag")
                    out[part.stream] = int(lag) if lag is not None else -1
                    self.metrics.lag.labels(part.stream).set(out[part.stream])
        return out


def read_stream_log(folder: Path) -> pa.Table:
    """A view's offline log as rows: the latest `created` per (entity, event time), sorted."""
    import duckdb

    files = stream_log_files(folder)
    if not files:
        return pa.table({})
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    table = pq.ParquetDataset([str(f) for f in files]).read()
    table = table.drop_columns([c for c in table.column_names if c == "date"])
    con.register("log", table)
    key = table.column_names[0]
    return con.sql(f"""SELECT * EXCLUDE ({CREATED}) FROM log
                       QUALIFY row_number() OVER (PARTITION BY "{key}", event_timestamp ORDER BY {CREATED} DESC) = 1
                       ORDER BY 1, 2""").to_arrow_table()


def owned_partitions(index: int, workers: int, partitions: int) -> list[int]:
    """The partitions worker `index` of `workers` owns: every `workers`-th from `index`."""
    if not 0 <= index < workers:
        raise FeastkitError(f"worker index {index} is outside 0..{workers - 1}", "pass --worker i/N with i < N")
    if workers > partitions:
        raise FeastkitError(f"{workers} workers for {partitions} partition(s): some would own none",
                            "raise FEASTKIT_STREAM_PARTITIONS to at least the number of workers")
    return list(range(index, partitions, workers))


def connect_stream(settings: Settings) -> Any:
    """The broker's Redis client, checked reachable."""
    import redis

    client = redis.Redis.from_url(settings.stream_redis_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise FeastkitError(f"the stream broker at {settings.stream_redis_url} is unreachable ({exc})",
                            "start Redis or point FEASTKIT_STREAM_REDIS_URL at it") from None
    return client


def default_consumer() -> str:
    """A consumer name stable across restarts of one worker on one host: the host name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()

