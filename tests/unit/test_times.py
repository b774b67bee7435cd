"""feastkit.times: UTC parsing, checks and microsecond-exact conversions, whatever the process's TZ."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from feastkit import times
from feastkit.errors import FeastkitError
from tests.conftest import ZONES, process_timezone

LA = ZoneInfo("America/Los_Angeles")
TOKYO = ZoneInfo("Asia/Tokyo")
US = timedelta(microseconds=1)


@pytest.fixture(autouse=True, params=ZONES)
def process_tz(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs with the process in three timezones: nothing may depend on local time."""
    with process_timezone(request.param):
        yield request.param


def test_the_fixture_really_changes_local_time(process_tz: str) -> None:
    naive_local = datetime(2026, 1, 1).astimezone()  # what a careless helper would do
    expected = {"UTC": 0, "America/Los_Angeles": -8, "Asia/Tokyo": 9}[process_tz]
    assert naive_local.utcoffset() == timedelta(hours=expected)


class FakePendulum(datetime):
    """Like pendulum's DateTime: a datetime subclass with its own arithmetic and conversions."""

    def __sub__(self, other):  # pendulum returns its own Interval; here: a visibly wrong answer
        result = super().__sub__(other)
        return result + timedelta(seconds=1) if isinstance(result, timedelta) else result

    def astimezone(self, tz=None):  # a subclass override must not change what times computes
        return super().astimezone(tz).replace(microsecond=0)

    def timestamp(self) -> float:
        return 0.0


class FakeDuration(timedelta):
    """Like pendulum's Duration: a timedelta subclass with its own field accessors."""

    @property
    def days(self) -> int:  # pendulum normalises differently; must not leak into micros()
        return 0

    def total_seconds(self) -> float:
        return 0.0


# utc ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
    ("2026-03-01T05:00:00Z", datetime(2026, 3, 1, 5, tzinfo=UTC)),
    ("2026-03-01T05:00:00+09:00", datetime(2026, 2, 28, 20, tzinfo=UTC)),
    ("2026-03-01T05:00:00.000001-08:00", datetime(2026, 3, 1, 13, 0, 0, 1, tzinfo=UTC)),
    (datetime(2026, 3, 1, 5), datetime(2026, 3, 1, 5, tzinfo=UTC)),  # naive means UTC, not local
    (datetime(2026, 3, 1, 5, tzinfo=TOKYO), datetime(2026, 2, 28, 20, tzinfo=UTC)),
    (datetime(2026, 3, 1, 5, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
     datetime(2026, 3, 1, 8, 30, tzinfo=UTC)),
])
def test_utc_from_strings_and_datetimes(value: datetime | str, expected: datetime) -> None:
    got = times.utc(value)
    assert got == expected
    assert type(got) is datetime and got.tzinfo is UTC


def test_utc_refuses_what_is_not_iso() -> None:
    with pytest.raises(FeastkitError, match="'yesterday' is not an ISO date or time"):
        times.utc("yesterday")


@pytest.mark.parametrize("local, fold, expected", [
    # spring forward: 02:30 does not exist in Los Angeles; PEP 495 reads it with the earlier offset
    (datetime(2026, 3, 8, 1, 59, 59, 999999), 0, datetime(2026, 3, 8, 9, 59, 59, 999999)),
    (datetime(2026, 3, 8, 3, 0), 0, datetime(2026, 3, 8, 10, 0)),
    (datetime(2026, 3, 8, 2, 30), 0, datetime(2026, 3, 8, 10, 30)),
    # fall back: 01:30 happens twice; fold picks the first (PDT) or second (PST) one
    (datetime(2026, 11, 1, 1, 30), 0, datetime(2026, 11, 1, 8, 30)),
    (datetime(2026, 11, 1, 1, 30), 1, datetime(2026, 11, 1, 9, 30)),
])
def test_utc_across_dst_transitions(local: datetime, fold: int, expected: datetime) -> None:
    aware = local.replace(tzinfo=LA, fold=fold)
    assert times.utc(aware) == expected.replace(tzinfo=UTC)
    assert times.epoch_micros(aware) == times.epoch_micros(expected.replace(tzinfo=UTC))


def test_an_hour_of_wall_clock_across_a_dst_change_is_not_an_hour_of_time() -> None:
    before = datetime(2026, 3, 8, 1, 30, tzinfo=LA)
    after = datetime(2026, 3, 8, 3, 30, tzinfo=LA)  # two wall-clock hours later
    assert times.epoch_micros(after) - times.epoch_micros(before) == times.micros(timedelta(hours=1))


def test_subclasses_become_plain_utc_datetimes() -> None:
    fake = FakePendulum(2026, 3, 1, 5, 0, 0, 123456, tzinfo=TOKYO)
    got = times.utc(fake)
    assert type(got) is datetime and got == datetime(2026, 2, 28, 20, 0, 0, 123456, tzinfo=UTC)
    assert times.epoch_micros(fake) == times.epoch_micros(got)
    assert times.require_aware(fake, "time") == got
    a, b = times.check_interval(fake, FakePendulum(2026, 3, 1, 6, tzinfo=TOKYO))
    assert type(a) is datetime and type(b) is datetime and b - a == timedelta(minutes=59, seconds=59,
                                                                               microseconds=876544)


def test_pandas_timestamps_are_accepted() -> None:
    ts = pd.Timestamp("2026-03-01 05:00:00.000001", tz="Asia/Tokyo")
    assert times.utc(ts) == datetime(2026, 2, 28, 20, 0, 0, 1, tzinfo=UTC)
    assert type(times.utc(ts)) is datetime


