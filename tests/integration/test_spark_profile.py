"""The spark profile's Feast side: Feast's Spark offline store and Spark compute engine give the local path's results."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from feastkit.recipes import churn_entities, fraud_entities
from feastkit.services import build_training_set, describe_service
from tests.conftest import (
    Deployment,
    copy_repo_definitions,
    make_settings,
    process_timezone,
    redis_contents,
    redis_url,
    require_redis,
)
from tests.integration.test_offline_store import FEATURES, ROW, build_repo

pytestmark = pytest.mark.integration

LOCAL_DB, SPARK_DB = 9, 10  # this module's own Redis databases (flushed)


@pytest.fixture(scope="module")
def spark_store(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The deployment's data applied with the spark profile (its own registry, Redis db SPARK_DB).

    The Spark session is Feast's own, started from the profile's `spark_conf` with the JVM west of
    UTC; it is stopped at the end of the module."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
        get_spark_session_or_start_new_with_repoconfig,
    )

    from feastkit.store import apply_repo, open_store

    require_redis()
    redis.Redis(host="127.0.0.1", port=6379, db=SPARK_DB).flushdb()
    root = tmp_path_factory.mktemp("spark-profile")
    copy_repo_definitions(root / "repo")
    # a copy of the deployment's data: the last test here writes a stream log into it
    shutil.copytree(deployment.settings.data_dir, root / "data", ignore=shutil.ignore_patterns("models"))
    settings = make_settings(root, data_dir=root / "data", profile="spark",
                             redis_connection_string=redis_url(SPARK_DB), spark_buckets=4)
    apply_repo(settings)
    store = open_store(settings)
    with process_timezone("America/Los_Angeles"):
        session = get_spark_session_or_start_new_with_repoconfig(store.config.offline_store)
    assert session.conf.get("spark.sql.session.timeZone") == "UTC"
    yield store, settings
    session.stop()


def test_the_profile_declares_spark_sources_for_feasts_spark_store(spark_store: tuple) -> None:
    store, _ = spark_store
    assert type(store.config.offline_store).__name__ == "SparkOfflineStoreConfig"
    assert type(store.config.batch_engine).__name__ == "SparkComputeEngineConfig"
    kinds = {v.name: type(v.batch_source).__name__ for v in store.list_feature_views()}
    assert set(kinds.values()) == {"SparkSource"}, kinds
    sources = {s.name: type(s).__name__ for s in store.list_data_sources()}
    assert sources["transactions"] == "SparkSource" and sources["user_realtime_push"] == "PushSource", sources


def test_feasts_spark_store_equals_the_asof_store_cell_for_cell(spark_store: tuple, tmp_path: Path) -> None:
    """Random views with TTL boundaries (just in, one microsecond out), created-timestamp ties, a
    field mapping, a TTL of 0, unknown keys, duplicate entity rows and an on-demand view."""
    store, _ = spark_store
    repo = build_repo(tmp_path, spark_conf=dict(store.config.offline_store.spark_conf))
    entities = repo["entities"]
    for features, full_names in ((FEATURES, False), (FEATURES[2:7], True)):
        asof = repo["asof"].get_historical_features(entity_df=entities.copy(), features=features,
                                                    full_feature_names=full_names).to_df()
        spark = repo["spark"].get_historical_features(entity_df=entities.copy(), features=features,
                                                      full_feature_names=full_names).to_df()
        # the differences, as found: Spark returns the rows in another order, and the entity
        # timestamp as naive UTC nanoseconds (the ASOF store keeps the caller's aware column)
        assert len(spark) == len(entities) and spark[ROW].is_unique
        assert spark[ROW].tolist() != entities[ROW].tolist()
        assert str(spark["event_timestamp"].dtype) == "datetime64[ns]"
        spark = spark.sort_values(ROW, kind="stable").reset_index(drop=True)
        spark["event_timestamp"] = spark["event_timestamp"].dt.tz_localize("UTC").astype(
            asof["event_timestamp"].dtype)
        assert list(spark.columns) == list(asof.columns)
        pd.testing.assert_frame_equal(spark, asof)
    assert asof.notna().mean().mean() > 0.5


def test_training_sets_through_the_spark_store_equal_the_asof_stores(spark_store: tuple,
                                                                      deployment: Deployment) -> None:
    """`build_training_set` on the real repo: rows out == rows in, the caller's order and index, the
    service's column order, every cell equal to the default profile's."""
    store, _ = spark_store
    clean = deployment.settings.clean_dir
    for service, entities in (("fraud_detection_v2", fraud_entities(clean)),
                              ("churn_prediction_v1", churn_entities(clean))):
        entities = entities.sample(frac=1.0, random_state=7)  # an order the stores cannot guess
        asof = build_training_set(deployment.store, service, entities)
        spark = build_training_set(store, service, entities)
        assert len(spark) == len(entities)
        assert spark.index.equals(entities.index)
        # Feast's Spark store joins the views in another order; the service's order is kept
        features = describe_service(store, service).feature_columns
        assert list(spark.columns[:len(entities.columns) + len(features)]) == [*entities.columns, *features]
        pd.testing.assert_frame_equal(spark, asof)
        assert spark.notna().mean().mean() > 0.5  # real values, not an all-null frame


def test_materialization_on_feasts_spark_engine_writes_the_local_engines_bytes(
        spark_store: tuple, deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spark's executors write Redis: on the driver every way to pull rows back, and every online
    write, raises; the Redis contents equal the local engine's (the redis profile), byte for byte."""
    from pyspark.sql.classic.dataframe import DataFrame

    from feastkit.online_stores import FastRedisOnlineStore
    from feastkit.store import apply_repo, materialize_servable, open_store

    redis.Redis(host="127.0.0.1", port=6379, db=LOCAL_DB).flushdb()
    copy_repo_definitions(tmp_path / "repo")
    local = make_settings(tmp_path, data_dir=deployment.settings.data_dir, profile="redis",
                          redis_connection_string=redis_url(LOCAL_DB))
    apply_repo(local)
    materialize_servable(local, deployment.data_end, store=open_store(local))
    expected = redis_contents(LOCAL_DB)

    store, settings = spark_store

    def on_the_driver(*_: Any, **__: Any) -> Any:
        raise AssertionError("the driver pulled feature rows or wrote them online itself")

    for name in ("collect", "toPandas", "toArrow", "toLocalIterator", "tail", "take", "_collect_as_arrow"):
        monkeypatch.setattr(DataFrame, name, on_the_driver)
    for name in ("online_write_batch", "online_write_arrow"):
        monkeypatch.setattr(FastRedisOnlineStore, name, on_the_driver)
    reports = materialize_servable(settings, deployment.data_end, store=store)
    monkeypatch.undo()
    assert reports
    written = redis_contents(SPARK_DB)
    assert len(written) == len(expected) > 500
    assert written == expected


