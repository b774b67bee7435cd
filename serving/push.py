"""Push fresh events into the online (and optionally offline) store through Feast's push sources."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, TypeAdapter, ValidationError

from serving.schemas import INT64_MAX, INT64_MIN, plausible_time

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

_TIMESTAMP = TypeAdapter(AwareDatetime)


class PushRejected(ValueError):
    """Events that do not match the push source's schema; `problems` names each field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _kind(dtype: object) -> str:
    name = str(dtype).lower()
    if "int" in name:
        return "int"
    if "float" in name or "double" in name:
        return "float"
    if "bool" in name:
        return "bool"
    if "timestamp" in name:
        return "timestamp"
    return "str"


@dataclass
class PushTarget:
    """A push source and the columns its feature views need, read from the registry at start-up."""

    name: str
    feature_views: list[str]
    columns: dict[str, str]          # column -> int | float | bool | str | timestamp
    timestamp_field: str
    offline_path: str = ""           # the batch source's file path ("" when it is not a file source)

    @classmethod
    def discover(cls, store: FeatureStore) -> dict[str, PushTarget]:
        from feast.data_source import PushSource

        targets: dict[str, PushTarget] = {}
        views = list(store.list_feature_views()) + list(store.list_stream_feature_views())
        for source in store.list_data_sources():
            if not isinstance(source, PushSource):
                continue
            fed = [v for v in views if isinstance(v.stream_source, PushSource)
                   and v.stream_source.name == source.name]
            if not fed:
                continue
            timestamp_field = source.batch_source.timestamp_field or "event_timestamp"
            columns: dict[str, str] = {}
            for view in fed:
                for col in view.entity_columns:
                    columns[col.name] = _kind(col.dtype)
                for feature in view.features:
                    columns[feature.name] = _kind(feature.dtype)
            columns[timestamp_field] = "timestamp"
            path = getattr(source.batch_source, "path", "") or ""
            targets[source.name] = cls(source.name, sorted(v.name for v in fed), columns,
                                       timestamp_field, path)
        return targets

    def offline_write_problem(self) -> str | None:
        """Why pushing this source `online_and_offline` would damage its offline table, if it would.

        Feast's file offline store appends by reading the batch source's path and writing the
        union back to that same path. For a glob of computed day files (`.../*.parquet`) that
        writes a new file named `*.parquet` holding the whole table, which the glob then reads
        next to the originals: every push would duplicate every row.
        """
        if any(ch in self.offline_path for ch in "*?[") or self.offline_path.endswith("/"):
            return (f"push source '{self.name}' has the batch source path '{self.offline_path}': Feast's "
                    "offline append would rewrite that glob as one new file and duplicate the table")
        return None

    def frame(self, events: list[dict[str, Any]]) -> pd.DataFrame:
        """Validate events against the schema and build the DataFrame Feast's push expects."""
        import pandas as pd

        problems: list[str] = []
        clean: dict[str, list[Any]] = {c: [] for c in self.columns}
        for i, event in enumerate(events):
            where = f"events[{i}]"
            unknown = sorted(set(event) - set(self.columns))
            missing = [c for c in self.columns if c not in event]
            if unknown:
                problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
            if missing:
                problems.append(f"{where}: missing required field(s) {', '.join(missing)}")
            for column, kind in self.columns.items():
                if column not in event:
                    continue
                try:
                    clean[column].append(_coerce(event[column], kind))
                except ValueError as exc:
                    problems.append(f"{where}.{column}: {exc}")
            if len(problems) >= 20:
                problems.append("... (first 20 problems shown)")
                break
        if problems:
            raise PushRejected(problems)
        df = pd.DataFrame(clean)
        df[self.timestamp_field] = pd.to_datetime(df[self.timestamp_field], utc=True)
        for column, kind in self.columns.items():
            if kind == "int":
                df[column] = df[column].astype("int64")
            elif kind == "float":
                df[column] = df[column].astype("float64")
        return df

    def describe(self) -> dict[str, str]:
        return dict(self.columns)


def _coerce(value: Any, kind: str) -> Any:
    if value is None:
        raise ValueError("must not be null")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("out of the 64-bit integer range")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        if not math.isfinite(value) or abs(value) > 1e15:
            raise ValueError("must be a finite number below 1e15 in magnitude")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind == "timestamp":
        if not isinstance(value, str):
            raise ValueError("must be an ISO 8601 timestamp with a timezone")
        try:
            stamp: datetime = _TIMESTAMP.validate_python(value)
        except ValidationError:
            raise ValueError("must be an ISO 8601 timestamp with a timezone") from None
        return plausible_time(stamp)
    if not isinstance(value, str) or len(value) > 256:
        raise ValueError("must be a string of at most 256 characters")
    return value
