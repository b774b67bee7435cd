"""The clean event tables `feastkit validate` writes: where each one lives and the time range they cover."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from feastkit.errors import FeastkitError

# (table, timestamp column) of the event tables whose span is "the data" by default
EVENT_TABLES: tuple[tuple[str, str], ...] = (("transactions", "event_timestamp"), ("activity", "event_timestamp"))


def clean_table(clean_dir: Path, table: str) -> Path:
    """The path of a clean table, or a clear error when validation has not written it."""
    path = clean_dir / f"{table}.parquet"
    if not path.is_file():
        raise FeastkitError(f"clean table '{table}' not found at {path}",
                            "run `feastkit validate` (or `feastkit compute`, which validates first)")
    return path


def data_range(clean_dir: Path, tables: Sequence[tuple[str, str]] = EVENT_TABLES) -> tuple[datetime, datetime]:
    """[start, end) on whole hours covering every event of the given (table, timestamp column)s."""
    import duckdb
    import pandas as pd

    parts = [f"SELECT min({ts}) AS lo, max({ts}) AS hi FROM read_parquet('{clean_table(clean_dir, t)}')"
             for t, ts in tables]
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        lo, hi = con.execute(f"SELECT min(lo), max(hi) FROM ({' UNION ALL '.join(parts)})").fetchone()
    finally:
        con.close()
    if lo is None:
        raise FeastkitError(f"no clean events in {clean_dir}", "run `feastkit generate` and `feastkit validate`")
    start = pd.Timestamp(lo).tz_convert("UTC").floor("h").to_pydatetime()
    end = (pd.Timestamp(hi).tz_convert("UTC").floor("h") + pd.Timedelta(hours=1)).to_pydatetime()
    return start, end
