"""The library side of the DAGs: interval handling, settings overrides, file checks, thin imports."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from feastkit import jobs
from feastkit.errors import FeastkitError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_intervals_from_asset_events_are_distinct_sorted_and_utc() -> None:
    extras = [{"start": "2026-03-21T19:00:00+00:00", "end": "2026-03-21T20:00:00+00:00", "rows": 3},
              {"start": "2026-03-21T19:00:00+00:00", "end": "2026-03-21T20:00:00+00:00", "rows": 1},
              {"start": "2026-03-21T18:00:00Z", "end": "2026-03-21T19:00:00Z"},
              {}, {"rows": 4}]
    got = jobs.intervals_from_asset_events(extras)
    assert got == [(datetime(2026, 3, 21, 18, tzinfo=UTC), datetime(2026, 3, 21, 19, tzinfo=UTC)),
                   (datetime(2026, 3, 21, 19, tzinfo=UTC), datetime(2026, 3, 21, 20, tzinfo=UTC))]


def test_an_empty_interval_is_refused_with_the_timetable_fix() -> None:
    # what a plain cron schedule gives in Airflow 3: data_interval_start == data_interval_end
    at = datetime(2026, 3, 21, 19, tzinfo=UTC)
    with pytest.raises(FeastkitError, match="CronDataIntervalTimetable"):
        jobs.check_interval(at, at)
    with pytest.raises(FeastkitError, match="not an ISO"):
        jobs.check_interval("yesterday", at)


def test_settings_come_from_env_and_the_airflow_variable(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("FEASTKIT_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("AIRFLOW_VAR_FEASTKIT_SETTINGS", json.dumps({"profile": "redis",
                                                                    "promote_tolerance": 0.01}))
    settings = jobs.job_settings()
    assert settings.data_dir == (tmp_path / "env-data").resolve()
    assert settings.profile == "redis" and settings.promote_tolerance == 0.01
    monkeypatch.setenv("AIRFLOW_VAR_FEASTKIT_SETTINGS", json.dumps({"profil": "redis"}))
    with pytest.raises(FeastkitError, match="unknown setting"):
        jobs.job_settings()
    monkeypatch.setenv("AIRFLOW_VAR_FEASTKIT_SETTINGS", "[1, 2]")
    with pytest.raises(FeastkitError, match="not a JSON object"):
        jobs.job_settings()


def test_a_truncated_parquet_file_is_named_in_the_error(tmp_path: Path) -> None:
    import pandas as pd

    good = tmp_path / "good.parquet"
    pd.DataFrame({"a": range(100)}).to_parquet(good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:200])
    jobs.check_parquet_files([good], "feature file", "recompute it")
    with pytest.raises(FeastkitError, match=f"feature file {bad} is not a readable parquet file"):
        jobs.check_parquet_files([good, bad], "feature file", "recompute it")
    with pytest.raises(FeastkitError, match="is missing"):
        jobs.check_parquet_files([tmp_path / "nope.parquet"], "raw table file", "restore it")


def test_the_jobs_module_imports_nothing_heavy() -> None:
    code = ("import sys, feastkit.jobs; "
            "print([m for m in ('feast', 'pandas', 'duckdb', 'sklearn', 'pyarrow', 'airflow') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT).stdout
    assert out.strip() == "[]"


def test_a_run_without_a_data_interval_is_one_line_not_an_attribute_error() -> None:
    # manual and asset-triggered runs have no data interval in Airflow 3.3: (None, None)
    with pytest.raises(FeastkitError, match="no data interval"):
        jobs.check_interval(None, None)


def test_the_conf_names_a_replay_or_nothing() -> None:
    assert jobs.requested_interval(None) is None
    assert jobs.requested_interval({"start": None, "end": None}) is None
    assert jobs.requested_interval({"start": "2026-04-30T05:00Z", "end": "2026-04-30T06:00Z"}) == (
        datetime(2026, 4, 30, 5, tzinfo=UTC), datetime(2026, 4, 30, 6, tzinfo=UTC))
    with pytest.raises(FeastkitError, match="sets start only") as caught:
        jobs.requested_interval({"start": "2026-04-30T05:00Z"})
    assert "airflow dags trigger materialize --conf" in caught.value.fix
    with pytest.raises(FeastkitError, match="is empty"):
        jobs.requested_interval({"start": "2026-04-30T06:00Z", "end": "2026-04-30T05:00Z"})
