"""Online feature reads for a feature service, with the view TTLs applied exactly as training applied them.

Feast does not apply a view's TTL at online retrieval (a value 10 days old comes back for a
view with a 1-day TTL), while historical retrieval does. Here a base feature is served only when
historical retrieval would have joined it at the request's time: stamped at or before that time
and no older than its view's TTL (`event_ts <= as_of <= event_ts + ttl`, in integer
microseconds, as feastkit's offline store compares them). A value stamped after the request's
time (the online store holds the newest value, the request may ask about the past) or older than
the TTL is treated as missing and so listed in `missing_features`. Services whose label recipe
reads features as of the instant before the event (`fraud`: `feastkit.recipes.AS_OF_OFFSET`) are
read online as of that same instant. The on-demand views are then run by Feast
(`OnDemandFeatureView.transform_dict`, the same UDF used offline) on those inputs, so a model
sees online what it saw in training.

Precision: Feast's Redis store keeps event times as protobuf Timestamps (seconds + nanos; they
come back exact to the microsecond); Feast's sqlite store keeps whole seconds (the fraction is
truncated on write), so on sqlite a value stamped mid-second is judged by its whole second.

Reads go through the online store's `online_read` (what `get_online_features` calls underneath)
with the views, join keys and feature names resolved once at start-up: the same keys, values and
timestamps, without re-resolving feature references and building response protos on every
request. With feastkit's Redis store every view is read in one pipelined round trip
(`online_read_many`). `tests/integration/test_online.py` compares both with `get_online_features`.
"""

from __future__ import annotations

import errno
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from feastkit import feast_compat
from feastkit.prediction_log import NOT_FOUND, NULL_VALUE, OUTSIDE_MAX_AGE, PRESENT
from feastkit.recipes import AS_OF_OFFSET, RECIPE_TAG
from feastkit.services import describe_service
from feastkit.times import EPOCH, ONE_MICROSECOND

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView
    from feast.value_type import ValueType


class OnlineStoreUnavailable(RuntimeError):
    """The online store could not be reached (down, unreachable, or timing out).

    `kind` is a fixed phrase safe to show any caller ("timed out", "refused the connection"...);
    the message (`reason`) names the client's error and goes to the log only.
    """

    def __init__(self, reason: str, kind: str = "did not answer") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


# Socket errors that mean "the store cannot be reached", as opposed to a bug or bad data.
_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                   errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                   errno.EHOSTDOWN, errno.ENOTCONN, errno.EADDRNOTAVAIL}
# sqlite errors that mean the file cannot be opened or is held by another writer past the timeout
_SQLITE_UNAVAILABLE = ("unable to open", "database is locked", "database is busy", "disk i/o error")


def unavailable_kind(exc: BaseException) -> str | None:
    """What made the store unreachable ("timed out", ...), or None when `exc` is not a connectivity
    error or timeout (a bug, a corrupt value, a registry mismatch: those are not the store being down).

    The exception and its explicit causes are looked at: redis-py's ConnectionError and
    TimeoutError (and their subclasses: busy loading, no Sentinel master), socket timeouts and
    the socket errnos of an unreachable peer, name resolution failures, and sqlite's "unable to
    open" or "database is locked" (the busy timeout passed).
    """
    try:
        from redis import exceptions as redis_errors
    except ImportError:  # pragma: no cover - redis is a dependency of the redis profile
        redis_errors = None
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, TimeoutError | socket.timeout) or (
                redis_errors is not None and isinstance(seen, redis_errors.TimeoutError)):
            return "timed out"
        if redis_errors is not None and isinstance(seen, redis_errors.ConnectionError | redis_errors.ClusterDownError):
            return "could not be reached"
        if isinstance(seen, socket.gaierror):
            return "could not be resolved"
        if isinstance(seen, ConnectionError) or (isinstance(seen, OSError) and seen.errno in _NETWORK_ERRNOS):
            return "could not be reached"
        if isinstance(seen, sqlite3.OperationalError):
            text = str(seen).lower()
            if any(marker in text for marker in _SQLITE_UNAVAILABLE):
                return "is busy or cannot be opened"
        seen = seen.__cause__
    return None