def test_a_stream_log_the_spark_store_does_not_read_is_reported(spark_store: tuple, deployment: Deployment,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The stream worker logs the rows it serves; the ASOF store reads them beside the view's table,
    Feast's Spark store reads the table only. A training set on the spark profile says so."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feastkit.declarations import STREAM_LOG_TAG
    from feastkit.services import unread_stream_logs

    store, _ = spark_store
    assert unread_stream_logs(store, "fraud_detection_v2") == {}
    view = store.get_feature_view("user_realtime_activity")
    folder = Path(view.tags[STREAM_LOG_TAG]) / "date=2026-03-21"
    folder.mkdir(parents=True)
    stamp = pd.Timestamp(deployment.data_end).tz_convert("UTC") - pd.Timedelta(minutes=5)
    pq.write_table(pa.table({"user_id": [1], "event_timestamp": [stamp], "created": [stamp],
                             "txn_count_10m": [3], "amount_sum_10m": [120.0]}), folder / "part-0.parquet")
    assert unread_stream_logs(store, "fraud_detection_v2") == {"user_realtime_activity": 1}
    assert unread_stream_logs(store, "churn_prediction_v1") == {}
    assert unread_stream_logs(deployment.store, "fraud_detection_v2") == {}  # the ASOF store reads it
    entities = fraud_entities(deployment.settings.clean_dir).head(20)
    with caplog.at_level("WARNING", logger="feastkit.services"):
        build_training_set(store, "fraud_detection_v2", entities)
    assert "does not read the 1 file(s) the stream worker logged for view 'user_realtime_activity'" in caplog.text
