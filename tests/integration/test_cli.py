"""The command line: bad input ends with one clear line and exit code 2, never a traceback or a silent success."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import (
    Deployment,
    assert_one_line_error,
    copy_repo_definitions,
    feastkit_bin,
    make_settings,
    settings_env,
)

pytestmark = pytest.mark.integration


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([feastkit_bin(), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, fragments", [
    (["compute", "--skip-validation", "--start", "2026-13-45"], ["--start '2026-13-45' is not a date"]),
    (["compute", "--skip-validation", "--start", "2026-03-02", "--end", "2026-03-01"],
     ["is not after --start"]),
    (["compute", "--skip-validation", "--views", "nope"], ["unknown feature view(s) ['nope']"]),
    (["training-set", "--service", "fraud_v9"], ["unknown feature service 'fraud_v9'", "choose one of"]),
    (["materialize", "--views", "nope", "--start", "2026-03-01"], ["unknown feature view(s) ['nope']"]),
    (["generate", "--drift", "weather"], ["unknown drift kind(s) ['weather']"]),
    (["materialize", "--start", "2026-03-01", "--end", "2026-03-01"], ["is not after --start"]),
])
def test_bad_input_is_one_clear_line(deployment: Deployment, args: list[str], fragments: list[str],
                                     tmp_path: Path) -> None:
    env = settings_env(deployment.settings)
    if args[0] == "generate":  # never overwrite the shared deployment's data
        env = settings_env(make_settings(tmp_path))
    assert_one_line_error(run(args, env), *fragments)


def test_missing_data_says_what_to_run(tmp_path: Path, deployment: Deployment) -> None:
    settings = make_settings(tmp_path, repo_path=deployment.settings.repo_path)
    assert_one_line_error(run(["validate"], settings_env(settings)), "not found", "feastkit generate")


def test_unknown_profile(deployment: Deployment) -> None:
    env = {**settings_env(deployment.settings), "FEASTKIT_PROFILE": "mars"}
    assert_one_line_error(run(["apply"], env), "profile 'mars'", "redis")
    doctor = run(["doctor"], env)
    assert doctor.returncode == 1 and "FAIL profile" in doctor.stdout


def test_doctor_passes_on_a_healthy_deployment(deployment: Deployment) -> None:
    result = run(["doctor"], settings_env(deployment.settings))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "fingerprint matches" in result.stdout


# --- one malformed call per command and per input kind -------------------------------------------
#
# Each call is a real `feastkit` process: exit code 2, exactly one line on stderr naming the
# problem, no traceback. The cheap ones need no deployment at all.


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()


@pytest.mark.parametrize("args, fragments", [
    (["generate", "--users", "abc"], ["Invalid value for '--users'", "feastkit generate --help"]),
    (["nosuch"], ["No such command 'nosuch'"]),
    (["serve", "--port", "http"], ["Invalid value for '--port'"]),
    (["run-interval", "--start", "yesterday-ish", "--end", "2026-03-01"], ["--start 'yesterday-ish' is not a date"]),
    (["init", "{tmp}/project", "--example", "bakery"], ["unknown example 'bakery'"]),
    (["init", "{tmp}/project", "--minimal", "--example", "fraud-churn"], ["--minimal and --example"]),
    (["skew", "--sample", "0"], ["--sample 0 is not positive"]),
    (["generate", "--users-per-part", "3"], ["--users-per-part 3 is too small", "at least 10"]),
])
def test_bad_arguments_need_no_deployment(args: list[str], fragments: list[str], tmp_path: Path) -> None:
    env = settings_env(make_settings(tmp_path))
    assert_one_line_error(run([a.format(tmp=tmp_path) for a in args], env), *fragments)


def test_generate_part_by_part_then_a_validation_memory_limit_duckdb_refuses(tmp_path: Path) -> None:
    """`generate --users-per-part` writes every user once, part after part; a validation memory
    limit DuckDB does not take is one line naming the setting."""
    settings = make_settings(tmp_path)
    env = settings_env(settings)
    made = run(["generate", "--users", "35", "--users-per-part", "10", "--days", "7", "--bad-rows", "8"], env)
    assert made.returncode == 0, made.stderr
    users = pd.read_parquet(settings.raw_dir / "users.parquet")
    assert users["user_id"].tolist() == list(range(1001, 1036))
    assert len(pd.read_parquet(settings.raw_dir / "merchants.parquet")) == 300
    assert run(["validate"], env).returncode == 0
    refused = run(["validate"], {**env, "FEASTKIT_VALIDATION_MEMORY_LIMIT": "lots"})
    assert_one_line_error(refused, "validation memory limit 'lots'", "FEASTKIT_VALIDATION_MEMORY_LIMIT")


def test_an_invalid_setting_is_one_line(tmp_path: Path) -> None:
    env = {**settings_env(make_settings(tmp_path)), "FEASTKIT_MAX_BATCH_SIZE": "lots"}
    assert_one_line_error(run(["validate"], env), "FEASTKIT_MAX_BATCH_SIZE='lots'", "valid integer")


def test_a_raw_file_that_is_not_parquet(tmp_path: Path, deployment: Deployment) -> None:
    settings = make_settings(tmp_path, repo_path=deployment.settings.repo_path)
    shutil.copytree(deployment.settings.raw_dir, settings.raw_dir)
    (settings.raw_dir / "transactions.parquet").write_bytes(b"transaction_id,amount\n1,12.5\n")
    assert_one_line_error(run(["validate"], settings_env(settings)), "transactions.parquet")


def test_a_numeric_raw_column_holding_text(tmp_path: Path, deployment: Deployment) -> None:
    settings = make_settings(tmp_path, repo_path=deployment.settings.repo_path)
    shutil.copytree(deployment.settings.raw_dir, settings.raw_dir)
    path = settings.raw_dir / "transactions.parquet"
    frame = pd.read_parquet(path)
    frame["amount"] = frame["amount"].astype(str)
    frame.loc[frame.index[3], "amount"] = "a lot"
    frame.to_parquet(path)
    assert_one_line_error(run(["validate"], settings_env(settings)))


@pytest.mark.parametrize("args, fragments", [
    (["materialize", "--views", "no_such_view"], ["unknown feature view(s) ['no_such_view']", "choose from"]),
    (["materialize", "--start", "2030-01-01"], ["is not before the end of the data", "nothing to materialize"]),
    (["materialize", "--start", "2026-03-01", "--chunk", "5x"], ["'5x' is not a duration"]),
    (["train", "--service", "fraud_v9"], ["unknown feature service 'fraud_v9'"]),
    (["leakage", "--service", "fraud_v9"], ["unknown feature service 'fraud_v9'"]),
    (["drift", "--service", "fraud_v9", "--end", "2026-03-01"], ["unknown feature service 'fraud_v9'"]),
    (["skew", "--service", "fraud_v9"], ["unknown feature service 'fraud_v9'"]),
    (["replay-check", "--service", "fraud_v9"], ["unknown feature service 'fraud_v9'"]),
    (["drift", "--current-days", "0"], ["window lengths must be positive"]),
    (["freshness", "--as-of", "someday"], ["--as-of 'someday' is not a date"]),
    (["demo-requests", "--url", "http://127.0.0.1:{port}"], ["the prediction API does not answer"]),
])
def test_unknown_names_and_bad_values(deployment: Deployment, args: list[str], fragments: list[str]) -> None:
    port = str(_free_port())
    assert_one_line_error(run([a.replace("{port}", port) for a in args], settings_env(deployment.settings)),
                          *fragments)


@pytest.mark.parametrize("command", [["apply"], ["train"], ["materialize", "--start", "2026-03-01"],
                                     ["freshness"], ["training-set", "--service", "fraud_detection_v1"]])
def test_a_registry_database_that_does_not_answer(deployment: Deployment, command: list[str]) -> None:
    env = {**settings_env(deployment.settings), "FEASTKIT_PROFILE": "postgres-registry",
           "FEASTKIT_REGISTRY_URL": f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/test"}
    assert_one_line_error(run(command, env), "PostgreSQL database does not answer", "FEASTKIT_REGISTRY_URL")


def test_debug_writes_the_traceback_to_a_log_file(deployment: Deployment) -> None:
    env = settings_env(deployment.settings)
    for args, extra in ((["--debug", "training-set", "--service", "fraud_v9"], {}),
                        (["training-set", "--service", "fraud_v9"], {"FEASTKIT_DEBUG": "1"})):
        result = run(args, {**env, **extra})
        assert_one_line_error(result, "unknown feature service 'fraud_v9'", "traceback in ")
        log = Path(result.stderr.strip().rsplit("traceback in ", 1)[1].rstrip(")"))
        assert "Traceback (most recent call last)" in log.read_text() and "fraud_v9" in log.read_text()
    plain = run(["training-set", "--service", "fraud_v9"], env)
    assert "traceback in" not in plain.stderr


# --- a registry with nothing to do: never a silent success ----------------------------------------

OFFLINE_ONLY_REPO = '''
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Float64

user = Entity(name="user", join_keys=["user_id"])
scores = FeatureView(
    name="scores", entities=[user], ttl=timedelta(days=1), online=False,
    schema=[Field(name="score", dtype=Float64)],
    source=FileSource(name="scores_source", path="{path}", timestamp_field="event_timestamp"))
plain = FeatureService(name="plain", features=[scores])
'''
OFFLINE_ONLY_YAML = """project: offline_only
provider: local
registry: data/registry.db
online_store:
  type: sqlite
  path: data/online_store.db
