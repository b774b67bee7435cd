"""The Feast repo applies from a clean copy and registers every object the kit relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from feastkit.store import apply_repo, open_store
from tests.conftest import Deployment, copy_repo_definitions, make_settings, settings_env

pytestmark = pytest.mark.integration
FEAST = str(Path(sys.executable).with_name("feast"))


def test_apply_registers_every_object(deployment: Deployment) -> None:
    store = deployment.store
    assert {e.name for e in store.list_entities()} >= {"user", "merchant"}
    assert {v.name for v in store.list_feature_views()} == {
        "user_transaction_stats", "merchant_risk_stats", "customer_activity",
        "user_realtime_activity", "user_profile"}
    assert {o.name for o in store.list_on_demand_feature_views()} == {"transaction_request_features"}
    assert {s.name for s in store.list_feature_services()} == {
        "fraud_detection_v1", "fraud_detection_v2", "churn_prediction_v1"}
    sources = {s.name for s in store.list_data_sources()}
    assert {"user_realtime_push", "transaction_request", "user_transaction_stats_source"} <= sources
    odfv = store.get_on_demand_feature_view("transaction_request_features")
    assert odfv.mode == "python"
    for view in store.list_feature_views():
        assert view.description and view.owner and view.tags.get("freshness_sla"), view.name
        assert Path(view.batch_source.path).is_absolute(), "sources must not depend on the working dir"


def test_fraud_v2_adds_realtime_features(deployment: Deployment) -> None:
    store = deployment.store
    v1 = {p.name for p in store.get_feature_service("fraud_detection_v1").feature_view_projections}
    v2 = {p.name for p in store.get_feature_service("fraud_detection_v2").feature_view_projections}
    assert v2 - v1 == {"user_realtime_activity"}


def test_feast_cli_apply_and_list_in_a_fresh_copy(tmp_path: Path, deployment: Deployment) -> None:
    """What a data scientist runs: `feast apply` then `feast feature-views list` inside the repo."""
    repo = copy_repo_definitions(tmp_path / "repo")
    settings = make_settings(tmp_path, data_dir=deployment.settings.data_dir)
    env = settings_env(settings)
    applied = subprocess.run([FEAST, "apply"], cwd=repo, env=env, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr[-2000:]
    listed = subprocess.run([FEAST, "feature-views", "list"], cwd=repo, env=env, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in ("user_transaction_stats", "merchant_risk_stats", "customer_activity",
                 "transaction_request_features"):
        assert name in listed.stdout
    assert not (repo / "data" / "registry.db").samefile(
        deployment.settings.repo_path / "data" / "registry.db")


def test_applying_a_copy_leaves_the_original_online_store_alone(tmp_path: Path,
                                                                deployment: Deployment) -> None:
    """Copies carry definitions only, so applying one cannot drop the original's sqlite tables."""
    original_db = deployment.settings.repo_path / "data" / "online_store.db"
    before = original_db.stat().st_size
    copy_repo_definitions(tmp_path / "repo")
    apply_repo(make_settings(tmp_path, data_dir=deployment.settings.data_dir))
    assert original_db.stat().st_size == before
    reader_store = open_store(deployment.settings)
    values = reader_store.get_online_features(
        features=["user_profile:account_created_epoch"], entity_rows=[{"user_id": 1001}]).to_dict()
    assert values["account_created_epoch"][0] is not None
