"""The registry changing under a running `feastkit serve`: a real `feast apply` in a repo copy."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest

from feastkit.store import apply_repo
from tests.conftest import (
    REPO_ROOT,
    Deployment,
    copy_repo_definitions,
    make_settings,
    start_server,
    stop_server,
)
from tests.integration.test_api import _known_user

pytestmark = pytest.mark.integration
HTTP = httpx.Client(timeout=60)
POLL_SECONDS = 0.5


def _eventually(check: Callable[[], object], what: str, within: float = 90.0) -> object:
    """The first truthy result of `check`, polled; a liveness bound, not a speed claim."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"not {what} within {within}s")


def test_the_server_follows_feast_apply(deployment: Deployment, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    repo = copy_repo_definitions(tmp_path / "repo")
    settings = make_settings(tmp_path, data_dir=deployment.settings.data_dir,
                             models_dir=deployment.settings.models_dir)
    apply_repo(settings)
    monkeypatch.setenv("FEASTKIT_REGISTRY_POLL_SECONDS", str(POLL_SECONDS))
    server = start_server(settings, tmp_path / "server.log")
    end = pd.Timestamp(deployment.data_end)
    user = _known_user(deployment)
    churn = {"user_id": user, "as_of": (end + pd.Timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    fraud = {"user_id": user, "merchant_id": 501, "amount": 42.5, "channel": "pos",
             "timestamp": (end + pd.Timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    profile = [f.name for f in deployment.store.get_feature_view("user_profile").features]
    services = repo / "services.py"
    original = services.read_text()

    def churn_features() -> set[str]:
        r = HTTP.post(f"{server.url}/v1/predict/churn?explain=true", json=churn)
        return set(r.json()["features"]) if r.status_code == 200 else set()

    def ready() -> httpx.Response:
        return HTTP.get(f"{server.url}/ready")

    try:
        assert ready().status_code == 200
        assert not set(profile) & churn_features()

        # 1. a change the bundles still match (the churn service reads one more view): picked up
        services.write_text(original.replace(
            "user_transaction_stats\n", "user_transaction_stats, user_profile\n").replace(
            "features=[customer_activity],", "features=[customer_activity, user_profile],"))
        apply_repo(settings)
        _eventually(lambda: set(profile) <= churn_features(), "serving the applied service definition")
        assert ready().status_code == 200 and ready().json()["checks"]["registry"] == "ok"

        # 2. a view the churn bundle was trained on is dropped: last good configuration, not ready
        (repo / "churn_features.py").unlink()
        services.write_text(services.read_text().replace("from churn_features import customer_activity\n", "")
                            .replace("features=[customer_activity, user_profile],", "features=[user_profile],"))
        apply_repo(settings)
        # the watcher reports the change; the background probe's next ping no longer reads the
        # dropped view's table, so the store itself is not blamed once both have seen the apply
        down = _eventually(lambda: (r := ready()).status_code == 503 and "churn_prediction_v1" in
                           r.json()["checks"]["registry"] and r.json()["checks"]["online_store"] == "ok" and r,
                           "not ready after the drop, with the store not blamed")
        reason = down.json()["checks"]["registry"]
        assert "churn_prediction_v1" in reason and "customer_activity:" in reason, reason
        assert "feastkit train --service churn_prediction_v1" in reason, reason
        assert down.json()["checks"]["online_store"] == "ok", down.json()  # not blamed on the store
        assert "fraud_detection" not in reason, reason  # the fraud bundles still match
        r = HTTP.post(f"{server.url}/v1/predict/churn", json=churn)
        assert r.status_code == 503, (r.text, server.log()[-3000:])
        assert "online feature store unavailable" not in r.text and "registry changed" in r.text, r.text
        # the failed read opened no breaker: the other models keep answering
        ok = HTTP.post(f"{server.url}/v1/predict/fraud", json=fraud)
        assert ok.status_code == 200, ok.text

        # 3. the definitions are applied again: ready, and churn is served again
        shutil.copy2(REPO_ROOT / "feature_repo" / "churn_features.py", repo / "churn_features.py")
        services.write_text(original)
        apply_repo(settings)
        _eventually(lambda: ready().status_code == 200, "ready after re-applying")
        assert ready().json()["checks"]["registry"] == "ok"
        assert HTTP.post(f"{server.url}/v1/predict/churn", json=churn).status_code == 200
        assert not set(profile) & churn_features()
        assert "Traceback" not in server.log()
    finally:
        stop_server(server)
