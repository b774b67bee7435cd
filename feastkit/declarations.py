"""Feature view declarations with their windowed aggregations: declared once in feature_repo/, read back from the registry.

A data scientist declares a view in `feature_repo/` with `windowed_view(...)`: the entity, the raw
event source(s) (Feast data sources over the clean tables), the grid, and the aggregations
(column, function, window, optional filter). The declaration yields a standard Feast
`FeatureView` whose schema, field descriptions and tags come from the aggregations, and records
the whole spec in the view's tags (`feastkit.spec`). `feast apply` publishes it; `feastkit
compute`, the DAGs, materialization, freshness and monitoring read it back from the registry with
`ViewSpec.of(feature_view)`. Nothing else lists views or features.

Feast's own `Aggregation(column, function, time_window)` cannot carry a filter, a derived
feature or a raw event source, and Feast's local engine does not compute aggregations, so the
spec lives in the view's tags and feastkit's window engine computes it (`pipelines.aggregates`).

Semantics (the point-in-time contract):
- On a grid (say hourly), a row stamped T aggregates the entity's events with time in
  [T - window, T): it never sees the event at T or later. Rows are written where a value can
  change plus a heartbeat every midnight while the entity has events in its longest window.
- With `grid=None` the view has one row per distinct event time, and a window holds the events in
  [t - window, t] - the event itself included (what a stream worker pushes after each event).
- Filters (`where`) are DuckDB SQL over the event source's columns, evaluated per event; `ts` is
  the event time as a UTC TIMESTAMP. Derived features are DuckDB SQL over the view's aggregations
  (helpers included) and `event_timestamp` (the row's stamp).
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feastkit.errors import FeastkitError
from feastkit.times import micros

if TYPE_CHECKING:
    from feast import Entity, FeatureView
    from feast.data_source import DataSource

SPEC_TAG = "feastkit.spec"
STREAM_EVENT_ID_TAG = "feastkit.stream_event_id"  # on a stream-fed view: the column identifying an event
STREAM_LOG_TAG = "feastkit.stream_log"  # on a stream-fed view: the folder of the rows the stream worker wrote
SPEC_VERSION = 1
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

# function -> (window engine kind, needs a column, default Feast type name)
FUNCTIONS: dict[str, tuple[str, bool, str]] = {
    "count": ("count", False, "Int64"),
    "sum": ("sum", True, "Float64"),
    "avg": ("avg", True, "Float64"),
    "min": ("min", True, "Float64"),
    "max": ("max", True, "Float64"),
    "std": ("std", True, "Float64"),
    "var": ("var", True, "Float64"),
    "count_distinct": ("distinct", True, "Int64"),
    "approx_count_distinct": ("approx_distinct", True, "Int64"),
    "last": ("last_value", True, "Float64"),
    "last_time": ("last", False, "Float64"),
    "last_n": ("last_n", True, "Array(Float64)"),
}
RESERVED = ("event_timestamp", "ts", "k")


class DeclarationError(FeastkitError):
    """A feature view declaration that cannot be computed; names the view and the field."""


def _declaration_errors_in_one_line(previous: Any) -> Any:
    """An excepthook printing an uncaught DeclarationError as one line (`feast apply` imports the
    repo and would otherwise show a stack trace), and anything else as before."""

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if isinstance(exc, DeclarationError):
            sys.stderr.write(f"error: {exc.message}\n")
        else:
            previous(exc_type, exc, tb)

    hook.feastkit = True  # type: ignore[attr-defined]
    return hook


if not getattr(sys.excepthook, "feastkit", False):
    sys.excepthook = _declaration_errors_in_one_line(sys.excepthook)


def duration_text(us: int) -> str:
    """A window in the shortest exact unit: 10m, 6h, 14d, 90s."""
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        if us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"


@dataclass(frozen=True)
class Aggregation:
    """One windowed aggregation of raw events: `function` of `column` over `window`, `where` filtered.

    functions: count, sum, avg, min, max, std, var (sample), count_distinct, approx_count_distinct
    (HyperLogLog, about 1.6 % standard error), last (latest value of `column`), last_time
    (time of the latest event: epoch seconds as a feature, a timestamp inside derived
    expressions), last_n (the `n` latest values of `column`, newest first).
    `events` picks the event source when the view has several (default: the first).
    """

    name: str
    function: str
    window: timedelta
    column: str | None = None
    where: str | None = None
    events: Any = None
    n: int | None = None
    dtype: Any = None
    description: str = ""
    default: str | None = None


@dataclass(frozen=True)
class Derived:
    """A feature computed from the view's aggregations by a DuckDB SQL expression (or, in a
    `reference_view`, from the raw row's columns)."""

    name: str
    expression: str
    dtype: Any = None
    description: str = ""
    default: str | None = None


