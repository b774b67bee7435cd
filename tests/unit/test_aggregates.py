"""Tests for pipelines.aggregates: point-in-time correctness, hand-made data, incremental runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feastkit.clean import data_range
from feastkit.errors import FeastkitError
from pipelines.aggregates import compute_features as compute_declared
from pipelines.aggregates import read_view
from pipelines.synthetic import RawTables, SyntheticConfig, generate, write
from pipelines.validation import validate_all
from tests.conftest import repo_specs, repo_views

# All brute-force arithmetic is done on integer microseconds since the epoch (UTC).
SEC = 1_000_000
MINUTE = 60 * SEC
HOUR = 3600 * SEC
DAY = 86_400 * SEC

FEATURE_REPO = Path(__file__).resolve().parents[2] / "feature_repo"
GRID = {"user_transaction_stats": HOUR, "merchant_risk_stats": HOUR, "customer_activity": DAY}
WINDOWS = {"user_transaction_stats": (1, 7, 30), "merchant_risk_stats": (1, 7, 30, 90),
           "customer_activity": (30, 60, 90, 180)}
ENTITY = {"user_transaction_stats": "user_id", "merchant_risk_stats": "merchant_id",
          "customer_activity": "user_id", "user_realtime_activity": "user_id"}
GRID_VIEWS = ("user_transaction_stats", "merchant_risk_stats", "customer_activity")
INCREMENTAL_VIEWS = ("user_transaction_stats", "merchant_risk_stats", "customer_activity",
                     "user_realtime_activity")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

SPECS = repo_specs(FEATURE_REPO)


def compute_features(*args: object, **kwargs: object) -> object:
    """`feastkit compute` on the views declared in feature_repo/ (as `feast apply` would publish them)."""
    return compute_declared(SPECS, *args, **kwargs)


def declared_ttls() -> dict[str, int]:
    """Each FeatureView's ttl as declared in feature_repo/*.py (what Feast applies), in us."""
    return {v.name: int(v.ttl.total_seconds()) * SEC for v in repo_views(FEATURE_REPO)}


TTL = declared_ttls()


def utc(text: str) -> datetime:
    """A timezone-aware UTC datetime from an ISO string such as '2026-01-02T05:00'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def to_us(values: pd.Series) -> np.ndarray:
    """UTC timestamps as int64 microseconds since the epoch."""
    naive = values.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    return naive.astype("datetime64[us]").astype("int64")


def us_of(dt: datetime) -> int:
    return int(pd.Timestamp(dt).as_unit("us").value // 1000)


def iso(t_us: int) -> str:
    return pd.Timestamp(t_us * 1000, tz="UTC").isoformat()


def floor_to(t_us: int, grid_us: int) -> int:
    return t_us - t_us % grid_us


def is_null(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def assert_features_equal(actual: dict, expected: dict, where: str) -> None:
    """Every expected feature matches: nulls with nulls, numbers within rel/abs 1e-9."""
    for name, want in expected.items():
        got = actual[name]
        if is_null(want):
            assert is_null(got), f"{where}: {name} = {got!r}, expected null"
        else:
            assert not is_null(got), f"{where}: {name} is null, expected {want!r}"
            assert float(got) == pytest.approx(float(want), rel=1e-9, abs=1e-9), (
                f"{where}: {name} = {got!r}, expected {want!r}")


def mean_or_none(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def window_mask(ts: np.ndarray, t: int, width: int) -> np.ndarray:
    """Events with timestamp in [t - width, t)."""
    return (ts >= t - width) & (ts < t)


# --------------------------------------------------------------------------------------------
# Independent brute-force recomputation from clean events
# --------------------------------------------------------------------------------------------

def user_stats_at(ev: dict, t: int) -> dict:
    ts, amount = ev["ts"], ev["amount"]
    m1, m7, m30 = (window_mask(ts, t, d * DAY) for d in (1, 7, 30))
    a30 = amount[m30]
    return {
        "txn_count_1d": int(m1.sum()),
        "txn_count_7d": int(m7.sum()),
        "txn_count_30d": int(m30.sum()),
        "amount_sum_1d": float(amount[m1].sum()),
        "amount_sum_7d": float(amount[m7].sum()),
        "amount_avg_30d": mean_or_none(a30),
        "amount_std_30d": float(np.std(a30, ddof=1)) if len(a30) >= 2 else None,
        "amount_max_30d": float(a30.max()) if len(a30) else None,
        "distinct_merchants_30d": len(set(ev["merchant_id"][m30].tolist())),
        "distinct_devices_30d": len(set(ev["device_id"][m30].tolist())),
        "night_txn_share_30d": mean_or_none(((ts[m30] // HOUR) % 24 < 6).astype(float)),
        "last_txn_epoch": ts[m30].max() / SEC if m30.any() else None,
    }


def merchant_stats_at(ev: dict, t: int) -> dict:
    ts, amount, label_ts = ev["ts"], ev["amount"], ev["label_ts"]
    txn = {d: int(window_mask(ts, t, d * DAY).sum()) for d in (1, 7, 30, 90)}
    cb30 = int(window_mask(label_ts, t, 30 * DAY).sum())
    cb90 = int(window_mask(label_ts, t, 90 * DAY).sum())
    return {
        "merchant_txn_count_1d": txn[1],
        "merchant_txn_count_7d": txn[7],
        "merchant_txn_count_30d": txn[30],
        "merchant_avg_ticket_30d": mean_or_none(amount[window_mask(ts, t, 30 * DAY)]),
        "merchant_chargebacks_30d": cb30,
        "merchant_chargebacks_90d": cb90,
        "merchant_chargeback_rate_90d": cb90 / txn[90] if txn[90] else None,
    }


def customer_activity_at(ev: dict, t: int) -> dict:
    ts, kind, amount = ev["ts"], ev["event_type"], ev["amount"]
    purchase, ret, view = kind == "purchase", kind == "return", kind == "view"
    p30 = int((purchase & window_mask(ts, t, 30 * DAY)).sum())
    prev = int((purchase & (ts >= t - 60 * DAY) & (ts < t - 30 * DAY)).sum())
    p180 = purchase & window_mask(ts, t, 180 * DAY)
    returns180 = int((ret & window_mask(ts, t, 180 * DAY)).sum())
    return {
        "purchase_count_30d": p30,
        "purchase_count_prev_30d": prev,
        "purchase_trend_30d": (p30 - prev) / (prev + 1.0),
        "avg_purchase_value_90d": mean_or_none(amount[purchase & window_mask(ts, t, 90 * DAY)]),
        "days_since_last_purchase": (t - ts[p180].max()) / DAY if p180.any() else None,
        "return_rate_180d": returns180 / int(p180.sum()) if p180.any() else None,
        "view_count_30d": int((view & window_mask(ts, t, 30 * DAY)).sum()),
    }


def realtime_at(ev: dict, t: int) -> dict:
    inside = (ev["ts"] >= t - 10 * MINUTE) & (ev["ts"] <= t)
    return {"txn_count_10m": int(inside.sum()), "amount_sum_10m": float(ev["amount"][inside].sum())}


BRUTE = {"user_transaction_stats": user_stats_at, "merchant_risk_stats": merchant_stats_at,
         "customer_activity": customer_activity_at, "user_realtime_activity": realtime_at}


def has_events_in_longest_window(view: str, ev: dict, t: int) -> bool:
    width = max(WINDOWS[view]) * DAY
    times = [ev["ts"]] + ([ev["label_ts"]] if "label_ts" in ev else [])
    return any(window_mask(ts, t, width).any() for ts in times)


# --------------------------------------------------------------------------------------------
# Clean events and feature rows, indexed per entity
# --------------------------------------------------------------------------------------------

def split_by(frame: pd.DataFrame, key: str, columns: list[str], ts_col: str) -> dict[int, dict]:
    """{entity: {"ts": int64 us sorted, column: array, ...}} for a clean table."""
    out: dict[int, dict] = {}
    for entity, part in frame.sort_values(ts_col, kind="stable").groupby(key, sort=False):
        arrays = {c: part[c].to_numpy() for c in columns}
        arrays["ts"] = to_us(part[ts_col])
        out[int(entity)] = arrays
    return out


def clean_events(clean_dir: Path) -> dict[str, dict[int, dict]]:
    """Per view, the per-entity clean events its brute force needs."""
    tx = pd.read_parquet(clean_dir / "transactions.parquet")
    labels = pd.read_parquet(clean_dir / "fraud_labels.parquet")
    act = pd.read_parquet(clean_dir / "activity.parquet")
    by_user = split_by(tx, "user_id", ["amount", "merchant_id", "device_id"], "event_timestamp")
    by_merchant = split_by(tx, "merchant_id", ["amount"], "event_timestamp")
    label_ts = {int(m): np.sort(to_us(part["label_timestamp"]))
                for m, part in labels[labels["is_fraud"] == 1].groupby("merchant_id")}
    for m in set(by_merchant) | set(label_ts):
        by_merchant.setdefault(m, {"ts": np.array([], dtype="int64"), "amount": np.array([])})
        by_merchant[m]["label_ts"] = label_ts.get(m, np.array([], dtype="int64"))
    by_activity = split_by(act, "user_id", ["event_type", "amount"], "event_timestamp")
    return {"user_transaction_stats": by_user, "merchant_risk_stats": by_merchant,
            "customer_activity": by_activity, "user_realtime_activity": by_user}


@dataclass
class ViewIndex:
    """A feature table split per entity, for Feast-style 'latest row at or before t' lookups."""

    name: str
    times: dict[int, np.ndarray]
    rows: dict[int, list[dict]]

    @classmethod
    def of(cls, frame: pd.DataFrame, name: str) -> ViewIndex:
        times, rows = {}, {}
        for entity, part in frame.groupby(ENTITY[name], sort=False):
            part = part.sort_values("event_timestamp", kind="stable")
            times[int(entity)] = to_us(part["event_timestamp"])
            rows[int(entity)] = part.to_dict("records")
        return cls(name, times, rows)

    def join(self, entity: int, t: int) -> tuple[int, dict] | None:
        """The row Feast joins for (entity, t): latest stamp <= t, no older than the view's TTL."""
        times = self.times.get(entity)
        if times is None:
            return None
        i = int(np.searchsorted(times, t, side="right")) - 1
        if i < 0 or times[i] < t - TTL[self.name]:
            return None
        return int(times[i]), self.rows[entity][i]