offline_store:
  type: feastkit.offline_stores.AsofDuckDBOfflineStore
entity_key_serialization_version: 3
"""


@pytest.fixture(scope="module")
def offline_only(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A registry with one offline-only view and one feature service that names no label recipe."""
    from feastkit.store import apply_repo

    root = tmp_path_factory.mktemp("offline-only")
    (root / "repo").mkdir()
    table = root / "scores.parquet"
    pd.DataFrame({"user_id": [1, 2], "score": [0.5, 0.7],
                  "event_timestamp": pd.to_datetime(["2026-03-01", "2026-03-02"], utc=True)}).to_parquet(table)
    (root / "repo" / "feature_store.yaml").write_text(OFFLINE_ONLY_YAML)
    (root / "repo" / "repo.py").write_text(OFFLINE_ONLY_REPO.format(path=table))
    settings = make_settings(root)
    apply_repo(settings)
    return settings_env(settings)


@pytest.mark.parametrize("args, fragments", [
    (["materialize", "--start", "2026-03-01", "--end", "2026-03-02"], ["no online feature view",
                                                                        "nothing to materialize"]),
    (["freshness"], ["no online feature view", "freshness has nothing to check"]),
    (["train"], ["names a label recipe", "nothing to train"]),
    (["drift"], ["names a label recipe", "nothing to monitor"]),
    (["skew"], ["names a label recipe", "nothing to monitor"]),
    (["train", "--service", "plain"], ["feature service 'plain' names no label recipe"]),
    (["leakage", "--service", "plain"], ["feature service 'plain' names no label recipe"]),
    (["training-set", "--service", "plain"], ["feature service 'plain' names no label recipe"]),
    (["drift", "--service", "plain", "--end", "2026-03-02"], ["feature service 'plain' names no label recipe"]),
])
def test_nothing_to_do_is_not_a_success(offline_only: dict[str, str], args: list[str],
                                        fragments: list[str]) -> None:
    assert_one_line_error(run(args, offline_only), *fragments)


