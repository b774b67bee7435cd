"""The ASOF offline store equals Feast's stock duckdb store cell for cell, in the caller's row order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, RequestSource
from feast.data_format import ParquetFormat
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String
from feast.value_type import ValueType

from feastkit import feast_compat
from feastkit.offline_stores import STORE_TYPE, AsofDuckDBOfflineStore
from feastkit.recipes import churn_entities, fraud_entities
from feastkit.services import build_training_set
from tests.conftest import Deployment, copy_repo_definitions, make_settings

pytestmark = pytest.mark.integration

ROW = "row_id"
START = datetime(2026, 3, 1, tzinfo=UTC)
DRIVER_TTL = timedelta(hours=6)
TRIP_TTL = timedelta(hours=2)
# microsecond timestamps, as `feastkit compute` writes: Spark 4 refuses nanosecond Parquet times
MICROS: dict[str, Any] = {"coerce_timestamps": "us", "allow_truncated_timestamps": False}


def _feature_rows(rng: np.random.Generator, n: int, keys: np.ndarray, key_name: str) -> pd.DataFrame:
    """Rows on a coarse grid so event timestamps tie often; each tie has distinct created times."""
    ts = START + pd.to_timedelta(rng.integers(0, 3 * 24 * 4, n) * 15, unit="m")
    frame = pd.DataFrame({
        key_name: rng.choice(keys, n),
        "event_timestamp": ts,
        "created": ts + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
    })
    return frame.drop_duplicates([key_name, "event_timestamp", "created"]).reset_index(drop=True)


def _with_nulls(rng: np.random.Generator, values: np.ndarray, share: float = 0.1) -> list[Any]:
    return [None if rng.random() < share else v for v in values.tolist()]


def _entity_frame(rng: np.random.Generator, drivers: pd.DataFrame, trips: pd.DataFrame,
                  n: int) -> pd.DataFrame:
    """Random times, exact TTL boundaries (just in and just out), unknown keys and duplicate rows."""
    random_ts = START + pd.to_timedelta(rng.integers(-2 * 3600, 4 * 86400, n), unit="s")
    picks = drivers.sample(n // 4, random_state=int(rng.integers(1 << 30)), replace=True)
    edges = pd.concat([picks["event_timestamp"] + DRIVER_TTL,  # exactly at the TTL boundary
                       picks["event_timestamp"] + DRIVER_TTL + pd.Timedelta(microseconds=1),
                       picks["event_timestamp"]])  # exactly at the event (and created ties)
    trip_picks = trips.sample(n // 8, random_state=int(rng.integers(1 << 30)), replace=True)
    frame = pd.DataFrame({
        "driver_id": np.concatenate([rng.integers(0, 60, n), np.tile(picks["driver_id"].to_numpy(), 3),
                                     rng.integers(0, 60, len(trip_picks))]),  # 50.. are unknown
        "event_timestamp": pd.to_datetime(np.concatenate([
            random_ts.to_numpy(), edges.to_numpy(),
            (trip_picks["event_timestamp"] + TRIP_TTL).to_numpy()]), utc=True),
    })
    frame["customer_id"] = np.concatenate([
        rng.choice([f"c{i}" for i in range(45)], len(frame) - len(trip_picks)),  # c40.. unknown
        trip_picks["customer_id"].to_numpy()])
    frame["trip_amount"] = rng.normal(20, 5, len(frame)).round(2)
    frame = pd.concat([frame, frame.sample(n // 10, random_state=int(rng.integers(1 << 30)))])
    frame = frame.sample(frac=1.0, random_state=int(rng.integers(1 << 30)))  # no useful order
    frame[ROW] = np.arange(len(frame), dtype="int64")
    frame.index = pd.RangeIndex(len(frame))
    return frame


def build_repo(root: Path, spark_conf: dict[str, str] | None = None) -> dict[str, Any]:
    """A small Feast repo over random parquet: two keys, three views, a field mapping, an ODFV.

    Applied for Feast's stock duckdb store ("stock") and read by the ASOF store ("asof"); with
    `spark_conf`, also applied over SparkSources of the same files for Feast's Spark store ("spark").
    """
    rng = np.random.default_rng(20260301)
    drivers = _feature_rows(rng, 4000, np.arange(50), "driver_id")
    drivers["conv_rate"] = _with_nulls(rng, rng.random(len(drivers)).round(4))
    drivers["trips_today"] = pd.array(_with_nulls(rng, rng.integers(0, 40, len(drivers))), dtype="Int64")
    drivers["city"] = _with_nulls(rng, rng.choice(["ams", "ber", "par"], len(drivers)))
    drivers.to_parquet(root / "drivers.parquet", **MICROS)
    # a second view on the same key, source columns renamed by a field mapping, TTL 0 = no expiry
    ratings = _feature_rows(rng, 1500, np.arange(50), "drv")
    ratings["raw_rating"] = _with_nulls(rng, rng.uniform(1, 5, len(ratings)).round(3))
    ratings = ratings.rename(columns={"event_timestamp": "ts", "created": "loaded_at"})
    ratings.to_parquet(root / "ratings.parquet", **MICROS)
    trips = _feature_rows(rng, 2500, np.array([f"c{i}" for i in range(40)]), "customer_id")
    trips["avg_trip"] = _with_nulls(rng, rng.normal(25, 8, len(trips)).round(3))
    trips["trips_7d"] = rng.integers(0, 30, len(trips))
    trips.to_parquet(root / "trips.parquet", **MICROS)

    def views(kind: type = FileSource) -> list[Any]:
        def source(name: str, ts: str = "event_timestamp", created: str = "created",
                   mapping: dict[str, str] | None = None) -> Any:
            file_format: Any = ParquetFormat() if kind is FileSource else "parquet"
            return kind(name=f"{name}_source", path=str(root / f"{name}.parquet"), file_format=file_format,
                        timestamp_field=ts, created_timestamp_column=created, field_mapping=mapping or {})
        return _views(source)

    def config(offline_store: dict[str, Any], name: str = "registry") -> RepoConfig:
        return RepoConfig(project="asof_test", provider="local", repo_path=str(root),
                          registry=str(root / f"{name}.db"),
                          online_store={"type": "sqlite", "path": str(root / f"{name}_online.db")},
                          offline_store=offline_store, entity_key_serialization_version=3)

    stock = FeatureStore(config=config({"type": "duckdb"}))
    stock.apply(views())
    asof = FeatureStore(config=config({"type": STORE_TYPE}))
    entities = _entity_frame(rng, drivers, trips, 1200)
    out = {"stock": stock, "asof": asof, "entities": entities}
    if spark_conf is not None:
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        out["spark"] = FeatureStore(config=config({"type": "spark", "spark_conf": spark_conf}, "spark_registry"))
        out["spark"].apply(views(SparkSource))
    return out


def _views(source: Any) -> list[Any]:
    """The repo's entities, views, request source and ODFV over `source(name, ...)`'s sources."""
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    driver_stats = FeatureView(
        name="driver_stats", entities=[driver], ttl=DRIVER_TTL, source=source("drivers"),
        schema=[Field(name="driver_id", dtype=Int64), Field(name="conv_rate", dtype=Float64),
                Field(name="trips_today", dtype=Int64), Field(name="city", dtype=String)])
    driver_ratings = FeatureView(
        name="driver_ratings", entities=[driver], ttl=timedelta(0),
        source=source("ratings", ts="event_ts", created="created_ts",
                      mapping={"drv": "driver_id", "raw_rating": "rating", "ts": "event_ts",
                               "loaded_at": "created_ts"}),
        schema=[Field(name="driver_id", dtype=Int64), Field(name="rating", dtype=Float64)])
    customer_trips = FeatureView(
        name="customer_trips", entities=[customer], ttl=TRIP_TTL, source=source("trips"),
        schema=[Field(name="customer_id", dtype=String), Field(name="avg_trip", dtype=Float64),
                Field(name="trips_7d", dtype=Int64)])
    trip_request = RequestSource(name="trip_request", schema=[Field(name="trip_amount", dtype=Float64)])

    @on_demand_feature_view(sources=[trip_request, customer_trips, driver_stats],
                            schema=[Field(name="amount_vs_avg", dtype=Float64),
                                    Field(name="has_rate", dtype=Int64)], mode="python")
    def trip_features(inputs: dict[str, Any]) -> dict[str, Any]:
        ratio = [a / b if b else -1.0 for a, b in zip(inputs["trip_amount"], inputs["avg_trip"], strict=True)]
        return {"amount_vs_avg": ratio,
                "has_rate": [0 if r is None else 1 for r in inputs["conv_rate"]]}

    return [driver, customer, driver_stats, driver_ratings, customer_trips, trip_request, trip_features]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_repo(tmp_path_factory.mktemp("asof-repo"))


FEATURES = ["driver_stats:conv_rate", "driver_stats:trips_today", "driver_stats:city",
            "driver_ratings:rating", "customer_trips:avg_trip", "customer_trips:trips_7d",
            "trip_features:amount_vs_avg", "trip_features:has_rate"]


def _both(repo: dict[str, Any], features: list[str], full_feature_names: bool = False,
          entities: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    entities = repo["entities"] if entities is None else entities
    fast = repo["asof"].get_historical_features(entity_df=entities.copy(), features=features,
                                                full_feature_names=full_feature_names).to_df()
    stock = repo["stock"].get_historical_features(entity_df=entities.copy(), features=features,
                                                  full_feature_names=full_feature_names).to_df()
    # the stock store reorders rows: put it back in the caller's order by the row id
    stock = stock.sort_values(ROW, kind="stable").reset_index(drop=True)
    return fast, stock


def test_the_plugin_is_selected_by_its_type_path(repo: dict[str, Any]) -> None:
    store = repo["asof"]
    assert type(store.config.offline_store).__name__ == "AsofDuckDBOfflineStoreConfig"
    assert isinstance(feast_compat.offline_store(store), AsofDuckDBOfflineStore)


def test_equal_to_the_stock_store_cell_for_cell(repo: dict[str, Any]) -> None:
    fast, stock = _both(repo, FEATURES)
    entities = repo["entities"]
    assert len(fast) == len(entities)
    assert fast[ROW].tolist() == entities[ROW].tolist()  # the caller's order, unsorted
    pd.testing.assert_frame_equal(fast, stock)
    # the data really exercises what the test claims: ties, nulls, expiry, unknown keys
    assert fast["conv_rate"].isna().sum() > 50 and fast["conv_rate"].notna().sum() > 200
    assert fast["avg_trip"].isna().sum() > 50 and fast["avg_trip"].notna().sum() > 100
    unknown = fast["customer_id"].isin([f"c{i}" for i in range(40, 45)]) | (fast["driver_id"] >= 50)
    assert unknown.sum() > 100
    assert fast.loc[fast["customer_id"].isin([f"c{i}" for i in range(40, 45)]), "avg_trip"].isna().all()
    assert fast.loc[fast["driver_id"] >= 50, ["conv_rate", "rating"]].isna().all().all()
    assert fast.duplicated(subset=[c for c in entities.columns if c != ROW]).sum() >= 100


def test_ttl_boundary_is_inclusive_and_one_microsecond_later_expires(repo: dict[str, Any]) -> None:
    entities = repo["entities"]
    fast, stock = _both(repo, ["driver_stats:trips_today", "driver_stats:city"])
    pd.testing.assert_frame_equal(fast, stock)
    drivers = pd.read_parquet(Path(repo["stock"].config.repo_path) / "drivers.parquet")
    latest = drivers.sort_values(["event_timestamp", "created"]).groupby("driver_id").tail(1)
    at_edge = entities.merge(latest, on="driver_id", suffixes=("", "_f"))
    at_edge = at_edge[at_edge["event_timestamp"] == at_edge["event_timestamp_f"] + DRIVER_TTL]
    assert len(at_edge) > 0  # some entity rows sit exactly on the last row's TTL boundary
    rows = fast.set_index(ROW).loc[at_edge[ROW]]
    assert (rows["city"].fillna("<null>").to_numpy() == at_edge["city"].fillna("<null>").to_numpy()).all()
    # alone, a boundary row is also the earliest entity time: the row it sees must not be pruned
    alone = at_edge[at_edge["city"].notna()].head(1)
    fast, stock = _both(repo, ["driver_stats:city"],
                        entities=alone[list(entities.columns)].reset_index(drop=True))
    pd.testing.assert_frame_equal(fast, stock)
    assert fast["city"].tolist() == alone["city"].tolist()


def test_full_feature_names_and_a_subset_of_views(repo: dict[str, Any]) -> None:
    features = ["customer_trips:trips_7d", "driver_ratings:rating", "trip_features:has_rate",
                "driver_stats:conv_rate"]
    fast, stock = _both(repo, features, full_feature_names=True)
    assert "customer_trips__trips_7d" in fast.columns and "trip_features__has_rate" in fast.columns
    pd.testing.assert_frame_equal(fast, stock)


def test_created_timestamp_ties_pick_the_newer_row(repo: dict[str, Any]) -> None:
    drivers = pd.read_parquet(Path(repo["stock"].config.repo_path) / "drivers.parquet")
    tied = drivers[drivers.duplicated(["driver_id", "event_timestamp"], keep=False)]
    assert len(tied) > 100
    newest = tied.sort_values("created").groupby(["driver_id", "event_timestamp"]).tail(1)
    entities = newest[["driver_id", "event_timestamp"]].assign(
        customer_id="c1", trip_amount=1.0, **{ROW: np.arange(len(newest))}).reset_index(drop=True)
    fast, stock = _both(repo, ["driver_stats:conv_rate", "driver_stats:trips_today"], entities=entities)
    pd.testing.assert_frame_equal(fast, stock)
    expected = newest["trips_today"].astype("float64").to_numpy()
    assert np.array_equal(fast["trips_today"].to_numpy(dtype="float64"), expected, equal_nan=True)


def test_real_training_sets_equal_the_stock_store(deployment: Deployment, tmp_path: Path) -> None:
    """fraud_detection_v2 and churn_prediction_v1 on the real repo: the default (ASOF) store vs
    Feast's own duckdb store (profiles/stock-duckdb.yaml)."""
    from feastkit.store import apply_repo, open_store

    copy_repo_definitions(tmp_path / "repo")
    settings = make_settings(tmp_path, data_dir=deployment.settings.data_dir, profile="stock-duckdb")
    apply_repo(settings)
    reference = open_store(settings)
    asof = deployment.store
    assert type(asof.config.offline_store).__name__ == "AsofDuckDBOfflineStoreConfig"
    clean = deployment.settings.clean_dir
    for service, entities in (("fraud_detection_v2", fraud_entities(clean)),
                              ("churn_prediction_v1", churn_entities(clean))):
        fast = build_training_set(asof, service, entities)
        stock = build_training_set(reference, service, entities)
        assert len(fast) == len(entities)
        pd.testing.assert_frame_equal(fast, stock)
        assert fast.notna().mean().mean() > 0.5  # real values, not an all-null frame
