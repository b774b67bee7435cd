"""Validation as of a run's time (never the clock, in any process timezone) and bad raw input files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from feastkit.errors import FeastkitError
from pipelines.aggregates import compute_features
from pipelines.synthetic import SyntheticConfig, generate, write
from pipelines.validation import validate_all
from tests.conftest import ZONES, process_timezone
from tests.unit.atomic_workers import specs

CONFIG = SyntheticConfig(n_users=20, n_merchants=5, days=10, seed=3, start=datetime(2026, 3, 1, tzinfo=UTC))
END = CONFIG.start + timedelta(days=5)  # an interval end in the middle of the data


@pytest.fixture(params=ZONES)
def zone(request: pytest.FixtureRequest) -> Iterator[str]:
    with process_timezone(request.param):
        yield request.param


def raw_with_edge_rows(raw: Path) -> None:
    """Synthetic raw tables plus three transactions 1 us before, at and 1 us after END."""
    tables = generate(CONFIG)
    tx = tables.transactions
    edge = tx.iloc[:3].copy()
    edge["transaction_id"] = [-1, -2, -3]
    edge["event_timestamp"] = [pd.Timestamp(END) + pd.Timedelta(microseconds=d) for d in (-1, 0, 1)]
    tables.transactions = pd.concat([tx, edge], ignore_index=True)
    write(tables, raw)


def test_future_rows_are_judged_by_the_run_s_as_of_to_the_microsecond_in_any_zone(
        tmp_path: Path, zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw_with_edge_rows(tmp_path / "raw")
    reports = {r.table: r for r in validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "q", as_of=END)}
    clean = pd.read_parquet(tmp_path / "clean" / "transactions.parquet")
    quarantined = pd.read_parquet(tmp_path / "q" / "transactions.parquet")
    assert set(clean["transaction_id"]) & {-1, -2, -3} == {-1, -2}
    future = quarantined[quarantined["quarantine_reason"] == "future_timestamp"]
    assert -3 in set(future["transaction_id"])
    assert (future["event_timestamp"] > pd.Timestamp(END)).all()
    assert (clean["event_timestamp"] <= pd.Timestamp(END)).all()
    assert reports["transactions"].reasons["future_timestamp"] == len(future)
    assert reports["transactions"].rows_in == reports["transactions"].accepted + reports["transactions"].quarantined


def test_the_same_input_gives_the_same_tables_whatever_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of the job for one interval under two different wall clocks write identical tables."""
    import pipelines.validation as validation
    from feastkit.jobs import run_validation
    from tests.conftest import make_settings

    raw_with_edge_rows(tmp_path / "a" / "data" / "raw")
    raw_with_edge_rows(tmp_path / "b" / "data" / "raw")
    for run, clock in (("a", datetime(2026, 3, 3, tzinfo=UTC)), ("b", datetime(2031, 1, 1, tzinfo=UTC))):
        class Clock(datetime):
            @classmethod
            def now(cls, tz: object = None, _clock: datetime = clock) -> datetime:  # type: ignore[override]
                return _clock

        monkeypatch.setattr(validation, "datetime", Clock, raising=False)
        run_validation(make_settings(tmp_path / run), END)
    for folder in ("clean", "quarantine"):
        for table in ("transactions", "activity", "fraud_labels"):
            a = pd.read_parquet(tmp_path / "a" / "data" / folder / f"{table}.parquet")
            b = pd.read_parquet(tmp_path / "b" / "data" / folder / f"{table}.parquet")
            pd.testing.assert_frame_equal(a, b)
    clean = pd.read_parquet(tmp_path / "a" / "data" / "clean" / "transactions.parquet")
    assert clean["event_timestamp"].max() <= pd.Timestamp(END)