@functools.cache
def _declared_view_class() -> type:
    """Feast's FeatureView, compared without the registry's materialization intervals.

    Feast's `FeatureView.__eq__` also compares `materialization_intervals`, state the registry
    records at each materialization, never part of a definition: after any materialization
    `feast plan` reported the view as updated although nothing changed. A declared view compares
    equal to its applied self whatever has been materialized; everything else is Feast's.
    """
    from feast import FeatureView

    class DeclaredFeatureView(FeatureView):
        def __eq__(self, other: object) -> bool:
            if not isinstance(other, FeatureView):
                return NotImplemented
            mine = self.materialization_intervals
            self.materialization_intervals = other.materialization_intervals
            try:
                return super().__eq__(other)
            finally:
                self.materialization_intervals = mine

        def __ne__(self, other: object) -> bool:
            equal = self.__eq__(other)
            return equal if equal is NotImplemented else not equal

        __hash__ = FeatureView.__hash__

    return DeclaredFeatureView


def _type_name(dtype: Any) -> str:
    return str(dtype) if dtype is not None else ""


def _feast_type(name: str) -> Any:
    from feast import types

    match = re.fullmatch(r"Array\((\w+)\)", name)
    if match:
        return types.Array(getattr(types, match.group(1)))
    return getattr(types, name)


@dataclass(frozen=True)
class EventSource:
    """A raw event table the spec reads: its Feast source name, clean table and timestamp column."""

    name: str
    table: str
    timestamp: str


@dataclass(frozen=True)
class AggregationSpec:
    name: str
    function: str
    window_us: int
    column: str | None
    where: str | None
    source: str
    n: int | None
    dtype: str
    feature: bool

    @property
    def kind(self) -> str:
        return FUNCTIONS[self.function][0]

    def describe(self) -> str:
        what = f"{self.function}({self.column or ''})"
        if self.n:
            what = f"{self.function}({self.column}, n={self.n})"
        text = f"{what} of {self.source} over {duration_text(self.window_us)}"
        return text + (f" where {self.where}" if self.where else "")


@dataclass(frozen=True)
class FeatureSpec:
    """An output feature: an aggregation's value (expression None) or a derived SQL expression."""

    name: str
    dtype: str
    expression: str | None = None


