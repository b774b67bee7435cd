"""Training-serving skew: online values of sampled entities vs the latest offline values, through Feast."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from feastkit.errors import FeastkitError
from feastkit.times import utc

if TYPE_CHECKING:
    from feast import FeatureStore

REL_TOLERANCE = 1e-6
ABS_TOLERANCE = 1e-9
MAX_EXAMPLES = 5
SAMPLE_LOOKBACK = timedelta(days=30)  # entities sampled among those active this long before the check time


@dataclass
class FeatureSkew:
    """One base feature: how many sampled entities disagree online vs offline, with examples."""

    feature: str                 # feature ref view:feature
    compared: int
    mismatches: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mismatch_rate": self.mismatch_rate}


def same_value(a: Any, b: Any) -> bool:
    """Equal, treating None/NaN alike and floats within a tight tolerance."""
    a_missing = a is None or (isinstance(a, float) and math.isnan(a))
    b_missing = b is None or (isinstance(b, float) and math.isnan(b))
    if a_missing or b_missing:
        return a_missing and b_missing
    try:
        return math.isclose(float(a), float(b), rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)
    except (TypeError, ValueError):
        return a == b


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def sample_entity_keys(clean_dir: Path, join_key: str, n: int, as_of: datetime, seed: int = 0,
                       lookback: timedelta = SAMPLE_LOOKBACK) -> list[int]:
    """Up to n entity keys active in the `lookback` before `as_of` (from the clean event tables)."""
    ids: list[np.ndarray] = []
    lo = pd.Timestamp(as_of - lookback)
    for table in ("transactions", "activity"):
        path = clean_dir / f"{table}.parquet"
        if not path.is_file():
            continue
        import pyarrow.parquet as pq

        if join_key not in pq.read_schema(path).names:
            continue
        frame = pd.read_parquet(path, columns=[join_key, "event_timestamp"])
        recent = frame[(frame["event_timestamp"] >= lo) & (frame["event_timestamp"] < pd.Timestamp(as_of))]
        ids.append(recent[join_key].dropna().astype("int64").unique())
    if not ids:
        raise FeastkitError(f"no clean events with key '{join_key}' in {clean_dir}",
                            "run `feastkit compute` first")
    keys = np.unique(np.concatenate(ids))
    rng = np.random.default_rng(seed)
    if len(keys) > n:
        keys = rng.choice(keys, size=n, replace=False)
    return sorted(int(k) for k in keys)


def view_skew(store: FeatureStore, view_name: str, keys: list[int], as_of: datetime) -> list[FeatureSkew]:
    """Compare one view's online values with Feast's offline values as of `as_of` for these keys.

    Online values older than the view's TTL count as missing, as the server treats them (Feast
    does not apply the TTL online); offline, Feast's point-in-time join applies it.
    """
    view = store.get_feature_view(view_name)
    if len(view.join_keys) != 1:
        raise FeastkitError(f"view '{view_name}' has {len(view.join_keys)} join keys",
                            "skew checks support single-key views")
    key = view.join_keys[0]
    refs = [f"{view_name}:{f.name}" for f in view.features]
    names = [f.name for f in view.features]
    online = store.get_online_features(features=refs, entity_rows=[{key: k} for k in keys]) \
        .to_dict(include_event_timestamps=True)
    entity_df = pd.DataFrame({key: keys, "event_timestamp": pd.Timestamp(as_of)})
    offline = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    offline = entity_df[[key]].merge(offline.drop_duplicates(subset=[key]).drop(columns=["event_timestamp"]),
                                     on=key, how="left")
    ttl = view.ttl.total_seconds() if view.ttl else 0.0
    as_of_epoch = as_of.timestamp()
    out = []
    for name in names:
        stamps = online.get(f"{name}__ts", [None] * len(keys))
        mismatches, examples = 0, []
        for i, k in enumerate(keys):
            value = online[name][i]
            ts = stamps[i]
            if value is not None and ttl and (ts or 0) < as_of_epoch - ttl:
                value = None  # expired: the server would not use it
            offline_value = _plain(offline[name].iloc[i])
            if not same_value(value, offline_value):
                mismatches += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append({key: k, "online": _plain(value), "offline": offline_value,
                                     "online_event_timestamp": (
                                         datetime.fromtimestamp(ts, UTC).isoformat() if ts else None)})
        out.append(FeatureSkew(f"{view_name}:{name}", len(keys), mismatches, examples))
    return out


def service_views(store: FeatureStore, service: str) -> list[str]:
    """The base feature views a feature service reads (directly or through its on-demand views)."""
    from feastkit.services import get_service

    fs = get_service(store, service)
    views = {v.name for v in store.list_feature_views()}
    odfvs = {o.name: o for o in store.list_on_demand_feature_views()}
    out: list[str] = []
    for projection in fs.feature_view_projections:
        names = [projection.name] if projection.name in views else \
            [p.name for p in odfvs[projection.name].source_feature_view_projections.values()]
        out += [n for n in names if n not in out]
    return out


def check_skew(store: FeatureStore, service: str, clean_dir: Path, as_of: datetime | None = None,
               sample_entities: int = 200, seed: int = 0) -> list[FeatureSkew]:
    """Online vs offline values of every base feature the service reads, for sampled entities.

    Each view is compared as of its own materialization end (or `as_of`): the online value must
    then be the one Feast's point-in-time join returns at that instant, unless serving and
    training disagree.
    """
    results: list[FeatureSkew] = []
    empty: list[str] = []
    for view_name in service_views(store, service):
        view = store.get_feature_view(view_name)
        at = as_of or materialized_until(store, [view_name])
        if at is None:
            raise FeastkitError(f"feature view '{view_name}' was never materialized, so there is "
                                "nothing online to compare", "run `feastkit materialize` first")
        keys = sample_entity_keys(clean_dir, view.join_keys[0], sample_entities, at, seed)
        if keys:
            results += view_skew(store, view_name, keys, at)
        else:  # a check that compares nothing must not pass
            empty.append(f"{view_name} (materialized up to {at:%Y-%m-%d %H:%M} UTC)")
    if empty:
        raise FeastkitError(
            f"skew compared nothing for {', '.join(empty)} of '{service}': no entity has clean events in "
            f"the {SAMPLE_LOOKBACK.days} days before that time, so the online values cannot be checked",
            "materialize the intervals the clean data covers (`feastkit materialize --start ... --end ...`; "
            "an interval past the data moves the watermark beyond it)")
    return results


def materialized_until(store: FeatureStore, views: list[str]) -> datetime | None:
    """The latest instant every one of these views has been materialized up to (None if one never was)."""
    ends = []
    for name in views:
        fv = store.get_feature_view(name)
        end = fv.most_recent_end_time
        if end is None:
            return None
        ends.append(utc(end))
    return min(ends) if ends else None
