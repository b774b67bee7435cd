"""UTC time helpers: parsing, checking and converting timestamps, microsecond-exact.

Every time feastkit compares, stores or sends is a timezone-aware UTC `datetime`. The rules:

- A naive datetime (or an ISO string without an offset) means UTC — never the machine's local
  time, so nothing here depends on the process's TZ. Where a naive time is a mistake rather than
  a convention, `require_aware` refuses it.
- Results are plain `datetime` objects, even for subclasses such as pendulum's `DateTime` (what
  Airflow hands tasks), whose arithmetic and comparisons pandas and DuckDB do not understand.
- Conversions to and from microseconds are integer arithmetic, never float seconds: a float holds
  53 bits, so `dt.timestamp() * 1e6` loses microseconds beyond a few centuries of range and
  rounds in between.

This module imports nothing heavy at module level (the DAG files import it at parse time).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from feastkit.errors import FeastkitError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
INTERVAL_FIX = "pass an end later than the start"


def utc(value: datetime | str) -> datetime:
    """A timezone-aware UTC datetime from a datetime or an ISO string (no zone means UTC).

    The result is a plain `datetime` (subclasses such as pendulum's are rebuilt), exact to the
    microsecond; sub-microsecond parts (pandas Timestamps) are dropped.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise FeastkitError(f"'{value}' is not an ISO date or time",
                                "use ISO format, e.g. 2026-03-01T05:00:00+00:00") from None
    if value.tzinfo is None or value.utcoffset() is None:
        value = datetime.replace(value, tzinfo=UTC)
    else:
        value = datetime.astimezone(value, UTC)
    # a plain datetime: Airflow hands tasks pendulum DateTimes, which pandas cannot compare
    return datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                    value.microsecond, tzinfo=UTC)


def require_aware(dt: datetime, what: str) -> datetime:
    """`dt` in UTC (a plain datetime); a FeastkitError naming `what` when `dt` has no timezone."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise FeastkitError(f"{what} {dt.isoformat()} has no timezone",
                            "pass a timezone-aware UTC time, e.g. 2026-03-01T00:00Z")
    return utc(dt)


def check_interval(start: datetime | str, end: datetime | str, *,
                   fix: str = INTERVAL_FIX) -> tuple[datetime, datetime]:
    """The UTC bounds of the half-open interval [start, end); refused (with `fix`) when it is empty."""
    a, b = utc(start), utc(end)
    if b <= a:
        raise FeastkitError(f"the interval [{a.isoformat()}, {b.isoformat()}) is empty", fix)
    return a, b


def micros(duration: timedelta) -> int:
    """A timedelta in whole microseconds, exactly (no float seconds on the way)."""
    # timedelta's own fields, so a subclass (pendulum's Duration) cannot change the arithmetic
    return timedelta.__floordiv__(duration, ONE_MICROSECOND)


def epoch_micros(dt: datetime) -> int:
    """Microseconds since 1970-01-01T00:00Z, exactly (naive means UTC; negative before the epoch)."""
    return micros(utc(dt) - EPOCH)


def from_epoch_micros(us: int) -> datetime:
    """The UTC datetime `us` microseconds after the epoch (the inverse of `epoch_micros`)."""
    return EPOCH + timedelta(microseconds=int(us))


# Command-line input ------------------------------------------------------------------------------


def parse_time(text: str | None, name: str) -> datetime | None:
    """The value of a command-line option `--name`: ISO date or datetime; no timezone means UTC."""
    if text is None:
        return None
    import pandas as pd  # lenient parsing ('2026-03-01 05:00', '20260301'), only when asked

    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise FeastkitError(f"--{name} '{text}' is not a date or time",
                            "use ISO format, e.g. 2026-03-01 or 2026-03-01T05:00Z") from None
    if pd.isna(ts):
        raise FeastkitError(f"--{name} '{text}' is not a date or time", "use ISO format, e.g. 2026-03-01")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return utc(ts.to_pydatetime())


def parse_interval(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    """The `--start`/`--end` options; either may be missing, but when both are, end is after start."""
    a, b = parse_time(start, "start"), parse_time(end, "end")
    if a is not None and b is not None and b <= a:
        raise FeastkitError(f"--end {end} is not after --start {start}", INTERVAL_FIX)
    return a, b
