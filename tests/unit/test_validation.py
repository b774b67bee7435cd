"""Tests for pipelines.validation: each raw row is accepted or quarantined with the right reason."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from feastkit.errors import FeastkitError
from pipelines.synthetic import SyntheticConfig, generate, write
from pipelines.validation import ValidationReport, validate_all, validate_table

CONFIG = SyntheticConfig(n_users=40, n_merchants=10, days=20, seed=23, bad_rows=80)
AS_OF = CONFIG.end + timedelta(days=90)  # late labels (up to 60 days) are not "future"
EVENT_TABLES = ("transactions", "activity", "fraud_labels")
BAD_ID_OFFSET = 900_000_000

# what inject_bad_rows does to a transaction -> the reason validation must give
EXPECTED_REASON = {
    "null_key": "null_key",
    "negative_amount": "bad_amount",
    "absurd_amount": "absurd_amount",
    "future_timestamp": "future_timestamp",
    "unknown_channel": "unknown_channel",
    "duplicate": "duplicate",
    "unknown_user": "unknown_user",
    "before_range": "out_of_range_timestamp",
}


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def bad_kind(bad: pd.Series, original: pd.Series) -> str:
    """Which corruption inject_bad_rows applied, read off the differences to the original row."""
    if pd.isna(bad["user_id"]):
        return "null_key"
    if bad["user_id"] == 999_999_999:
        return "unknown_user"
    if bad["amount"] == -original["amount"]:
        return "negative_amount"
    if bad["amount"] == 5_000_000.0:
        return "absurd_amount"
    if bad["event_timestamp"] == ts("2100-01-01"):
        return "future_timestamp"
    if bad["event_timestamp"] == ts("1999-12-31"):
        return "before_range"
    if bad["channel"] == "fax":
        return "unknown_channel"
    assert bad["transaction_id"] == original["transaction_id"], "unrecognised bad row"
    assert bad.drop(labels=["user_id"]).equals(original.drop(labels=["user_id"]))
    return "duplicate"


def add_bad_labels_and_activity(tables) -> dict[str, list[tuple[object, str]]]:
    """Append hand-made bad rows; return {table: [(row marker, expected reason), ...]}."""
    tx = tables.transactions.iloc[: len(tables.transactions) - CONFIG.bad_rows]
    labels = tables.fraud_labels
    unlabelled = tx[~tx["transaction_id"].isin(labels["transaction_id"])].iloc[0]
    before = pd.DataFrame([{
        "transaction_id": unlabelled["transaction_id"], "user_id": unlabelled["user_id"],
        "merchant_id": unlabelled["merchant_id"],
        "transaction_timestamp": unlabelled["event_timestamp"],
        "label_timestamp": unlabelled["event_timestamp"] - pd.Timedelta(hours=3),
        "is_fraud": 1,
    }])
    duplicate = labels.iloc[[0]].copy()
    duplicate["label_timestamp"] = duplicate["label_timestamp"] + pd.Timedelta(days=1)
    tables.fraud_labels = pd.concat([labels, before, duplicate], ignore_index=True)

    act = tables.activity
    user = int(act["user_id"].iloc[0])
    when = ts("2026-01-05T10:00:00")
    extra = pd.DataFrame([
        {"user_id": user, "event_type": "wishlist", "amount": 12.5, "event_timestamp": when},
        {"user_id": user, "event_type": "purchase", "amount": -5.0, "event_timestamp": when},
        {"user_id": user, "event_type": "return", "amount": -7.0, "event_timestamp": when},
        # a null key outranks a negative amount: the first rule that applies wins
        {"user_id": None, "event_type": "purchase", "amount": -9.0, "event_timestamp": when},
        {"user_id": 777_777_777, "event_type": "view", "amount": 0.0, "event_timestamp": when},
    ])
    extra["user_id"] = extra["user_id"].astype("Int64")
    tables.activity = pd.concat([act.astype({"user_id": "Int64"}), extra], ignore_index=True)
    return {
        "fraud_labels": [(before.iloc[0]["transaction_id"], "label_before_transaction"),
                         (duplicate.iloc[0]["transaction_id"], "duplicate")],
        "activity": [("wishlist", "unknown_event_type"), (-5.0, "bad_amount"),
                     (-7.0, "bad_amount"), (-9.0, "null_key"), (777_777_777, "unknown_user")],
    }


@dataclass
class Validated:
    raw: dict[str, pd.DataFrame]
    clean: dict[str, pd.DataFrame]
    quarantine: dict[str, pd.DataFrame]
    reports: dict[str, ValidationReport]
    n_good_transactions: int
    hand_made: dict[str, list[tuple[object, str]]]


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> Validated:
    base = tmp_path_factory.mktemp("validation")
    tables = generate(CONFIG)
    hand_made = add_bad_labels_and_activity(tables)
    write(tables, base / "raw")
    reports = validate_all(base / "raw", base / "clean", base / "quarantine", as_of=AS_OF)

    def read(folder: str) -> dict[str, pd.DataFrame]:
        return {t: pd.read_parquet(base / folder / f"{t}.parquet") for t in EVENT_TABLES}

    return Validated(read("raw"), read("clean"), read("quarantine"),
                     {r.table: r for r in reports},
                     len(tables.transactions) - CONFIG.bad_rows, hand_made)


def test_every_injected_bad_transaction_is_quarantined_with_its_reason(
        validated: Validated) -> None:
    raw = validated.raw["transactions"]
    good, bad = raw.iloc[: validated.n_good_transactions], raw.iloc[validated.n_good_transactions:]
    assert len(bad) == CONFIG.bad_rows
    originals = good.set_index("transaction_id", drop=False)
    quarantine = validated.quarantine["transactions"]
    assert len(quarantine) == CONFIG.bad_rows
    seen: dict[str, int] = {}
    for _, row in bad.iterrows():
        original_id = row["transaction_id"] % BAD_ID_OFFSET
        kind = bad_kind(row, originals.loc[original_id])
        seen[kind] = seen.get(kind, 0) + 1
        match = quarantine[quarantine["transaction_id"] == row["transaction_id"]]
        assert len(match) == 1, f"{kind} row {row['transaction_id']} not quarantined once"
        assert match.iloc[0]["quarantine_reason"] == EXPECTED_REASON[kind], kind
    assert set(seen) == set(EXPECTED_REASON), f"kinds produced: {sorted(seen)}"
    assert validated.reports["transactions"].reasons == {
        EXPECTED_REASON[k]: n for k, n in seen.items()}


def test_the_original_of_a_duplicate_stays_clean(validated: Validated) -> None:
    clean = validated.clean["transactions"]
    assert clean["transaction_id"].is_unique
    assert len(clean) == validated.n_good_transactions
    dup_ids = validated.quarantine["transactions"].query("quarantine_reason == 'duplicate'")[
        "transaction_id"]
    assert len(dup_ids) > 0
    assert dup_ids.isin(clean["transaction_id"]).all()


@pytest.mark.parametrize("table", ["fraud_labels", "activity"])
def test_hand_made_bad_rows_get_their_reason(validated: Validated, table: str) -> None:
    quarantine = validated.quarantine[table]
    assert len(quarantine) == len(validated.hand_made[table])
    for marker, reason in validated.hand_made[table]:
        if table == "fraud_labels":
            rows = quarantine[quarantine["transaction_id"] == marker]
        elif isinstance(marker, str):
            rows = quarantine[quarantine["event_type"] == marker]
        elif marker == 777_777_777:
            rows = quarantine[quarantine["user_id"] == marker]
        else:
            rows = quarantine[quarantine["amount"] == marker]
        assert len(rows) == 1, f"{table}: {marker!r} quarantined {len(rows)} times"
        assert rows.iloc[0]["quarantine_reason"] == reason, f"{table}: {marker!r}"


def test_duplicate_label_keeps_the_first_row(validated: Validated) -> None:
    (dup_id, _), = [m for m in validated.hand_made["fraud_labels"] if m[1] == "duplicate"]
    raw = validated.raw["fraud_labels"]
    first = raw[raw["transaction_id"] == dup_id].iloc[0]
    kept = validated.clean["fraud_labels"].query("transaction_id == @dup_id")
    assert len(kept) == 1
    assert kept.iloc[0]["label_timestamp"] == first["label_timestamp"]


def test_zero_amount_views_are_accepted(validated: Validated) -> None:
    clean = validated.clean["activity"]
    views = clean[clean["event_type"] == "view"]
    assert len(views) > 0 and (views["amount"] == 0.0).all()


@pytest.mark.parametrize("table", EVENT_TABLES)
def test_counts_reconcile(validated: Validated, table: str) -> None:
    report = validated.reports[table]
    raw, clean, quarantine = (validated.raw[table], validated.clean[table],
                              validated.quarantine[table])
    assert report.rows_in == report.accepted + report.quarantined
    assert report.rows_in == len(raw)
    assert report.accepted == len(clean)
    assert report.quarantined == len(quarantine)
    assert len(clean) + len(quarantine) == len(raw)
    assert sum(report.reasons.values()) == report.quarantined
    assert report.reasons == quarantine["quarantine_reason"].value_counts().to_dict()


@pytest.mark.parametrize("table", EVENT_TABLES)
def test_quarantine_rows_carry_reason_and_detail(validated: Validated, table: str) -> None:
    quarantine = validated.quarantine[table]
    assert len(quarantine) > 0
    assert quarantine["quarantine_reason"].notna().all()
    detail = quarantine["quarantine_detail"]
    assert detail.notna().all() and (detail.str.strip().str.len() > 0).all()
    # clean rows keep exactly the raw columns; quarantine rows add the reason and its detail
    assert list(validated.clean[table].columns) == list(validated.raw[table].columns)
    assert list(quarantine.columns) == [*validated.raw[table].columns, "quarantine_reason",
                                        "quarantine_detail"]


def test_clean_rows_are_raw_rows_unchanged(validated: Validated) -> None:
    raw = validated.raw["transactions"].iloc[: validated.n_good_transactions]
    clean = validated.clean["transactions"]
    pd.testing.assert_frame_equal(clean.reset_index(drop=True), raw.reset_index(drop=True),
                                  check_dtype=False)


def test_report_line_mentions_every_reason(validated: Validated) -> None:
    line = validated.reports["transactions"].line()
    for reason in EXPECTED_REASON.values():
        assert f"{reason}=" in line


def test_report_rejects_counts_that_do_not_reconcile() -> None:
    with pytest.raises(AssertionError):
        ValidationReport("transactions", rows_in=10, accepted=7, quarantined=2, reasons={})


def test_missing_raw_file_says_to_generate(tmp_path: Path) -> None:
    with pytest.raises(FeastkitError) as info:
        validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "quarantine", as_of=AS_OF)
    assert "feastkit generate" in str(info.value)


def test_missing_reference_table_says_to_generate(tmp_path: Path) -> None:
    write(generate(SyntheticConfig(n_users=10, n_merchants=5, days=7, seed=1)), tmp_path / "raw")
    (tmp_path / "raw" / "merchants.parquet").unlink()
    with pytest.raises(FeastkitError) as info:
        validate_table("transactions", tmp_path / "raw", tmp_path / "clean", tmp_path / "q", as_of=AS_OF)
    assert "feastkit generate" in str(info.value)


def test_unknown_table_and_missing_key_column_raise(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write(generate(SyntheticConfig(n_users=10, n_merchants=5, days=7, seed=1)), raw)
    with pytest.raises(FeastkitError, match="no validation rules"):
        validate_table("users", raw, tmp_path / "clean", tmp_path / "q", as_of=AS_OF)
    pd.read_parquet(raw / "activity.parquet").drop(columns=["event_type"]).to_parquet(
        raw / "activity.parquet")
    with pytest.raises(FeastkitError, match="event_type"):
        validate_table("activity", raw, tmp_path / "clean", tmp_path / "q", as_of=AS_OF)


def test_a_memory_limit_spills_to_the_data_folder_and_gives_the_same_tables(tmp_path: Path, monkeypatch) -> None:
    """Past FEASTKIT_VALIDATION_MEMORY_LIMIT DuckDB spills the checked rows to a folder in the data
    folder: the clean and quarantined tables are those of a run without a limit, and the folder goes."""
    import pipelines.validation as validation

    config = SyntheticConfig(n_users=10_000, n_merchants=100, days=30, seed=3, bad_rows=40)
    write(generate(config), tmp_path / "raw")
    as_of = config.end + timedelta(days=90)
    spilled: list[bool] = []
    real_split = validation._split

    def split_and_look(con, table, *args):  # noqa: ANN001, ANN002, ANN202
        report = real_split(con, table, *args)
        spill = tmp_path / "limited" / validation.SPILL_FOLDER
        spilled.append(spill.is_dir())  # DuckDB makes the folder when it first spills
        return report

    free = validate_all(tmp_path / "raw", tmp_path / "free" / "clean", tmp_path / "free" / "quarantine", as_of=as_of)
    monkeypatch.setattr(validation, "_split", split_and_look)
    limited = validate_all(tmp_path / "raw", tmp_path / "limited" / "clean", tmp_path / "limited" / "quarantine",
                           as_of=as_of, memory_limit="56MB")
    assert limited == free
    for folder in ("clean", "quarantine"):
        for table in EVENT_TABLES:
            pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "limited" / folder / f"{table}.parquet"),
                                          pd.read_parquet(tmp_path / "free" / folder / f"{table}.parquet"))
    assert any(spilled), "nothing spilled: the limit was not applied"
    assert not (tmp_path / "limited" / validation.SPILL_FOLDER).exists()


def test_a_memory_limit_duckdb_does_not_take_is_refused_clearly(tmp_path: Path) -> None:
    write(generate(CONFIG), tmp_path / "raw")
    with pytest.raises(FeastkitError, match="FEASTKIT_VALIDATION_MEMORY_LIMIT") as caught:
        validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "quarantine", as_of=AS_OF,
                     memory_limit="lots")
    assert "'lots'" in str(caught.value)


def test_too_little_memory_says_which_setting_to_raise(tmp_path: Path) -> None:
    write(generate(replace(CONFIG, n_users=3000, n_merchants=100, days=30)), tmp_path / "raw")
    with pytest.raises(FeastkitError, match="out of memory.*raise FEASTKIT_VALIDATION_MEMORY_LIMIT"):
        validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "quarantine", as_of=AS_OF,
                     memory_limit="4MB")
