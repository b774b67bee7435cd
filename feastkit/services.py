"""Feature services as the registry describes them, and point-in-time retrieval with one row out per row in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from feastkit.errors import FeastkitError

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

log = logging.getLogger(__name__)

ROW_ID = "__feastkit_row"


@dataclass(frozen=True)
class ServiceSpec:
    """What a feature service needs from the caller: join keys, request fields, output feature columns."""

    name: str
    join_keys: list[str]
    request_fields: list[str]
    feature_refs: list[str]

    @property
    def feature_columns(self) -> list[str]:
        return [ref.split(":", 1)[1] for ref in self.feature_refs]


def get_service(store: FeatureStore, name: str) -> FeatureService:
    """The named feature service, or a clear error listing the ones that exist."""
    try:
        return store.get_feature_service(name)
    except Exception:
        names = sorted(s.name for s in store.list_feature_services())
        if not names:
            raise FeastkitError("the feature registry has no feature services",
                                "run `feastkit apply` first") from None
        raise FeastkitError(f"unknown feature service '{name}'", f"choose one of {names}") from None


def describe_service(store: FeatureStore, name: str) -> ServiceSpec:
    """Join keys, request fields and ordered feature refs of a feature service, from the registry."""
    service = get_service(store, name)
    join_keys: list[str] = []
    request_fields: list[str] = []
    refs: list[str] = []
    odfvs = {o.name: o for o in store.list_on_demand_feature_views()}
    views = {v.name: v for v in store.list_feature_views()}
    for projection in service.feature_view_projections:
        refs += [f"{projection.name_to_use()}:{f.name}" for f in projection.features]
        if projection.name in views:
            for key in views[projection.name].join_keys:
                if key not in join_keys:
                    join_keys.append(key)
        elif projection.name in odfvs:
            odfv = odfvs[projection.name]
            for source in odfv.source_request_sources.values():
                request_fields += [f.name for f in source.schema if f.name not in request_fields]
            for fv_projection in odfv.source_feature_view_projections.values():
                for key in views[fv_projection.name].join_keys:
                    if key not in join_keys:
                        join_keys.append(key)
    columns = [r.split(":", 1)[1] for r in refs]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise FeastkitError(f"feature service '{name}' has clashing feature names {dupes}",
                            "rename the features or project them with distinct names")
    return ServiceSpec(name, join_keys, request_fields, refs)


def unread_stream_logs(store: FeatureStore, service_name: str) -> dict[str, int]:
    """Per stream-fed view of the service, the number of stream log files the configured offline
    store will not read: every logged file unless the store is feastkit's ASOF store, which reads
    them beside the view's table (the stream worker serves those values; training should see them)."""
    from feastkit.declarations import STREAM_LOG_TAG, stream_log_files

    if type(store.config.offline_store).__name__ == "AsofDuckDBOfflineStoreConfig":
        return {}
    views = {v.name: v for v in store.list_feature_views()}
    out = {}
    for projection in get_service(store, service_name).feature_view_projections:
        view = views.get(projection.name)
        folder = (view.tags or {}).get(STREAM_LOG_TAG) if view is not None else None
        files = len(stream_log_files(folder)) if folder else 0
        if files:
            out[projection.name] = files
    return out


def build_training_set(store: FeatureStore, service_name: str, entity_df: pd.DataFrame,
                       timestamp_column: str = "event_timestamp") -> pd.DataFrame:
    """PIT-correct features for each entity row: same rows, same order, same index as the input,
    the input's columns first, then the service's features in the service's order, then any other
    column Feast returns (an on-demand view's inputs).

    Feast's offline stores differ in row order and some drop or duplicate rows (the dask
    `file` store drops keys without a feature row in the TTL window). Whatever the store,
    the result here has exactly one row per input row, in the caller's order, with nulls
    where no feature value was valid at that time.
    """
    spec = describe_service(store, service_name)
    needed = [*spec.join_keys, *spec.request_fields, timestamp_column]
    missing = [c for c in needed if c not in entity_df.columns]
    if missing:
        raise FeastkitError(f"entity frame for '{service_name}' lacks column(s) {missing}",
                            f"provide {needed} (request fields are the transaction's own values)")
    if entity_df[timestamp_column].isna().any():
        raise FeastkitError(f"{int(entity_df[timestamp_column].isna().sum())} entity row(s) have no "
                            f"{timestamp_column}", "drop or fill them before building a training set")
    if entity_df.empty:
        raise FeastkitError("the entity frame is empty", "pass at least one labelled row")
    frame = entity_df.copy()
    frame[timestamp_column] = pd.to_datetime(frame[timestamp_column], utc=True)
    original_index = frame.index
    frame[ROW_ID] = np.arange(len(frame), dtype="int64")
    if timestamp_column != "event_timestamp":
        frame = frame.rename(columns={timestamp_column: "event_timestamp"})
    features = get_service(store, service_name)
    for view, files in unread_stream_logs(store, service_name).items():
        log.warning("training set for '%s': the offline store %s does not read the %d file(s) the stream "
                    "worker logged for view '%s'; their values are missing from the training set (the "
                    "default profile's ASOF store reads them)", service_name,
                    type(store.config.offline_store).__name__.removesuffix("Config"), files, view)
    result = store.get_historical_features(entity_df=frame, features=features).to_df()
    result = result.drop_duplicates(subset=[ROW_ID], keep="first")
    if len(result) != len(frame):
        log.warning("offline store returned %d of %d entity rows; restoring the missing ones as nulls",
                    len(result), len(frame))
    result = frame[[ROW_ID]].merge(result.drop(columns=[c for c in frame.columns if c != ROW_ID]),
                                   on=ROW_ID, how="left")
    result = pd.concat([frame.drop(columns=[ROW_ID]).reset_index(drop=True),
                        result.drop(columns=[ROW_ID]).reset_index(drop=True)], axis=1)
    if timestamp_column != "event_timestamp":
        result = result.rename(columns={"event_timestamp": timestamp_column})
    result.index = original_index
    absent = [c for c in spec.feature_columns if c not in result.columns]
    if absent:
        raise RuntimeError(f"Feast returned no column(s) {absent} for '{service_name}'")
    # the caller's columns, the service's features in its order, then what else Feast returned (an
    # on-demand view's inputs), whatever order the store joined the views in (Feast's Spark store
    # joins them in another order than the duckdb stores)
    features = list(spec.feature_columns)
    leading = [c for c in entity_df.columns if c in result.columns and c not in features]
    rest = [c for c in result.columns if c not in features and c not in leading]
    return result[leading + features + rest]