def missing_table(exc: BaseException) -> bool:
    """Whether `exc` (or an explicit cause) is sqlite's "no such table": Feast drops a view's online
    table in `feast apply` before it commits the registry that no longer has the view."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, sqlite3.OperationalError) and "no such table" in str(seen).lower():
            return True
        seen = seen.__cause__
    return False


class RegistryChanged(StarletteHTTPException):
    """A read failed for a model whose features changed in the registry since it was loaded (a view
    dropped or redefined by `feast apply`): 503 naming the change, not an online-store outage."""

    def __init__(self, reason: str) -> None:
        super().__init__(status_code=503, detail=f"the feature registry changed under this model: {reason}")


@dataclass
class StoreGuard:
    """Fails fast while the online store is known to be down, and lets a probe through after a pause.

    After a failed read, requests get an immediate 503 for `retry_seconds` instead of each one
    waiting for the socket timeout; then the next request (or a /ready probe) tries the store
    again, and one success closes the guard. No restart is needed when the store comes back.
    """

    retry_seconds: float = 1.0
    down_until: float = 0.0
    last_error: str = ""
    last_kind: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self) -> None:
        """Raise OnlineStoreUnavailable without touching the store while it is marked down."""
        if self.down_until and time.monotonic() < self.down_until:
            raise OnlineStoreUnavailable(
                f"{self.last_error} (failing fast; next attempt within {self.retry_seconds:g}s)",
                self.last_kind or "did not answer")

    def failed(self, error: str, kind: str = "") -> None:
        with self._lock:
            self.last_error = error
            self.last_kind = kind
            self.down_until = time.monotonic() + self.retry_seconds

    def unavailable(self, exc: BaseException) -> OnlineStoreUnavailable | None:
        """Open the guard and return the typed error when `exc` is a connectivity error or timeout;
        None (guard untouched) for anything else, which the caller re-raises as it is."""
        kind = unavailable_kind(exc)
        if kind is None:
            return None
        reason = describe_error(exc)
        self.failed(reason, kind)
        return OnlineStoreUnavailable(reason, kind)

    def succeeded(self) -> None:
        if self.down_until:
            with self._lock:
                self.down_until = 0.0
                self.last_error = ""

    @property
    def is_down(self) -> bool:
        return bool(self.down_until)


def describe_error(exc: BaseException) -> str:
    """A short, single-line reason for logs and 503 bodies (never credentials: no config dumps)."""
    text = " ".join(str(exc).split())[:240]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def bound_online_store(store: FeatureStore, timeout_seconds: float) -> None:
    """Bound every online-store call by `timeout_seconds` and never retry inside one request.

    For Redis, Feast builds its client from the connection string, whose `key=value` parts
    become redis-py arguments: missing `socket_timeout`/`socket_connect_timeout` are added here
    (a configured value wins). redis-py retries failed commands 3 times with a backoff of up
    to 10 s by default; the retry here is set to none, so a dead store costs one timeout and
    recovery happens on the next request through a fresh connection.
    """
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig

    config = store.config.online_store
    if not isinstance(config, RedisOnlineStoreConfig):
        return
    parts = config.connection_string.split(",")
    present = {p.split("=", 1)[0].strip() for p in parts if "=" in p}
    for key in ("socket_timeout", "socket_connect_timeout"):
        if key not in present:
            parts.append(f"{key}={timeout_seconds:g}")
    config.connection_string = ",".join(parts)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = feast_compat.redis_client(feast_compat.online_store(store), config)
    if hasattr(client, "set_retry"):
        client.set_retry(Retry(NoBackoff(), 0))


def _epoch_micros(ts: datetime) -> int:
    """Epoch microseconds of an online store's event time, in integers (naive means UTC, as Feast
    returns it from every store)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - EPOCH) // ONE_MICROSECOND


# A join-key value of each type that no entity is expected to have (the /ready probe reads it).
_PROBE_KEYS: dict[str, Any] = {"STRING": "", "BOOL": False, "DOUBLE": -1.0, "FLOAT": -1.0, "BYTES": b""}


@dataclass
class ReadDetail:
    """What a read found per feature and row: event times (epoch µs, None when nothing was found
    or the feature is computed on demand) and Feast's status codes (`feastkit.prediction_log`)."""

    stamps: dict[str, list[int | None]] = field(default_factory=dict)
    status: dict[str, list[int]] = field(default_factory=dict)
    values: dict[str, list[Any]] = field(default_factory=dict)  # the served values, per feature


