"""Source checks: every raw row is accepted or quarantined with a reason, and the counts reconcile."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from feastkit.atomic import DEFAULT_LOCK_TIMEOUT_SECONDS, data_folder_lock, replace_bytes, replacing
from feastkit.errors import FeastkitError
from feastkit.times import require_aware, utc
from pipelines.aggregates import connect
from pipelines.synthetic import ACTIVITY_TYPES, CHANNELS

MAX_AMOUNT = 100_000.0
NOT_BEFORE = "2000-01-01 00:00:00+00"

# Each rule: (reason code, condition that marks a row bad, human explanation).
# Rules are checked in order; a row gets the first reason that applies.
_KEYS = {
    "transactions": ("transaction_id", "user_id", "merchant_id", "event_timestamp"),
    "activity": ("user_id", "event_type", "event_timestamp"),
    "fraud_labels": ("transaction_id", "transaction_timestamp", "label_timestamp"),
}
_DEDUP_KEY = {
    "transactions": "transaction_id",
    "activity": "user_id, event_type, event_timestamp, amount",
    "fraud_labels": "transaction_id",
}
# The columns the rules read, and what each must hold (a DuckDB type family).
_COLUMNS: dict[str, dict[str, str]] = {
    "transactions": {"transaction_id": "integer", "user_id": "integer", "merchant_id": "integer",
                     "amount": "number", "channel": "text", "event_timestamp": "timestamp"},
    "activity": {"user_id": "integer", "event_type": "text", "amount": "number", "event_timestamp": "timestamp"},
    "fraud_labels": {"transaction_id": "integer", "transaction_timestamp": "timestamp",
                     "label_timestamp": "timestamp"},
    "users": {"user_id": "integer"},
    "merchants": {"merchant_id": "integer"},
}
# Columns that need not be there, but must hold the right kind of value when they are.
_OPTIONAL_COLUMNS: dict[str, dict[str, str]] = {
    "transactions": {}, "activity": {}, "fraud_labels": {"is_fraud": "number", "user_id": "integer",
                                                         "merchant_id": "integer"},
    "users": {}, "merchants": {},
}
_KINDS = {
    "integer": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                "UBIGINT", "UHUGEINT"),
    "number": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
               "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL"),
    "timestamp": ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"),
    "text": ("VARCHAR",),
}
_KIND_WORDS = {"integer": "whole numbers", "number": "numbers", "timestamp": "timestamps", "text": "text"}
VALIDATED_FILE = "_validated.json"  # the as-of time the clean tables were judged at
# tables that may legitimately have no rows yet (labels arrive days after their transactions)
_MAY_BE_EMPTY = ("fraud_labels",)

_TIME_COLUMN = {"transactions": "event_timestamp", "activity": "event_timestamp",
                "fraud_labels": "label_timestamp"}


def _rules(table: str) -> list[tuple[str, str, str]]:
    keys = _KEYS[table]
    null_cond = " OR ".join(f"{k} IS NULL" for k in keys)
    ts = _TIME_COLUMN[table]
    rules = [("null_key", null_cond, f"one of the keys ({', '.join(keys)}) is null"),
             ("duplicate", "__dup_rank > 1", f"duplicate of an earlier row with the same {_DEDUP_KEY[table]}")]
    if table in ("transactions", "activity"):
        low = "amount <= 0" if table == "transactions" else "amount < 0"
        rules += [
            ("bad_amount", f"amount IS NULL OR isnan(amount) OR {low}",
             "amount is missing, NaN or not positive"),
            ("absurd_amount", f"amount > {MAX_AMOUNT}", f"amount is above {MAX_AMOUNT:,.0f}"),
        ]
    rules += [
        ("future_timestamp", f"CAST({ts} AS TIMESTAMPTZ) > $as_of", f"{ts} is later than the run's as-of time"),
        ("out_of_range_timestamp", f"CAST({ts} AS TIMESTAMPTZ) < TIMESTAMPTZ '{NOT_BEFORE}'",
         f"{ts} is before {NOT_BEFORE[:10]}"),
    ]
    if table == "transactions":
        allowed = ", ".join(f"'{c}'" for c in CHANNELS)
        rules += [
            ("unknown_channel", f"channel IS NULL OR channel NOT IN ({allowed})",
             f"channel is not one of {list(CHANNELS)}"),
            ("unknown_user", "user_id NOT IN (SELECT user_id FROM users)", "user_id is not a known user"),
            ("unknown_merchant", "merchant_id NOT IN (SELECT merchant_id FROM merchants)",
             "merchant_id is not a known merchant"),
        ]
    elif table == "activity":
        allowed = ", ".join(f"'{c}'" for c in ACTIVITY_TYPES)
        rules += [
            ("unknown_event_type", f"event_type NOT IN ({allowed})",
             f"event_type is not one of {list(ACTIVITY_TYPES)}"),
            ("unknown_user", "user_id NOT IN (SELECT user_id FROM users)", "user_id is not a known user"),
        ]
    else:
        rules += [
            ("label_before_transaction", "label_timestamp < transaction_timestamp",
             "the label is dated before its transaction"),
        ]
    return rules


@dataclass(frozen=True)
class ValidationReport:
    """Row counts for one table: rows_in == accepted + quarantined, with counts per reason."""

    table: str
    rows_in: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    as_of: datetime | None = None  # rows stamped later were quarantined as future_timestamp

    def __post_init__(self) -> None:
        if self.rows_in != self.accepted + self.quarantined:
            raise AssertionError(f"{self.table}: {self.rows_in} rows in but {self.accepted} "
                                 f"accepted + {self.quarantined} quarantined")

    def line(self) -> str:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())) or "none"
        return (f"{self.table:<13} in={self.rows_in:>9,}  accepted={self.accepted:>9,}  "
                f"quarantined={self.quarantined:>6,}  ({detail})")


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FeastkitError(f"{what} not found at {path}",
                            "run `feastkit generate` first (or point FEASTKIT_DATA_DIR at your data)")
    return path


_FIX_FILE = "replace it with a Parquet export of the table (or rerun `feastkit generate`), then run again"


def check_raw_file(con: duckdb.DuckDBPyConnection, table: str, path: Path) -> list[str]:
    """The columns of a raw table's file, once it is known to be a Parquet file with rows and with
    every column the rules read, each holding the right kind of value; else a FeastkitError naming
    the file and the fix."""
    if path.stat().st_size == 0:
        raise FeastkitError(f"raw table '{table}' at {path} is an empty file (0 bytes)", _FIX_FILE)
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
    except duckdb.Error as exc:
        raise FeastkitError(f"raw table '{table}' at {path} is not a readable Parquet file "
                            f"({str(exc).splitlines()[0][:160]})", _FIX_FILE) from None
    types = {name: str(dtype) for name, dtype, *_ in described}
    wanted = _COLUMNS[table]
    missing = [c for c in wanted if c not in types]
    if missing:
        raise FeastkitError(f"raw table '{table}' at {path} lacks column(s) {missing} (it has {sorted(types)})",
                            f"provide a Parquet file with columns {list(wanted)}")
    if rows == 0 and table not in _MAY_BE_EMPTY:
        raise FeastkitError(f"raw table '{table}' at {path} has no rows",
                            "check the export that wrote it (or rerun `feastkit generate`), then run again")
    for column, kind in {**wanted, **_OPTIONAL_COLUMNS[table]}.items():
        if column in types and types[column] != "NULL" and not types[column].startswith(_KINDS[kind]):
            example = con.execute(f"""SELECT "{column}" FROM read_parquet('{path}') WHERE "{column}" IS NOT NULL
                                      LIMIT 1""").fetchone()
            shown = f", e.g. {example[0]!r}" if example else ""
            raise FeastkitError(
                f"raw table '{table}' at {path}: column '{column}' holds {types[column]}{shown}, "
                f"not {_KIND_WORDS[kind]}",
                f"write '{column}' as a column of {_KIND_WORDS[kind]} in the Parquet file, then run again")
    return list(types)


def validate_table(table: str, raw_dir: Path, clean_dir: Path, quarantine_dir: Path, *, as_of: datetime,
                   lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS, memory_limit: str = "") -> ValidationReport:
    """Split raw_dir/<table>.parquet into clean_dir/<table>.parquet and quarantine_dir/<table>.parquet.

    Rows stamped after `as_of` (a run's interval end) are quarantined as future_timestamp; the wall
    clock plays no part, so a rerun gives the same tables. Both files are replaced by rename, under
    the lock of the data folder holding clean_dir. With `memory_limit` (DuckDB's, say "4GB"), the
    checked rows past it spill to a folder in the data folder, removed afterwards.
    """
    if table not in _KEYS:
        raise FeastkitError(f"no validation rules for table '{table}'", f"use one of {list(_KEYS)}")
    as_of = require_aware(as_of, "validation as-of time")
    src = _require(raw_dir / f"{table}.parquet", f"raw table '{table}'")
    with data_folder_lock(clean_dir.parent, "validation", lock_timeout):
        clean_dir.mkdir(parents=True, exist_ok=True)
        quarantine_dir.mkdir(parents=True, exist_ok=True)
        con = connect()
        spill = clean_dir.parent / SPILL_FOLDER
        try:
            if memory_limit:
                _limit_memory(con, memory_limit, spill)
            for ref in ("users", "merchants"):
                path = _require(raw_dir / f"{ref}.parquet", f"raw table '{ref}'")
                check_raw_file(con, ref, path)
                con.execute(f"CREATE VIEW {ref} AS SELECT * FROM read_parquet('{path}')")
            check_raw_file(con, table, src)
            return _split(con, table, src, clean_dir, quarantine_dir, as_of)
        finally:
            con.close()
            shutil.rmtree(spill, ignore_errors=True)


SPILL_FOLDER = ".validation-spill"  # in the data folder: where DuckDB spills past the memory limit


def _limit_memory(con: duckdb.DuckDBPyConnection, memory_limit: str, spill: Path) -> None:
    try:
        con.execute("SET memory_limit = $limit", {"limit": memory_limit})
    except duckdb.Error as exc:
        raise FeastkitError(f"validation memory limit {memory_limit!r} is not a size DuckDB takes "
                            f"({str(exc).splitlines()[0][:160]})",
                            "set FEASTKIT_VALIDATION_MEMORY_LIMIT to a size such as 4GB or 800MB, or to '' "
                            "for DuckDB's default") from None
    con.execute("SET temp_directory = $spill", {"spill": str(spill)})


def _split(con: duckdb.DuckDBPyConnection, table: str, src: Path, clean_dir: Path, quarantine_dir: Path,
           as_of: datetime) -> ValidationReport:
    rules = _rules(table)
    case = "CASE " + " ".join(f"WHEN {cond} THEN '{code}'" for code, cond, _ in rules) + " END"
    try:
        con.execute(f"""
            CREATE TEMP TABLE checked AS
            SELECT *, {case} AS quarantine_reason FROM (
                SELECT *, row_number() OVER (PARTITION BY {_DEDUP_KEY[table]} ORDER BY __row) AS __dup_rank
                FROM (SELECT *, row_number() OVER () AS __row FROM read_parquet('{src}'))
            )""", {"as_of": as_of})
    except duckdb.OutOfMemoryException as exc:
        raise FeastkitError(f"raw table '{table}' at {src}: validation ran out of memory "
                            f"({str(exc).splitlines()[0][:200]})",
                            "raise FEASTKIT_VALIDATION_MEMORY_LIMIT (DuckDB then spills less), or set it where "
                            "DuckDB's default would take more memory than the machine has") from None
    except duckdb.Error as exc:
        raise FeastkitError(f"raw table '{table}' at {src} cannot be checked ({str(exc).splitlines()[0][:200]})",
                            _FIX_FILE) from None
    explain = "CASE quarantine_reason " + " ".join(
        f"WHEN '{code}' THEN '{text.replace(chr(39), chr(39) * 2)}'" for code, _, text in rules) + " END"
    with replacing(clean_dir / f"{table}.parquet") as tmp:
        con.execute(f"""COPY (SELECT * EXCLUDE (__row, __dup_rank, quarantine_reason) FROM checked
                     WHERE quarantine_reason IS NULL ORDER BY __row) TO '{tmp}' (FORMAT parquet)""")
    with replacing(quarantine_dir / f"{table}.parquet") as tmp:
        con.execute(f"""COPY (SELECT * EXCLUDE (__row, __dup_rank), {explain} AS quarantine_detail
                     FROM checked WHERE quarantine_reason IS NOT NULL ORDER BY __row) TO '{tmp}' (FORMAT parquet)""")
    rows_in = con.execute("SELECT count(*) FROM checked").fetchone()[0]
    by_reason = dict(con.execute(
        "SELECT quarantine_reason, count(*) FROM checked WHERE quarantine_reason IS NOT NULL GROUP BY 1").fetchall())
    accepted = con.execute("SELECT count(*) FROM checked WHERE quarantine_reason IS NULL").fetchone()[0]
    con.execute("DROP TABLE checked")
    return ValidationReport(table, rows_in, accepted, sum(by_reason.values()), by_reason, as_of)


def validated_as_of(clean_dir: Path) -> datetime | None:
    """The as-of time the clean tables were last judged at (None before any validation)."""
    path = clean_dir / VALIDATED_FILE
    try:
        return utc(json.loads(path.read_text())["as_of"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def validate_all(raw_dir: Path, clean_dir: Path, quarantine_dir: Path, *, as_of: datetime,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS, memory_limit: str = "") -> list[ValidationReport]:
    """Validate every event table as of `as_of`; users and merchants are copied as reference tables.

    The clean tables never go back in time: when they were already judged as of a later time (a
    backfill of older intervals after newer ones, which Airflow runs in any order), that later time
    is kept. The rows an interval reads (stamped before its end) are the same either way, and a
    compute of a later interval never finds them cut short. The whole set is written under the data
    folder's lock; each file is replaced by rename.
    """
    as_of = require_aware(as_of, "validation as-of time")
    with data_folder_lock(clean_dir.parent, "validation", lock_timeout):
        recorded = validated_as_of(clean_dir)
        if recorded is not None and recorded > as_of:
            as_of = recorded
        con = connect()
        try:  # every input is checked before anything is written
            for table in (*_KEYS, "users", "merchants"):
                check_raw_file(con, table, _require(raw_dir / f"{table}.parquet", f"raw table '{table}'"))
        finally:
            con.close()
        reports = [validate_table(t, raw_dir, clean_dir, quarantine_dir, as_of=as_of, lock_timeout=lock_timeout,
                                  memory_limit=memory_limit) for t in _KEYS]
        for ref in ("users", "merchants"):
            replace_bytes(clean_dir / f"{ref}.parquet", (raw_dir / f"{ref}.parquet").read_bytes())
        replace_bytes(clean_dir / VALIDATED_FILE, json.dumps({"as_of": as_of.isoformat()}).encode())
    return reports