def contract_stamps(view: str, ev: dict, lo: int, hi: int) -> np.ndarray:
    """The row stamps the module docstring promises for one entity, within (lo, hi].

    Grid points just after each event enters or leaves a window, plus every midnight at which
    an event is still inside the longest window (the heartbeat)."""
    grid, longest = GRID[view], max(WINDOWS[view]) * DAY
    times = np.concatenate([ev["ts"]] + ([ev["label_ts"]] if "label_ts" in ev else []))
    parts = [times - times % grid + grid]
    parts += [(times + d * DAY) - (times + d * DAY) % grid + grid for d in WINDOWS[view]]
    parts += [np.arange(floor_to(t, DAY) + DAY, floor_to(t + longest, DAY) + 1, DAY)
              for t in times.tolist()]
    stamps = np.unique(np.concatenate(parts))
    return stamps[(stamps > lo) & (stamps <= hi)]


def assert_rows_follow_contract(view: str, frame: pd.DataFrame, events: dict[int, dict],
                                lo: int, hi: int) -> None:
    """Per entity, the table holds exactly the promised stamps (realtime: its transaction times)."""
    index = ViewIndex.of(frame, view)
    for entity in set(events) | set(index.times):
        got = index.times.get(entity, np.array([], dtype="int64"))
        ev = events.get(entity)
        if ev is None:
            want = np.array([], dtype="int64")
        elif view == "user_realtime_activity":
            want = np.unique(ev["ts"][(ev["ts"] >= lo) & (ev["ts"] < hi)])
        else:
            want = contract_stamps(view, ev, lo, hi)
        extra = sorted(set(got.tolist()) - set(want.tolist()))
        missing = sorted(set(want.tolist()) - set(got.tolist()))
        assert not extra and not missing and len(got) == len(want), (
            f"{view} {ENTITY[view]}={entity}: unexpected rows {[iso(t) for t in extra[:5]]}, "
            f"missing rows {[iso(t) for t in missing[:5]]} ({len(extra)} / {len(missing)})")


# --------------------------------------------------------------------------------------------
# Sample (entity, t) pairs: event times, grid points and just past window boundaries
# --------------------------------------------------------------------------------------------

def probe_times(event_times: np.ndarray, windows_days: tuple[int, ...], grid: int) -> list[int]:
    """Exact event times, the grid points around them, and the instants around each window edge."""
    out: list[int] = []
    for ts in event_times.tolist():
        out += [ts, ts + 1, floor_to(ts, grid), floor_to(ts, grid) + grid]
        for d in windows_days:
            edge = ts + d * DAY
            out += [edge, edge + 1, floor_to(edge, grid), floor_to(edge, grid) + grid,
                    floor_to(edge, grid) + grid + 1]
    return out


