"""Feast's file registry is rewritten in place; feastkit's registry store replaces it by rename.

A writer process commits a registry of 40 views thousands of times while this process reads it
with Feast's own read path. On Feast's `FileRegistryStore` some reads land between the truncate
and the write and see a registry with missing views (the hazard is real, so the test can fail);
on `AtomicFileRegistryStore` every read sees all 40.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType, types

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

VIEWS = 40
COMMITS = 1000
ATOMIC = "feastkit.registry_stores.AtomicFileRegistryStore"
STOCK = "feast.infra.registry.file.FileRegistryStore"


def _registry_config(path: Path, store_type: str):
    from feast.repo_config import RegistryConfig

    return RegistryConfig(path=str(path), registry_store_type=store_type, cache_ttl_seconds=0)


def _store(path: Path, store_type: str):
    from feast.infra.registry.registry import get_registry_store_class_from_type

    return get_registry_store_class_from_type(store_type)(_registry_config(path, store_type), path.parent)


def build_registry(path: Path) -> None:
    """A registry of VIEWS feature views, written once with Feast's own `apply`."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    objects: list = [user]
    for i in range(VIEWS):
        source = FileSource(name=f"source_{i}", path=str(path.parent / f"v{i}.parquet"),
                            timestamp_field="event_timestamp")
        objects.append(FeatureView(name=f"view_{i}", entities=[user], ttl=timedelta(days=1), source=source,
                                   schema=[Field(name=f"feature_{i}_{j}", dtype=types.Float64) for j in range(8)]))
    config = RepoConfig(project="registry_store", provider="local", repo_path=str(path.parent),
                        registry={"path": str(path), "cache_ttl_seconds": 0},
                        online_store={"type": "sqlite", "path": str(path.parent / "online.db")},
                        entity_key_serialization_version=3)
    FeatureStore(config=config).apply(objects)


def write_commits(path: str, store_type: str, commits: int) -> None:
    """The writer process: commit the registry at `path` `commits` times through `store_type`."""
    store = _store(Path(path), store_type)
    proto = store.get_registry_proto()
    Path(path + ".started").touch()
    for _ in range(commits):
        store.update_registry_proto(proto)


def _race(tmp_path: Path, store_type: str) -> tuple[int, int]:
    """(reads, reads that did not see all views) while a writer commits through `store_type`."""
    from google.protobuf.message import DecodeError

    registry = tmp_path / "registry.db"
    build_registry(registry)
    reader = _store(registry, STOCK)  # Feast's read path in both cases
    assert len(reader.get_registry_proto().feature_views) == VIEWS
    code = ("from tests.integration.test_registry_store import write_commits; "
            f"write_commits({str(registry)!r}, {store_type!r}, {COMMITS})")
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    started = Path(str(registry) + ".started")
    while not started.exists():
        assert writer.poll() is None, writer.communicate()[1][-3000:]
        time.sleep(0.01)
    reads = torn = 0
    while writer.poll() is None:
        reads += 1
        try:
            if len(reader.get_registry_proto().feature_views) != VIEWS:
                torn += 1
        except (DecodeError, FileNotFoundError):
            torn += 1
    assert writer.returncode == 0, writer.communicate()[1][-3000:]
    assert len(reader.get_registry_proto().feature_views) == VIEWS
    return reads, torn


def test_feasts_file_registry_store_is_seen_torn_by_readers(tmp_path: Path) -> None:
    reads, torn = _race(tmp_path, STOCK)
    print(f"stock: {torn} of {reads} reads saw a partial registry")
    assert reads >= 1000, reads
    assert torn > 0, (reads, torn)


def test_the_atomic_registry_store_is_never_seen_torn(tmp_path: Path) -> None:
    reads, torn = _race(tmp_path, ATOMIC)
    print(f"atomic: {torn} of {reads} reads saw a partial registry")
    assert reads >= 1000, reads
    assert torn == 0, (reads, torn)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_feast_opens_the_atomic_store_named_in_the_config(tmp_path: Path) -> None:
    from feastkit.registry_stores import AtomicFileRegistryStore

    registry = tmp_path / "registry.db"
    build_registry(registry)
    config = RepoConfig(project="registry_store", provider="local", repo_path=str(tmp_path),
                        registry={"path": str(registry), "registry_store_type": ATOMIC, "cache_ttl_seconds": 0},
                        online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
                        entity_key_serialization_version=3)
    store = FeatureStore(config=config)
    assert isinstance(store.registry._registry_store, AtomicFileRegistryStore)
    store.delete_feature_view("view_0")  # a commit through Feast's Registry
    assert len(FeatureStore(config=config).list_feature_views()) == VIEWS - 1


