"""Shared fixtures: a small but complete feastkit deployment built once per test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from feastkit.settings import Settings
from pipelines.synthetic import SyntheticConfig, generate, write

REPO_ROOT = Path(__file__).resolve().parents[1]
REDIS_TEST_DB = int(os.environ.get("FEASTKIT_TEST_REDIS_DB", "7"))  # integration tests own this Redis db and flush it
SMALL = SyntheticConfig(n_users=1000, n_merchants=80, days=80, seed=11, bad_rows=16,
                        start=datetime(2026, 1, 1, tzinfo=UTC))


ZONES = ("UTC", "America/Los_Angeles", "Asia/Tokyo")  # time guards are tested on, west and east of UTC


@contextmanager
def process_timezone(zone: str) -> Iterator[str]:
    """The process runs in `zone` (TZ set, `time.tzset()`) inside the block, in its own zone after;
    checks that local time really moved, so a test in "Tokyo" cannot silently run in UTC."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        probe = datetime(2026, 1, 1)
        assert probe.astimezone().utcoffset() == probe.replace(tzinfo=ZoneInfo(zone)).utcoffset(), zone
        yield zone
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def copy_repo_definitions(target: Path) -> Path:
    """Copy the feature repo's definitions (never its registry or online store files)."""
    source = REPO_ROOT / "feature_repo"
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name in ("data", "__pycache__"):
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(item, target / item.name)
    return target


def make_settings(root: Path, data_dir: Path | None = None, profile: str = "local",
                  **extra: object) -> Settings:
    extra.setdefault("repo_path", root / "repo")
    extra.setdefault("replay", True)  # the test data is historical: score it in replay mode
    extra.setdefault("gc_freeze", False)  # in-process apps come and go here: freezing would keep their cycles
    return Settings(project_root=REPO_ROOT, data_dir=data_dir or root / "data", profile=profile, **extra)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process (CLI, server) use these settings."""
    return {**os.environ, "FEASTKIT_DATA_DIR": str(settings.data_dir),
            "FEASTKIT_REPO_PATH": str(settings.repo_path), "FEASTKIT_MODELS_DIR": str(settings.models_dir),
            "FEASTKIT_PROFILE": settings.profile,
            "FEASTKIT_DRIFT_MULTIVARIATE": str(settings.drift_multivariate).lower(),
            "FEASTKIT_REDIS_CONNECTION_STRING": settings.redis_connection_string,
            **({"FEASTKIT_REPLAY": str(settings.replay).lower()} if settings.replay is not None else {})}


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A refused command: exit code 2 and one line on stderr holding every fragment, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def feastkit_bin() -> str:
    return str(Path(sys.executable).with_name("feastkit"))


@dataclass
class Deployment:
    """A built deployment: settings, an open FeatureStore, and the data's [start, end)."""

    settings: Settings
    store: object
    data_start: datetime
    data_end: datetime


def repo_views(repo_path: Path = REPO_ROOT / "feature_repo") -> list:
    """The feature views a repo's definitions declare, read as `feast apply` reads them (no registry)."""
    from feastkit.store import repo_feature_views

    return repo_feature_views(repo_path)


def repo_specs(repo_path: Path = REPO_ROOT / "feature_repo") -> list:
    """The specs of the views declared in a feature repo's definitions, read without applying it."""
    from feastkit.store import repo_specs as specs

    return specs(repo_path)


def validation_as_of(config: SyntheticConfig = SMALL) -> datetime:
    """An as-of time after every generated row, late labels included (they come up to 60 days late)."""
    from datetime import timedelta

    return config.end + timedelta(days=90)


def build_features(settings: Settings, config: SyntheticConfig = SMALL) -> tuple[datetime, datetime]:
    """Raw events -> clean tables -> every declared view, computed from the repo's definitions."""
    from feastkit.clean import data_range
    from pipelines.aggregates import compute_features
    from pipelines.validation import validate_all

    write(generate(config), settings.raw_dir, config)
    validate_all(settings.raw_dir, settings.clean_dir, settings.quarantine_dir, as_of=validation_as_of(config))
    start, end = data_range(settings.clean_dir)
    compute_features(repo_specs(settings.repo_path), settings.clean_dir, settings.features_dir, start, end)
    return start, end


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Data -> features -> feast apply -> three trained bundles -> materialized sqlite online store."""
    from feastkit.recipes import trainable_services
    from feastkit.store import apply_repo, materialize_servable, open_store
    from pipelines.training import train_service

    root = tmp_path_factory.mktemp("deployment")
    copy_repo_definitions(root / "repo")
    settings = make_settings(root)
    start, end = build_features(settings)
    apply_repo(settings)
    store = open_store(settings)
    for service in trainable_services(store):
        train_service(store, service, settings.clean_dir, settings.models_dir)
    materialize_servable(settings, end, store=store)
    return Deployment(settings, store, start, end)


def redis_url(db: int = REDIS_TEST_DB) -> str:
    return f"127.0.0.1:6379,db={db}"


def redis_contents(db: int) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash of a local Redis database, field for field (for byte-for-byte comparisons)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    return {key: client.hgetall(key) for key in client.scan_iter(count=10_000)}


def require_redis() -> None:
    """Fail (never skip) when Redis is unreachable: `make test` starts it first."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2):
            return
    except OSError:
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ensure-services.sh")], check=False)
    with socket.create_connection(("127.0.0.1", 6379), timeout=2):
        return


@pytest.fixture(scope="session")
def redis_deployment(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The same feature tables served from the real Redis server (profile `redis`, its own registry)."""
    import redis

    from feastkit.store import apply_repo, materialize_servable, open_store

    require_redis()
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_TEST_DB).flushdb()
    root = tmp_path_factory.mktemp("redis-deployment")
    copy_repo_definitions(root / "repo")
    settings = make_settings(root, data_dir=deployment.settings.data_dir, profile="redis",
                             redis_connection_string=redis_url())
    apply_repo(settings)
    store = open_store(settings)
    materialize_servable(settings, deployment.data_end, store=store)
    return Deployment(settings, store, deployment.data_start, deployment.data_end)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(settings: Settings, log_path: Path, timeout: float = 180.0) -> RunningServer:
    """Run `feastkit serve` as a real process on a free port and wait until /ready answers 200."""
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen([feastkit_bin(), "serve", "--port", str(port)], env=settings_env(settings),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                return RunningServer(url, proc, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout}s:\n{log_path.read_text()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(deployment.settings, tmp_path_factory.mktemp("server") / "server.log")
    yield running
    stop_server(running)