def sample_pairs(view: str, events: dict[int, dict], lo: int, hi: int,
                 rng: np.random.Generator, per_entity: int) -> list[tuple[int, int]]:
    """(entity, t) pairs with lo <= t <= hi, mixing event-driven times with plain midnights."""
    pairs: list[tuple[int, int]] = []
    midnights = list(range(floor_to(lo, DAY) + DAY, hi + 1, DAY))
    for entity, ev in events.items():
        times = [ev["ts"]] + ([ev["label_ts"]] if "label_ts" in ev else [])
        if view == "user_realtime_activity":
            cand = [t + d for ts in times for t in ts.tolist()
                    for d in (0, 1, -1, 10 * MINUTE, 10 * MINUTE + 1, 3 * MINUTE)]
        else:
            cand = [t for ts in times for t in probe_times(ts, WINDOWS[view], GRID[view])]
        cand = [t for t in cand if lo <= t <= hi]
        chosen = (rng.choice(cand, size=min(per_entity, len(cand)), replace=False).tolist()
                  if cand else [])
        chosen += rng.choice(midnights, size=min(3, len(midnights)), replace=False).tolist()
        chosen.append(int(rng.integers(lo, hi + 1)))
        pairs += [(entity, int(t)) for t in chosen]
    return pairs


def check_pit_pair(index: ViewIndex, ev: dict, entity: int, t: int) -> None:
    """The joined row equals brute force at its own stamp T and at floor(t) (no missing change
    point); with no row joined, nothing may be inside the view's windows."""
    view = index.name
    brute = BRUTE[view]
    where = f"{view} {ENTITY[view]}={entity} t={iso(t)}"
    joined = index.join(entity, t)
    if view == "user_realtime_activity":
        past = ev["ts"][ev["ts"] <= t]
        latest = int(past.max()) if len(past) else None
        if latest is None or latest < t - TTL[view]:
            assert joined is None, f"{where}: joined a row but no transaction in the last 10m"
            return
        assert joined is not None, f"{where}: no row for the transaction at {iso(latest)}"
        stamp, row = joined
        assert stamp == latest, f"{where}: joined row at {iso(stamp)}, latest txn at {iso(latest)}"
        assert_features_equal(row, brute(ev, stamp), f"{where} (row {iso(stamp)})")
        return
    at_grid = floor_to(t, GRID[view])
    if joined is None:
        assert not has_events_in_longest_window(view, ev, at_grid), (
            f"{where}: no row joined, but events fall inside the windows at {iso(at_grid)}")
        return
    stamp, row = joined
    assert stamp % GRID[view] == 0, f"{where}: row stamp {iso(stamp)} is off the grid"
    assert_features_equal(row, brute(ev, stamp), f"{where} (row {iso(stamp)})")
    assert_features_equal(row, brute(ev, at_grid),
                          f"{where} (grid {iso(at_grid)}, row {iso(stamp)})")


# --------------------------------------------------------------------------------------------
# Generated world shared by the PIT and incremental tests
# --------------------------------------------------------------------------------------------

CONFIG = SyntheticConfig(n_users=40, n_merchants=10, days=20, seed=17)
AS_OF = CONFIG.end + timedelta(days=365)


def add_chargebacks(tables: RawTables, n: int, rng: np.random.Generator) -> None:
    """Late fraud labels for n more transactions (the tiny config makes few): some on whole hours,
    some sharing a second with another label of the same merchant."""
    tx = tables.transactions
    labelled = set(tables.fraud_labels["transaction_id"])
    pool = tx[~tx["transaction_id"].isin(labelled)]
    picked = pool.sample(n=n, random_state=int(rng.integers(0, 2**31))).reset_index(drop=True)
    delay = pd.to_timedelta(rng.integers(3_600, 40 * 86_400, size=n), unit="s")
    label_ts = picked["event_timestamp"] + delay
    on_hour = rng.random(n) < 0.3
    label_ts = label_ts.where(~on_hour, label_ts.dt.ceil("h"))
    extra = pd.DataFrame({
        "transaction_id": picked["transaction_id"], "user_id": picked["user_id"],
        "merchant_id": picked["merchant_id"], "transaction_timestamp": picked["event_timestamp"],
        "label_timestamp": label_ts, "is_fraud": np.ones(n, dtype="int64"),
    })
    # a same-second tie: copy one label's time onto a later label of the same merchant
    for _, group in extra.groupby("merchant_id"):
        if len(group) >= 2:
            first, second = group.index[:2]
            later = max(extra.at[first, "label_timestamp"], extra.at[second, "label_timestamp"])
            extra.loc[[first, second], "label_timestamp"] = later
            break
    tables.fraud_labels = pd.concat([tables.fraud_labels, extra], ignore_index=True)