@dataclass(frozen=True)
class ViewSpec:
    """What `feastkit compute` needs to build one feature table, as recorded in the registry."""

    name: str
    kind: str                    # "windowed" or "reference"
    entity_key: str
    sources: tuple[EventSource, ...]
    grid_us: int                 # 0: a row per event time (windows include the event itself)
    lookback_us: int
    aggregations: tuple[AggregationSpec, ...] = ()
    features: tuple[FeatureSpec, ...] = ()
    definition: str = field(default="", compare=False)

    @property
    def grid(self) -> timedelta:
        return timedelta(microseconds=self.grid_us)

    @property
    def lookback(self) -> timedelta:
        return timedelta(microseconds=self.lookback_us)

    @property
    def row_timestamp(self) -> str:
        """`window_end` rows belong to the interval (start, end]; `event_time` rows to [start, end)."""
        return "window_end" if self.grid_us > 0 else "event_time"

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def digest(self) -> str:
        """A hash of everything that decides the table's values (not descriptions): the definition."""
        import hashlib

        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        body = {"version": SPEC_VERSION, "kind": self.kind, "entity_key": self.entity_key,
                "sources": [s.__dict__ for s in self.sources], "grid_us": self.grid_us,
                "lookback_us": self.lookback_us,
                "aggregations": [a.__dict__ for a in self.aggregations],
                "features": [f.__dict__ for f in self.features]}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, name: str, text: str) -> ViewSpec:
        try:
            body = json.loads(text)
            if body.get("version") != SPEC_VERSION:
                raise ValueError(f"spec version {body.get('version')}, this feastkit reads {SPEC_VERSION}")
            return cls(name=name, kind=body["kind"], entity_key=body["entity_key"],
                       sources=tuple(EventSource(**s) for s in body["sources"]), grid_us=body["grid_us"],
                       lookback_us=body["lookback_us"],
                       aggregations=tuple(AggregationSpec(**a) for a in body["aggregations"]),
                       features=tuple(FeatureSpec(**f) for f in body["features"]), definition=text)
        except (ValueError, KeyError, TypeError) as exc:
            raise DeclarationError(f"feature view '{name}': its {SPEC_TAG} tag cannot be read ({exc})",
                                   "declare the view with feastkit.declarations and run `feast apply`") from None

    @classmethod
    def of(cls, view: FeatureView) -> ViewSpec | None:
        """The spec recorded on an applied feature view, or None for a view feastkit does not compute."""
        text = (view.tags or {}).get(SPEC_TAG)
        return cls.from_json(view.name, text) if text else None

    def feature_definition(self, feature: str) -> dict[str, Any]:
        """What one feature's values depend on (for model fingerprints): its own aggregation or
        expression with the aggregations it reads, the grid and the sources."""
        by_name = {a.name: a for a in self.aggregations}
        spec = next((f for f in self.features if f.name == feature), None)
        if spec is None:
            return {}
        if spec.expression is None:
            used = [by_name[feature]] if feature in by_name else []
        else:
            words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", spec.expression))
            used = [a for a in self.aggregations if a.name in words]
        sources = sorted({a.source for a in used} or {s.name for s in self.sources})
        return {"kind": self.kind, "grid_us": self.grid_us, "expression": spec.expression,
                "aggregations": [a.__dict__ for a in used],
                "sources": [s.__dict__ for s in self.sources if s.name in sources]}


def specs_of(views: Sequence[FeatureView]) -> list[ViewSpec]:
    """The specs of the views feastkit computes, in the registry's order (by name)."""
    found = [(v.name, ViewSpec.of(v)) for v in views]
    return [spec for _, spec in sorted(found, key=lambda p: p[0]) if spec is not None]


# Declaring ------------------------------------------------------------------------------------


def _settings_dirs() -> tuple[Path, Path]:
    from feastkit.settings import get_settings

    settings = get_settings()
    return settings.clean_dir, settings.features_dir


def stream_log_dir(view_name: str) -> Path:
    """Where the stream worker logs a stream-fed view's rows (next to the feature tables; read by
    the ASOF offline store with the view's table, so training sees what the stream served)."""
    from feastkit.settings import get_settings

    return get_settings().stream_log_dir / view_name


def stream_log_files(folder: Path) -> list[Path]:
    """The part files the stream worker has written under a view's log folder, sorted."""
    return sorted(Path(folder).glob("date=*/part-*.parquet"))


