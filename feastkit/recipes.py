"""Label recipes: the labelled entity frames a feature service is trained on, chosen by its `model` tag.

A feature service names its recipe in the tag `model` (`fraud`: one row per transaction, labelled
by chargebacks known later; `churn`: weekly snapshots of active users, labelled by churn within
30 days). Training and monitoring read the recipe from the registry, so a new service that reuses
a recipe trains, serves and is monitored with no code change.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from feastkit.errors import FeastkitError

if TYPE_CHECKING:
    from feast import FeatureStore

# Fraud features are taken as of the instant before the transaction: a transaction never sees
# itself (e.g. in the pushed last-10-minute counters), exactly as at scoring time.
AS_OF_OFFSET = pd.Timedelta(microseconds=1)
LABEL_MATURITY = timedelta(days=30)
CHURN_HORIZON = timedelta(days=30)
RECIPE_TAG = "model"
RECIPES = ("fraud", "churn")


def recipe_of(store: FeatureStore, service: str) -> str:
    """The label recipe a feature service declares in its `model` tag, or a clear error."""
    from feastkit.services import get_service

    recipe = get_service(store, service).tags.get(RECIPE_TAG)
    if recipe not in RECIPES:
        raise FeastkitError(f"feature service '{service}' names no label recipe (tag {RECIPE_TAG}="
                            f"{recipe!r})", f"tag it with {RECIPE_TAG}= one of {list(RECIPES)} in feature_repo/")
    return recipe


def trainable_services(store: FeatureStore) -> list[str]:
    """Every feature service in the registry that names a label recipe, by name."""
    return sorted(s.name for s in store.list_feature_services() if s.tags.get(RECIPE_TAG) in RECIPES)


def labelled_entities(store: FeatureStore, service: str, clean_dir: Path) -> pd.DataFrame:
    """The labelled entity frame of a service's recipe."""
    recipe = recipe_of(store, service)
    return fraud_entities(clean_dir) if recipe == "fraud" else churn_entities(clean_dir)


def window_entities(store: FeatureStore, service: str, clean_dir: Path, start: datetime,
                    end: datetime) -> pd.DataFrame:
    """The entity rows a model would have scored in [start, end), without labels (for monitoring)."""
    if recipe_of(store, service) == "fraud":
        # every transaction in the window, labelled or not: drift needs no mature labels
        frame = fraud_entities(clean_dir, start, end, label_as_of=end, maturity=timedelta(0))
    else:
        frame = churn_entities(clean_dir, start, end - timedelta(microseconds=1),
                               every=timedelta(days=1), horizon=timedelta(0))
    return frame.drop(columns=["label"], errors="ignore")


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