# --- a registry of our own over a copy of the deployment's data -----------------------------------


@pytest.fixture(scope="module")
def own(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The deployment's clean and feature tables copied, behind a registry and online store of their
    own (nothing materialized yet): these tests corrupt files and move watermarks."""
    from feastkit.store import apply_repo, open_store

    root = tmp_path_factory.mktemp("cli-own")
    copy_repo_definitions(root / "repo")
    settings = make_settings(root)
    for part in ("clean", "features"):
        shutil.copytree(deployment.settings.data_dir / part, settings.data_dir / part)
    apply_repo(settings)
    return Deployment(settings, open_store(settings), deployment.data_start, deployment.data_end)


def _chunks(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stderr
    return int(re.search(r"in (\d+) chunk\(s\)", result.stdout).group(1))


def test_chunking_starts_where_the_data_starts(own: Deployment) -> None:
    """A start in 2000 costs no empty Feast call: the chunks are bounded by the data's span."""
    import pyarrow.parquet as pq

    env = settings_env(own.settings)
    # user_profile (1,000 rows, signups since 2023) fits in one write batch: one call, not ~9,600
    assert _chunks(run(["materialize", "--start", "2000-01-01", "--views", "user_profile"], env)) == 1
    # a windowed view: 30-day chunks from its first row, not from 2000 (~320 chunks)
    files = sorted((own.settings.features_dir / "merchant_risk_stats").glob("*.parquet"))
    first = min(pd.read_parquet(f, columns=["event_timestamp"])["event_timestamp"].min() for f in files)
    assert pq.read_metadata(files[0]).num_rows > 0
    span_days = (own.data_end - first.to_pydatetime()).days
    chunks = _chunks(run(["materialize", "--start", "2000-01-01", "--views", "merchant_risk_stats",
                          "--chunk", "30d"], env))
    assert chunks <= span_days // 30 + 2, (chunks, span_days)


def test_unreachable_redis_for_materialize_and_doctor(own: Deployment) -> None:
    env = {**settings_env(own.settings), "FEASTKIT_PROFILE": "redis",
           "FEASTKIT_REDIS_CONNECTION_STRING": f"127.0.0.1:{_free_port()},password=not-shown"}
    result = run(["materialize", "--start", "2026-03-01", "--views", "user_transaction_stats"], env)
    assert_one_line_error(result, "Redis online store at 127.0.0.1:", "does not answer",
                          "FEASTKIT_REDIS_CONNECTION_STRING")
    assert "not-shown" not in result.stderr
    doctor = run(["doctor"], env)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr + doctor.stdout
    (line,) = [x for x in doctor.stdout.splitlines() if x.startswith("FAIL online store")]
    assert line.startswith("FAIL online store: the Redis online store does not answer"), line


def test_a_corrupt_feature_file(own: Deployment) -> None:
    bad = own.settings.features_dir / "merchant_risk_stats" / "part-2026-03-30.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    try:
        result = run(["materialize", "--start", "2026-03-01", "--views", "merchant_risk_stats"],
                     settings_env(own.settings))
    finally:
        bad.unlink()
    assert_one_line_error(result, f"feature file {bad}", "not a readable parquet file")


def test_skew_that_compared_nothing_fails(own: Deployment) -> None:
    """An interval past the data moves every watermark beyond it: skew must not pass vacuously."""
    from feastkit.store import materialize_interval

    far = own.data_end + timedelta(days=60)
    materialize_interval(own.settings, far, far + timedelta(hours=1), store=own.store)
    result = run(["skew", "--service", "fraud_detection_v1", "--sample", "20"], settings_env(own.settings))
    assert_one_line_error(result, "skew compared nothing", "user_transaction_stats", "fraud_detection_v1")
