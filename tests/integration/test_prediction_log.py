"""The prediction log: every prediction, single and batch, with the features it was scored on.

Written off the request path in Feast's feature-logging schema plus the prediction's own columns;
a full queue drops and counts, a failed write is counted and logged, shutdown writes what is
queued, and a server killed mid-write leaves only whole files.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feastkit import prediction_log as fmt
from feastkit.settings import Settings
from serving.app import ServingState, create_app
from tests.conftest import Deployment, start_server
from tests.integration.serving_support import private_copy
from tests.integration.test_serving_production import fraud_body, known_user

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

UNKNOWN_USER = 9_999_999_991


@pytest.fixture(scope="module")
def copy_settings(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return private_copy(deployment, tmp_path_factory.mktemp("log-copy"), fraud_service="fraud_detection_v2")


def _settings(copy_settings: Settings, log_dir: Path, **extra: object) -> Settings:
    return copy_settings.model_copy(update={"prediction_log_dir": log_dir, **extra})


def _log(log_dir: Path, service: str) -> pa.Table:
    files = fmt.log_files(log_dir, service)
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def _log_rows(client: TestClient) -> dict[str, float]:
    """The prediction log's row counts by outcome (read from the app's metrics: works after shutdown too)."""
    out = {}
    for family in text_string_to_metric_families(client.app.state.metrics.render()[0].decode()):
        for sample in family.samples:
            if sample.name == "feastkit_prediction_log_rows_total":
                out[sample.labels["outcome"]] = sample.value
    return out


def test_every_prediction_is_logged_with_the_features_it_was_scored_on(
        copy_settings: Settings, deployment: Deployment, tmp_path: Path) -> None:
    settings = _settings(copy_settings, tmp_path / "log")
    state = ServingState.load(settings)
    user = known_user(deployment)
    with TestClient(create_app(settings, state)) as c:
        single = c.post("/v1/predict/fraud?explain=true", json=fraud_body(deployment))
        batch = c.post("/v1/predict/fraud:batch?explain=true", json={"transactions": [
            fraud_body(deployment, transaction_id="b0"),
            fraud_body(deployment, transaction_id="b1", user_id=UNKNOWN_USER),
            fraud_body(deployment, transaction_id="b2", amount=990.0)]})
        churn = c.post("/v1/predict/churn", json={"user_id": user})
        assert single.status_code == batch.status_code == churn.status_code == 200, (single.text, batch.text)
    # the app has shut down: what was queued is written
    fraud = _log(tmp_path / "log", "fraud_detection_v2").to_pylist()
    churn_rows = _log(tmp_path / "log", "churn_prediction_v1").to_pylist()
    assert len(fraud) == 4 and len(churn_rows) == 1
    fraud.sort(key=lambda r: (r[fmt.REQUEST_ID] != single.headers["x-request-id"], r[fmt.ROW]))
    answers = [single.json(), *batch.json()["predictions"]]
    ids = [single.headers["x-request-id"]] + [batch.headers["x-request-id"]] * 3
    assert [r[fmt.REQUEST_ID] for r in fraud] == ids
    assert [r[fmt.ROW] for r in fraud] == [0, 0, 1, 2]
    store = state.models["fraud_detection_v2"].reader.store
    columns = fmt.feature_columns(store, "fraud_detection_v2")
    schema = fmt.log_schema(store, "fraud_detection_v2")
    assert pq.read_schema(fmt.log_files(tmp_path / "log", "fraud_detection_v2")[0]).equals(schema)
    for row, answer in zip(fraud, answers, strict=True):
        assert row[fmt.PROBABILITY] == answer["probability"] and row[fmt.DECISION] == answer["decision"]
        assert row[fmt.MODEL_VERSION] == answer["model_version"] and row[fmt.THRESHOLD] == answer["threshold"]
        assert row["user_id"] in (user, UNKNOWN_USER) and row["amount"] in (42.5, 990.0)
        request_time = row[fmt.REQUEST_TIME]
        for column, feature in columns:
            assert row[column] == pytest.approx(answer["features"][feature], nan_ok=True), column
            status, stamp = row[f"{column}__status"], row[f"{column}__timestamp"]
            if feature in answer["missing_features"] or answer["features"][feature] is None:
                assert status != fmt.PRESENT, column
            else:
                assert status == fmt.PRESENT, column
            if stamp is not None:
                assert stamp <= request_time, column
    unknown = fraud[2]
    user_columns = [c for c, _ in columns if c.startswith("user_transaction_stats__")]
    assert user_columns and all(unknown[f"{c}__status"] == fmt.NOT_FOUND for c in user_columns)
    known = fraud[0]
    assert all(known[f"{c}__timestamp"] is not None for c in user_columns)
    odfv = [c for c, _ in columns if c.startswith("transaction_request_features__")]
    assert odfv and all(known[f"{c}__timestamp"] is None and known[f"{c}__status"] == fmt.PRESENT for c in odfv)
    assert churn_rows[0]["user_id"] == user and churn_rows[0][fmt.PROBABILITY] == churn.json()["probability"]
    # Feast's data source over the log names the files it reads
    source = fmt.log_source(tmp_path / "log", "fraud_detection_v2")
    assert source.timestamp_field == fmt.REQUEST_TIME and source.path.endswith("fraud_detection_v2/*.parquet")


def test_a_full_queue_drops_and_counts_and_requests_do_not_wait(
        copy_settings: Settings, deployment: Deployment, tmp_path: Path) -> None:
    settings = _settings(copy_settings, tmp_path / "log", prediction_log_queue_rows=3,
                         prediction_log_flush_seconds=3600.0, prediction_log_flush_rows=1_000_000)
    with TestClient(create_app(settings, ServingState.load(settings))) as c:
        for i in range(8):
            assert c.post("/v1/predict/fraud", json=fraud_body(deployment, transaction_id=f"t{i}")).status_code == 200
        during = _log_rows(c)
        assert c.get("/metrics").text.count("feastkit_prediction_log_queued 3.0") == 1
    assert during == {"queue_full": 5.0}
    assert _log(tmp_path / "log", "fraud_detection_v2").num_rows == 3  # written at shutdown


def test_the_rows_become_arrow_in_the_writer_process_not_in_the_server(
        copy_settings: Settings, deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The conversion held the server's interpreter lock for milliseconds while requests waited:
    it runs in a process of its own, so breaking it in the server's interpreter breaks nothing."""
    from serving import log_writer

    def not_here(*_: object) -> None:
        raise AssertionError("a prediction log conversion ran in the server's process")
    monkeypatch.setattr(log_writer, "table_of", not_here)
    settings = _settings(copy_settings, tmp_path / "log", prediction_log_flush_seconds=3600.0,
                         prediction_log_flush_rows=1_000_000)
    with TestClient(create_app(settings, ServingState.load(settings))) as c:
        for i in range(150):
            assert c.post("/v1/predict/fraud", json=fraud_body(deployment, transaction_id=f"t{i}")).status_code == 200
        assert c.post("/v1/predict/fraud:batch", json={"transactions": [
            fraud_body(deployment, transaction_id=f"b{i}") for i in range(100)]}).status_code == 200
        log = c.app.state.prediction_log
        deadline = time.monotonic() + 30
        while log.writer_pid is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.writer_pid not in (None, os.getpid())
        assert _log_rows(c).get("written", 0) == 0  # held by the writer until its flush (shutdown here)
    logged = _log(tmp_path / "log", "fraud_detection_v2")
    assert logged.num_rows == 250 and len(set(logged.column(fmt.REQUEST_ID).to_pylist())) == 151
    assert log.unwritten_rows == 0


