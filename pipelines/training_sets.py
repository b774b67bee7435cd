"""Training sets: labelled entity frames -> Feast get_historical_features, one row out per row in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from feastkit.errors import FeastkitError

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

log = logging.getLogger(__name__)

ROW_ID = "__feastkit_row"
# Fraud features are taken as of the instant before the transaction: a transaction never sees
# itself (e.g. in the pushed last-10-minute counters), exactly as at scoring time.
AS_OF_OFFSET = pd.Timedelta(microseconds=1)
LABEL_MATURITY = timedelta(days=30)
CHURN_HORIZON = timedelta(days=30)


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


def build_training_set(store: FeatureStore, service_name: str, entity_df: pd.DataFrame,
                       timestamp_column: str = "event_timestamp") -> pd.DataFrame:
    """PIT-correct features for each entity row: same rows, same order, same index as the input.

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
    return result


# Labelled entity frames -------------------------------------------------------------------------

_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def epoch_seconds(timestamps: pd.Series) -> pd.Series:
    """UTC seconds since the epoch, as the request field `transaction_epoch` carries them."""
    return (pd.to_datetime(timestamps, utc=True) - _EPOCH).dt.total_seconds()



def _read(clean_dir: Path, table: str) -> pd.DataFrame:
    path = clean_dir / f"{table}.parquet"
    if not path.is_file():
        raise FeastkitError(f"clean table '{table}' not found at {path}", "run `feastkit compute` first")
    return pd.read_parquet(path)


def fraud_entities(clean_dir: Path, start: datetime | None = None, end: datetime | None = None,
                   label_as_of: datetime | None = None,
                   maturity: timedelta = LABEL_MATURITY) -> pd.DataFrame:
    """One row per transaction in [start, end) labelled with chargebacks known by `label_as_of`.

    Transactions younger than `maturity` at `label_as_of` are left out: their chargebacks may
    not have arrived yet, so "no chargeback" would be a false negative.
    """
    tx = _read(clean_dir, "transactions")
    labels = _read(clean_dir, "fraud_labels")
    label_as_of = pd.Timestamp(label_as_of or tx["event_timestamp"].max())
    labels = labels[labels["label_timestamp"] <= label_as_of]
    cutoff = label_as_of - pd.Timedelta(maturity)
    end_ts = min(pd.Timestamp(end), cutoff) if end is not None else cutoff
    keep = tx["event_timestamp"] < end_ts
    if start is not None:
        keep &= tx["event_timestamp"] >= pd.Timestamp(start)
    tx = tx[keep]
    if tx.empty:
        raise FeastkitError("no transactions with mature labels in the chosen window",
                            "widen the window or generate more days of data")
    return pd.DataFrame({
        "transaction_id": tx["transaction_id"].to_numpy(),
        "user_id": tx["user_id"].to_numpy(),
        "merchant_id": tx["merchant_id"].to_numpy(),
        "event_timestamp": (tx["event_timestamp"] - AS_OF_OFFSET).to_numpy(),
        "amount": tx["amount"].astype("float64").to_numpy(),
        "transaction_epoch": epoch_seconds(tx["event_timestamp"]).to_numpy(),
        "label": tx["transaction_id"].isin(labels["transaction_id"]).astype("int64").to_numpy(),
    }).assign(event_timestamp=lambda d: pd.to_datetime(d["event_timestamp"], utc=True))


def churn_entities(clean_dir: Path, start: datetime | None = None, end: datetime | None = None,
                   every: timedelta = timedelta(days=7), horizon: timedelta = CHURN_HORIZON,
                   active_within: timedelta = timedelta(days=60)) -> pd.DataFrame:
    """Weekly snapshots of active, not-yet-churned users; label = churns within `horizon`.

    Snapshots stop `horizon` before the last event so every label is fully observed.
    """
    users = _read(clean_dir, "users")
    activity = _read(clean_dir, "activity")
    last_event = activity["event_timestamp"].max()
    first = pd.Timestamp(start) if start is not None else activity["event_timestamp"].min() + pd.Timedelta(days=90)
    last = min(pd.Timestamp(end), last_event - pd.Timedelta(horizon)) if end is not None else \
        last_event - pd.Timedelta(horizon)
    snapshots = pd.date_range(first.ceil("D"), last.floor("D"), freq=pd.Timedelta(every), tz="UTC")
    if len(snapshots) == 0:
        raise FeastkitError("no churn snapshot fits in the data",
                            "generate more days of data (need 90 days of history plus the horizon)")
    act = activity[["user_id", "event_timestamp"]].sort_values("event_timestamp")
    rows = []
    for snap in snapshots:
        recent = act[(act["event_timestamp"] < snap) &
                     (act["event_timestamp"] >= snap - pd.Timedelta(active_within))]["user_id"].unique()
        frame = users[users["user_id"].isin(recent)][["user_id", "churn_timestamp"]]
        frame = frame[frame["churn_timestamp"].isna() | (frame["churn_timestamp"] > snap)]
        label = frame["churn_timestamp"].notna() & (frame["churn_timestamp"] <= snap + pd.Timedelta(horizon))
        rows.append(pd.DataFrame({"user_id": frame["user_id"].to_numpy(), "event_timestamp": snap,
                                  "label": label.astype("int64").to_numpy()}))
    return pd.concat(rows, ignore_index=True)