def test_an_older_interval_validated_after_a_newer_one_never_cuts_the_clean_tables_short(tmp_path: Path) -> None:
    """Backfills run intervals in any order: validating as of an earlier end after a later one keeps the
    later tables, and the features of the earlier interval are the same as when validated alone."""
    raw_with_edge_rows(tmp_path / "raw")
    later, earlier = END + timedelta(days=2), END
    validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "q", as_of=later)
    kept = pd.read_parquet(tmp_path / "clean" / "transactions.parquet")
    reports = validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "q", as_of=earlier)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "clean" / "transactions.parquet"), kept)
    assert reports[0].as_of == later
    assert kept["event_timestamp"].max() > pd.Timestamp(earlier)
    spec = specs()[0]
    start = earlier - timedelta(hours=6)
    compute_features([spec], tmp_path / "clean", tmp_path / "features", start, earlier)
    validate_all(tmp_path / "raw", tmp_path / "alone" / "clean", tmp_path / "alone" / "q", as_of=earlier)
    compute_features([spec], tmp_path / "alone" / "clean", tmp_path / "alone" / "features", start, earlier)
    got = pd.read_parquet(tmp_path / "features" / "v").sort_values(["user_id", "event_timestamp"])
    want = pd.read_parquet(tmp_path / "alone" / "features" / "v").sort_values(["user_id", "event_timestamp"])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


# Bad raw files: one FeastkitError naming the file and the fix, nothing written ------------------------


def break_not_parquet(raw: Path) -> str:
    (raw / "transactions.parquet").write_text("transaction_id,user_id\n1,2\n")
    return "not a readable Parquet file"


def break_text_in_numeric_column(raw: Path) -> str:
    tx = pd.read_parquet(raw / "transactions.parquet")
    tx["amount"] = tx["amount"].map(lambda v: f"{v:.2f} EUR")
    tx.to_parquet(raw / "transactions.parquet", index=False)
    return "column 'amount' holds VARCHAR"


def break_missing_column(raw: Path) -> str:
    pd.read_parquet(raw / "activity.parquet").drop(columns=["amount"]).to_parquet(raw / "activity.parquet")
    return "lacks column(s) ['amount']"


def break_empty_file(raw: Path) -> str:
    (raw / "merchants.parquet").write_bytes(b"")
    return "empty file (0 bytes)"


def break_no_rows(raw: Path) -> str:
    tx = pd.read_parquet(raw / "transactions.parquet")
    tx.iloc[:0].to_parquet(raw / "transactions.parquet", index=False)
    return "has no rows"


BREAKS = {"not_parquet": break_not_parquet, "text_in_numeric_column": break_text_in_numeric_column,
          "missing_column": break_missing_column, "empty_file": break_empty_file, "no_rows": break_no_rows}


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_a_bad_raw_file_gets_one_line_naming_it_and_nothing_is_written(tmp_path: Path, kind: str) -> None:
    write(generate(CONFIG), tmp_path / "raw")
    validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "q", as_of=END)
    before = {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()}
    fragment = BREAKS[kind](tmp_path / "raw")
    with pytest.raises(FeastkitError) as info:
        validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "q", as_of=END)
    message = info.value.message
    assert fragment in message and "\n" not in message and str(tmp_path / "raw") in message
    assert info.value.fix
    assert {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()} == before


def test_compute_over_a_corrupt_or_mistyped_clean_table_gets_one_line(tmp_path: Path) -> None:
    write(generate(CONFIG), tmp_path / "raw")
    validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "q", as_of=END)
    table = tmp_path / "clean" / "transactions.parquet"
    tx = pd.read_parquet(table)
    tx.assign(amount=tx["amount"].astype(str)).to_parquet(table, index=False)
    with pytest.raises(FeastkitError, match="column 'amount' holds VARCHAR") as info:
        compute_features(specs()[:1], tmp_path / "clean", tmp_path / "features", CONFIG.start, END)
    assert str(table) in info.value.message and "feastkit validate" in info.value.message
    table.write_bytes(b"PAR1 not really")
    with pytest.raises(FeastkitError, match="not a readable Parquet file") as info:
        compute_features(specs()[:1], tmp_path / "clean", tmp_path / "features", CONFIG.start, END)
    assert str(table) in info.value.message and "\n" not in info.value.message
