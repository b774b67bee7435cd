"""The shipped Prometheus alerting rules and Grafana dashboard: valid for promtool, firing (and
staying quiet) as documented, reading only series the server and the checks really export, and
evaluated by a real Prometheus scraping a real server and the checks' textfiles."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import warnings
from datetime import timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from feastkit.settings import Settings
from tests.conftest import REPO_ROOT, Deployment, free_port
from tests.integration.serving_support import private_copy

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

RULES = REPO_ROOT / "monitoring" / "prometheus" / "feastkit-alerts.yml"
DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "feastkit.json"
SERVER = {"job": "feastkit", "instance": "a:8000"}
NODE = {"job": "node", "instance": "n:9100"}


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make test` installs Debian's prometheus package (scripts/ensure-services.sh)"
    return found


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _descriptions() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["annotations"]["description"] for g in rules["groups"] for r in g["rules"]}


def _alert(name: str, severity: str, summary: str, **labels: str) -> dict:
    return {"exp_labels": {"severity": severity, **labels},
            "exp_annotations": {"summary": summary, "description": _descriptions()[name]}}


def _cases() -> list[dict]:
    """One promtool test per alert: series that must fire it (with the rendered summary), next to
    series that must not."""
    fraud = "/v1/predict/fraud"
    request = {**SERVER, "route": fraud, "method": "POST"}
    healthy = {**SERVER, "instance": "b:8000"}
    worker = {"job": "feastkit-stream", "instance": "w:9100"}
    stream = "feastkit:events:{transactions}"
    age = "feastkit_stream_event_age_seconds_bucket"
    view = {**worker, "view": "user_realtime_activity"}
    return [
        {"input_series": [
            _series("feastkit_stream_published_total", {**SERVER, "outcome": "appended"}, "0+50x20"),
            _series("feastkit_stream_published_total", {**SERVER, "outcome": "broker_error"}, "0x5 7x15"),
            _series("feastkit_stream_published_total", {**healthy, "outcome": "broker_error"}, "0x20"),
            _series("feastkit_stream_lag_entries", {**worker, "stream": stream}, "20000x10"),
            _series("feastkit_stream_lag_entries", {**worker, "stream": "feastkit:events:{other}"}, "12x10"),
            _series("feastkit_stream_errors_total", {**worker, "kind": "ConnectionError"}, "0x2 1+1x10"),
            _series("feastkit_stream_events_total", {**worker, "stream": stream, "outcome": "accepted"},
                    "0+100x20"),
            _series("feastkit_stream_events_total", {**worker, "stream": stream, "outcome": "late"}, "0x5 2x15"),
            _series("feastkit_stream_events_total", {**worker, "stream": stream, "outcome": "duplicate"},
                    "0x5 9x15"),
            _series(age, {**view, "le": "1"}, "0x30"), _series(age, {**view, "le": "60"}, "0+10x30"),
            _series(age, {**view, "le": "+Inf"}, "0+10x30"),
            _series(age, {**worker, "view": "fresh", "le": "1"}, "0+10x30"),
            _series(age, {**worker, "view": "fresh", "le": "60"}, "0+10x30"),
            _series(age, {**worker, "view": "fresh", "le": "+Inf"}, "0+10x30")],
         "alert_rule_test": [
             {"eval_time": "10m", "alertname": "FeastkitStreamPublishDropping", "exp_alerts": [
                 _alert("FeastkitStreamPublishDropping", "ticket",
                        "a:8000 dropped scored transactions bound for the event stream (broker_error)",
                        outcome="broker_error", **SERVER)]},
             {"eval_time": "6m", "alertname": "FeastkitStreamLagging", "exp_alerts": [
                 _alert("FeastkitStreamLagging", "page", f"the stream worker is 20000 entries behind on {stream}",
                        stream=stream, **worker)]},
             {"eval_time": "9m", "alertname": "FeastkitStreamErrors", "exp_alerts": [
                 _alert("FeastkitStreamErrors", "page",
                        "the stream worker on w:9100 keeps failing batches (ConnectionError)",
                        kind="ConnectionError", **worker)]},
             {"eval_time": "10m", "alertname": "FeastkitStreamEventsSetAside", "exp_alerts": [
                 _alert("FeastkitStreamEventsSetAside", "ticket",
                        f"events on {stream} went to the dead-letter stream (late)", stream=stream, outcome="late",
                        **worker)]},
             {"eval_time": "20m", "alertname": "FeastkitStreamEventsLate", "exp_alerts": [
                 _alert("FeastkitStreamEventsLate", "ticket", "events of user_realtime_activity reach the online "
                        "store more than 10 s after they happened", view="user_realtime_activity", **worker)]}]},
        {"input_series": [_series("up", SERVER, "0x10"), _series("up", healthy, "1x10")],
         "alert_rule_test": [{"eval_time": "5m", "alertname": "FeastkitServerDown", "exp_alerts": [
             _alert("FeastkitServerDown", "page", "feastkit server a:8000 is not answering /metrics", **SERVER)]}]},
        {"input_series": [  # 5 errors in 105 requests on a; b's 503s are only /ready (a drained replica)
            _series("feastkit_http_requests_total", {**request, "status": "200"}, "0+100x20"),
            _series("feastkit_http_requests_total", {**request, "status": "503"}, "0+5x20"),
            _series("feastkit_http_requests_total", {**healthy, "route": fraud, "method": "POST", "status": "200"},
                    "0+100x20"),
            _series("feastkit_http_requests_total", {**healthy, "route": "/ready", "method": "GET", "status": "503"},
                    "0+50x20")],
         "alert_rule_test": [
             {"eval_time": "4m", "alertname": "FeastkitHighErrorRate"},  # not yet: the 5 minutes of `for`
             {"eval_time": "12m", "alertname": "FeastkitHighErrorRate", "exp_alerts": [
                 _alert("FeastkitHighErrorRate", "page", "4.762% of requests to a:8000 fail with 5xx", **SERVER)]}]},
        {"input_series": [  # 90 % of requests between 25 and 50 ms: p99 = 25 + 25 * 89/90 ms
            *(_series("feastkit_http_request_duration_seconds_bucket", {**request, "le": le}, values)
              for le, values in (("0.01", "0x30"), ("0.025", "0+10x30"), ("0.05", "0+100x30"), ("+Inf", "0+100x30"))),
            *(_series("feastkit_http_request_duration_seconds_bucket", {**healthy, "route": fraud, "method": "POST",
                                                                          "le": le}, "0+100x30")
              for le in ("0.01", "0.025", "0.05", "+Inf"))],
         "alert_rule_test": [{"eval_time": "16m", "alertname": "FeastkitPredictLatencyHigh", "exp_alerts": [
             _alert("FeastkitPredictLatencyHigh", "ticket", f"p99 latency of {fraud} on a:8000 is 49.72ms",
                    route=fraud, **SERVER)]}]},
        {"input_series": [_series("feastkit_store_breaker_open", {**SERVER, "operation": "read"}, "1x10"),
                          _series("feastkit_store_breaker_open", {**SERVER, "operation": "push"}, "1x10"),
                          _series("feastkit_store_breaker_open", {**healthy, "operation": "read"}, "0x10")],
         "alert_rule_test": [
             {"eval_time": "3m", "alertname": "FeastkitOnlineStoreDown", "exp_alerts": [
                 _alert("FeastkitOnlineStoreDown", "page", "a:8000 cannot read the online store", **SERVER)]},
             {"eval_time": "3m", "alertname": "FeastkitPushFailing"},
             {"eval_time": "7m", "alertname": "FeastkitPushFailing", "exp_alerts": [
                 _alert("FeastkitPushFailing", "ticket", "pushes to a:8000 cannot write the online store", **SERVER)]}]},
        {"input_series": [_series("feastkit_unexpected_errors_total", {**SERVER, "route": fraud}, "0x5 3x20"),
                          _series("feastkit_unexpected_errors_total", {**healthy, "route": fraud}, "0x25")],
         "alert_rule_test": [
             {"eval_time": "8m", "alertname": "FeastkitUnexpectedErrors", "exp_alerts": [
                 _alert("FeastkitUnexpectedErrors", "ticket", f"{fraud} on a:8000 answered 500 in the last 10 minutes",
                        route=fraud, **SERVER)]},
             {"eval_time": "25m", "alertname": "FeastkitUnexpectedErrors"}]},  # quiet again 10 minutes later
        {"input_series": [_series("feastkit_prediction_log_rows_total", {**SERVER, "outcome": "written"}, "0+500x20"),
                          _series("feastkit_prediction_log_rows_total", {**SERVER, "outcome": "queue_full"},
                                  "0x5 40x15")],
         "alert_rule_test": [{"eval_time": "10m", "alertname": "FeastkitPredictionLogDropping", "exp_alerts": [
             _alert("FeastkitPredictionLogDropping", "ticket",
                    "a:8000 dropped predictions from the prediction log (queue_full)", outcome="queue_full",
                    **SERVER)]}]},
        {"input_series": [
            _series("feastkit_drift_features_drifted", {**NODE, "service": "fraud_detection_v1"}, "2x3"),
            _series("feastkit_drift_features_drifted", {**NODE, "service": "churn_prediction_v1"}, "0x3"),
            _series("feastkit_view_stale", {**NODE, "view": "user_transaction_stats"}, "1x3"),
            _series("feastkit_view_stale", {**NODE, "view": "user_profile"}, "0x3"),
            _series("feastkit_skew_features_mismatched", {**NODE, "service": "fraud_detection_v1"}, "1x3"),
            _series("feastkit_replay_features_failing", {**NODE, "service": "fraud_detection_v2"}, "3x3"),
            _series("feastkit_performance_weeks_dropped", {**NODE, "service": "fraud_detection_v1"}, "1x3"),
            _series("feastkit_performance_weeks_dropped", {**NODE, "service": "fraud_detection_v2"}, "0x3"),
            _series("feastkit_performance_latest", {**NODE, "service": "fraud_detection_v1", "metric": "roc_auc",
                                                    "kind": "estimated"}, "0.7x3"),
            _series("feastkit_performance_reference", {**NODE, "service": "fraud_detection_v1", "metric": "roc_auc"},
                    "0.83x3"),
            _series("feastkit_performance_latest", {**NODE, "service": "fraud_detection_v2", "metric": "roc_auc",
                                                    "kind": "estimated"}, "0.80x3"),
            _series("feastkit_performance_reference", {**NODE, "service": "fraud_detection_v2", "metric": "roc_auc"},
                    "0.83x3"),
            _series("feastkit_check_last_run_timestamp_seconds", {**NODE, "check": "drift"}, "-200000x3"),
            _series("feastkit_check_last_run_timestamp_seconds", {**NODE, "check": "replay"}, "0x3")],
         "alert_rule_test": [
             {"eval_time": "1m", "alertname": "FeastkitFeatureDrift", "exp_alerts": [
                 _alert("FeastkitFeatureDrift", "ticket", "2 feature(s) of fraud_detection_v1 drifted",
                        service="fraud_detection_v1", **NODE)]},
             {"eval_time": "1m", "alertname": "FeastkitViewStale", "exp_alerts": [
                 _alert("FeastkitViewStale", "page", "feature view user_transaction_stats is older than its SLA",
                        view="user_transaction_stats", **NODE)]},
             {"eval_time": "1m", "alertname": "FeastkitSkew", "exp_alerts": [
                 _alert("FeastkitSkew", "ticket", "1 feature(s) of fraud_detection_v1 differ online and offline",
                        service="fraud_detection_v1", **NODE)]},
             {"eval_time": "1m", "alertname": "FeastkitReplayMismatch", "exp_alerts": [
                 _alert("FeastkitReplayMismatch", "ticket",
                        "3 served feature(s) of fraud_detection_v2 disagree with the offline rebuild",
                        service="fraud_detection_v2", **NODE)]},
             {"eval_time": "1m", "alertname": "FeastkitPerformanceDrop", "exp_alerts": [
                 _alert("FeastkitPerformanceDrop", "ticket",
                        "1 week(s) of fraud_detection_v1 performed below the allowed drop",
                        service="fraud_detection_v1", **NODE)]},
             {"eval_time": "1m", "alertname": "FeastkitEstimatedPerformanceDrop", "exp_alerts": [
                 _alert("FeastkitEstimatedPerformanceDrop", "ticket",
                        "the latest week's estimated ROC AUC of fraud_detection_v1 is 0.700",
                        service="fraud_detection_v1", metric="roc_auc", kind="estimated", **NODE)]},
             {"eval_time": "1m", "alertname": "FeastkitCheckNotRunning", "exp_alerts": [
                 _alert("FeastkitCheckNotRunning", "ticket", "the drift check has not run for 2d 7h 34m 20s",
                        check="drift", **NODE)]}]},
    ]


def test_the_rules_are_valid_and_fire_as_documented(tmp_path: Path) -> None:
    promtool = _promtool()
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested_alerts = {t["alertname"] for case in _cases() for t in case["alert_rule_test"]}
    assert tested_alerts == set(_descriptions()), "every alert has a test here"
    tests = [{"interval": "1m", **case} for case in _cases()]
    spec = tmp_path / "feastkit-alerts.test.yml"
    spec.write_text(json.dumps({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))  # JSON is YAML
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


_NAME = re.compile(r"\b(feastkit_[a-z_]+|up)\b")


def _names_in(expression: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in _NAME.findall(expression)} - {"up"}


def _rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def _dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def _family_names(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for family in text_string_to_metric_families(text):  # declared families count, samples or not
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
        names.update(re.sub(r"_(bucket|sum|count)$", "", s.name) for s in family.samples)
    return {n for n in names if not n.endswith("_created")}  # prometheus-client's creation times


@pytest.fixture(scope="module")
def exported(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str, object]:
    """A copy of the deployment that served traffic (its /metrics text) and ran every check, each
    writing its textfile: drift, freshness (judged 30 days after the data: every view is stale) and
    skew, the replay of the served traffic, performance."""
    import pandas as pd

    from monitoring.checks import run_monitoring
    from monitoring.performance import performance_check
    from monitoring.replay import replay_check
    from serving.app import ServingState, create_app

    root = tmp_path_factory.mktemp("alerts")
    settings = private_copy(deployment, root, fraud_service="fraud_detection_v1", prediction_log_dir=root / "log",
                            reports_dir=root / "reports")
    tx = pd.read_parquet(settings.clean_dir / "transactions.parquet").tail(20)
    at = deployment.data_end + timedelta(minutes=5)  # scored just after the data, as the online store holds it
    bodies = [{"user_id": int(r.user_id), "merchant_id": int(r.merchant_id), "amount": float(r.amount),
               "timestamp": (at + timedelta(seconds=i)).isoformat()} for i, r in enumerate(tx.itertuples())]
    with TestClient(create_app(settings, ServingState.load(settings))) as c:
        assert c.post("/v1/predict/fraud:batch", json={"transactions": bodies}).status_code == 200
        assert c.post("/v1/predict/fraud", json=bodies[0]).status_code == 200
        assert c.post("/v1/predict/churn", json={"user_id": bodies[0]["user_id"],
                                                 "as_of": at.isoformat()}).status_code == 200
        assert c.post("/v1/push/user_realtime_push", json={"events": [
            {"user_id": bodies[0]["user_id"], "txn_count_10m": 1, "amount_sum_10m": 2.0,
             "event_timestamp": bodies[0]["timestamp"]}]}).status_code == 200
        assert c.post("/v1/predict/fraud", json={**bodies[0], "amount": -1}).status_code == 422
        served = c.get("/metrics").text
    monitored = run_monitoring(settings, end=deployment.data_end, as_of=deployment.data_end + timedelta(days=30),
                               feature_service="fraud_detection_v1", store=deployment.store)
    assert monitored.stale
    replay_check(settings, None, None, store=deployment.store)
    performance = performance_check(settings, "fraud_detection_v1", as_of=deployment.data_end + timedelta(days=61),
                                    store=deployment.store)
    return settings, served, (monitored, performance)


def test_every_series_the_rules_and_the_dashboard_read_is_exported(exported: tuple[Settings, str, object]) -> None:
    settings, served, _ = exported
    files = sorted(Path(settings.check_metrics_dir).glob("feastkit_*.prom"))
    assert [f.name for f in files] == [f"feastkit_{c}.prom" for c in
                                       ("drift", "freshness", "performance", "replay", "skew")]
    # the stream worker's series (`feastkit stream`, its own endpoint): every family it declares
    from prometheus_client import generate_latest

    from pipelines.stream import StreamMetrics

    worker = _family_names(generate_latest(StreamMetrics().registry).decode())
    assert {"feastkit_stream_events_total", "feastkit_stream_lag_entries"} <= worker
    available = _family_names(served) | worker | set().union(*(_family_names(f.read_text()) for f in files))
    for expression in _rule_expressions() + _dashboard_expressions():
        missing = _names_in(expression) - available
        assert not missing, (expression, missing)
    # and everything the server and the checks export is on the dashboard or in a rule
    read = set().union(*(_names_in(e) for e in _rule_expressions() + _dashboard_expressions()))
    unread = {n for n in available if n.startswith("feastkit_")} - read - {
        "feastkit_check_ok", "feastkit_drift_features_tested", "feastkit_view_age_seconds", "feastkit_view_sla_seconds",
        "feastkit_replay_rows", "feastkit_replay_max_mismatch_rate"}
    assert not unread


def _query(port: int, expression: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_a_real_prometheus_scrapes_them_runs_every_panel_and_fires(exported: tuple[Settings, str, object],
                                                                   tmp_path: Path) -> None:
    """Prometheus scrapes the checks' textfiles (as node_exporter's textfile collector serves them)
    and the server's /metrics text, loads the rules, answers every dashboard query, and fires the
    alerts the checks' findings call for."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: `make test` installs Debian's prometheus package"
    settings, served, (monitored, performance) = exported
    site = tmp_path / "site"
    site.mkdir()
    (site / "server.prom").write_text(served)
    (site / "checks.prom").write_text("".join(f.read_text() for f in
                                              sorted(Path(settings.check_metrics_dir).glob("feastkit_*.prom"))))
    http = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(site)))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{http.server_address[1]}"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "feastkit", "metrics_path": "/server.prom", "static_configs": [{"targets": [target]}]},
            {"job_name": "node", "metrics_path": "/checks.prom", "static_configs": [{"targets": [target]}]}]}))
    process = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _query(port, 'count(up{job=~"feastkit|node"} == 1)')["data"]["result"][0]["value"][1] == "2":
                    break
            except (OSError, IndexError, KeyError):
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("prometheus did not scrape both targets: " + process.stderr.read1().decode())
        time.sleep(6)  # a few more scrapes, so rate() has two samples
        for expression in _dashboard_expressions():
            answer = _query(port, expression)
            assert answer["status"] == "success", (expression, answer)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=10) as response:
            firing = json.loads(response.read())["data"]["alerts"]
        alerts = {a["labels"]["alertname"] for a in firing}
        # what the checks found fires, and nothing else: the traffic replays clean, the server is up
        expected = {"FeastkitViewStale"} | ({"FeastkitFeatureDrift"} if monitored.drifted else set()) \
            | ({"FeastkitSkew"} if monitored.skewed else set()) \
            | ({"FeastkitPerformanceDrop"} if performance.degraded else set())
        assert alerts == expected, firing
        stale = {a["labels"]["view"] for a in firing if a["labels"]["alertname"] == "FeastkitViewStale"}
        assert stale == set(monitored.stale)
    finally:
        process.terminate()
        process.wait(timeout=30)
        http.shutdown()
