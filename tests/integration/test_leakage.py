"""The leakage demonstration joins every view a feature service reads, and its on-demand features."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tests.conftest import Deployment

pytestmark = pytest.mark.integration

VIEW_KEYS = {"user_transaction_stats": "user_id", "merchant_risk_stats": "merchant_id",
             "user_realtime_activity": "user_id", "user_profile": "user_id"}


def _sample(deployment: Deployment, service: str, n: int) -> pd.DataFrame:
    from feastkit.recipes import labelled_entities

    entities = labelled_entities(deployment.store, service, deployment.settings.clean_dir)
    return entities.sample(n=min(n, len(entities)), random_state=3).sort_values("event_timestamp")


def _latest(deployment: Deployment, view: str) -> pd.DataFrame:
    from pipelines.aggregates import read_view

    table = read_view(deployment.settings.features_dir, view)
    return table.sort_values("event_timestamp").groupby(VIEW_KEYS[view]).tail(1).set_index(VIEW_KEYS[view])


def _same(a: object, b: object) -> bool:
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b)]
    return all(missing) if any(missing) else math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("service", ["fraud_detection_v1", "fraud_detection_v2"])
def test_leaky_features_are_each_views_latest_row(deployment: Deployment, service: str) -> None:
    from feastkit.services import describe_service, get_service
    from pipelines.training import leaky_features

    store = deployment.store
    entities = _sample(deployment, service, 300)
    leaky = leaky_features(store, service, entities, deployment.settings.features_dir)
    assert leaky["transaction_id"].tolist() == entities["transaction_id"].tolist()  # one row per row, in order
    assert set(describe_service(store, service).feature_columns) <= set(leaky.columns)
    views = [p.name for p in get_service(store, service).feature_view_projections if p.name in VIEW_KEYS]
    assert "merchant_risk_stats" in views  # the second view: the one the old join never reached
    for view in views:
        latest, key = _latest(deployment, view), VIEW_KEYS[view]
        for feature in (f.name for f in store.get_feature_view(view).features):
            for entity, value in zip(leaky[key], leaky[feature], strict=True):
                expected = latest[feature].get(entity)
                assert _same(value, expected), (view, feature, entity, value, expected)
    # on-demand features from the leaked inputs, computed here by hand
    profiles = _latest(deployment, "user_profile")["account_created_epoch"]
    for row in leaky.itertuples():
        last = row.last_txn_epoch
        hours = 720.0 if pd.isna(last) else min(max((row.transaction_epoch - last) / 3600.0, 0.0), 720.0)
        assert _same(row.hours_since_last_txn, hours)
        created = profiles.get(row.user_id)
        age = 0.0 if created is None or pd.isna(created) else max((row.transaction_epoch - created) / 86400.0, 0.0)
        assert _same(row.account_age_days, age)


@pytest.mark.parametrize("service", ["fraud_detection_v1", "fraud_detection_v2"])
def test_leakage_runs_for_fraud_services(deployment: Deployment, service: str) -> None:
    """`feastkit leakage --service fraud_detection_v1` died with a KeyError: it joined only the first view."""
    from pipelines.training import leaky_vs_pit

    s = deployment.settings
    result = leaky_vs_pit(deployment.store, s.clean_dir, s.features_dir, service,
                          entities=_sample(deployment, service, 8000))
    assert 0.5 < result["pit_roc_auc"] <= 1.0 and 0.5 < result["leaky_roc_auc"] <= 1.0, result