def test_real_pendulum_when_installed() -> None:
    pendulum = pytest.importorskip("pendulum")
    dt = pendulum.datetime(2026, 3, 8, 2, 30, 0, tz="America/Los_Angeles")  # pendulum resolves the gap itself
    got = times.utc(dt)
    assert type(got) is datetime and got == datetime.fromtimestamp(dt.timestamp(), UTC)
    later = dt.add(microseconds=1)
    assert times.epoch_micros(later) - times.epoch_micros(dt) == 1
    assert times.micros(pendulum.duration(days=2, microseconds=3)) == 2 * 86_400_000_000 + 3


# require_aware and check_interval ----------------------------------------------------------------


def test_require_aware_refuses_naive_and_names_what() -> None:
    with pytest.raises(FeastkitError, match="materialization start 2026-03-01T00:00:00 has no timezone"):
        times.require_aware(datetime(2026, 3, 1), "materialization start")
    assert times.require_aware(datetime(2026, 3, 1, 9, tzinfo=TOKYO), "x") == datetime(2026, 3, 1, tzinfo=UTC)


def test_check_interval_is_half_open_and_refuses_empty() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    assert times.check_interval(at, at + US) == (at, at + US)
    assert times.check_interval("2026-03-01T00:00Z", "2026-03-01T09:00:00.000001+09:00") == (at, at + US)
    with pytest.raises(FeastkitError, match=r"the interval \[2026-03-01T00:00:00\+00:00, .*\) is empty"):
        times.check_interval(at, at)
    with pytest.raises(FeastkitError, match="use a later end"):
        times.check_interval(at, at - US, fix="use a later end")
    # the same instant written in two zones is still empty
    with pytest.raises(FeastkitError, match="is empty"):
        times.check_interval(datetime(2026, 3, 1, 9, tzinfo=TOKYO), at)


# microseconds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("us", [0, 1, -1, 999_999, -999_999, 1_000_000, -1_000_001, 86_400_000_000 - 1,
                                2**53 + 1, -(2**53 + 1), 253_402_300_799_999_999])
def test_epoch_micros_round_trips_exactly(us: int) -> None:
    dt = times.from_epoch_micros(us)
    assert dt.tzinfo is UTC and type(dt) is datetime
    assert times.epoch_micros(dt) == us


def test_around_the_epoch() -> None:
    assert times.epoch_micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert times.epoch_micros(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1
    assert times.epoch_micros(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == 1
    assert times.epoch_micros(datetime(1970, 1, 1)) == 0  # naive means UTC, whatever the TZ
    assert times.epoch_micros(datetime(1970, 1, 1, 9, tzinfo=TOKYO)) == 0
    assert times.epoch_micros(datetime(1969, 12, 31, 16, tzinfo=LA)) == 0
    assert times.from_epoch_micros(-1) == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_where_float_seconds_lose_microseconds_integers_do_not() -> None:
    dt = datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)
    assert int(dt.timestamp() * 1_000_000) != 9_223_372_036_854_775  # the float way is off
    assert times.epoch_micros(dt) == 9_223_372_036_854_775
    far = times.from_epoch_micros(2**53 + 1)
    assert times.epoch_micros(far) == 2**53 + 1


@pytest.mark.parametrize("delta, us", [
    (timedelta(0), 0),
    (timedelta(microseconds=1), 1),
    (timedelta(microseconds=-1), -1),
    (timedelta(days=-1, microseconds=3), -86_399_999_997),
    (timedelta(days=30, hours=1, microseconds=7), 30 * 86_400_000_000 + 3_600_000_000 + 7),
    (timedelta(days=999_999_999, hours=23, minutes=59, seconds=59, microseconds=999_999),
     999_999_999 * 86_400_000_000 + 86_399_999_999),
    (timedelta(minutes=10, microseconds=1), 600_000_001),
])
def test_micros_is_exact(delta: timedelta, us: int) -> None:
    assert times.micros(delta) == us
    assert timedelta(microseconds=us) == delta


def test_micros_ignores_subclass_accessors() -> None:
    fake = FakeDuration(days=2, microseconds=5)
    assert times.micros(fake) == 2 * 86_400_000_000 + 5


# command-line options ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
    ("2026-03-01 05:00", datetime(2026, 3, 1, 5, tzinfo=UTC)),
    ("2026-03-01T05:00Z", datetime(2026, 3, 1, 5, tzinfo=UTC)),
    ("2026-03-01T05:00:00.000001+09:00", datetime(2026, 2, 28, 20, 0, 0, 1, tzinfo=UTC)),
    ("2026-11-01T01:30:00-07:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
])
def test_parse_time(text: str, expected: datetime) -> None:
    got = times.parse_time(text, "start")
    assert got == expected and type(got) is datetime and got.tzinfo is UTC


def test_parse_time_errors_and_none() -> None:
    assert times.parse_time(None, "end") is None
    with pytest.raises(FeastkitError, match="--start '2026-13-45' is not a date or time"):
        times.parse_time("2026-13-45", "start")
    with pytest.raises(FeastkitError, match="--as-of 'NaT' is not a date or time"):
        times.parse_time("NaT", "as-of")


def test_parse_interval() -> None:
    assert times.parse_interval(None, "2026-03-01") == (None, datetime(2026, 3, 1, tzinfo=UTC))
    assert times.parse_interval("2026-03-01", "2026-03-01T00:00:00.000001") == (
        datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, 0, 0, 0, 1, tzinfo=UTC))
    with pytest.raises(FeastkitError, match="--end 2026-03-01 is not after --start 2026-03-02"):
        times.parse_interval("2026-03-02", "2026-03-01")
    with pytest.raises(FeastkitError, match="is not after --start"):
        times.parse_interval("2026-03-01T09:00+09:00", "2026-03-01T00:00Z")  # the same instant