@dataclass
class World:
    clean: Path
    full: Path
    start: datetime
    end: datetime
    tables: dict[str, pd.DataFrame]
    events: dict[str, dict[int, dict]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("aggregates")
    tables = generate(CONFIG)
    add_chargebacks(tables, 40, np.random.default_rng(3))
    write(tables, base / "raw")
    reports = validate_all(base / "raw", base / "clean", base / "quarantine", as_of=AS_OF)
    assert all(r.quarantined == 0 for r in reports)
    start, data_end = data_range(base / "clean")
    # run a month past the data so the 1/7/30-day windows are also seen emptying out
    end = data_end + timedelta(days=31)
    compute_features(base / "clean", base / "full", start, end)
    full = {name: read_view(base / "full", name) for name in INCREMENTAL_VIEWS}
    return World(base / "clean", base / "full", start, end, full, clean_events(base / "clean"))


# --------------------------------------------------------------------------------------------
# Point-in-time correctness by brute force
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("view", INCREMENTAL_VIEWS)
def test_joined_rows_match_brute_force(world: World, view: str) -> None:
    events = world.events[view]
    index = ViewIndex.of(world.tables[view], view)
    rng = np.random.default_rng(sum(map(ord, view)))
    lo, hi = us_of(world.start), us_of(world.end)
    pairs = sample_pairs(view, events, lo, hi, rng, per_entity=25)
    assert len(pairs) > 250
    for entity, t in pairs:
        check_pit_pair(index, events[entity], entity, t)


@pytest.mark.parametrize("view", INCREMENTAL_VIEWS)
def test_sampled_rows_match_brute_force_at_their_stamp(world: World, view: str) -> None:
    frame = world.tables[view]
    for row in frame.sample(n=min(300, len(frame)), random_state=5).to_dict("records"):
        entity = int(row[ENTITY[view]])
        stamp = us_of(row["event_timestamp"])
        assert_features_equal(row, BRUTE[view](world.events[view][entity], stamp),
                              f"{view} {ENTITY[view]}={entity} row {iso(stamp)}")


@pytest.mark.parametrize("view", INCREMENTAL_VIEWS)
def test_rows_are_exactly_change_points_and_heartbeats(world: World, view: str) -> None:
    assert_rows_follow_contract(view, world.tables[view], world.events[view],
                                us_of(world.start), us_of(world.end))


def test_realtime_has_one_row_per_user_and_transaction_time(world: World) -> None:
    tx = pd.read_parquet(world.clean / "transactions.parquet")
    frame = world.tables["user_realtime_activity"]
    assert len(frame) == len(tx[["user_id", "event_timestamp"]].drop_duplicates())
    assert frame["txn_count_10m"].max() >= 2  # the fraud bursts


def test_merchant_chargebacks_are_exercised(world: World) -> None:
    frame = world.tables["merchant_risk_stats"]
    assert frame["merchant_chargebacks_30d"].max() >= 2
    assert (frame["merchant_chargeback_rate_90d"] > 0).any()


# --------------------------------------------------------------------------------------------
# Hand-made dataset with hand-derived expectations
# --------------------------------------------------------------------------------------------

def ts_column(values: list[str]) -> pd.Series:
    stamps = pd.to_datetime(values, utc=True, format="ISO8601")
    return pd.Series(stamps).astype("datetime64[us, UTC]")


def write_clean_tables(clean: Path, transactions: list[tuple], labels: list[tuple],
                       activity: list[tuple], user_ids: list[int]) -> None:
    """Write clean parquet tables with the columns validate_all produces."""
    clean.mkdir(parents=True, exist_ok=True)
    tx = pd.DataFrame(transactions, columns=["transaction_id", "user_id", "merchant_id", "amount",
                                             "channel", "device_id", "event_timestamp"])
    tx["event_timestamp"] = ts_column(tx["event_timestamp"].tolist())
    tx.astype({"transaction_id": "int64", "user_id": "int64", "merchant_id": "int64",
               "amount": "float64"}).to_parquet(clean / "transactions.parquet", index=False)
    lab = pd.DataFrame(labels, columns=["transaction_id", "label_timestamp"])
    lab = lab.merge(tx.rename(columns={"event_timestamp": "transaction_timestamp"}),
                    on="transaction_id")
    lab["label_timestamp"] = ts_column(lab["label_timestamp"].tolist())
    lab["is_fraud"] = np.int64(1)
    lab[["transaction_id", "user_id", "merchant_id", "transaction_timestamp", "label_timestamp",
         "is_fraud"]].to_parquet(clean / "fraud_labels.parquet", index=False)
    act = pd.DataFrame(activity, columns=["user_id", "event_type", "amount", "event_timestamp"])
    act["event_timestamp"] = ts_column(act["event_timestamp"].tolist())
    act.astype({"user_id": "int64", "amount": "float64"}).to_parquet(clean / "activity.parquet",
                                                                     index=False)
    pd.DataFrame({
        "user_id": np.array(user_ids, dtype="int64"),
        "signup_timestamp": ts_column(["2025-06-01T00:00:00"] * len(user_ids)),
        "country": "DE", "segment": "regular",
        "churn_timestamp": ts_column([None] * len(user_ids)),
    }).to_parquet(clean / "users.parquet", index=False)
    pd.DataFrame({"merchant_id": np.array([501, 502, 503], dtype="int64"),
                  "category": "grocery", "country": "DE",
                  "onboarded_timestamp": ts_column(["2024-01-01T00:00:00"] * 3)}).to_parquet(
        clean / "merchants.parquet", index=False)


HAND_TRANSACTIONS = [
    # user 1001: a same-second tie exactly on a grid hour (05:00 counts as night), then a day txn
    (1, 1001, 501, 10.0, "pos", "d1", "2026-01-01T05:00:00"),
    (2, 1001, 502, 20.0, "web", "d2", "2026-01-01T05:00:00"),
    (3, 1001, 501, 40.0, "pos", "d1", "2026-01-05T12:00:00"),
    # user 1003: one more sale at merchant 501
    (6, 1003, 501, 30.0, "app", "d3", "2026-01-02T10:00:00"),
    # user 1002: a burst for the 10-minute counters (r3/r4 tie, r6 one microsecond past 10:30)
    (11, 1002, 503, 1.0, "web", "d4", "2026-01-10T10:00:00"),
    (12, 1002, 503, 2.0, "web", "d4", "2026-01-10T10:05:00"),
    (13, 1002, 503, 4.0, "web", "d4", "2026-01-10T10:10:00"),
    (14, 1002, 503, 8.0, "web", "d5", "2026-01-10T10:10:00"),
    (15, 1002, 503, 16.0, "web", "d5", "2026-01-10T10:20:00"),
    (16, 1002, 503, 32.0, "web", "d5", "2026-01-10T10:30:00.000001"),
]
# two chargebacks for merchant 501 arriving in the same second, exactly on a grid hour
HAND_LABELS = [(1, "2026-01-03T07:00:00"), (6, "2026-01-03T07:00:00")]
HAND_ACTIVITY = [
    (1001, "purchase", 50.0, "2026-01-01T00:00:00"),  # exactly at midnight
    (1001, "view", 0.0, "2026-01-01T00:00:00"),       # same second, other type
    (1001, "purchase", 30.0, "2026-01-01T00:00:00"),  # same second, same type
    (1001, "return", 50.0, "2026-01-10T12:00:00"),
    (1001, "purchase", 100.0, "2026-02-15T08:00:00"),
]
HAND_START, HAND_END = utc("2025-12-31T00:00"), utc("2026-04-10T00:00")


@pytest.fixture(scope="module")
def hand_made_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hand_made")
    write_clean_tables(base / "clean", HAND_TRANSACTIONS, HAND_LABELS, HAND_ACTIVITY,
                       [1001, 1002, 1003])
    compute_features(base / "clean", base / "features", HAND_START, HAND_END, views=list(BRUTE))
    return base


@pytest.fixture(scope="module")
def hand_made(hand_made_dir: Path) -> dict[str, ViewIndex]:
    return {view: ViewIndex.of(read_view(hand_made_dir / "features", view), view)
            for view in BRUTE}


def test_hand_made_tables_are_the_same_one_entity_per_chunk(hand_made_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact-edge events (ties on grid hours, at midnight) give the same rows when every
    entity is evaluated in a chunk of its own."""
    import pipelines.windows as windows

    monkeypatch.setattr(windows, "CHUNK_EVENTS", 1)
    compute_features(hand_made_dir / "clean", tmp_path, HAND_START, HAND_END, views=list(GRID_VIEWS))
    for view in GRID_VIEWS:
        assert_same_table(read_view(hand_made_dir / "features", view), read_view(tmp_path, view), view)


def test_events_exactly_at_a_row_stamp_are_left_out(tmp_path: Path) -> None:
    """An event stamped exactly at another event's change point (06:00, midnight) is not in that row."""
    write_clean_tables(tmp_path / "clean",
                       [(1, 2001, 501, 10.0, "pos", "d1", "2026-01-01T05:00:00"),
                        (2, 2001, 501, 20.0, "pos", "d1", "2026-01-01T06:00:00")], [],
                       [(2001, "purchase", 5.0, "2026-01-01T10:00:00"),
                        (2001, "purchase", 7.0, "2026-01-02T00:00:00")], [2001])
    start, end = utc("2025-12-31T00:00"), utc("2026-01-03T00:00")
    compute_features(tmp_path / "clean", tmp_path / "features", start, end, views=list(GRID_VIEWS))
    tables = {view: read_view(tmp_path / "features", view) for view in GRID_VIEWS}
    users = tables["user_transaction_stats"].set_index("event_timestamp")
    assert users.loc[pd.Timestamp("2026-01-01T06:00", tz="UTC"), "txn_count_1d"] == 1
    assert users.loc[pd.Timestamp("2026-01-01T07:00", tz="UTC"), "txn_count_1d"] == 2
    merchants = tables["merchant_risk_stats"].set_index("event_timestamp")
    assert merchants.loc[pd.Timestamp("2026-01-01T06:00", tz="UTC"), "merchant_txn_count_1d"] == 1
    activity = tables["customer_activity"].set_index("event_timestamp")
    assert activity.loc[pd.Timestamp("2026-01-02T00:00", tz="UTC"), "purchase_count_30d"] == 1
    assert activity.loc[pd.Timestamp("2026-01-03T00:00", tz="UTC"), "purchase_count_30d"] == 2


def joined_features(index: ViewIndex, entity: int, at: str) -> dict | None:
    joined = index.join(entity, us_of(utc(at)))
    return None if joined is None else joined[1]


def assert_joined(index: ViewIndex, entity: int, at: str, expected: dict) -> None:
    row = joined_features(index, entity, at)
    assert row is not None, f"{index.name} {entity} at {at}: no row joined"
    assert_features_equal(row, expected, f"{index.name} {entity} at {at}")


USER_AT_FIRST_HOUR = {
    "txn_count_1d": 2, "txn_count_7d": 2, "txn_count_30d": 2, "amount_sum_1d": 30.0,
    "amount_sum_7d": 30.0, "amount_avg_30d": 15.0, "amount_std_30d": math.sqrt(50.0),
    "amount_max_30d": 20.0, "distinct_merchants_30d": 2, "distinct_devices_30d": 2,
    "night_txn_share_30d": 1.0, "last_txn_epoch": us_of(utc("2026-01-01T05:00")) / SEC,
}


def test_hand_made_user_stats_at_grid_and_window_edges(hand_made: dict[str, ViewIndex]) -> None:
    idx = hand_made["user_transaction_stats"]
    # events stamped 05:00 are not in the row stamped 05:00 ([T - w, T) excludes T) ...
    assert joined_features(idx, 1001, "2026-01-01T05:00") is None
    assert joined_features(idx, 1001, "2026-01-01T05:59:59") is None
    # ... they enter at the next grid hour, both halves of the tie together
    assert_joined(idx, 1001, "2026-01-01T06:00", USER_AT_FIRST_HOUR)
    # exactly T - 1 day is still inside the 1-day window
    assert_joined(idx, 1001, "2026-01-02T05:00", {"txn_count_1d": 2, "amount_sum_1d": 30.0})
    assert_joined(idx, 1001, "2026-01-02T05:59:59.999999", {"txn_count_1d": 2})
    assert_joined(idx, 1001, "2026-01-02T06:00", {"txn_count_1d": 0, "amount_sum_1d": 0.0,
                                                  "txn_count_7d": 2, "amount_sum_7d": 30.0})
    assert_joined(idx, 1001, "2026-01-05T13:00", {
        "txn_count_1d": 1, "txn_count_7d": 3, "txn_count_30d": 3, "amount_sum_7d": 70.0,
        "amount_avg_30d": 70.0 / 3, "amount_max_30d": 40.0, "distinct_merchants_30d": 2,
        "distinct_devices_30d": 2, "night_txn_share_30d": 2.0 / 3,
        "last_txn_epoch": us_of(utc("2026-01-05T12:00")) / SEC})
    # exactly T - 7 days is inside; an hour later it has left
    assert_joined(idx, 1001, "2026-01-08T05:00", {"txn_count_7d": 3, "amount_sum_7d": 70.0})
    assert_joined(idx, 1001, "2026-01-08T06:00", {"txn_count_7d": 1, "amount_sum_7d": 40.0,
                                                  "txn_count_30d": 3})
    # exactly T - 30 days is inside; an hour later it has left
    assert_joined(idx, 1001, "2026-01-31T05:00", {"txn_count_30d": 3,
                                                  "night_txn_share_30d": 2.0 / 3})
    assert_joined(idx, 1001, "2026-01-31T06:00", {
        "txn_count_30d": 1, "amount_avg_30d": 40.0, "amount_std_30d": None, "amount_max_30d": 40.0,
        "distinct_merchants_30d": 1, "distinct_devices_30d": 1, "night_txn_share_30d": 0.0})
    assert_joined(idx, 1001, "2026-02-04T12:00", {"txn_count_30d": 1})
    assert_joined(idx, 1001, "2026-02-04T13:00", {
        "txn_count_1d": 0, "txn_count_7d": 0, "txn_count_30d": 0, "amount_sum_1d": 0.0,
        "amount_sum_7d": 0.0, "amount_avg_30d": None, "amount_std_30d": None,
        "amount_max_30d": None, "distinct_merchants_30d": 0, "distinct_devices_30d": 0,
        "night_txn_share_30d": None, "last_txn_epoch": None})
    # the burst user: six transactions (one tie), the last one a microsecond after 10:30
    assert_joined(idx, 1002, "2026-01-10T11:00", {"txn_count_1d": 6, "amount_sum_1d": 63.0,
                                                  "distinct_devices_30d": 2})


def test_hand_made_user_stats_rows_are_change_points_and_heartbeats(
        hand_made: dict[str, ViewIndex]) -> None:
    stamps = [iso(t) for t in hand_made["user_transaction_stats"].times[1001].tolist()]
    change_points = [
        "2026-01-01T06:00:00+00:00",  # the tie enters
        "2026-01-02T06:00:00+00:00",  # the tie leaves 1d
        "2026-01-05T13:00:00+00:00",  # txn 3 enters
        "2026-01-06T13:00:00+00:00",  # txn 3 leaves 1d
        "2026-01-08T06:00:00+00:00",  # the tie leaves 7d
        "2026-01-12T13:00:00+00:00",  # txn 3 leaves 7d
        "2026-01-31T06:00:00+00:00",  # the tie leaves 30d
        "2026-02-04T13:00:00+00:00",  # txn 3 leaves 30d
    ]
    # heartbeats: every midnight while a transaction is within the last 30 days (01-02 .. 02-04)
    heartbeats = [iso(us_of(utc("2026-01-02T00:00")) + i * DAY) for i in range(34)]
    assert heartbeats[-1] == "2026-02-04T00:00:00+00:00"
    assert stamps == sorted(change_points + heartbeats)


def test_hand_made_merchant_chargebacks_by_label_time(hand_made: dict[str, ViewIndex]) -> None:
    idx = hand_made["merchant_risk_stats"]
    # labels stamped 07:00 are not visible at 07:00
    assert_joined(idx, 501, "2026-01-03T07:00", {
        "merchant_txn_count_1d": 1, "merchant_txn_count_7d": 2, "merchant_txn_count_30d": 2,
        "merchant_avg_ticket_30d": 20.0, "merchant_chargebacks_30d": 0,
        "merchant_chargebacks_90d": 0, "merchant_chargeback_rate_90d": 0.0})
    assert_joined(idx, 501, "2026-01-03T08:00", {
        "merchant_txn_count_1d": 1, "merchant_chargebacks_30d": 2, "merchant_chargebacks_90d": 2,
        "merchant_chargeback_rate_90d": 1.0})
    assert_joined(idx, 501, "2026-01-05T13:00", {
        "merchant_txn_count_1d": 1, "merchant_txn_count_7d": 3, "merchant_txn_count_30d": 3,
        "merchant_avg_ticket_30d": 80.0 / 3, "merchant_chargeback_rate_90d": 2.0 / 3})
    # exactly T - 30 days after the labels: still counted; an hour later: gone from 30d only
    assert_joined(idx, 501, "2026-02-02T07:00", {"merchant_chargebacks_30d": 2,
                                                 "merchant_txn_count_30d": 1})
    assert_joined(idx, 501, "2026-02-02T08:00", {"merchant_chargebacks_30d": 0,
                                                 "merchant_chargebacks_90d": 2,
                                                 "merchant_chargeback_rate_90d": 2.0 / 3})
    # exactly T - 90 days: only txn 3 is still within 90 days, both labels are
    assert_joined(idx, 501, "2026-04-03T07:00", {"merchant_chargebacks_90d": 2,
                                                 "merchant_chargeback_rate_90d": 2.0})
    assert_joined(idx, 501, "2026-04-03T08:00", {"merchant_chargebacks_90d": 0,
                                                 "merchant_chargeback_rate_90d": 0.0})
    assert_joined(idx, 501, "2026-04-05T13:00", {"merchant_txn_count_30d": 0,
                                                 "merchant_avg_ticket_30d": None,
                                                 "merchant_chargeback_rate_90d": None})


def test_hand_made_realtime_counts_are_inclusive_of_both_ends(
        hand_made: dict[str, ViewIndex]) -> None:
    idx = hand_made["user_realtime_activity"]
    stamps = [iso(t) for t in idx.times[1002].tolist()]
    assert stamps == ["2026-01-10T10:00:00+00:00", "2026-01-10T10:05:00+00:00",
                      "2026-01-10T10:10:00+00:00", "2026-01-10T10:20:00+00:00",
                      "2026-01-10T10:30:00.000001+00:00"]
    expected = {"10:00": (1, 1.0), "10:05": (2, 3.0), "10:10": (4, 15.0), "10:20": (3, 28.0),
                "10:30:00.000001": (1, 32.0)}
    for at, (count, amount) in expected.items():
        assert_joined(idx, 1002, f"2026-01-10T{at}", {"txn_count_10m": count,
                                                      "amount_sum_10m": amount})
    assert_joined(idx, 1002, "2026-01-10T10:40:00.000001", {"txn_count_10m": 1})
    assert joined_features(idx, 1002, "2026-01-10T10:40:00.000002") is None  # past the 10m TTL
    assert joined_features(idx, 1002, "2026-01-10T09:59:59.999999") is None


def test_hand_made_customer_activity_daily_snapshots(hand_made: dict[str, ViewIndex]) -> None:
    idx = hand_made["customer_activity"]
    # events at midnight are not in the snapshot stamped that midnight
    assert joined_features(idx, 1001, "2026-01-01T00:00") is None
    assert_joined(idx, 1001, "2026-01-02T00:00", {
        "purchase_count_30d": 2, "purchase_count_prev_30d": 0, "purchase_trend_30d": 2.0,
        "avg_purchase_value_90d": 40.0, "days_since_last_purchase": 1.0,
        "return_rate_180d": 0.0, "view_count_30d": 1})
    assert_joined(idx, 1001, "2026-01-02T23:59:59", {"days_since_last_purchase": 1.0})
    # exactly T - 30 days: still in the last 30 days
    assert_joined(idx, 1001, "2026-01-31T00:00", {
        "purchase_count_30d": 2, "purchase_count_prev_30d": 0, "view_count_30d": 1,
        "return_rate_180d": 0.5, "days_since_last_purchase": 30.0})
    assert_joined(idx, 1001, "2026-02-01T00:00", {
        "purchase_count_30d": 0, "purchase_count_prev_30d": 2, "purchase_trend_30d": -2.0 / 3,
        "view_count_30d": 0, "avg_purchase_value_90d": 40.0, "days_since_last_purchase": 31.0})
    assert_joined(idx, 1001, "2026-02-16T00:00", {
        "purchase_count_30d": 1, "purchase_count_prev_30d": 2, "purchase_trend_30d": -1.0 / 3,
        "avg_purchase_value_90d": 60.0, "days_since_last_purchase": 16.0 / 24,
        "return_rate_180d": 1.0 / 3})
    # exactly T - 60 days: still in the previous 30 days; a day later gone
    assert_joined(idx, 1001, "2026-03-02T00:00", {"purchase_count_30d": 1,
                                                  "purchase_count_prev_30d": 2})
    assert_joined(idx, 1001, "2026-03-03T00:00", {"purchase_count_prev_30d": 0})
    # exactly T - 90 days: still in the 90-day mean; a day later only the February purchase
    assert_joined(idx, 1001, "2026-04-01T00:00", {"avg_purchase_value_90d": 60.0})
    assert_joined(idx, 1001, "2026-04-02T00:00", {"avg_purchase_value_90d": 100.0})


def test_hand_made_rows_agree_with_brute_force(hand_made: dict[str, ViewIndex],
                                               hand_made_dir: Path) -> None:
    events = clean_events(hand_made_dir / "clean")
    lo, hi = us_of(HAND_START), us_of(HAND_END)
    for view, index in hand_made.items():
        pairs = sample_pairs(view, events[view], lo, hi, np.random.default_rng(1), per_entity=500)
        for entity, t in pairs:
            check_pit_pair(index, events[view][entity], entity, t)


# --------------------------------------------------------------------------------------------
# Incremental runs give the same tables as one full run
# --------------------------------------------------------------------------------------------

def assert_same_table(full: pd.DataFrame, other: pd.DataFrame, name: str) -> None:
    """Same rows, dtypes and values, bit for bit: sums are exact fixed-point integers, so where a
    run's event stream starts cannot change a value."""
    keys = [ENTITY.get(name, "user_id"), "event_timestamp"]
    full = full.sort_values(keys, kind="stable").reset_index(drop=True)
    other = other.sort_values(keys, kind="stable").reset_index(drop=True)
    assert list(full.columns) == list(other.columns), name
    assert full.dtypes.to_dict() == other.dtypes.to_dict(), name
    assert len(full) == len(other), f"{name}: {len(full)} rows in the full run, {len(other)} here"
    for col in full.columns:
        pd.testing.assert_series_equal(full[col], other[col], check_exact=True, obj=f"{name}.{col}")


def assert_same_features(expected: dict[str, pd.DataFrame], other_dir: Path) -> None:
    for name, frame in expected.items():
        assert_same_table(frame, read_view(other_dir, name), name)


def rows_of_interval(frame: pd.DataFrame, name: str, start: datetime,
                     end: datetime) -> pd.DataFrame:
    """The rows a run over [start, end) owns: start < T <= end (realtime: start <= T < end)."""
    ts = frame["event_timestamp"]
    if name in GRID:
        return frame[(ts > start) & (ts <= end)]
    return frame[(ts >= start) & (ts < end)]


def run_intervals(clean: Path, out: Path, cuts: list[datetime], views: tuple[str, ...]) -> None:
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        compute_features(clean, out, lo, hi, views=list(views))


def busiest_hour(clean: Path) -> datetime:
    tx = pd.read_parquet(clean / "transactions.parquet")
    return tx["event_timestamp"].dt.floor("h").value_counts().index[0].to_pydatetime()


def floor_day(dt: datetime) -> datetime:
    return dt.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class Span:
    """A stretch of the world (from shortly before the first transaction) and the full run's
    rows in it; kept short so incremental runs do not rewrite months of churn day files."""

    start: datetime
    end: datetime
    burst: datetime
    expected: dict[str, pd.DataFrame]


@pytest.fixture(scope="module")
def span(world: World) -> Span:
    start = floor_day(CONFIG.start) - timedelta(days=3, hours=5)
    expected = {name: rows_of_interval(frame, name, start, world.end)
                for name, frame in world.tables.items()}
    assert all(len(frame) > 100 for frame in expected.values())
    return Span(start, world.end, busiest_hour(world.clean) - timedelta(hours=6), expected)


@pytest.fixture(scope="module")
def incremental_dir(world: World, span: Span, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The span computed as uneven coarse intervals plus runs of one-hour / one-day intervals."""
    out = tmp_path_factory.mktemp("incremental")
    burst = span.burst
    odd = burst - timedelta(days=2, minutes=17, seconds=31, microseconds=7)  # off the grid
    stop = burst + timedelta(hours=24)
    run_intervals(world.clean, out, [span.start, odd, burst], INCREMENTAL_VIEWS)
    run_intervals(world.clean, out, [stop, span.end], INCREMENTAL_VIEWS)
    # 12 consecutive one-hour runs through the busiest stretch for the user view, 5 for the
    # merchant and realtime views (each then one run up to the end of that stretch) ...
    hours = [burst + timedelta(hours=i) for i in range(13)]
    run_intervals(world.clean, out, [*hours, stop], ("user_transaction_stats",))
    run_intervals(world.clean, out, [*hours[:6], stop], ("merchant_risk_stats",
                                                         "user_realtime_activity"))
    # ... and runs split at midnight for the daily view
    midnight = floor_day(burst) + timedelta(days=1)
    run_intervals(world.clean, out, sorted({burst, midnight, stop}), ("customer_activity",))
    return out


def test_incremental_equals_full(span: Span, incremental_dir: Path) -> None:
    assert_same_features(span.expected, incremental_dir)


@pytest.mark.parametrize("chunk_events", [1, 10**9])
def test_day_long_intervals_give_the_full_runs_rows(chunk_events: int, world: World, span: Span, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Day-long and multi-day intervals, one entity per chunk or all in one, equal the full run."""
    import pipelines.windows as windows

    monkeypatch.setattr(windows, "CHUNK_EVENTS", chunk_events)
    cuts = [span.burst - timedelta(days=2), span.burst - timedelta(hours=5), span.burst + timedelta(hours=19),
            span.burst + timedelta(days=2)]
    run_intervals(world.clean, tmp_path, cuts, GRID_VIEWS)
    expected = {name: rows_of_interval(world.tables[name], name, cuts[0], cuts[-1]) for name in GRID_VIEWS}
    assert all(len(frame) > 50 for frame in expected.values())
    assert_same_features(expected, tmp_path)


def test_rerunning_intervals_is_idempotent(world: World, span: Span,
                                           incremental_dir: Path) -> None:
    for lo, hi in [(span.burst, span.burst + timedelta(hours=1)),
                   (span.burst - timedelta(days=3, minutes=5), span.burst + timedelta(hours=1))]:
        compute_features(world.clean, incremental_dir, lo, hi, views=list(INCREMENTAL_VIEWS))
    assert_same_features(span.expected, incremental_dir)


def test_backfill_after_newer_interval_gives_same_tables(world: World, span: Span,
                                                         tmp_path: Path) -> None:
    lo, mid, hi = (span.burst - timedelta(days=2), span.burst + timedelta(hours=13),
                   span.burst + timedelta(days=3))
    run_intervals(world.clean, tmp_path, [mid, hi], INCREMENTAL_VIEWS)
    run_intervals(world.clean, tmp_path, [lo, mid], INCREMENTAL_VIEWS)  # the backfill
    expected = {name: rows_of_interval(frame, name, lo, hi) for name, frame in world.tables.items()}
    assert_same_features(expected, tmp_path)


# An entity idle for longer than the view's longest window, and a split inside the idle gap.
GAP_CASES = {
    "user_transaction_stats": (["2025-01-01T12:00:00", "2025-03-15T12:00:00"],
                               ["2025-01-20T00:00", "2025-02-20T00:00", "2025-03-20T00:00"]),
    "merchant_risk_stats": (["2025-01-01T12:00:00", "2025-05-01T12:00:00"],
                            ["2025-03-25T00:00", "2025-04-15T00:00", "2025-05-05T00:00"]),
    "customer_activity": (["2025-01-01T12:00:00", "2025-07-10T12:00:00"],
                          ["2025-06-25T00:00", "2025-07-05T00:00", "2025-07-12T00:00"]),
}


@pytest.mark.parametrize("view", GAP_CASES)
def test_long_idle_gap_split_gives_same_rows(view: str, tmp_path: Path) -> None:
    """Splitting a run inside an idle gap longer than every window must not change the table,
    and the full run must not write heartbeats through the gap either."""
    times, cut_text = GAP_CASES[view]
    tx = [(i + 1, 1001, 501, 10.0 * (i + 1), "pos", "d1", t) for i, t in enumerate(times)]
    act = [(1001, "purchase", 10.0 * (i + 1), t) for i, t in enumerate(times)]
    write_clean_tables(tmp_path / "clean", tx, [], act, [1001])
    cuts = [utc(c) for c in cut_text]
    compute_features(tmp_path / "clean", tmp_path / "full", cuts[0], cuts[-1], views=[view])
    run_intervals(tmp_path / "clean", tmp_path / "split", cuts, (view,))
    full = read_view(tmp_path / "full", view)
    events = clean_events(tmp_path / "clean")[view]
    assert_rows_follow_contract(view, full, events, us_of(cuts[0]), us_of(cuts[-1]))
    assert_same_table(full, read_view(tmp_path / "split", view), view)


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("start, end", [
    (utc("2026-01-02T00:00"), utc("2026-01-02T00:00")),
    (utc("2026-01-03T00:00"), utc("2026-01-02T00:00")),
    (datetime(2026, 1, 1), utc("2026-01-02T00:00")),
    (utc("2026-01-01T00:00"), datetime(2026, 1, 2)),
])
def test_bad_intervals_raise(world: World, tmp_path: Path, start: datetime,
                             end: datetime) -> None:
    with pytest.raises(FeastkitError):
        compute_features(world.clean, tmp_path, start, end, views=["user_transaction_stats"])


def test_events_that_skipped_validation_get_a_clear_error(tmp_path: Path) -> None:
    """A clean table written by hand with a NaN amount is refused by name, not summed into garbage."""
    write_clean_tables(tmp_path / "clean", [(1, 2001, 501, float("nan"), "pos", "d1", "2026-01-01T05:00:00"),
                                            (2, 2001, 501, 20.0, "pos", "d1", "2026-01-01T06:00:00")],
                       [], [(2001, "purchase", 5.0, "2026-01-01T10:00:00")], [2001])
    with pytest.raises(FeastkitError, match="column amount holds 1 null, NaN or infinite value.*feastkit validate"):
        compute_features(tmp_path / "clean", tmp_path / "features", utc("2026-01-01T00:00"),
                         utc("2026-01-02T00:00"), views=["user_transaction_stats"])


def test_unknown_view_raises(world: World, tmp_path: Path) -> None:
    with pytest.raises(FeastkitError, match="unknown feature view"):
        compute_features(world.clean, tmp_path, world.start, world.end, views=["no_such_view"])
    assert not any(tmp_path.iterdir())


def test_all_views_are_covered() -> None:
    assert {s.name for s in SPECS} == set(INCREMENTAL_VIEWS) | {"user_profile"}


@pytest.mark.parametrize("buckets", [3])
def test_entity_buckets_give_the_single_pass_rows(buckets: int, world: World, span: Span, tmp_path: Path) -> None:
    """The local engine over buckets of entities (FEASTKIT_COMPUTE_BUCKETS): a full run, and intervals
    one after another (an hour, one ending at midnight, the rest), hold the single pass's rows,
    value for value, in the same day files with the same schemas."""
    import pyarrow.parquet as pq

    from pipelines.aggregates import BucketedWindowEngine

    engine = BucketedWindowEngine(buckets)
    report = compute_features(world.clean, tmp_path / "full", world.start, world.end,
                              views=list(INCREMENTAL_VIEWS), engine=engine)
    for name in INCREMENTAL_VIEWS:
        assert report.rows[name] == len(world.tables[name]), name
        assert_same_table(world.tables[name], read_view(tmp_path / "full", name), name)
        single = sorted((world.full / name).glob("*.parquet"))
        bucketed = sorted((tmp_path / "full" / name).glob("*.parquet"))
        assert [f.name for f in bucketed] == [f.name for f in single], name
        assert all(pq.read_schema(a).equals(pq.read_schema(b), check_metadata=True)
                   for a, b in zip(single, bucketed, strict=True)), name
    midnight = floor_day(span.burst) + timedelta(days=1)
    cuts = [span.start, span.burst, span.burst + timedelta(hours=1), midnight, span.end]
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        compute_features(world.clean, tmp_path / "incremental", lo, hi, views=list(INCREMENTAL_VIEWS), engine=engine)
    assert_same_features(span.expected, tmp_path / "incremental")


def test_one_bucket_is_the_single_pass_not_a_bucketed_run() -> None:
    from pipelines.aggregates import BucketedWindowEngine

    with pytest.raises(FeastkitError, match="FEASTKIT_COMPUTE_BUCKETS"):
        BucketedWindowEngine(1)


@pytest.mark.parametrize(("start", "end", "holds"), [
    ("2026-03-01T23:00", "2026-03-02T00:00", True),   # the hour up to midnight: heartbeats
    ("2026-03-01T12:00", "2026-03-01T13:00", False),
    ("2026-03-02T00:00", "2026-03-02T01:00", False),  # (start, end]: the midnight at its start is not in it
    ("2026-03-01T06:00", "2026-03-03T06:00", True),
])
def test_an_interval_holds_a_midnight_only_when_one_is_in_start_end(start: str, end: str, holds: bool) -> None:
    """At a midnight every entity with events in reach gets its heartbeat, so the events of an
    interval holding one are read whole rather than narrowed to the entities with a row (which
    would read them twice to drop almost none): the rule must see exactly the midnights in (start, end]."""
    from feastkit.times import epoch_micros
    from pipelines.aggregates import RowStamps

    a, b = (epoch_micros(datetime.fromisoformat(t).replace(tzinfo=UTC)) for t in (start, end))
    stamps = RowStamps(timedelta(hours=1), (timedelta(0), timedelta(days=1)), timedelta(days=30), a, b)
    assert stamps.holds_midnight is holds
    daily = RowStamps(timedelta(days=1), (), timedelta(days=31), a, b)
    assert daily.holds_midnight is holds
