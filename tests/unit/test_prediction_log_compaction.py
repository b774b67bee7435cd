"""Prediction log compaction: each past hour's files merged into one, every row kept once, under
readers, a writing server and a second compactor, and after a compaction killed half-way."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feastkit import prediction_log as fmt
from feastkit.errors import FeastkitError
from tests.conftest import ZONES, process_timezone
from tests.unit.log_compaction_workers import FIRST_HOUR, HOURS, SERVICE, file_rows, write_file

REPO = Path(__file__).resolve().parents[2]
LATER = FIRST_HOUR + timedelta(days=1)


def _ids(table: pa.Table | None) -> list[str]:
    return [] if table is None else table.column(fmt.REQUEST_ID).to_pylist()


def _files(log_dir: Path) -> list[Path]:
    return sorted(fmt.service_log_dir(log_dir, SERVICE).glob("*.parquet"))


def test_each_past_hour_becomes_one_file_with_every_row_in_order(tmp_path: Path) -> None:
    for index in range(30):
        write_file(tmp_path, index)
    before = _ids(fmt.read_log_table(tmp_path, SERVICE))
    merged = fmt.compact_log(tmp_path, SERVICE, before=LATER)
    assert [(m.hour, m.files_in, m.rows) for m in merged] == [
        (FIRST_HOUR + timedelta(hours=h), 10, 50) for h in range(HOURS)]
    files = _files(tmp_path)
    assert len(files) == HOURS and all(fmt.hour_of(f) == m.hour for f, m in zip(files, merged, strict=True))
    after = fmt.read_log_table(tmp_path, SERVICE)
    assert _ids(after) == before  # the same rows, in the same order (files in name order)
    assert after.schema.remove_metadata().equals(file_rows(0).schema)
    assert len(fmt.compacted_from(files[0])) == 10
    # a second run has nothing to do; a new file in a merged hour is merged with it next time
    assert fmt.compact_log(tmp_path, SERVICE, before=LATER) == []
    write_file(tmp_path, 30)
    again = fmt.compact_log(tmp_path, SERVICE, before=LATER)
    assert [(m.files_in, m.rows) for m in again] == [(2, 55)]
    assert sorted(_ids(fmt.read_log_table(tmp_path, SERVICE))) == sorted(before + _ids(file_rows(30)))
    assert len(_files(tmp_path)) == HOURS


@pytest.mark.parametrize("zone", ZONES)
def test_the_hour_in_progress_is_left_alone_in_every_zone(tmp_path: Path, zone: str) -> None:
    with process_timezone(zone):
        for index in range(6):
            write_file(tmp_path, index)
        # hours 00 and 01 have ended by 02:00 UTC; 02 has not
        merged = fmt.compact_log(tmp_path, SERVICE, before=FIRST_HOUR + timedelta(hours=2))
        assert [m.hour for m in merged] == [FIRST_HOUR, FIRST_HOUR + timedelta(hours=1)]
        # a time given in another zone means the same instant
        west = (FIRST_HOUR + timedelta(hours=3)).astimezone(ZoneInfo("America/Los_Angeles"))
        assert [m.hour for m in fmt.compact_log(tmp_path, SERVICE, before=west)] == [FIRST_HOUR + timedelta(hours=2)]
        # the default is the start of the current UTC hour: every hour of 2026-01-01 has ended
        write_file(tmp_path, 6)
        assert [m.files_in for m in fmt.compact_log(tmp_path, SERVICE)] == [2]


def test_a_compaction_killed_after_its_rename_leaves_every_row_readable_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(9):
        write_file(tmp_path, index)
    expected = sorted(_ids(fmt.read_log_table(tmp_path, SERVICE)))
    real_unlink = Path.unlink
    calls = {"n": 0}

    def dies_after_one(self: Path, missing_ok: bool = False) -> None:
        if self.suffix == ".parquet":
            calls["n"] += 1
            if calls["n"] > 1:
                raise KeyboardInterrupt("killed")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        fmt.compact_log(tmp_path, SERVICE, before=LATER)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    # the merged file of the first hour is in place beside two of its three sources
    assert len(_files(tmp_path)) == 9 + 1 - 1
    assert sorted(_ids(fmt.read_log_table(tmp_path, SERVICE))) == expected
    assert len(fmt.log_files(tmp_path, SERVICE)) == 1 + 3 + 3
    redo = fmt.compact_log(tmp_path, SERVICE, before=LATER)
    assert [(m.files_in, m.leftovers) for m in redo] == [(0, 2), (3, 0), (3, 0)]
    assert len(_files(tmp_path)) == HOURS
    assert sorted(_ids(fmt.read_log_table(tmp_path, SERVICE))) == expected


def test_files_that_cannot_be_merged_are_named_and_left_as_they_are(tmp_path: Path) -> None:
    write_file(tmp_path, 0)
    odd = fmt.service_log_dir(tmp_path, SERVICE) / fmt.file_name(FIRST_HOUR, "ffff")
    pq.write_table(pa.table({fmt.REQUEST_ID: [1, 2]}), odd)  # the id column is a number here
    with pytest.raises(FeastkitError) as raised:
        fmt.compact_log(tmp_path, SERVICE, before=LATER)
    assert "incompatible columns" in raised.value.message and "2026-01-01 00:00" in raised.value.message
    assert len(_files(tmp_path)) == 2


def _start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.unit.log_compaction_workers", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_readers_see_every_row_once_while_a_server_writes_and_two_compactions_merge(tmp_path: Path) -> None:
    files, go, stop, committed = 600, tmp_path / "go", tmp_path / "stop", tmp_path / "committed"
    log_dir = tmp_path / "log"
    fmt.service_log_dir(log_dir, SERVICE).mkdir(parents=True)
    committed.write_text("0")
    writer = _start("writer", log_dir, go, files, committed)
    compactors = [_start("compactor", log_dir, go, stop) for _ in range(2)]
    go.touch()
    reads = 0
    try:
        while True:
            done_before = int(committed.read_text())
            ids = _ids(fmt.read_log_table(log_dir, SERVICE))
            done_after = int(committed.read_text())
            reads += 1
            assert len(ids) == len(set(ids)), "a row was read twice"
            seen = {int(i[1:]) for i in ids}
            assert set(range(done_before * 5)) <= seen, "a row in place before the read was missed"
            assert max(seen, default=-1) < done_after * 5 + 5  # no row from nowhere
            if writer.poll() is not None and done_after == files:
                break
    finally:
        stop.touch()
        outputs = [p.communicate(timeout=120)[0] for p in (writer, *compactors)]
    assert writer.returncode == 0 and all(p.returncode == 0 for p in compactors), outputs
    merges = sum(int(line.split()[1]) for out in outputs[1:] for line in out.splitlines() if line.startswith("MERGES"))
    print("READS", reads, "MERGES", merges)
    assert merges >= 50 and reads >= 200, (merges, reads)  # the reads really ran between merges
    final = _ids(fmt.read_log_table(log_dir, SERVICE))
    assert sorted(int(i[1:]) for i in final) == list(range(files * 5))
    fmt.compact_log(log_dir, SERVICE, before=LATER)
    assert len(_files(log_dir)) == HOURS


def test_the_command_merges_every_service_and_says_what_it_did(tmp_path: Path) -> None:
    for index in range(6):
        write_file(tmp_path / "log", index)
    env = {**os.environ, "FEASTKIT_DATA_DIR": str(tmp_path / "data"), "FEASTKIT_PREDICTION_LOG_DIR": str(tmp_path / "log")}
    result = subprocess.run([sys.executable, "-m", "feastkit.cli", "compact-log", "--before", "2026-01-02T00:00Z"],
                            env=env, cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{SERVICE}: 3 hour(s) merged, 6 file(s) -> 3, 30 row(s) kept" in result.stdout
    unknown = subprocess.run([sys.executable, "-m", "feastkit.cli", "compact-log", "--service", "nope"], env=env,
                             cwd=REPO, capture_output=True, text=True, check=False)
    assert unknown.returncode == 2 and "no prediction log for nope" in unknown.stderr, unknown.stderr
    assert "use one of ['fraud_detection_v2']" in unknown.stderr and "Traceback" not in unknown.stderr
