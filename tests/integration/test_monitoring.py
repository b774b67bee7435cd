"""Monitoring end to end through Feast: drift on generated data, freshness, skew, reports, CLI and routes."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from feastkit.settings import Settings
from tests.conftest import (
    Deployment,
    build_features,
    copy_repo_definitions,
    feastkit_bin,
    make_settings,
    settings_env,
)

pytestmark = pytest.mark.integration

# generate(drift=("amount", "night")) multiplies amounts and moves transactions to night hours.
# These features are computed straight from those values and must be flagged:
MUST_FLAG = {"amount_to_avg_ratio", "amount_zscore", "transaction_hour", "is_night",
             "night_txn_share_30d", "amount_sum_1d"}
# These depend on them more weakly (partly diluted by 30-day windows) and may be flagged;
# every other feature (counts, chargebacks, recency, account age, churn features) must not be.
# merchant_avg_ticket_30d moves too, but 50 merchants whose biggest carry most rows are worth a
# handful of observations (Kish's effective size): at the demo's 300 merchants it is flagged
# (bench/drift_false_alarms.py), here it need not be.
MAY_FLAG = {"amount_sum_7d", "amount_avg_30d", "amount_std_30d", "amount_max_30d", "hours_since_last_txn",
            "merchant_avg_ticket_30d"}


@dataclass
class Monitored:
    settings: Settings
    store: object
    end: datetime
    stale_view: str


@pytest.fixture(scope="module")
def monitored(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    """The deployment's feature tables behind our own registry and online store (never the shared one).

    Every view is materialized up to the data end except user_profile (SLA 2d), left 5 days behind.
    """
    from feastkit.store import (
        EARLIEST,
        apply_repo,
        materialize_interval,
        materialize_servable,
        open_store,
    )

    root = tmp_path_factory.mktemp("monitoring")
    copy_repo_definitions(root / "repo")
    settings = make_settings(root, data_dir=deployment.settings.data_dir, reports_dir=root / "reports")
    apply_repo(settings)
    store = open_store(settings)
    end = deployment.data_end
    materialize_servable(settings, end, views=["user_transaction_stats", "merchant_risk_stats",
                                               "customer_activity", "user_realtime_activity"], store=store)
    materialize_interval(settings, EARLIEST, end - timedelta(days=5), ["user_profile"],
                         chunk=end - EARLIEST, store=store)
    return Monitored(settings, store, end, "user_profile")


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.features: list[str] = []
        self.png = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("data-feature"):
            self.features.append(a["data-feature"])
            self.png += (a.get("src") or "").startswith("data:image/png;base64,")


def _check_html(path: Path, drifted: list[str]) -> None:
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert sorted(parser.features) == sorted(drifted)
    assert parser.png == len(drifted)


def _drift_of_generated(tmp_path: Path, config: object) -> tuple[Settings, object]:
    """Generated data through the pipeline and `feast apply`, then the drift check of fraud_detection_v1."""
    from feastkit.store import apply_repo
    from monitoring import run_monitoring

    copy_repo_definitions(tmp_path / "repo")
    settings = make_settings(tmp_path)
    build_features(settings, config)
    apply_repo(settings)
    return settings, run_monitoring(settings, feature_service="fraud_detection_v1", checks=("drift",))


def test_injected_drift_is_found_through_feast(tmp_path: Path) -> None:
    """Generated data with amount and night drift in the last 7 days: those features, no others."""
    from pipelines.synthetic import SyntheticConfig

    config = SyntheticConfig(n_users=400, n_merchants=50, days=130, seed=5, drift=("amount", "night"),
                             start=datetime(2026, 1, 1, tzinfo=UTC))
    _, outcome = _drift_of_generated(tmp_path, config)
    (run,) = outcome.drift
    flagged = {f.feature for f in run.features if f.drifted}
    assert flagged >= MUST_FLAG, f"missed {sorted(MUST_FLAG - flagged)}"
    assert flagged <= MUST_FLAG | MAY_FLAG, f"false positives {sorted(flagged - MUST_FLAG - MAY_FLAG)}"
    assert run.current.start == config.drift_window[0] and run.current.end == config.end
    assert not outcome.ok and outcome.stale == [] and outcome.skewed == []
    document = json.loads(outcome.report_json.read_text())
    assert document["summary"]["drifted"] == outcome.drifted
    assert "user_transaction_stats:last_txn_epoch" in document["drift"][0]["skipped"]
    _check_html(outcome.report_html, outcome.drifted)


def test_drift_that_no_feature_reads_is_said_not_passed_silently(tmp_path: Path) -> None:
    """`--drift channel` changes transactions.channel, which no declared feature reads: the report
    and the command say so, while amount drift, which features read, gets no such note."""
    from monitoring import run_monitoring
    from pipelines.synthetic import SyntheticConfig

    config = SyntheticConfig(n_users=200, n_merchants=30, days=60, seed=2, drift=("channel", "amount"),
                             start=datetime(2026, 1, 1, tzinfo=UTC))
    settings, outcome = _drift_of_generated(tmp_path, config)
    assert len(outcome.notes) == 1, outcome.notes
    assert "drift 'channel'" in outcome.notes[0] and "transactions.channel" in outcome.notes[0]
    assert "no feature of the checked services reads" in outcome.notes[0]
    assert json.loads(outcome.report_json.read_text())["summary"]["notes"] == outcome.notes
    assert "transactions.channel" in outcome.report_html.read_text()
    printed = subprocess.run([feastkit_bin(), "drift", "--service", "fraud_detection_v1", "--no-fail-on-drift"],
                             env={**settings_env(settings), "FEASTKIT_REPORTS_DIR": str(settings.reports_dir)},
                             capture_output=True, text=True, timeout=600)
    assert printed.returncode == 0, printed.stderr
    assert "note: drift 'channel'" in printed.stdout
    # data generated without drift carries no manifest: no note
    from pipelines.synthetic import write_drift_manifest

    assert write_drift_manifest(SyntheticConfig(), settings.raw_dir) is None
    assert run_monitoring(settings, feature_service="fraud_detection_v1", checks=("drift",)).notes == []


def test_clean_deployment_full_run_and_reports(monitored: Monitored) -> None:
    """No drift injected: nothing flagged; freshness flags only the lagging view; no skew."""
    from monitoring import MonitoringOutcome, run_monitoring

    outcome = run_monitoring(monitored.settings, end=monitored.end, sample_entities=60,
                             store=monitored.store)
    assert isinstance(outcome, MonitoringOutcome)
    assert outcome.drifted == [], outcome.drifted
    assert outcome.stale == [monitored.stale_view]
    assert outcome.skewed == []
    assert outcome.ok is False
    services = {d.feature_service for d in outcome.drift}
    assert services == {"fraud_detection_v1", "fraud_detection_v2", "churn_prediction_v1"}  # every trainable service
    for run in outcome.drift:  # bundles exist in the deployment: the model score is compared too
        assert run.prediction is not None and run.model_version
        assert not run.prediction.drifted
    document = json.loads(outcome.report_json.read_text())
    assert document["schema_version"] == 1
    assert set(document) >= {"generated_at", "checks", "thresholds", "summary", "drift", "freshness", "skew"}
    assert document["summary"] == {"ok": False, "drifted": [], "stale": ["user_profile"], "skewed": [],
                                   "notes": []}
    assert outcome.report_json.parent == monitored.settings.reports_dir
    _check_html(outcome.report_html, [])


def test_freshness_flags_only_the_view_older_than_its_sla(monitored: Monitored) -> None:
    from monitoring.freshness import check_freshness

    results = {r.view: r for r in check_freshness(monitored.store, monitored.end)}
    assert [v for v, r in results.items() if r.stale] == ["user_profile"]
    assert results["user_profile"].age_seconds == pytest.approx(5 * 86400, abs=1)
    assert results["user_transaction_stats"].sla_seconds == 2 * 3600
    # later, the 2h-SLA views go stale too, the 26h one not yet
    later = {r.view: r.stale for r in check_freshness(monitored.store, monitored.end + timedelta(hours=3))}
    assert later["user_transaction_stats"] and later["merchant_risk_stats"]
    assert not later["customer_activity"]


def test_skew_finds_an_injected_online_mismatch(monitored: Monitored) -> None:
    from monitoring.skew import check_skew, materialized_until, sample_entity_keys

    store, clean_dir = monitored.store, monitored.settings.clean_dir
    clean = check_skew(store, "fraud_detection_v1", clean_dir, sample_entities=40)
    assert clean and all(r.mismatches == 0 for r in clean), [r for r in clean if r.mismatches]
    assert {r.feature.split(":")[0] for r in clean} == {"user_transaction_stats", "merchant_risk_stats",
                                                        "user_profile"}

    at = materialized_until(store, ["merchant_risk_stats"])
    keys = sample_entity_keys(clean_dir, "merchant_id", 40, at)
    refs = [f"merchant_risk_stats:{f.name}" for f in store.get_feature_view("merchant_risk_stats").features]
    online = store.get_online_features(features=refs, entity_rows=[{"merchant_id": k} for k in keys]) \
        .to_dict(include_event_timestamps=True)
    i = next(i for i, v in enumerate(online["merchant_avg_ticket_30d"]) if v is not None)
    merchant = keys[i]
    # the same event time as the stored row, so the guarded online store accepts the overwrite
    # (and re-materializing the interval afterwards restores the true row)
    row = {"merchant_id": [merchant],
           "event_timestamp": [pd.Timestamp(online["merchant_avg_ticket_30d__ts"][i], unit="s", tz="UTC")]}
    row.update({ref.split(":")[1]: [online[ref.split(":")[1]][i]] for ref in refs})
    row["merchant_avg_ticket_30d"] = [float(online["merchant_avg_ticket_30d"][i]) + 999.0]
    try:
        store.write_to_online_store("merchant_risk_stats", pd.DataFrame(row))
        skewed = check_skew(store, "fraud_detection_v1", clean_dir, sample_entities=40)
        by_feature = {r.feature: r for r in skewed}
        ticket = by_feature["merchant_risk_stats:merchant_avg_ticket_30d"]
        assert ticket.mismatches == 1
        assert ticket.examples[0]["merchant_id"] == merchant
        assert ticket.examples[0]["online"] == pytest.approx(ticket.examples[0]["offline"] + 999.0)
        assert all(r.mismatches == 0 for r in skewed if not r.feature.startswith("merchant_risk_stats:"))
    finally:  # put the materialized value back for the other tests of this module
        from feastkit.store import materialize_interval

        materialize_interval(monitored.settings, at - timedelta(days=3), at, ["merchant_risk_stats"],
                             store=store)
    assert all(r.mismatches == 0 for r in check_skew(store, "fraud_detection_v1", clean_dir,
                                                     sample_entities=40))


def test_monitoring_routes(monitored: Monitored) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from monitoring import run_monitoring
    from monitoring.freshness import check_freshness
    from serving.monitoring_routes import monitoring_router

    app = FastAPI()
    app.include_router(monitoring_router(monitored.settings, freshness=check_freshness))
    client = TestClient(app)
    fresh = client.get("/v1/monitoring/freshness", params={"as_of": monitored.end.isoformat()})
    assert fresh.status_code == 200
    body = fresh.json()
    assert body["stale"] == ["user_profile"] and body["ok"] is False
    assert {v["view"] for v in body["views"]} >= {"user_transaction_stats", "customer_activity"}

    empty = monitored.settings.model_copy(update={"reports_dir": monitored.settings.reports_dir / "none"})
    missing = TestClient(_app(monitoring_router(empty))).get("/v1/monitoring/drift/latest")
    assert missing.status_code == 404 and "feastkit drift" in missing.json()["detail"]

    outcome = run_monitoring(monitored.settings, end=monitored.end, feature_service="churn_prediction_v1",
                             checks=("freshness",), store=monitored.store)
    latest = client.get("/v1/monitoring/drift/latest")
    assert latest.status_code == 200
    assert latest.json()["generated_at"] == json.loads(outcome.report_json.read_text())["generated_at"]


def _app(router: object) -> object:
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(router)
    return app


def test_cli_exit_codes(monitored: Monitored) -> None:
    """Staleness exits 1 (a scheduler marks the task failed) unless told not to."""
    env = settings_env(monitored.settings)
    as_of = monitored.end.strftime("%Y-%m-%dT%H:%M")
    failing = subprocess.run([feastkit_bin(), "freshness", "--as-of", as_of], env=env,
                             capture_output=True, text=True, timeout=300)
    assert failing.returncode == 1, failing.stderr
    assert "STALE user_profile" in failing.stdout and "ok    customer_activity" in failing.stdout
    passing = subprocess.run([feastkit_bin(), "freshness", "--as-of", as_of, "--no-fail-on-stale"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert passing.returncode == 0, passing.stderr


def test_the_multivariate_test_runs_per_entity_and_reaches_the_reports(tmp_path: Path) -> None:
    """With the multivariate test on, each entity's features (the request-time ones with the user's)
    are tested together, grouped by that entity, and the results reach the JSON, the HTML and the
    drifted list; `--drift night_spend` keeps every feature's own distribution, so no per-feature
    test flags it."""
    from feastkit.store import apply_repo
    from monitoring import run_monitoring
    from pipelines.synthetic import SyntheticConfig

    config = SyntheticConfig(n_users=800, n_merchants=50, days=70, seed=3, drift=("night_spend",),
                             start=datetime(2026, 1, 1, tzinfo=UTC))
    copy_repo_definitions(tmp_path / "repo")
    settings = make_settings(tmp_path, drift_multivariate=True)
    build_features(settings, config)
    apply_repo(settings)
    outcome = run_monitoring(settings, feature_service="fraud_detection_v1", checks=("drift",))
    (run,) = outcome.drift
    assert [f.feature for f in run.features if f.drifted] == []
    by_entity = {m.entity: m for m in run.multivariate}
    assert set(by_entity) == {"user_id", "merchant_id"}
    user, merchant = by_entity["user_id"], by_entity["merchant_id"]
    assert "transaction_hour" in user.features and "merchant_txn_count_30d" not in user.features
    assert set(merchant.features) == {c for c in run.refs if c.startswith("merchant_")}
    for m in (user, merchant):  # shuffles run only when the AUROC reaches the bar, and stop once decided
        assert (m.permutations == 0 and m.p_value is None) if m.auc < 0.55 else 1 <= m.permutations <= 19
    assert not merchant.drifted     # nothing changed at the merchants
    assert user.drifted             # how amounts and hours go together did (AUROC 0.60, p 0.05)
    flagged = [m for m in run.multivariate if m.drifted]
    assert outcome.drifted == [f"multivariate:fraud_detection_v1:{m.entity}" for m in flagged]
    document = json.loads(outcome.report_json.read_text())
    assert {m["ref"] for m in document["drift"][0]["multivariate"]} == {
        "multivariate:fraud_detection_v1:user_id", "multivariate:fraud_detection_v1:merchant_id"}
    assert "domain classifier" in outcome.report_html.read_text()
    _check_html(outcome.report_html, outcome.drifted)
    # off (the default), there is no such test
    assert run_monitoring(make_settings(tmp_path), feature_service="fraud_detection_v1",
                          checks=("drift",)).drift[0].multivariate == []
