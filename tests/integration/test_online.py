"""Online store: equal to the latest offline values (sqlite and real Redis), TTL and write-order guards."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feastkit.services import build_training_set
from feastkit.store import apply_repo, materialize_interval, open_store
from pipelines.aggregates import read_view
from serving.features import ServiceReader
from tests.conftest import (
    Deployment,
    copy_repo_definitions,
    make_settings,
    redis_url,
    require_redis,
)

pytestmark = pytest.mark.integration

CHECKED_VIEWS = {
    "user_transaction_stats": "user_id",
    "merchant_risk_stats": "merchant_id",
    "customer_activity": "user_id",
    "user_profile": "user_id",
}


def latest_offline(deployment: Deployment, view: str, key: str) -> pd.DataFrame:
    table = read_view(deployment.settings.features_dir, view)
    table = table[table["event_timestamp"] <= pd.Timestamp(deployment.data_end)]
    return table.sort_values("event_timestamp").groupby(key).tail(1).set_index(key)


def assert_online_equals_latest_offline(deployment: Deployment, sample: int = 60) -> None:
    rng = np.random.default_rng(0)
    ttl_floor = pd.Timestamp(deployment.data_end) - pd.Timedelta(days=2)
    for view, key in CHECKED_VIEWS.items():
        latest = latest_offline(deployment, view, key)
        fv = deployment.store.get_feature_view(view)
        if fv.ttl:  # only rows still servable were materialized
            latest = latest[latest["event_timestamp"] >= ttl_floor]
        keys = rng.choice(latest.index.to_numpy(), size=min(sample, len(latest)), replace=False)
        features = [f.name for f in fv.features]
        online = deployment.store.get_online_features(
            features=[f"{view}:{f}" for f in features],
            entity_rows=[{key: int(k)} for k in keys]).to_dict()
        for i, k in enumerate(keys):
            for f in features:
                expected, got = latest.loc[k, f], online[f][i]
                if pd.isna(expected):
                    assert got is None, (view, k, f, got)
                else:
                    assert got == pytest.approx(float(expected), rel=1e-9, abs=1e-9), (view, k, f)


def test_sqlite_online_equals_latest_offline(deployment: Deployment) -> None:
    assert_online_equals_latest_offline(deployment)


def test_redis_online_equals_latest_offline(redis_deployment: Deployment) -> None:
    assert type(redis_deployment.store.config.online_store).__name__ == "FastRedisOnlineStoreConfig"
    assert_online_equals_latest_offline(redis_deployment)


@pytest.mark.parametrize("which", ["sqlite", "redis"])
def test_on_demand_features_equal_online_and_offline(which: str, request: pytest.FixtureRequest) -> None:
    """Same inputs -> same request-time features, online (request data) and offline (training set)."""
    deployment: Deployment = request.getfixturevalue("deployment" if which == "sqlite" else "redis_deployment")
    end = pd.Timestamp(deployment.data_end)
    users = latest_offline(deployment, "user_transaction_stats", "user_id")
    users = users[users["event_timestamp"] >= end - pd.Timedelta(hours=12)].index[:25]
    when = end + pd.Timedelta(minutes=30)
    rows = pd.DataFrame({
        "user_id": users.astype("int64"), "merchant_id": 501,
        "event_timestamp": when, "amount": np.linspace(5, 900, len(users)),
        "transaction_epoch": when.timestamp()})
    offline = build_training_set(deployment.store, "fraud_detection_v1", rows)
    reader = ServiceReader.build(deployment.store, "fraud_detection_v1")
    online = pd.DataFrame(reader.read(rows.to_dict("records"), [when.timestamp()] * len(rows)))
    odfv = [f.name for f in deployment.store.get_on_demand_feature_view("transaction_request_features").features]
    for column in odfv + ["amount_avg_30d", "txn_count_30d"]:
        np.testing.assert_allclose(online[column].astype(float), offline[column].astype(float),
                                   rtol=1e-9, atol=1e-9, err_msg=column)


@pytest.mark.parametrize("service", ["fraud_detection_v1", "fraud_detection_v2", "churn_prediction_v1"])
@pytest.mark.parametrize("which", ["sqlite", "redis"])
def test_reader_reads_what_get_online_features_returns(which: str, service: str,
                                                       request: pytest.FixtureRequest) -> None:
    """The reader's per-view `online_read` gives Feast's values and event seconds, unknown keys included."""
    deployment: Deployment = request.getfixturevalue("deployment" if which == "sqlite" else "redis_deployment")
    reader = ServiceReader.build(deployment.store, service)
    users = latest_offline(deployment, "user_transaction_stats", "user_id").index[-30:]
    merchants = latest_offline(deployment, "merchant_risk_stats", "merchant_id").index[-30:]
    entity_rows = [{"user_id": int(u), "merchant_id": int(m)} for u, m in zip(users, merchants, strict=True)]
    entity_rows += [{"user_id": -5, "merchant_id": int(merchants[0])}, {"user_id": int(users[0]), "merchant_id": -9},
                    dict(entity_rows[0])]  # unknown keys and a duplicate row
    entity_rows = [{k: row[k] for k in reader.join_keys} for row in entity_rows]
    expected = deployment.store.get_online_features(features=reader.base_refs, entity_rows=entity_rows
                                                    ).to_dict(include_event_timestamps=True)
    before = [list(part.features) for part in reader.view_reads]
    for _ in range(3):
        got = reader.read_raw(entity_rows)
    # Feast's Redis store appends to the feature list it is given: the reader passes copies
    assert [part.features for part in reader.view_reads] == before
    names = [ref.split(":")[1] for ref in reader.base_refs]
    assert any(v is not None for v in got[names[0]]) and any(v is None for v in got[names[0]])
    for name in names:
        assert got[name] == expected[name], name
        known = [i for i, v in enumerate(expected[f"{name}__ts"]) if got[name][i] is not None]
        assert [got[f"{name}__ts"][i] for i in known] == [expected[f"{name}__ts"][i] for i in known], name


def test_serving_treats_values_older_than_ttl_as_missing(deployment: Deployment) -> None:
    """Feast returns expired values online; the reader drops them exactly as training does."""
    store = deployment.store
    latest = latest_offline(deployment, "user_transaction_stats", "user_id")
    recent = latest[latest["event_timestamp"] >= pd.Timestamp(deployment.data_end) - pd.Timedelta(hours=12)]
    user = int(recent.index[0])
    raw = store.get_online_features(features=["user_transaction_stats:txn_count_30d"],
                                    entity_rows=[{"user_id": user}]).to_dict()
    assert raw["txn_count_30d"][0] is not None
    reader = ServiceReader.build(store, "fraud_detection_v1")
    row = {"user_id": user, "merchant_id": 501, "amount": 10.0}
    later = (pd.Timestamp(deployment.data_end) + pd.Timedelta(days=5)).timestamp()
    expired = reader.read([{**row, "transaction_epoch": later}], [later])[0]
    assert expired["txn_count_30d"] is None
    # and the training set agrees: 5 days later the 2-day TTL has expired offline as well
    frame = build_training_set(store, "fraud_detection_v1", pd.DataFrame([{
        **row, "transaction_epoch": later, "event_timestamp": pd.Timestamp(later, unit="s", tz="UTC")}]))
    assert pd.isna(frame["txn_count_30d"].iloc[0])
    now = (pd.Timestamp(deployment.data_end) + pd.Timedelta(hours=1)).timestamp()
    fresh = reader.read([{**row, "transaction_epoch": now}], [now])[0]
    assert fresh["txn_count_30d"] is not None


def _fresh_store(tmp_path: Path, deployment: Deployment, profile: str = "local", **extra):
    if not (tmp_path / "repo").exists():
        copy_repo_definitions(tmp_path / "repo")
    settings = make_settings(tmp_path, data_dir=deployment.settings.data_dir, profile=profile, **extra)
    apply_repo(settings)
    return settings, open_store(settings)


@pytest.mark.parametrize("profile", ["local", "redis", "stock-sqlite"])
def test_replaying_an_older_interval_never_regresses_online_values(profile: str, tmp_path: Path,
                                                                   deployment: Deployment) -> None:
    """A backfill of an old interval after a newer one leaves the newer online values in place.

    Feast's sqlite store upserts unconditionally; feastkit's sqlite plugin skips older writes.
    Feast's Redis store skips them natively; this test catches a regression of either.
    """
    extra = {}
    if profile == "redis":
        import redis

        require_redis()
        redis.Redis(host="127.0.0.1", port=6379, db=8).flushdb()
        extra = {"redis_connection_string": redis_url(8)}
    if profile == "stock-sqlite":  # Feast's own sqlite store, to show the hazard being guarded
        repo = copy_repo_definitions(tmp_path / "repo")
        profile_yaml = repo / "profiles" / "stock-sqlite.yaml"
        profile_yaml.write_text((repo / "feature_store.yaml").read_text().replace(
            "type: feastkit.online_stores.MonotonicSqliteOnlineStore", "type: sqlite"))
    settings, store = _fresh_store(tmp_path, deployment, profile, **extra)
    end = deployment.data_end
    newer = (end - timedelta(days=1), end)
    older = (end - timedelta(days=3), end - timedelta(days=2))
    view = "user_transaction_stats"
    materialize_interval(settings, *newer, views=[view], store=store)
    users = [int(u) for u in latest_offline(deployment, view, "user_id").index[:40]]
    before = store.get_online_features(features=[f"{view}:txn_count_30d", f"{view}:amount_sum_7d"],
                                       entity_rows=[{"user_id": u} for u in users]).to_dict(
        include_event_timestamps=True)
    materialize_interval(settings, *older, views=[view], store=store)
    after = store.get_online_features(features=[f"{view}:txn_count_30d", f"{view}:amount_sum_7d"],
                                      entity_rows=[{"user_id": u} for u in users]).to_dict(
        include_event_timestamps=True)
    had_newer = [i for i, v in enumerate(before["txn_count_30d__ts"]) if v]
    assert had_newer, "the newer interval wrote nothing for the sampled users"
    if profile == "stock-sqlite":
        regressed = [i for i in had_newer if after["txn_count_30d__ts"][i] < before["txn_count_30d__ts"][i]]
        assert regressed, "Feast's sqlite store no longer overwrites newer values: the guard may go"
        return
    for key in ("txn_count_30d", "txn_count_30d__ts", "amount_sum_7d", "amount_sum_7d__ts"):
        assert [after[key][i] for i in had_newer] == [before[key][i] for i in had_newer], key
    # users with no newer value do get the older one: nothing newer exists to protect
    assert any(after["txn_count_30d__ts"][i] for i in range(len(users)) if i not in had_newer)