def test_a_server_that_logs_nothing_starts_no_writer(copy_settings: Settings, tmp_path: Path) -> None:
    settings = _settings(copy_settings, tmp_path / "log")
    with TestClient(create_app(settings, ServingState.load(settings))) as c:
        assert c.get("/ready").status_code == 200
        time.sleep(1.5)  # longer than the sender's wait
        assert c.app.state.prediction_log.writer_pid is None
    assert not (tmp_path / "log").exists()


def test_a_writer_process_that_dies_is_counted_and_started_again(
        copy_settings: Settings, deployment: Deployment, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import prediction_log as server_side

    layouts_read: list[str] = []
    read_layout = server_side.layout_of
    monkeypatch.setattr(server_side, "layout_of",
                        lambda store, service: layouts_read.append(service) or read_layout(store, service))
    settings = _settings(copy_settings, tmp_path / "log", prediction_log_flush_seconds=3600.0,
                         prediction_log_flush_rows=1_000_000)
    with TestClient(create_app(settings, ServingState.load(settings))) as c:
        log = c.app.state.prediction_log
        for i in range(5):
            assert c.post("/v1/predict/fraud", json=fraud_body(deployment, transaction_id=f"t{i}")).status_code == 200
        deadline = time.monotonic() + 30
        while (log.writer_pid is None or log._queued_rows) and time.monotonic() < deadline:
            time.sleep(0.02)
        first = log.writer_pid
        assert first is not None and log.unwritten_rows == 5  # all five held by the writer
        os.kill(first, signal.SIGKILL)
        while _log_rows(c).get("write_failed", 0) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _log_rows(c) == {"write_failed": 5.0} and log.unwritten_rows == 0
        for i in range(3):
            assert c.post("/v1/predict/fraud", json=fraud_body(deployment, transaction_id=f"u{i}")).status_code == 200
        while log.writer_pid == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.writer_pid not in (None, first)
    assert _log_rows(c) == {"write_failed": 5.0, "written": 3.0}
    assert _log(tmp_path / "log", "fraud_detection_v2").num_rows == 3
    assert "the writer process ended" in caplog.text and "5 unwritten row(s)" in caplog.text
    assert layouts_read == ["fraud_detection_v2"]  # read from the registry once, sent to both writers


def test_a_write_that_fails_is_counted_and_logged_and_predictions_go_on(
        copy_settings: Settings, deployment: Deployment, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log's folder should be")
    settings = _settings(copy_settings, blocked, prediction_log_flush_seconds=0.05)
    with TestClient(create_app(settings, ServingState.load(settings))) as c:
        for i in range(3):
            assert c.post("/v1/predict/fraud", json=fraud_body(deployment, transaction_id=f"t{i}")).status_code == 200
        deadline = time.monotonic() + 30
        while _log_rows(c).get("write_failed", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _log_rows(c) == {"write_failed": 3.0}
    assert "could not be written" in caplog.text and "Traceback" in caplog.text


def test_a_server_killed_while_writing_leaves_only_whole_files(
        copy_settings: Settings, deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log_dir = tmp_path / "log"
    monkeypatch.setenv("FEASTKIT_PREDICTION_LOG_DIR", str(log_dir))
    monkeypatch.setenv("FEASTKIT_PREDICTION_LOG_FLUSH_SECONDS", "0.01")
    monkeypatch.setenv("FEASTKIT_FRAUD_SERVICE", "fraud_detection_v2")
    server = start_server(copy_settings, tmp_path / "server.log")
    answered = [0]
    stop = threading.Event()

    def hammer() -> None:
        body = {"transactions": [fraud_body(deployment, transaction_id=f"t{i}") for i in range(50)]}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    if client.post("/v1/predict/fraud:batch", json=body).status_code == 200:
                        answered[0] += 50
                except httpx.HTTPError:
                    return
    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(fmt.log_files(log_dir, "fraud_detection_v2")) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        writers = _children(server.process.pid)
        assert len(writers) == 1, writers  # the log's writer process
        os.kill(server.process.pid, signal.SIGKILL)  # in the middle of the writes
        server.process.wait(timeout=30)
        # the writer sees its pipe end, writes what it holds and exits
        while Path(f"/proc/{writers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{writers[0]}").exists(), "the writer outlived its server"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        if server.process.poll() is None:
            server.process.kill()
    files = fmt.log_files(log_dir, "fraud_detection_v2")
    assert len(files) >= 20, server.log()[-3000:]
    rows = sum(pq.read_table(f).num_rows for f in files)  # every file reads whole
    assert 0 < rows <= answered[0] + 100  # at most what was answered (plus requests cut by the kill)
    assert rows % 50 == 0  # whole groups only: nothing half-written
    assert not [p for p in (log_dir / "fraud_detection_v2").iterdir() if p.suffix == ".parquet"
                and p not in files]


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def test_the_server_shortens_the_interpreter_switch_interval_as_set(
        copy_settings: Settings, tmp_path: Path) -> None:
    import sys

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # Python's default
        settings = _settings(copy_settings, tmp_path / "log", switch_interval_ms=0.5)
        with TestClient(create_app(settings, ServingState.load(settings))):
            assert sys.getswitchinterval() == pytest.approx(0.0005)
        sys.setswitchinterval(0.005)
        settings = _settings(copy_settings, tmp_path / "log", switch_interval_ms=0)
        with TestClient(create_app(settings, ServingState.load(settings))):
            assert sys.getswitchinterval() == pytest.approx(0.005)  # 0: left as it was
    finally:
        sys.setswitchinterval(before)