def _file_source(name: str, path: Path, timestamp_field: str, description: str) -> DataSource:
    """A Feast source over parquet files: a `FileSource`, or a `SparkSource` when the selected
    profile's offline store is Feast's Spark store (which reads SparkSources only)."""
    from feastkit.settings import get_settings

    if get_settings().offline_store_type == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=name, path=str(path), file_format="parquet", timestamp_field=timestamp_field,
                           description=description)
    from feast import FileSource
    from feast.data_format import ParquetFormat

    return FileSource(name=name, path=str(path), file_format=ParquetFormat(), timestamp_field=timestamp_field,
                      description=description)


def clean_events(name: str, timestamp_field: str = "event_timestamp", description: str = "",
                 table: str | None = None) -> DataSource:
    """A Feast source over a clean event table (`<FEASTKIT_DATA_DIR>/clean/<table>.parquet`).

    The path is absolute, resolved from FEASTKIT_DATA_DIR when the repo is applied, so `feast
    apply` inside feature_repo/, the CLI and scheduler workers all name the same file. The source
    is a `FileSource`, or a `SparkSource` under a profile whose offline store is Feast's Spark store.
    """
    clean_dir, _ = _settings_dirs()
    return _file_source(name, clean_dir / f"{table or name}.parquet", timestamp_field,
                        description or f"Clean {table or name} events (written by `feastkit validate`).")


def feature_table(view_name: str) -> DataSource:
    """The source over the day files `feastkit compute` writes for a view (see `clean_events`)."""
    _, features_dir = _settings_dirs()
    return _file_source(f"{view_name}_source", features_dir / view_name / "*.parquet", "event_timestamp",
                        f"Feature table {view_name}, computed by `feastkit compute`.")


def _event_source(view: str, source: Any) -> EventSource:
    if not is_file_source(source):
        raise DeclarationError(f"feature view '{view}': event source {getattr(source, 'name', source)!r} is "
                               "not a file source over a clean table", "declare it with clean_events('<table>')")
    if not source.timestamp_field:
        raise DeclarationError(f"feature view '{view}': event source '{source.name}' has no timestamp_field",
                               "set the column that holds each event's time")
    return EventSource(source.name, Path(source.path).name.removesuffix(".parquet"), source.timestamp_field)


def is_file_source(source: Any) -> bool:
    """Whether `source` is a Feast source over files: a `FileSource`, or a `SparkSource` with a path."""
    from feast import FileSource

    # imports no pyspark: usable without the spark extra
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    if isinstance(source, FileSource):
        return True
    return isinstance(source, SparkSource) and bool(source.path) and not source.query


