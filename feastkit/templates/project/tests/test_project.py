"""This project's own tests: every declared view computes, every trainable service trains and serves.

They read what to check from the registry (`feastkit apply` of a copy of feature_repo/'s
definitions), so a view or feature service you add is covered without editing this file. Each run
builds a small synthetic dataset in a temporary directory (FEASTKIT_DATA_DIR) and never touches
this project's data/ or feature_repo/data/. Size: FEASTKIT_TEST_USERS / FEASTKIT_TEST_DAYS.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from feastkit.settings import Settings

PROJECT = Path(__file__).resolve().parents[1]
FEASTKIT = str(Path(sys.executable).with_name("feastkit"))
USERS = os.environ.get("FEASTKIT_TEST_USERS", "1000")  # fraud and churn labels need 1,000+ users
DAYS = os.environ.get("FEASTKIT_TEST_DAYS", "80")  # and 80+ days, for both classes in every split


@dataclass
class Built:
    settings: Settings
    env: dict[str, str]
    store: object


def copy_definitions(source: Path, target: Path) -> Path:
    """feature_repo/'s definitions (Python modules and yaml), never its data/ (registry, online store)."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name in ("data", "__pycache__"):
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, ignore=shutil.ignore_patterns("__pycache__", "data"))
        else:
            shutil.copy2(item, target / item.name)
    return target


def feastkit(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run([FEASTKIT, *args], env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"feastkit {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Synthetic raw events -> feast apply -> every declared view computed."""
    from feastkit.store import open_store

    root = tmp_path_factory.mktemp("project")
    settings = Settings(project_root=PROJECT, data_dir=root / "data",
                        repo_path=copy_definitions(PROJECT / "feature_repo", root / "repo"), profile="local")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEASTKIT_")}
    env.update(FEASTKIT_PROJECT_ROOT=str(PROJECT), FEASTKIT_DATA_DIR=str(settings.data_dir),
               FEASTKIT_REPO_PATH=str(settings.repo_path), FEASTKIT_PROFILE="local")
    feastkit(env, "generate", "--users", USERS, "--days", DAYS)
    feastkit(env, "apply")
    feastkit(env, "compute")
    return Built(settings, env, open_store(settings))


@pytest.fixture(scope="session")
def trained(built: Built) -> list[str]:
    """Every service whose `model` tag names a label recipe, trained; the online store loaded."""
    from feastkit.recipes import trainable_services

    services = trainable_services(built.store)
    assert services, "no feature service names a label recipe (tag model=fraud or model=churn)"
    feastkit(built.env, "train")
    feastkit(built.env, "materialize")
    return services


def test_every_declared_view_is_computed(built: Built) -> None:
    from feastkit.store import applied_specs

    specs = applied_specs(built.store)
    assert specs, "feature_repo/ declares no view feastkit computes"
    for spec in specs:
        view = built.store.get_feature_view(spec.name)
        files = sorted((built.settings.features_dir / spec.name).glob("*.parquet"))
        assert files, f"no feature table for {spec.name}"
        table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        declared = [f.name for f in view.features]
        assert set(declared) == set(spec.feature_names)
        missing = sorted(set([spec.entity_key, "event_timestamp", *declared]) - set(table.columns))
        assert not missing, f"{spec.name} lacks column(s) {missing}"
        assert len(table) > 0
        # no row before the data: a row describes the entity using only events before (or at) it
        first_event = min(
            pd.read_parquet(built.settings.clean_dir / f"{s.table}.parquet", columns=[s.timestamp])[s.timestamp].min()
            for s in spec.sources)
        first_row = pd.to_datetime(table["event_timestamp"], utc=True).min()
        if spec.grid_us > 0:  # grid rows aggregate [T - window, T): strictly after the first event
            assert first_row > first_event, (spec.name, first_row, first_event)
        else:
            assert first_row >= first_event, (spec.name, first_row, first_event)


def test_every_trained_bundle_matches_its_service(built: Built, trained: list[str]) -> None:
    from feastkit.bundle import current_bundle
    from feastkit.services import describe_service

    for service in trained:
        bundle = current_bundle(built.settings.models_dir, service)
        assert bundle.feature_service == service
        assert bundle.feature_refs == describe_service(built.store, service).feature_refs, service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(built: Built, trained: list[str]) -> Iterator[str]:
    """`feastkit serve` on a free port, ready."""
    port = _free_port()
    log = built.settings.data_dir / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([FEASTKIT, "serve", "--port", str(port)], env=built.env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"feastkit serve exited:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"feastkit serve not ready:\n{log.read_text()}"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _iso(ts: object) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_every_trained_service_predicts(built: Built, trained: list[str], server: str) -> None:
    """One request per service: its entity join keys and request fields, taken from the latest
    labelled row of its recipe, scored as of the end of the data."""
    from feastkit.clean import data_range
    from feastkit.recipes import labelled_entities
    from feastkit.services import describe_service

    _, end = data_range(built.settings.clean_dir)
    for service in trained:
        spec = describe_service(built.store, service)
        row = labelled_entities(built.store, service, built.settings.clean_dir).iloc[-1]
        body = {name: row[name].item() if hasattr(row[name], "item") else row[name]
                for name in [*spec.join_keys, *spec.request_fields]}
        body["as_of"] = _iso(end)
        response = httpx.post(f"{server}/v1/predict/{service}", json=body, timeout=30)
        assert response.status_code == 200, (service, body, response.text)
        prediction = response.json()
        assert 0.0 <= prediction["probability"] <= 1.0
        assert prediction["feature_service"] == service
        for key in spec.join_keys:
            assert prediction[key] == body[key]