def _shipped_store_configs() -> list[Path]:
    roots = [REPO_ROOT / "feature_repo", REPO_ROOT / "feastkit" / "templates"]
    return sorted(p for root in roots for p in root.rglob("*.yaml")
                  if p.name == "feature_store.yaml" or p.parent.name == "profiles")


@pytest.mark.parametrize("config_file", _shipped_store_configs(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_file_registry_is_committed_atomically(config_file: Path) -> None:
    text = re.sub(r"@@\w+@@", "placeholder", config_file.read_text())  # `feastkit init` fills these in
    registry = yaml.safe_load(text)["registry"]
    if isinstance(registry, dict) and registry.get("registry_type") == "sql":
        return  # the SQL registry commits in transactions
    assert isinstance(registry, dict) and registry.get("registry_store_type") == ATOMIC, (config_file, registry)
    # and a view is never left unservable by a killed or running materialization (DESIGN.md pitfall 5)
    assert registry.get("serve_features_while_materializing") is True, (config_file, registry)


def _left_materializing(tmp_path: Path, registry_section: dict):
    """A one-view repo with the given registry settings, materialized once, then its view left in
    MATERIALIZING in the registry, as a materialization killed mid-run leaves it (DESIGN.md pitfall 5)."""
    from datetime import UTC, datetime

    import pandas as pd
    from feast.feature_view import FeatureViewState

    tmp_path.mkdir()
    at = datetime(2026, 3, 1, tzinfo=UTC)
    pd.DataFrame({"user_id": [1, 2], "score": [0.25, 0.5], "event_timestamp": [at, at]}).to_parquet(
        tmp_path / "scores.parquet")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    view = FeatureView(name="scores", entities=[user], ttl=timedelta(days=1000),
                       source=FileSource(path=str(tmp_path / "scores.parquet"), timestamp_field="event_timestamp"),
                       schema=[Field(name="score", dtype=types.Float64)])
    registry = {**registry_section, "path": str(tmp_path / "registry.db")}
    config = RepoConfig(project="left_materializing", provider="local", repo_path=str(tmp_path), registry=registry,
                        online_store={"type": "feastkit.online_stores.MonotonicSqliteOnlineStore",
                                      "path": str(tmp_path / "online.db")},
                        offline_store={"type": "feastkit.offline_stores.AsofDuckDBOfflineStore"},
                        entity_key_serialization_version=3)
    store = FeatureStore(config=config)
    store.apply([user, view])
    store.materialize(at - timedelta(days=1), at + timedelta(days=1))
    registry_store = store.registry._registry_store
    proto = registry_store.get_registry_proto()
    [stored] = [fv for fv in proto.feature_views if fv.spec.name == "scores"]
    stored.meta.state = FeatureViewState.MATERIALIZING.to_proto()
    registry_store.update_registry_proto(proto)
    return FeatureStore(config=config)


@pytest.mark.parametrize("config_file", [p for p in _shipped_store_configs() if "templates" not in p.parts
                                         and "registry_type: file" in p.read_text()],
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_a_view_left_materializing_stays_servable_on_the_shipped_registry(config_file: Path,
                                                                          tmp_path: Path) -> None:
    from feast.feature_view import FeatureViewState

    section = yaml.safe_load(config_file.read_text())["registry"]
    store = _left_materializing(tmp_path / "shipped", section)
    assert store.get_feature_view("scores").state == FeatureViewState.MATERIALIZING
    got = store.get_online_features(features=["scores:score"], entity_rows=[{"user_id": 1}]).to_dict()
    assert got["score"] == [0.25]
    # without the setting, Feast refuses to serve the view: the setting is what keeps it servable
    stock = _left_materializing(tmp_path / "stock", {**section, "serve_features_while_materializing": False})
    with pytest.raises(ValueError, match="MATERIALIZING"):
        stock.get_online_features(features=["scores:score"], entity_rows=[{"user_id": 1}])