def _check_name(view: str, name: str, seen: set[str], entity_key: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
        raise DeclarationError(f"feature view '{view}': feature name {name!r} is not a SQL identifier",
                               "use letters, digits and underscores, starting with a letter")
    if name in seen:
        raise DeclarationError(f"feature view '{view}': duplicate name '{name}'",
                               "give every feature and helper aggregation its own name")
    if name in (*RESERVED, entity_key):
        raise DeclarationError(f"feature view '{view}': feature name '{name}' is reserved",
                               "rename the feature")
    seen.add(name)


def _aggregation_spec(view: str, agg: Aggregation, sources: list[EventSource], source_names: dict[int, str],
                      lookback_us: int | None, feature: bool) -> AggregationSpec:
    where = f"feature view '{view}', feature '{agg.name}'"
    if agg.function not in FUNCTIONS:
        raise DeclarationError(f"{where}: unsupported function {agg.function!r}",
                               f"use one of {', '.join(FUNCTIONS)}")
    _, needs_column, default_type = FUNCTIONS[agg.function]
    if needs_column and not agg.column:
        raise DeclarationError(f"{where}: {agg.function} needs a column", "pass column='<event column>'")
    if agg.function == "last_n" and (not isinstance(agg.n, int) or not 1 <= agg.n <= 1000):
        raise DeclarationError(f"{where}: last_n needs n between 1 and 1000", "pass n=10, for example")
    if not isinstance(agg.window, timedelta) or agg.window <= timedelta(0):
        raise DeclarationError(f"{where}: window must be a positive timedelta", "pass window=timedelta(days=7)")
    window_us = micros(agg.window)
    if lookback_us is not None and window_us > lookback_us:
        raise DeclarationError(f"{where}: window {duration_text(window_us)} is longer than the view's lookback "
                               f"{duration_text(lookback_us)}", "shorten the window or raise lookback=")
    if agg.events is None:
        source = sources[0].name
    else:
        source = source_names.get(id(agg.events)) or getattr(agg.events, "name", agg.events)
        if source not in {s.name for s in sources}:
            raise DeclarationError(f"{where}: events={source!r} is not one of the view's event sources",
                                   f"choose from {[s.name for s in sources]}")
    dtype = _type_name(agg.dtype) or default_type
    return AggregationSpec(agg.name, agg.function, window_us, agg.column, agg.where, source, agg.n, dtype, feature)


def _field(name: str, dtype: str, description: str, default: str | None, aggregation: str | None) -> Any:
    from feast import Field

    tags = {}
    if default is not None:
        tags["default"] = str(default)
    if aggregation:
        tags["aggregation"] = aggregation
    return Field(name=name, dtype=_feast_type(dtype), description=description, tags=tags)


def windowed_view(*, name: str, entity: Entity, events: Any, features: Sequence[Aggregation | Derived],
                  helpers: Sequence[Aggregation] = (), grid: timedelta | None = HOUR, ttl: timedelta,
                  lookback: timedelta | None = None, push_source: str | None = None,
                  stream_event_id: str | None = None,
                  freshness_sla: str | None = None, description: str = "", owner: str = "",
                  tags: dict[str, str] | None = None, online: bool = True) -> FeatureView:
    """A Feast FeatureView of windowed aggregates of raw events, with its spec in the registry.

    `grid`: rows on this grid (a divisor of a day: 1h, 1d, ...) or None for one row per event time.
    `helpers`: aggregations computed only for derived features. `lookback`: the longest window
    allowed (default: the longest declared), i.e. how much history each run reads.
    `push_source`: also accept fresh rows through a Feast PushSource of this name.
    `stream_event_id`: the event column that identifies an event (a transaction id): the view is
    stream-fed, and `feastkit stream` keeps it fresh from the event stream, deduplicating on it.
    Needs `grid=None` and a `push_source` (the worker writes through it).
    """
    from feast import PushSource

    if not features:
        raise DeclarationError(f"feature view '{name}' declares no features", "add at least one Aggregation")
    raw_sources = list(events) if isinstance(events, list | tuple) else [events]
    if not raw_sources:
        raise DeclarationError(f"feature view '{name}' names no event source", "pass events=clean_events(...)")
    sources = [_event_source(name, s) for s in raw_sources]
    source_names = {id(raw): s.name for raw, s in zip(raw_sources, sources, strict=True)}
    key = entity.join_key
    grid_us = 0 if grid is None else micros(grid)
    if grid is not None and (grid_us <= 0 or 86_400_000_000 % grid_us):
        raise DeclarationError(f"feature view '{name}': grid {grid} does not divide a day",
                               "use a grid such as timedelta(hours=1) or timedelta(days=1), or None")
    lookback_us = None if lookback is None else micros(lookback)
    seen: set[str] = set()
    aggregations: list[AggregationSpec] = []
    outputs: list[FeatureSpec] = []
    fields = []
    for item in [*features, *helpers]:
        _check_name(name, item.name, seen, key)
    for helper in helpers:
        if not isinstance(helper, Aggregation):
            raise DeclarationError(f"feature view '{name}': helper '{helper.name}' is not an Aggregation",
                                   "helpers are aggregations that derived features read")
        aggregations.append(_aggregation_spec(name, helper, sources, source_names, lookback_us, False))
    for item in features:
        if isinstance(item, Aggregation):
            spec = _aggregation_spec(name, item, sources, source_names, lookback_us, True)
            aggregations.append(spec)
            outputs.append(FeatureSpec(item.name, spec.dtype))
            fields.append(_field(item.name, spec.dtype, item.description or spec.describe(), item.default,
                                 spec.describe()))
        elif isinstance(item, Derived):
            if not item.expression or not item.expression.strip():
                raise DeclarationError(f"feature view '{name}', feature '{item.name}': empty expression",
                                       "write a DuckDB SQL expression over the view's aggregations")
            dtype = _type_name(item.dtype) or "Float64"
            outputs.append(FeatureSpec(item.name, dtype, item.expression.strip()))
            fields.append(_field(item.name, dtype, item.description or item.expression.strip(), item.default,
                                 f"derived: {' '.join(item.expression.split())}"))
        else:
            raise DeclarationError(f"feature view '{name}': {item!r} is neither an Aggregation nor Derived",
                                   "declare features with Aggregation(...) or Derived(...)")
    if not aggregations:
        raise DeclarationError(f"feature view '{name}' has no aggregation", "declare at least one Aggregation")
    if stream_event_id is not None and (grid is not None or not push_source or len(sources) != 1):
        raise DeclarationError(f"feature view '{name}': stream_event_id needs grid=None, a push_source and "
                               "one event source", "declare the stream-fed view with one row per event, "
                               "fed by one event source, with push_source='<name>'")
    longest = max(a.window_us for a in aggregations)
    spec = ViewSpec(name, "windowed", key, tuple(sources), grid_us, lookback_us or longest,
                    tuple(aggregations), tuple(outputs))
    table = feature_table(name)
    source: Any = PushSource(name=push_source, batch_source=table,
                             description=f"Fresh rows of {name}, pushed online.") if push_source else table
    all_tags = {**(tags or {}), SPEC_TAG: spec.to_json(), "row_timestamp": spec.row_timestamp}
    if freshness_sla:
        all_tags["freshness_sla"] = freshness_sla
    if stream_event_id is not None:
        all_tags[STREAM_EVENT_ID_TAG] = stream_event_id
        all_tags[STREAM_LOG_TAG] = str(stream_log_dir(name))
    return _declared_view_class()(name=name, entities=[entity], ttl=ttl, schema=fields, source=source,
                                  online=online, description=description, owner=owner, tags=all_tags)


def reference_view(*, name: str, entity: Entity, source: Any, features: Sequence[Derived],
                   ttl: timedelta = timedelta(0), freshness_sla: str | None = None, description: str = "",
                   owner: str = "", tags: dict[str, str] | None = None, online: bool = True) -> FeatureView:
    """A dimension view: one row per raw row (say per user), stamped at the source's timestamp, with
    features as SQL expressions over the raw columns. Rewritten whole by every compute run."""

    event = _event_source(name, source)
    key = entity.join_key
    seen: set[str] = set()
    outputs, fields = [], []
    for item in features:
        _check_name(name, item.name, seen, key)
        if not isinstance(item, Derived):
            raise DeclarationError(f"feature view '{name}', feature '{item.name}': reference views take Derived "
                                   "expressions over the raw row", "use Derived(name, expression, dtype)")
        dtype = _type_name(item.dtype) or "Float64"
        outputs.append(FeatureSpec(item.name, dtype, item.expression.strip()))
        fields.append(_field(item.name, dtype, item.description or item.expression.strip(), item.default,
                             f"derived: {' '.join(item.expression.split())}"))
    spec = ViewSpec(name, "reference", key, (event,), 0, 0, (), tuple(outputs))
    all_tags = {**(tags or {}), SPEC_TAG: spec.to_json(), "row_timestamp": "event_time"}
    if freshness_sla:
        all_tags["freshness_sla"] = freshness_sla
    return _declared_view_class()(name=name, entities=[entity], ttl=ttl, schema=fields,
                                  source=feature_table(name), online=online, description=description,
                                  owner=owner, tags=all_tags)
