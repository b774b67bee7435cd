"""`feastkit validate` on bad raw files: exit code 2 and one line on stderr naming the file, per input kind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.synthetic import generate, write
from tests.conftest import assert_one_line_error, feastkit_bin, make_settings, settings_env
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
