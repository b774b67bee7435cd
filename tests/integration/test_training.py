"""Training sets through Feast and the models trained on them: PIT, row contract, real signal, bundles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from feastkit.bundle import current_bundle, load_bundle, promote, rollback
from feastkit.errors import FeastkitError
from feastkit.recipes import churn_entities, fraud_entities, labelled_entities, trainable_services
from feastkit.services import build_training_set
from pipelines.aggregates import read_view
from pipelines.training import leaky_vs_pit
from tests.conftest import Deployment

pytestmark = pytest.mark.integration


def test_rows_out_equal_rows_in_in_the_callers_order(deployment: Deployment) -> None:
    entities = fraud_entities(deployment.settings.clean_dir).sample(400, random_state=3)
    entities = pd.concat([entities, entities.iloc[:5]])  # duplicate entity rows stay duplicated
    entities.index = pd.RangeIndex(1000, 1000 + len(entities))[::-1]
    frame = build_training_set(deployment.store, "fraud_detection_v1", entities)
    assert len(frame) == len(entities)
    assert (frame.index == entities.index).all()
    assert (frame["transaction_id"].to_numpy() == entities["transaction_id"].to_numpy()).all()
    unknown = entities.iloc[:3].assign(user_id=[10**12, 10**12 + 1, 10**12 + 2])
    frame = build_training_set(deployment.store, "fraud_detection_v1", unknown)
    assert len(frame) == 3 and frame["txn_count_30d"].isna().all()


def test_training_set_matches_the_feature_tables_point_in_time(deployment: Deployment) -> None:
    """Each value is the latest feature row at or before the entity time, within the view's TTL."""
    entities = churn_entities(deployment.settings.clean_dir).sample(300, random_state=1)
    frame = build_training_set(deployment.store, "churn_prediction_v1", entities)
    table = read_view(deployment.settings.features_dir, "customer_activity")
    for _, row in frame.iterrows():
        rows = table[(table["user_id"] == row["user_id"]) & (table["event_timestamp"] <= row["event_timestamp"])
                     & (table["event_timestamp"] >= row["event_timestamp"] - pd.Timedelta(days=2))]
        if rows.empty:
            assert pd.isna(row["purchase_count_30d"])
            continue
        expected = rows.sort_values("event_timestamp").iloc[-1]
        for column in ("purchase_count_30d", "days_since_last_purchase", "return_rate_180d"):
            if pd.isna(expected[column]):
                assert pd.isna(row[column])
            else:
                assert row[column] == pytest.approx(expected[column], rel=1e-9, abs=1e-9)


def test_fraud_features_never_see_the_transaction_itself(deployment: Deployment) -> None:
    """Features are taken just before the transaction: the realtime counter comes from the user's
    previous transaction (within its 10-minute TTL), never from the one being scored."""
    entities = fraud_entities(deployment.settings.clean_dir)
    sample = entities.sample(3000, random_state=0)
    frame = build_training_set(deployment.store, "fraud_detection_v2", sample)
    tx = pd.read_parquet(deployment.settings.clean_dir / "transactions.parquet")
    tx["event_timestamp"] = tx["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    by_user = {u: g["event_timestamp"].sort_values().to_numpy() for u, g in tx.groupby("user_id")}
    ten = np.timedelta64(10, "m")
    seen_burst = False
    for _, row in frame.iterrows():
        t = tx.loc[tx["transaction_id"] == row["transaction_id"], "event_timestamp"].iloc[0].to_datetime64()
        times = by_user[row["user_id"]]
        earlier = times[(times < t) & (times >= t - ten - np.timedelta64(1, "us"))]
        if len(earlier) == 0:
            assert pd.isna(row["txn_count_10m"]), row
            continue
        previous = earlier.max()
        expected = int(((times >= previous - ten) & (times <= previous)).sum())
        assert row["txn_count_10m"] == expected, row
        seen_burst = True
    assert seen_burst


def test_bad_requests_get_clear_errors(deployment: Deployment) -> None:
    entities = fraud_entities(deployment.settings.clean_dir).head(5)
    with pytest.raises(FeastkitError, match="unknown feature service 'fraud_v9'.*fraud_detection_v1"):
        build_training_set(deployment.store, "fraud_v9", entities)
    with pytest.raises(FeastkitError, match=r"lacks column\(s\) \['amount'\]"):
        build_training_set(deployment.store, "fraud_detection_v1", entities.drop(columns=["amount"]))
    with pytest.raises(FeastkitError, match="unknown feature service .nope."):
        labelled_entities(deployment.store, "nope", deployment.settings.clean_dir)


def test_models_learn_real_signal_and_bundles_are_complete(deployment: Deployment) -> None:
    models_dir = deployment.settings.models_dir
    for service in trainable_services(deployment.store):
        bundle = current_bundle(models_dir, service)
        manifest = bundle.manifest
        assert manifest["feature_service"] == service
        for key in ("feature_refs", "feature_fingerprints", "fingerprint", "training_window",
                    "evaluation_window", "metrics", "label_rate", "reference_stats", "threshold",
                    "threshold_rule", "defaults"):
            assert manifest[key] not in (None, "", [], {}), key
        assert set(manifest["reference_stats"]) == set(bundle.feature_columns)
        assert manifest["training_window"]["end"] < manifest["evaluation_window"]["start"]
        json.dumps(manifest)
    fraud = current_bundle(models_dir, "fraud_detection_v1").manifest["metrics"]
    assert fraud["roc_auc"] > 0.7, fraud  # clearly above chance on the later window
    churn = current_bundle(models_dir, "churn_prediction_v1").manifest["metrics"]
    assert churn["roc_auc"] > 0.6, churn


def test_leaky_features_look_better_than_point_in_time_ones(deployment: Deployment) -> None:
    s = deployment.settings
    result = leaky_vs_pit(deployment.store, s.clean_dir, s.features_dir)
    assert result["leaky_roc_auc"] > result["pit_roc_auc"] + 0.03, result


def test_promote_keeps_the_previous_bundle_for_rollback(deployment: Deployment, tmp_path) -> None:
    import shutil

    src = current_bundle(deployment.settings.models_dir, "churn_prediction_v1").path
    models = tmp_path / "models"
    for version in ("v-old", "v-new"):
        shutil.copytree(src, models / "churn_prediction_v1" / version)
    promote(models, "churn_prediction_v1", "v-old")
    promote(models, "churn_prediction_v1", "v-new")
    assert current_bundle(models, "churn_prediction_v1").path.name == "v-new"
    assert rollback(models, "churn_prediction_v1") == "v-old"
    assert current_bundle(models, "churn_prediction_v1").path.name == "v-old"
    (models / "churn_prediction_v1" / "v-new" / "manifest.json").write_text("{not json")
    with pytest.raises(FeastkitError, match="not valid JSON"):
        load_bundle(models / "churn_prediction_v1" / "v-new")


def test_bundle_fills_documented_defaults(deployment: Deployment) -> None:
    bundle = current_bundle(deployment.settings.models_dir, "fraud_detection_v1")
    empty = pd.DataFrame([{c: None for c in bundle.feature_columns}])
    x, missing = bundle.matrix(empty)
    assert missing[0] == bundle.feature_columns
    assert not np.isnan(x).any()
    assert bundle.defaults["txn_count_30d"] == 0.0  # from the registry's Field tag
