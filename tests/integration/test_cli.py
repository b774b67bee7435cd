"""The command line: bad input ends with one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    Deployment,
    assert_one_line_error,
    feastkit_bin,
    make_settings,
    settings_env,
)

pytestmark = pytest.mark.integration


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([feastkit_bin(), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, fragments", [
    (["compute", "--skip-validation", "--start", "2026-13-45"], ["--start '2026-13-45' is not a date"]),
    (["compute", "--skip-validation", "--start", "2026-03-02", "--end", "2026-03-01"],
     ["is not after --start"]),
    (["compute", "--skip-validation", "--views", "nope"], ["unknown feature view(s) ['nope']"]),
    (["training-set", "--service", "fraud_v9"], ["unknown feature service 'fraud_v9'", "choose one of"]),
    (["materialize", "--views", "nope", "--start", "2026-03-01"], ["unknown feature view(s) ['nope']"]),
    (["generate", "--drift", "weather"], ["unknown drift kind(s) ['weather']"]),
    (["materialize", "--start", "2026-03-01", "--end", "2026-03-01"], ["is not after --start"]),
])
def test_bad_input_is_one_clear_line(deployment: Deployment, args: list[str], fragments: list[str],
                                     tmp_path: Path) -> None:
    env = settings_env(deployment.settings)
    if args[0] == "generate":  # never overwrite the shared deployment's data
        env = settings_env(make_settings(tmp_path))
    assert_one_line_error(run(args, env), *fragments)


def test_missing_data_says_what_to_run(tmp_path: Path, deployment: Deployment) -> None:
    settings = make_settings(tmp_path, repo_path=deployment.settings.repo_path)
    assert_one_line_error(run(["validate"], settings_env(settings)), "not found", "feastkit generate")


def test_unknown_profile(deployment: Deployment) -> None:
    env = {**settings_env(deployment.settings), "FEASTKIT_PROFILE": "mars"}
    assert_one_line_error(run(["apply"], env), "profile 'mars'", "redis")
    doctor = run(["doctor"], env)
    assert doctor.returncode == 1 and "FAIL profile" in doctor.stdout


def test_doctor_passes_on_a_healthy_deployment(deployment: Deployment) -> None:
    result = run(["doctor"], settings_env(deployment.settings))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "fingerprint matches" in result.stdout
