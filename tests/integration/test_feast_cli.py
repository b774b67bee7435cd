"""Feast's own CLI on the feature repo: `feast plan` after `feast apply` is a no-op, `feast ui` serves it.

Each test applies a fresh copy of the repo definitions (never feature_repo/data) with its own data
directory, and runs `feast` as a user would, with the settings' environment.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feastkit.settings import Settings
from tests.conftest import copy_repo_definitions, free_port, make_settings, settings_env

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# what `feast plan` prints for an object it would change (RegistryDiff / InfraDiff .to_string())
CHANGE = re.compile(r"\s*(Created|Updated|Deleted) ")
REALTIME_VIEW = "user_realtime_activity"  # the push-source-fed view, materialized most often
UI_START_TIMEOUT = 60.0
HTTP_TIMEOUT = 30.0


def feast_bin() -> str:
    path = Path(sys.executable).with_name("feast")
    return str(path) if path.exists() else "feast"


def feast(settings: Settings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`feast -c <repo> -f <profile yaml> <args>` with the settings' environment; output without colours."""
    cmd = [feast_bin(), "-c", str(settings.repo_path), "-f", str(settings.feature_store_yaml), *args]
    proc = subprocess.run(cmd, env=settings_env(settings), capture_output=True, text=True, timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, ANSI.sub("", proc.stdout), ANSI.sub("", proc.stderr))


@pytest.fixture
def applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh copy of the repo definitions, applied with `feast apply` (feastkit.store.apply_repo)."""
    from feastkit.store import apply_repo, feast_environment

    copy_repo_definitions(tmp_path / "repo")
    settings = make_settings(tmp_path)
    # apply_repo/open_store export these into this process: set them through monkeypatch so they
    # are restored after the test
    for key, value in feast_environment(settings).items():
        monkeypatch.setenv(key, value)
    apply_repo(settings)
    return settings


def assert_plan_is_a_no_op(settings: Settings, after: str) -> None:
    result = feast(settings, "plan")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`feast plan` failed {after}:\n{output}"
    changes = [line.strip() for line in result.stdout.splitlines() if CHANGE.match(line)]
    assert not changes, f"`feast plan` {after} reports changes on an unchanged repo: {changes}\n{result.stdout}"
    assert "No changes to registry" in result.stdout, result.stdout
    assert "No changes to infrastructure" in result.stdout, result.stdout


def test_feast_plan_reports_no_changes_after_apply(applied: Settings) -> None:
    assert_plan_is_a_no_op(applied, "right after `feast apply`")


def _one_row(fv, when: datetime) -> pa.Table:
    """One row for the view's batch source: its join keys, timestamp and features (zero values)."""
    from feast.type_map import feast_value_type_to_pa

    columns: dict[str, pa.Array] = {}
    for field in [*fv.entity_columns, *fv.features]:
        pa_type = feast_value_type_to_pa(field.dtype.to_value_type())
        try:
            columns[field.name] = pa.array([0]).cast(pa_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            columns[field.name] = pa.nulls(1, pa_type)
    columns[fv.batch_source.timestamp_field] = pa.array([when], pa.timestamp("us", tz="UTC"))
    return pa.table(columns)


def test_feast_plan_reports_no_changes_after_materialize(applied: Settings) -> None:
    """Materializing records intervals on the view in the registry; that is state, not a change."""
    from feastkit.store import open_store

    fv = open_store(applied).get_feature_view(REALTIME_VIEW)
    table_dir = Path(fv.batch_source.path).parent
    table_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(_one_row(fv, datetime(2026, 1, 1, 12, tzinfo=UTC)), table_dir / "part-2026-01-01.parquet")
    result = feast(applied, "materialize", "2026-01-01T00:00:00", "2026-01-02T00:00:00", "--views", REALTIME_VIEW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert open_store(applied).get_feature_view(REALTIME_VIEW).materialization_intervals, \
        "materialization recorded no interval"
    assert_plan_is_a_no_op(applied, f"after `feast materialize --views {REALTIME_VIEW}`")


def _wait_until_up(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + UI_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`feast ui` exited with {proc.returncode} before answering:\n"
                        f"{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/projects-list.json", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"`feast ui` did not answer within {UI_START_TIMEOUT:.0f}s:\n{log_path.read_text(errors='replace')}")


def test_feast_ui_serves_the_demo_registry(applied: Settings, tmp_path: Path) -> None:
    from feastkit.store import open_store

    store = open_store(applied)
    project = store.project
    views = {fv.name for fv in store.list_feature_views()} | {v.name for v in store.list_on_demand_feature_views()}
    services = {fs.name for fs in store.list_feature_services()}
    assert {"user_transaction_stats", REALTIME_VIEW} <= views and "fraud_detection_v1" in services

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "feast-ui.log"
    cmd = [feast_bin(), "-c", str(applied.repo_path), "-f", str(applied.feature_store_yaml),
           "ui", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=settings_env(applied), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(proc, url, log_path)
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as client:
            projects = client.get("/projects-list.json")
            assert projects.status_code == 200, projects.text
            listed = {p["id"]: p for p in projects.json()["projects"]}
            assert project in listed, projects.text
            registry_path = listed[project]["registryPath"]  # the REST registry the UI reads: /api/v1

            fv_response = client.get(f"{registry_path}/feature_views", params={"project": project})
            assert fv_response.status_code == 200, fv_response.text
            served_views = {v["spec"]["name"] for v in fv_response.json()["featureViews"]}
            assert served_views == views, (served_views, views)

            fs_response = client.get(f"{registry_path}/feature_services", params={"project": project})
            assert fs_response.status_code == 200, fs_response.text
            served_services = {s["spec"]["name"] for s in fs_response.json()["featureServices"]}
            assert served_services == services, (served_services, services)

            page = client.get("/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"], page.text[:500]
        assert proc.poll() is None, f"`feast ui` exited:\n{log_path.read_text(errors='replace')}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
