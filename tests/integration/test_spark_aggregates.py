"""The spark profile's batch plane: windowed views computed on Spark (local mode) equal the local engine's, value for value."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feastkit.errors import FeastkitError
from pipelines.aggregates import compute_features, default_range
from pipelines.synthetic import SyntheticConfig, generate, write
from pipelines.validation import validate_all
from tests.conftest import (
    REPO_ROOT,
    copy_repo_definitions,
    make_settings,
    process_timezone,
    repo_specs,
    settings_env,
)

pytestmark = pytest.mark.integration

TINY = SyntheticConfig(n_users=300, n_merchants=20, days=20, seed=3, start=datetime(2026, 1, 1, tzinfo=UTC))
SPECS = repo_specs(REPO_ROOT / "feature_repo")
WINDOWED = sorted(s.name for s in SPECS if s.kind != "reference")


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spark-events")
    write(generate(TINY), root / "raw")
    validate_all(root / "raw", root / "clean", root / "quarantine", as_of=TINY.end + timedelta(days=90))
    return root / "clean"


@pytest.fixture(scope="module")
def local_tables(clean_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every view over the whole history, by the local engine: what Spark must reproduce."""
    features = tmp_path_factory.mktemp("local-features")
    compute_features(SPECS, clean_dir, features)
    return features


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    """One local Spark session for the module, its JVM and Python workers started west of UTC."""
    from pipelines.spark_windows import spark_session

    with process_timezone("America/Los_Angeles"):
        session = spark_session("local[2]", shuffle_partitions=4)
        yield session
        session.stop()


def day_files(features: Path, view: str) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted((features / view).glob("*.parquet"))}


def in_key_order(table: pa.Table) -> pa.Table:
    return table.sort_by([(table.column_names[0], "ascending"), ("event_timestamp", "ascending")])


def assert_same_tables(got: Path, expected: Path) -> None:
    """The same day files, each with the same schema (nullability and all) and the same rows, every
    value bit for bit. Only the order of rows inside a file may differ: the local run's partitioned
    COPY writes a day's rows in the order its threads reach them."""
    for view in WINDOWED:
        want = {f.name: f for f in sorted((expected / view).glob("*.parquet"))}
        assert want, view
        have = {f.name: f for f in sorted((got / view).glob("*.parquet"))}
        assert sorted(have) == sorted(want), view
        for name, path in want.items():
            a, b = pq.read_table(have[name]), pq.read_table(path)
            assert a.schema.equals(b.schema, check_metadata=True), f"{view}/{name}: {a.schema} != {b.schema}"
            assert in_key_order(a).equals(in_key_order(b)), f"{view}/{name}: rows differ"


def test_a_full_run_on_spark_writes_the_local_engines_day_files(
        spark: object, clean_dir: Path, local_tables: Path, tmp_path: Path) -> None:
    """Over 7 entity buckets (the incremental test uses 3, the CLI 4), every windowed view's day files
    hold the local run's rows, and the rows counted are the rows written."""
    buckets = 7
    from pipelines.spark_windows import SparkWindowEngine

    local = compute_features(SPECS, clean_dir, tmp_path / "again", views=WINDOWED)
    report = compute_features(SPECS, clean_dir, tmp_path / "spark", views=WINDOWED,
                              engine=SparkWindowEngine(spark, buckets))
    assert report.rows == local.rows and all(n > 0 for n in report.rows.values())
    assert report.files == local.files
    assert_same_tables(tmp_path / "spark", local_tables)
    # nothing of Spark's is left beside the day files
    assert not [p for p in (tmp_path / "spark").rglob("*") if "spark-" in p.name or ".staging-" in p.name]


def sorted_rows(features: Path, view: str) -> pa.Table:
    return in_key_order(pa.concat_tables([pq.read_table(f) for f in sorted((features / view).glob("*.parquet"))]))


def test_incremental_runs_on_spark_write_what_local_incremental_runs_write(
        spark: object, clean_dir: Path, local_tables: Path, tmp_path: Path) -> None:
    """Intervals computed one after another into the existing tables (an hour ending at midnight,
    an ordinary hour, the rest): on Spark, the rows the local engine writes for the same runs, and
    the rows of one run over the whole history."""
    from pipelines.spark_windows import SparkWindowEngine

    engine = SparkWindowEngine(spark, 3)
    lo, hi = default_range(SPECS, clean_dir)
    midnight = datetime.combine(hi.date() - timedelta(days=3), datetime.min.time(), UTC)
    cuts = [lo, midnight - timedelta(hours=1), midnight, midnight + timedelta(hours=13), hi]
    for a, b in zip(cuts, cuts[1:], strict=False):
        compute_features(SPECS, clean_dir, tmp_path / "local", a, b, views=WINDOWED)
        compute_features(SPECS, clean_dir, tmp_path / "spark", a, b, views=WINDOWED, engine=engine)
    assert_same_tables(tmp_path / "spark", tmp_path / "local")
    for view in WINDOWED:
        assert sorted_rows(tmp_path / "spark", view).equals(sorted_rows(local_tables, view)), view


def test_a_bucket_count_below_one_is_refused(spark: object) -> None:
    from pipelines.spark_windows import SparkWindowEngine

    with pytest.raises(FeastkitError, match="FEASTKIT_SPARK_BUCKETS"):
        SparkWindowEngine(spark, 0)


def test_the_spark_profile_computes_through_the_cli_east_of_utc(
        clean_dir: Path, local_tables: Path, tmp_path: Path) -> None:
    """`FEASTKIT_PROFILE=spark feastkit compute` in a process running in Tokyo: the profile applies,
    selects the Spark engine (the command says so) and writes the local engine's rows."""
    from feastkit.store import apply_repo

    copy_repo_definitions(tmp_path / "repo")
    settings = make_settings(tmp_path, profile="spark", spark_buckets=4)
    shutil.copytree(clean_dir, settings.clean_dir)
    apply_repo(settings)
    env = {**settings_env(settings), "TZ": "Asia/Tokyo", "FEASTKIT_SPARK_BUCKETS": "4",
           "FEASTKIT_SPARK_MASTER": "local[2]"}
    env.pop("FEASTKIT_AGGREGATE_ENGINE", None)
    done = subprocess.run([str(Path(sys.executable).with_name("feastkit")), "compute", "--skip-validation"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "computed on Spark (local[2], 4 entity buckets)" in done.stdout, done.stdout[-2000:]
    assert_same_tables(settings.features_dir, local_tables)
    assert day_files(settings.features_dir, "user_profile") == day_files(local_tables, "user_profile")


def test_an_unknown_engine_name_is_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, aggregate_engine="flink")
    with pytest.raises(FeastkitError, match="FEASTKIT_AGGREGATE_ENGINE"):
        _ = settings.aggregate_engine_name
    assert make_settings(tmp_path, profile="spark").aggregate_engine_name == "spark"
    assert make_settings(tmp_path, profile="redis").aggregate_engine_name == "local"
    assert make_settings(tmp_path, profile="spark", aggregate_engine="local").aggregate_engine_name == "local"


def test_settings_select_the_engine(tmp_path: Path) -> None:
    from pipelines.aggregates import BucketedWindowEngine, rows_engine

    assert rows_engine(make_settings(tmp_path)) is None  # the one pass
    bucketed = rows_engine(make_settings(tmp_path, compute_buckets=4))
    assert isinstance(bucketed, BucketedWindowEngine) and bucketed.buckets == 4
