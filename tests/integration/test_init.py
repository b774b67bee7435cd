"""`feastkit init`: a new project runs its own `make demo` and `make test`, and leaves the kit alone.

The projects reuse this interpreter's virtualenv (`make VENV=...`), so nothing is installed, and a
small dataset (FEASTKIT_DEMO_USERS / FEASTKIT_DEMO_DAYS) keeps the demos short.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import assert_one_line_error

pytestmark = pytest.mark.integration

KIT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parents[1]
FEASTKIT = str(Path(sys.executable).with_name("feastkit"))
KIT_DATA = ("data", "feature_repo/data")  # where a project using the kit's checkout by mistake would write
DEMO_SIZE = {"FEASTKIT_DEMO_USERS": "1000", "FEASTKIT_DEMO_DAYS": "80"}  # both classes in every split
MAKE_TIMEOUT = 1200


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without FEASTKIT_* settings (a project must not need them), make's own, or
    options meant for this kit's pytest run (a new project runs its own)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FEASTKIT_") and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PYTEST_ADDOPTS")}
    return {**env, **extra}


def init(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEASTKIT, "init", *args], env=clean_env(), capture_output=True, text=True,
                          timeout=120, check=False)


def kit_data_paths() -> set[str]:
    """Every path git reports under the kit's data folders, ignored files included (read-only)."""
    result = subprocess.run(
        ["git", "--no-optional-locks", "status", "--porcelain", "--ignored=matching", "--untracked-files=all",
         "--", *KIT_DATA], cwd=KIT, capture_output=True, text=True, timeout=60, check=True)
    return set(result.stdout.splitlines())


@pytest.fixture
def kit_untouched() -> Iterator[None]:
    """Fails the test when a path appeared under the kit's data/ or feature_repo/data/ meanwhile."""
    before = kit_data_paths()
    yield
    appeared = sorted(kit_data_paths() - before)
    assert not appeared, f"the kit's checkout got data files: {appeared}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refuses_a_non_empty_directory_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    assert_one_line_error(init(str(target)), f"{target} is not empty", "--force")
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]

    forced = init(str(target), "--minimal", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (target / "notes.txt").read_text() == "mine\n"
    assert (target / "feature_repo" / "features.py").is_file()


@pytest.mark.parametrize("args, fragments", [
    (["--example", "nope"], ["unknown example 'nope'", "fraud-churn"]),
    (["--example", "fraud-churn", "--minimal"], ["--minimal and --example fraud-churn"]),
    (["--kit-source", "/nonexistent/feastkit"], ["no feastkit checkout at /nonexistent/feastkit"]),
])
def test_bad_options_are_one_clear_line(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    target = tmp_path / "project"
    assert_one_line_error(init(str(target), *args), *fragments)
    assert not target.exists()


def test_minimal_feature_store_is_the_kits_embedded_default(tmp_path: Path) -> None:
    """The minimal repo's feature_store.yaml and Redis profile are the kit's, but for the project name."""
    target = tmp_path / "my-team"
    assert init(str(target), "--minimal").returncode == 0
    for name in ("feature_store.yaml", "profiles/redis.yaml"):
        mine = yaml.safe_load((target / "feature_repo" / name).read_text())
        kit = yaml.safe_load((KIT / "feature_repo" / name).read_text())
        assert mine.pop("project") == "my_team"
        kit.pop("project")
        assert mine == kit, name


@pytest.mark.parametrize("example", ["minimal", "fraud-churn"])
def test_new_project_runs_its_demo_and_tests(tmp_path: Path, example: str, kit_untouched: None) -> None:
    """The minimal project runs its `make demo` and `make test`; the fraud-churn one applies."""
    project = tmp_path / f"team-{example}"
    made = init(str(project), *(["--minimal"] if example == "minimal" else ["--example", example]))
    assert made.returncode == 0, made.stderr

    # definitions only: never the kit's registry or online store (they record the kit's paths)
    assert not (project / "feature_repo" / "data").exists() and not (project / "data").exists()
    makefile = (project / "Makefile").read_text()
    assert f"FEASTKIT_SOURCE ?= {KIT}\n" in makefile
    for name in ("README.md", ".gitignore", "scripts/demo.sh", "tests/test_project.py", "dags/train.py",
                 "feature_repo/feature_store.yaml", "feature_repo/profiles/redis.yaml"):
        assert (project / name).is_file(), name
    if example == "fraud-churn":
        kit_repo = sorted(p.name for p in (KIT / "feature_repo").glob("*.py"))
        assert sorted(p.name for p in (project / "feature_repo").glob("*.py")) == kit_repo

    make = ["make", "--no-print-directory", f"VENV={VENV}"]
    if example == "fraud-churn":
        # its feature repo is the kit's own, which this suite runs end to end, and its demo and
        # tests are the template's, run for the minimal project: here it must apply in its folders
        applied = subprocess.run([FEASTKIT, "apply"], cwd=project, env=clean_env(), capture_output=True,
                                 text=True, timeout=300, check=False)
        assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
        assert "fraud_detection_v2" in applied.stdout
        assert (project / "feature_repo" / "data" / "registry.db").is_file()
        return
    env = clean_env(**DEMO_SIZE, FEASTKIT_DEMO_PORT=str(free_port()))
    demo = subprocess.run([*make, "demo"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=MAKE_TIMEOUT, check=False)
    assert demo.returncode == 0, demo.stdout[-5000:] + demo.stderr[-5000:]
    assert '"status": 200' in demo.stdout and '"probability"' in demo.stdout, demo.stdout[-3000:]
    # the demo used this project's folders
    assert (project / "feature_repo" / "data" / "registry.db").is_file()
    assert any((project / "data" / "models").iterdir())

    tests = subprocess.run([*make, "test"], cwd=project, env=clean_env(), capture_output=True, text=True,
                           timeout=MAKE_TIMEOUT, check=False)
    assert tests.returncode == 0, tests.stdout[-5000:] + tests.stderr[-5000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout, tests.stdout[-3000:]
