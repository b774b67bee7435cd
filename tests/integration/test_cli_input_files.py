"""`feastkit validate` and `feastkit compute` on bad input files: exit code 2 and one line on stderr naming the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.synthetic import generate, write
from pipelines.validation import validate_all
from tests.conftest import (
    Deployment,
    assert_one_line_error,
    feastkit_bin,
    make_settings,
    settings_env,
)
from tests.unit.test_validation_input import BREAKS, CONFIG, END

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_validate_answers_a_bad_raw_file_with_one_line_and_exit_code_2(tmp_path: Path, kind: str) -> None:
    settings = make_settings(tmp_path)
    write(generate(CONFIG), settings.raw_dir)
    fragment = BREAKS[kind](settings.raw_dir)
    result = subprocess.run([feastkit_bin(), "validate", "--as-of", END.isoformat()], env=settings_env(settings),
                            capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, fragment, str(settings.raw_dir))


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_compute_answers_a_bad_raw_file_with_one_line_and_exit_code_2(tmp_path: Path, deployment: Deployment,
                                                                      kind: str) -> None:
    """The views come from the deployment's applied registry; the data folder is this test's own."""
    settings = make_settings(tmp_path, repo_path=deployment.settings.repo_path)
    write(generate(CONFIG), settings.raw_dir)
    fragment = BREAKS[kind](settings.raw_dir)
    result = subprocess.run([feastkit_bin(), "compute", "--start", CONFIG.start.isoformat(), "--end", END.isoformat()],
                            env=settings_env(settings), capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, fragment, str(settings.raw_dir))
    assert not settings.features_dir.exists()


def test_compute_on_a_corrupt_clean_table_answers_with_one_line(tmp_path: Path, deployment: Deployment) -> None:
    settings = make_settings(tmp_path, repo_path=deployment.settings.repo_path)
    write(generate(CONFIG), settings.raw_dir)
    validate_all(settings.raw_dir, settings.clean_dir, settings.quarantine_dir, as_of=END)
    (settings.clean_dir / "transactions.parquet").write_bytes(b"not parquet at all")
    result = subprocess.run([feastkit_bin(), "compute", "--skip-validation", "--start", CONFIG.start.isoformat(),
                             "--end", END.isoformat()], env=settings_env(settings), capture_output=True, text=True,
                            timeout=300)
    assert_one_line_error(result, "not a readable Parquet file", str(settings.clean_dir / "transactions.parquet"),
                          "feastkit validate")
