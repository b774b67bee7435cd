"""Source checks: every raw row is accepted or quarantined with a reason, and the counts reconcile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from feastkit.errors import FeastkitError
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


def validate_table(table: str, raw_dir: Path, clean_dir: Path, quarantine_dir: Path,
                   as_of: datetime | None = None) -> ValidationReport:
    """Split raw_dir/<table>.parquet into clean_dir/<table>.parquet and quarantine_dir/<table>.parquet."""
    if table not in _KEYS:
        raise FeastkitError(f"no validation rules for table '{table}'", f"use one of {list(_KEYS)}")
    as_of = as_of or datetime.now(UTC)
    src = _require(raw_dir / f"{table}.parquet", f"raw table '{table}'")
    clean_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    con = connect()
    try:
        con.execute(f"CREATE VIEW users AS SELECT * FROM read_parquet('{_require(raw_dir / 'users.parquet', 'raw table users')}')")
        con.execute(f"CREATE VIEW merchants AS SELECT * FROM read_parquet('{_require(raw_dir / 'merchants.parquet', 'raw table merchants')}')")
        columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{src}')").fetchall()]
        missing = [k for k in _KEYS[table] if k not in columns]
        if missing:
            raise FeastkitError(f"raw table '{table}' lacks column(s) {missing}",
                                f"provide a parquet file with columns {list(_KEYS[table])}")
        rules = _rules(table)
        case = "CASE " + " ".join(f"WHEN {cond} THEN '{code}'" for code, cond, _ in rules) + " END"
        con.execute(f"""
            CREATE TEMP TABLE checked AS
            SELECT *, {case} AS quarantine_reason FROM (
                SELECT *, row_number() OVER (PARTITION BY {_DEDUP_KEY[table]} ORDER BY __row) AS __dup_rank
                FROM (SELECT *, row_number() OVER () AS __row FROM read_parquet('{src}'))
            )""", {"as_of": as_of})
        explain = "CASE quarantine_reason " + " ".join(
            f"WHEN '{code}' THEN '{text.replace(chr(39), chr(39) * 2)}'" for code, _, text in rules) + " END"
        con.execute(f"""COPY (SELECT * EXCLUDE (__row, __dup_rank, quarantine_reason) FROM checked
                     WHERE quarantine_reason IS NULL ORDER BY __row)
                     TO '{clean_dir / f'{table}.parquet'}' (FORMAT parquet)""")
        con.execute(f"""COPY (SELECT * EXCLUDE (__row, __dup_rank), {explain} AS quarantine_detail
                     FROM checked WHERE quarantine_reason IS NOT NULL ORDER BY __row)
                     TO '{quarantine_dir / f'{table}.parquet'}' (FORMAT parquet)""")
        rows_in = con.execute("SELECT count(*) FROM checked").fetchone()[0]
        by_reason = dict(con.execute(
            "SELECT quarantine_reason, count(*) FROM checked WHERE quarantine_reason IS NOT NULL "
            "GROUP BY 1").fetchall())
        accepted = con.execute("SELECT count(*) FROM checked WHERE quarantine_reason IS NULL").fetchone()[0]
    finally:
        con.close()
    return ValidationReport(table, rows_in, accepted, sum(by_reason.values()), by_reason)


def validate_all(raw_dir: Path, clean_dir: Path, quarantine_dir: Path,
                 as_of: datetime | None = None) -> list[ValidationReport]:
    """Validate every event table; users and merchants are copied as reference tables."""
    reports = [validate_table(t, raw_dir, clean_dir, quarantine_dir, as_of) for t in _KEYS]
    for ref in ("users", "merchants"):
        src = _require(raw_dir / f"{ref}.parquet", f"raw table '{ref}'")
        (clean_dir / f"{ref}.parquet").write_bytes(src.read_bytes())
    return reports