@dataclass(frozen=True)
class ViewRead:
    """One feature view's part of a service read: the view, its join keys (name, type) and features."""

    view: FeatureView
    join_keys: list[tuple[str, ValueType]]
    features: list[str]


@dataclass
class ServiceReader:
    """Reads one feature service online; built once at start-up (refs parsed once, not per request)."""

    store: FeatureStore
    service: str
    ttl_micros: dict[str, int]           # base feature column -> TTL in microseconds (0 = never expires)
    join_keys: list[str]
    request_fields: list[str]
    odfvs: list[tuple[OnDemandFeatureView, list[str]]]  # (view, its output columns in the service)
    output_columns: list[str]
    view_reads: list[ViewRead]
    guard: StoreGuard = field(default_factory=StoreGuard)
    as_of_offset_micros: int = 0         # read as of this long before the request's time (recipe)
    stale: str = ""                      # why the registry no longer matches this reader ("" = it does)
    live_views: frozenset[str] | None = None  # when stale: the views still in the registry

    @classmethod
    def build(cls, store: FeatureStore, service: str, guard: StoreGuard | None = None) -> ServiceReader:
        # join keys, request fields and output columns: the same reading of the registry as training
        spec = describe_service(store, service)
        views = {v.name: v for v in store.list_feature_views()}
        odfv_by_name = {o.name: o for o in store.list_on_demand_feature_views()}
        ttl: dict[str, int] = {}
        odfvs = []
        by_view: dict[str, list[str]] = {}

        def add_view_features(view_name: str, names: list[str]) -> None:
            view = views[view_name]
            read = by_view.setdefault(view_name, [])
            for name in names:
                if name not in read:
                    read.append(name)
                    ttl[name] = view.ttl // ONE_MICROSECOND if view.ttl else 0

        for projection in store.get_feature_service(service).feature_view_projections:
            names = [f.name for f in projection.features]
            if projection.name in views:
                add_view_features(projection.name, names)
            else:
                odfv = odfv_by_name[projection.name]
                for source in odfv.source_feature_view_projections.values():
                    add_view_features(source.name, [f.name for f in source.features])
                odfvs.append((odfv, names))
        join_keys, request_fields, outputs = spec.join_keys, spec.request_fields, spec.feature_columns
        view_reads = [ViewRead(views[name], [(c.name, c.dtype.to_value_type()) for c in views[name].entity_columns],
                               names) for name, names in by_view.items()]
        recipe = store.get_feature_service(service).tags.get(RECIPE_TAG)
        offset = AS_OF_OFFSET // ONE_MICROSECOND if recipe == "fraud" else 0
        return cls(store, service, ttl, join_keys, request_fields, odfvs, outputs, view_reads,
                   guard or StoreGuard(), offset)

    @property
    def base_refs(self) -> list[str]:
        """The `view:feature` references read for this service (for Feast calls and checks)."""
        return [f"{part.view.name}:{name}" for part in self.view_reads for name in part.features]

    def read(self, rows: list[dict[str, Any]], as_of_epochs: list[float],
             detail: ReadDetail | None = None) -> list[dict[str, Any]]:
        """Feature values per row (None where missing, expired, or stamped after that row's time).

        `as_of_epochs`: each row's request time in UTC epoch seconds (`datetime.timestamp()`;
        microseconds are recovered exactly from such floats for any date of this era). With
        `detail`, each feature's event times and Feast status codes are recorded in it, per row.
        """
        raw = self.read_raw(rows)
        offset = self.as_of_offset_micros
        at_us = [round(at * 1_000_000) - offset for at in as_of_epochs]
        columns: dict[str, list[Any]] = {}
        for name, ttl in self.ttl_micros.items():
            values, stamps = raw.get(name, [None] * len(rows)), raw.get(f"{name}__us", [None] * len(rows))
            if detail is None:
                columns[name] = [
                    None if value is None or ts is None or ts > at or (ttl and ts + ttl < at) else value
                    for value, ts, at in zip(values, stamps, at_us, strict=True)
                ]
                continue
            served, status = [], []
            for value, ts, at in zip(values, stamps, at_us, strict=True):
                code = (NOT_FOUND if ts is None or ts > at else OUTSIDE_MAX_AGE if ttl and ts + ttl < at
                        else NULL_VALUE if value is None else PRESENT)
                served.append(value if code == PRESENT else None)
                status.append(code)
            columns[name] = served
            detail.stamps[name], detail.status[name] = stamps, status
        for odfv, names in self.odfvs:
            inputs = {f: [row.get(f) for row in rows] for f in self.request_fields}
            for source in odfv.source_feature_view_projections.values():
                for feature in source.features:
                    inputs[feature.name] = columns[feature.name]
            result = odfv.transform_dict(inputs)
            for name in names:
                columns[name] = list(result[name])
                if detail is not None:
                    detail.stamps[name] = [None] * len(rows)
                    detail.status[name] = [NULL_VALUE if v is None else PRESENT for v in columns[name]]
        if detail is not None:
            detail.values = columns
        return [{name: columns[name][i] for name in self.output_columns} for i in range(len(rows))]

    def read_raw(self, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """One online read per view for all rows: base feature values and their event times
        (`<feature>__us`: epoch microseconds; `<feature>__ts`: whole epoch seconds, as Feast's
        `to_dict(include_event_timestamps=True)` gives them)."""
        self.guard.check()
        try:
            raw = self._read_views(rows)
        except Exception as exc:  # only an unreachable store opens the guard; a bug stays a bug
            raise self._failure(exc) from exc
        self.guard.succeeded()
        return raw

    def _failure(self, exc: Exception) -> Exception:
        """What a failed read means: the registry changed under this reader (a view dropped or its
        online table gone with a `feast apply` the registry watcher may not have seen yet), the
        store being unreachable (opens the guard), or else the error itself (a bug stays a bug)."""
        if self.stale:
            return RegistryChanged(self.stale)
        if missing_table(exc):
            return RegistryChanged("a view's online table is missing (a `feast apply` dropped or is "
                                   "recreating it); run `feast apply` and `feastkit materialize`")
        down = self.guard.unavailable(exc)
        return exc if down is None else down

    def _read_views(self, rows: list[dict[str, Any]], parts: list[ViewRead] | None = None
                    ) -> dict[str, list[Any]]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
        from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

        provider = feast_compat.provider(self.store)
        config = self.store.config
        parts = self.view_reads if parts is None else parts
        reads = []
        for part in parts:
            names = [name for name, _ in part.join_keys]
            values = [python_values_to_proto_values([row[name] for row in rows], value_type)
                      for name, value_type in part.join_keys]
            keys = [EntityKeyProto(join_keys=names, entity_values=list(key)) for key in zip(*values, strict=True)]
            # copies: Feast's Redis store appends its timestamp field to the list it is given
            reads.append((part.view, keys, list(part.features)))
        read_many = getattr(feast_compat.online_store(self.store), "online_read_many", None)
        if read_many is not None:  # feastkit's Redis store: every view in one round trip
            results = read_many(config, reads)
        else:
            results = [provider.online_read(config=config, table=view, entity_keys=keys, requested_features=features)
                       for view, keys, features in reads]
        raw: dict[str, list[Any]] = {}
        for part, found in zip(parts, results, strict=True):
            micros = [_epoch_micros(ts) if ts is not None and read else None for ts, read in found]
            seconds = [us // 1_000_000 if us is not None else 0 for us in micros]
            for feature in part.features:
                raw[feature] = [None if not read or feature not in read else
                                feast_value_type_to_python_type(read[feature]) for _, read in found]
                raw[f"{feature}__us"] = micros
                raw[f"{feature}__ts"] = seconds
        return raw

    def ping(self) -> None:
        """One cheap read, bypassing the fail-fast guard: raises OnlineStoreUnavailable when the
        store cannot answer, and closes the guard when it can."""
        parts = self.view_reads
        if self.stale and self.live_views is not None:  # a dropped view's table is gone: not an outage
            parts = [part for part in parts if part.view.name in self.live_views]
            if not parts:
                return
        probe = {name: _PROBE_KEYS.get(value_type.name, -1)
                 for part in parts for name, value_type in part.join_keys}
        try:
            self._read_views([probe], parts)
        except Exception as exc:
            failure = self._failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        self.guard.succeeded()
