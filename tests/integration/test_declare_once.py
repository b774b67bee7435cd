"""Declare once: a data scientist edits only feature_repo/, runs `feast apply`, and compute, backfill,
training and serving follow; a changed definition is recomputed whole and the model guard names it."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from feastkit.clean import data_range
from feastkit.settings import Settings
from tests.conftest import (
    Deployment,
    copy_repo_definitions,
    feastkit_bin,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

NEW_FEATURES = '''
        Aggregation("amount_sum_14d", "sum", timedelta(days=14), "amount", default="0",
                    description="Amount spent in the last 14 days."),
        Aggregation("amount_min_30d", "min", D30, "amount", description="Smallest transaction, 30 days."),
'''
NEW_VIEW = '''"""Channel habits per user: how much happens on the web, on how many channels, the latest amount."""

from datetime import timedelta

from entities import user
from sources import transactions

from feastkit.declarations import Aggregation, windowed_view

user_channel_activity = windowed_view(
    name="user_channel_activity",
    entity=user,
    events=transactions,
    grid=timedelta(hours=1),
    ttl=timedelta(days=2),
    features=[
        Aggregation("web_txn_count_7d", "count", timedelta(days=7), where="channel = 'web'", default="0"),
        Aggregation("channels_30d", "count_distinct", timedelta(days=30), "channel", default="0"),
        Aggregation("last_amount_7d", "last", timedelta(days=7), "amount"),
    ],
    description="Channel habits per user, on an hourly grid.",
)
'''
NEW_SERVICE = '''
from user_channels import user_channel_activity  # noqa: E402

fraud_detection_v3 = FeatureService(
    name="fraud_detection_v3",
    features=[user_transaction_stats, merchant_risk_stats, transaction_request_features, user_channel_activity],
    description="Fraud model v3: v1 plus channel habits.",
    tags={"model": "fraud", "version": "3", "decisions": "fraud,legit"},
)
'''


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True, check=True).stdout


def window_rows(events: pd.DataFrame, t: pd.Timestamp, days: int) -> pd.DataFrame:
    return events[(events["event_timestamp"] >= t - pd.Timedelta(days=days)) & (events["event_timestamp"] < t)]


def assert_brute_force(features_dir: Path, clean_dir: Path, view: str, expected: dict, sample: int = 250) -> None:
    """Sampled rows of a feature table equal the functions in `expected`, run on the raw events."""
    files = sorted((features_dir / view).glob("*.parquet"))
    table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    tx = pd.read_parquet(clean_dir / "transactions.parquet")
    tx["event_timestamp"] = pd.to_datetime(tx["event_timestamp"], utc=True)
    tx = tx.sort_values(["user_id", "event_timestamp"], kind="stable")
    by_user = dict(tuple(tx.groupby("user_id")))
    rows = table.sample(min(sample, len(table)), random_state=4)
    for row in rows.itertuples(index=False):
        t = pd.Timestamp(row.event_timestamp)
        for name, fn in expected.items():
            want, got = fn(by_user[row.user_id], t), getattr(row, name)
            if want is None:
                assert got is None or pd.isna(got), (view, name, row.user_id, t, got)
            elif isinstance(want, str):
                assert got == want, (view, name, row.user_id, t, got, want)
            else:
                assert np.isclose(got, want, rtol=1e-12, atol=1e-9), (view, name, row.user_id, t, got, want)


@pytest.fixture(scope="module")
def project(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project of its own: the feature repo's definitions under git, and the deployment's raw data."""
    root = tmp_path_factory.mktemp("declare-once") / "project"
    copy_repo_definitions(root / "feature_repo")
    shutil.copytree(deployment.settings.raw_dir, root / "data" / "raw")
    (root / ".gitignore").write_text("data/\nfeature_repo/data/\n__pycache__/\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "feature repo")
    return root


def project_settings(project: Path) -> Settings:
    # explicit paths: other fixtures of this test run export FEASTKIT_* variables of their own
    return Settings(project_root=project, data_dir=project / "data", repo_path=project / "feature_repo",
                    models_dir=project / "data" / "models", reports_dir=project / "data" / "reports",
                    profile="local")


def project_env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEASTKIT_")}
    return {**env, "FEASTKIT_PROJECT_ROOT": str(project)}


def test_a_feature_and_a_view_declared_in_the_repo_are_computed_trained_and_served(project: Path) -> None:
    env, cli = project_env(project), feastkit_bin()
    settings = project_settings(project)
    run([cli, "apply"], env, project)
    run([cli, "compute"], env, project)
    run([cli, "train", "--service", "fraud_detection_v1"], env, project)

    # the data scientist's edit: two features on an existing view, a new view, a new service
    fraud = project / "feature_repo" / "fraud_features.py"
    anchor = '        Aggregation("amount_avg_30d", "avg", D30, "amount", description="Mean transaction amount, 30 days."),\n'
    assert anchor in fraud.read_text()
    fraud.write_text(fraud.read_text().replace(anchor, anchor + NEW_FEATURES.lstrip("\n")))
    (project / "feature_repo" / "user_channels.py").write_text(NEW_VIEW)
    services = project / "feature_repo" / "services.py"
    services.write_text(services.read_text() + NEW_SERVICE)

    feast = str(Path(feastkit_bin()).with_name("feast"))
    applied = run([feast, "apply"], {**env, "FEASTKIT_DATA_DIR": str(settings.data_dir)}, project / "feature_repo")
    assert "user_channel_activity" in applied
    start, end = data_range(settings.clean_dir)
    computed = run([cli, "compute", "--start", start.isoformat(), "--end", end.isoformat()], env, project)
    assert "user_channel_activity" in computed and "user_transaction_stats" in computed

    def amounts(days: int, fn: str):  # noqa: ANN202
        def value(events: pd.DataFrame, t: pd.Timestamp) -> float | None:
            w = window_rows(events, t, days)["amount"]
            if fn == "sum":
                return float(w.sum())
            return float(w.min()) if len(w) else None
        return value

    def last_amount(events: pd.DataFrame, t: pd.Timestamp) -> float | None:
        w = window_rows(events, t, 7)
        return float(w["amount"].iloc[-1]) if len(w) else None

    assert_brute_force(settings.features_dir, settings.clean_dir, "user_transaction_stats",
                       {"amount_sum_14d": amounts(14, "sum"), "amount_min_30d": amounts(30, "min"),
                        "txn_count_7d": lambda e, t: len(window_rows(e, t, 7))})
    assert_brute_force(settings.features_dir, settings.clean_dir, "user_channel_activity",
                       {"web_txn_count_7d": lambda e, t: int((window_rows(e, t, 7)["channel"] == "web").sum()),
                        "channels_30d": lambda e, t: window_rows(e, t, 30)["channel"].nunique(),
                        "last_amount_7d": last_amount})

    trained = run([cli, "train", "--service", "fraud_detection_v3"], env, project)
    assert "fraud_detection_v3" in trained
    run([cli, "materialize"], env, project)
    server = start_server(settings, project / "data" / "server.log")
    try:
        body = {"user_id": 1, "merchant_id": 1, "amount": 420.0, "transaction_epoch": 1773900000.0,
                "as_of": "2026-03-20T12:00:00Z"}
        got = httpx.post(f"{server.url}/v1/predict/fraud_detection_v3?explain=true", json=body, timeout=30)
        assert got.status_code == 200, got.text
        features = got.json()["features"]
        for name in ("amount_sum_14d", "amount_min_30d", "web_txn_count_7d", "channels_30d", "last_amount_7d"):
            assert name in features, name
        assert got.json()["feature_service"] == "fraud_detection_v3"
    finally:
        stop_server(server)
    changed = [line[3:] for line in git(project, "status", "--porcelain", "--untracked-files=all").splitlines()]
    assert changed and all(path.startswith("feature_repo/") for path in changed), changed


def test_a_changed_window_is_recomputed_whole_and_the_model_guard_names_it(project: Path) -> None:
    env, cli = project_env(project), feastkit_bin()
    settings = project_settings(project)
    fraud = project / "feature_repo" / "fraud_features.py"
    old = 'Aggregation("txn_count_7d", "count", D7,'
    assert old in fraud.read_text()
    fraud.write_text(fraud.read_text().replace(old, 'Aggregation("txn_count_7d", "count", timedelta(days=14),'))
    run([cli, "apply"], env, project)
    # one scheduled hour: the table must not keep rows of the 7-day definition anywhere
    _, end = data_range(settings.clean_dir)
    last_hour = [(end - timedelta(hours=1)).isoformat(), end.isoformat()]
    run([cli, "compute", "--skip-validation", "--start", *last_hour[:1], "--end", *last_hour[1:]], env, project)
    assert_brute_force(settings.features_dir, settings.clean_dir, "user_transaction_stats",
                       {"txn_count_7d": lambda e, t: len(window_rows(e, t, 14))}, sample=400)
    proc = subprocess.run([cli, "serve", "--port", "1"], env=env, cwd=project, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "user_transaction_stats:txn_count_7d" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_bad_declaration_gets_one_line_at_feast_apply(project: Path, tmp_path: Path) -> None:
    repo = copy_repo_definitions(tmp_path / "repo")
    fraud = repo / "fraud_features.py"
    fraud.write_text(fraud.read_text().replace('Aggregation("amount_max_30d", "max",', 'Aggregation("amount_max_30d", "maximum",'))
    feast = str(Path(feastkit_bin()).with_name("feast"))
    proc = subprocess.run([feast, "apply"], env={**project_env(project), "FEASTKIT_DATA_DIR": str(tmp_path / "data")},
                          cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: feature view 'user_transaction_stats', feature 'amount_max_30d': unsupported function 'maximum' — "
        "use one of count, sum, avg, min, max, std, var, count_distinct, approx_count_distinct, last, last_time, "
        "last_n"]
