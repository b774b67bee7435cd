"""Tests for pipelines.synthetic: determinism, label timing, fraud and churn signal, and drift."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feastkit.errors import FeastkitError
from pipelines.synthetic import (
    DRIFT_KINDS,
    RawTables,
    SyntheticConfig,
    generate,
    generate_parts,
    write,
    write_parts,
)
from pipelines.validation import validate_all

SMALL = SyntheticConfig(n_users=40, n_merchants=10, days=20, seed=5)
# enough fraud episodes and churners for the signal tests, still well under a second to make
SIGNAL = SyntheticConfig(n_users=400, n_merchants=40, days=60, seed=11)


@pytest.fixture(scope="module")
def signal() -> RawTables:
    return generate(SIGNAL)


def assert_same_tables(a: RawTables, b: RawTables) -> None:
    for (name, left), (_, right) in zip(a.items(), b.items(), strict=True):
        pd.testing.assert_frame_equal(left, right, check_exact=True, obj=name)


def fraud_flags(tables: RawTables) -> pd.Series:
    """Per transaction: does a fraud label (chargeback) exist for it?"""
    return tables.transactions["transaction_id"].isin(tables.fraud_labels["transaction_id"])


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_tables() -> None:
    assert_same_tables(generate(SMALL), generate(SMALL))


def test_same_seed_with_bad_rows_gives_identical_tables() -> None:
    config = replace(SMALL, bad_rows=24)
    assert_same_tables(generate(config), generate(config))


def test_different_seed_gives_different_tables() -> None:
    a, b = generate(SMALL), generate(replace(SMALL, seed=SMALL.seed + 1))
    for name in ("users", "transactions", "activity"):
        left, right = getattr(a, name), getattr(b, name)
        assert not (left.shape == right.shape and left.equals(right)), name


def test_tables_have_the_expected_shape() -> None:
    tables = generate(SMALL)
    assert len(tables.users) == SMALL.n_users and tables.users["user_id"].is_unique
    assert len(tables.merchants) == SMALL.n_merchants
    tx = tables.transactions
    assert tx["transaction_id"].is_unique
    assert tx["event_timestamp"].is_monotonic_increasing
    assert tx["event_timestamp"].between(SMALL.start, SMALL.end, inclusive="left").all()
    assert (tx["amount"] > 0).all()
    assert set(tx["user_id"]) <= set(tables.users["user_id"])
    assert set(tx["merchant_id"]) <= set(tables.merchants["merchant_id"])
    assert set(tables.activity["event_type"]) == {"purchase", "view", "return"}


@pytest.mark.parametrize("seed", range(30))
def test_smallest_allowed_config_generates(seed: int) -> None:
    """10 users and 5 merchants is accepted, so it must generate for any seed (even when no
    merchant happens to be drawn as high-risk)."""
    tables = generate(SyntheticConfig(n_users=10, n_merchants=5, days=7, seed=seed))
    assert len(tables.transactions) > 0


def test_write_round_trips_row_counts(tmp_path) -> None:
    tables = generate(SMALL)
    counts = write(tables, tmp_path)
    for name, frame in tables.items():
        back = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert counts[name] == len(frame) == len(back)
        assert list(back.columns) == list(frame.columns)


@pytest.mark.parametrize("kinds", list(itertools.combinations(DRIFT_KINDS, 2)))
def test_every_drift_kind_combines_with_every_other(kinds: tuple[str, str]) -> None:
    """`--drift merchant_mix,night_spend` once failed: merchant_mix drops rows, and night_spend read
    masks of the rows from before."""
    tables = generate(replace(SMALL, drift=kinds))
    assert len(tables.transactions) > 0
    assert tables.transactions["event_timestamp"].is_monotonic_increasing


# --------------------------------------------------------------------------------------------
# Data too big to build whole: part by part
# --------------------------------------------------------------------------------------------

PARTED = replace(SMALL, n_users=95, bad_rows=16)


def test_one_part_is_exactly_the_whole_generation() -> None:
    parts = list(generate_parts(PARTED, users_per_part=PARTED.n_users))
    assert len(parts) == 1
    assert_same_tables(parts[0], generate(PARTED))


def test_parts_hold_every_user_once_and_share_the_merchants() -> None:
    parts = list(generate_parts(PARTED, users_per_part=30))
    assert [len(p.users) for p in parts] == [30, 30, 30, 5]
    users = pd.concat([p.users for p in parts])
    assert users["user_id"].tolist() == list(range(1001, 1001 + PARTED.n_users))
    assert len(parts[0].merchants) == PARTED.n_merchants and all(p.merchants.empty for p in parts[1:])
    # dirty rows carry ids from 900,000,000 on, or repeat a row whole (`duplicate`)
    clean = [p.transactions[p.transactions["transaction_id"] < 900_000_000] for p in parts]
    ids = pd.concat(clean).drop_duplicates()["transaction_id"]
    assert ids.is_unique and ids.tolist() == list(range(10_000_001, 10_000_001 + len(ids)))
    for part in parts:  # each part's events are its own users'
        mine = set(part.users["user_id"])
        assert set(part.activity["user_id"]) <= mine
        assert set(part.fraud_labels["user_id"]) <= mine
        assert set(part.transactions["merchant_id"].dropna()) <= set(parts[0].merchants["merchant_id"])
    assert all(p.transactions["user_id"].notna().all() for p in parts[1:])  # dirty rows: the first part only
    assert parts[0].transactions["user_id"].isna().any()


def test_the_same_config_and_part_size_give_the_same_parts() -> None:
    for left, right in zip(generate_parts(PARTED, 30), generate_parts(PARTED, 30), strict=True):
        assert_same_tables(left, right)


def test_write_parts_appends_the_parts_and_validation_reconciles(tmp_path) -> None:
    counts = write_parts(PARTED, tmp_path / "raw", users_per_part=30)
    parts = list(generate_parts(PARTED, 30))
    for name in counts:
        back = pd.read_parquet(tmp_path / "raw" / f"{name}.parquet")
        assert counts[name] == len(back) == sum(len(dict(p.items())[name]) for p in parts), name
    assert sorted(f.name for f in (tmp_path / "raw").iterdir()) == sorted(f"{n}.parquet" for n in counts)
    reports = validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "quarantine",
                           as_of=PARTED.end + timedelta(days=90))
    tx = next(r for r in reports if r.table == "transactions")
    assert tx.rows_in == counts["transactions"] and tx.quarantined == PARTED.bad_rows


def test_one_part_writes_the_same_files_as_write(tmp_path) -> None:
    write(generate(PARTED), tmp_path / "whole")
    write_parts(PARTED, tmp_path / "parted", users_per_part=PARTED.n_users)
    for name, _ in generate(SMALL).items():
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "parted" / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "whole" / f"{name}.parquet"), obj=name)


def test_a_failed_part_leaves_the_old_raw_tables_whole(tmp_path, monkeypatch) -> None:
    import pipelines.synthetic as synthetic

    write_parts(SMALL, tmp_path, users_per_part=SMALL.n_users)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    real = synthetic._generate_part

    def failing(config, rng, n_users, first_user, merchants, first_transaction):  # noqa: ANN001, ANN202
        if first_user:
            raise MemoryError("the second part does not fit")
        return real(config, rng, n_users, first_user, merchants, first_transaction)

    monkeypatch.setattr(synthetic, "_generate_part", failing)
    with pytest.raises(MemoryError):
        write_parts(PARTED, tmp_path, users_per_part=30)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before


def test_too_small_parts_are_refused() -> None:
    with pytest.raises(FeastkitError, match="users-per-part"):
        next(generate_parts(PARTED, users_per_part=3))


# --------------------------------------------------------------------------------------------
# Labels and fraud signal
# --------------------------------------------------------------------------------------------

def test_fraud_labels_arrive_after_their_transaction(signal: RawTables) -> None:
    labels = signal.fraud_labels
    assert len(labels) > 50
    assert labels["transaction_id"].is_unique
    assert (labels["label_timestamp"] > labels["transaction_timestamp"]).all()
    joined = labels.merge(signal.transactions, on="transaction_id", suffixes=("", "_tx"))
    assert len(joined) == len(labels)
    assert (joined["transaction_timestamp"] == joined["event_timestamp"]).all()
    assert (joined["user_id"] == joined["user_id_tx"]).all()
    assert (joined["merchant_id"] == joined["merchant_id_tx"]).all()
    delay = labels["label_timestamp"] - labels["transaction_timestamp"]
    assert delay.min() >= pd.Timedelta(days=1) and delay.max() <= pd.Timedelta(days=60)


def test_fraud_is_more_frequent_at_night(signal: RawTables) -> None:
    fraud = fraud_flags(signal)
    night = signal.transactions["event_timestamp"].dt.hour < 6
    assert fraud[night].mean() > 3 * fraud.mean()
    assert fraud[night].mean() > 3 * fraud[~night].mean()


def test_fraud_is_more_frequent_for_large_amount_ratios(signal: RawTables) -> None:
    tx = signal.transactions
    fraud = fraud_flags(signal)
    ratio = tx["amount"] / tx.groupby("user_id")["amount"].transform("median")
    large = ratio > 2.5
    assert large.sum() > 50
    assert fraud[large].mean() > 5 * fraud.mean()
    assert fraud[~large].mean() < fraud.mean()


# --------------------------------------------------------------------------------------------
# Churn signal
# --------------------------------------------------------------------------------------------

def purchases_between(purchases: pd.DataFrame, user_id: int, lo: pd.Timestamp,
                      hi: pd.Timestamp) -> int:
    mine = purchases[purchases["user_id"] == user_id]["event_timestamp"]
    return int(((mine >= lo) & (mine < hi)).sum())


def test_churners_buy_less_in_the_month_before_churn(signal: RawTables) -> None:
    users = signal.users
    end = pd.Timestamp(SIGNAL.end)
    history_start = pd.Timestamp(SIGNAL.start) - pd.Timedelta(days=180)
    churned = users[users["churn_timestamp"].notna() & (users["churn_timestamp"] <= end)]
    # only churners active over the whole 90 days before churn
    churned = churned[churned["signup_timestamp"].clip(lower=history_start)
                      <= churned["churn_timestamp"] - pd.Timedelta(days=90)]
    assert len(churned) >= 40
    act = signal.activity
    purchases = act[act["event_type"] == "purchase"]
    last_event = act.groupby("user_id")["event_timestamp"].max()
    day = pd.Timedelta(days=1)
    recent, earlier = [], []
    for _, user in churned.iterrows():
        churn, user_id = user["churn_timestamp"], user["user_id"]
        recent.append(purchases_between(purchases, user_id, churn - 30 * day, churn))
        earlier.append(purchases_between(purchases, user_id, churn - 90 * day, churn - 60 * day))
        assert user_id not in last_event or last_event[user_id] < churn  # nothing after churn
    assert np.mean(recent) < 0.75 * np.mean(earlier), (np.mean(recent), np.mean(earlier))


# --------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------

def test_amount_drift_raises_amounts_only_inside_the_window() -> None:
    base = SyntheticConfig(n_users=100, n_merchants=20, days=30, seed=9)
    drifted_config = replace(base, drift=("amount",), drift_days=7)
    plain, drifted = generate(base), generate(drifted_config)
    w0, w1 = drifted_config.drift_window
    assert (w0, w1) == (base.end - timedelta(days=7), base.end)

    a, b = plain.transactions, drifted.transactions
    assert len(a) == len(b)
    inside = (a["event_timestamp"] >= w0) & (a["event_timestamp"] < w1)
    assert inside.sum() > 100 and (~inside).sum() > 100
    pd.testing.assert_frame_equal(a[~inside], b[~inside], check_exact=True)
    pd.testing.assert_frame_equal(a[inside].drop(columns="amount"),
                                  b[inside].drop(columns="amount"), check_exact=True)
    assert b.loc[inside, "amount"].mean() > 1.5 * a.loc[inside, "amount"].mean()
    ratio = b.loc[inside, "amount"] / a.loc[inside, "amount"]
    assert ratio.between(1.7, 1.9).all()
    for name in ("users", "merchants", "fraud_labels", "activity"):
        pd.testing.assert_frame_equal(getattr(plain, name), getattr(drifted, name),
                                      check_exact=True, obj=name)


def test_drift_window_can_start_anywhere() -> None:
    start = datetime(2026, 1, 10, tzinfo=UTC)
    config = replace(SMALL, drift=("amount",), drift_start=start, drift_days=3)
    assert config.drift_window == (start, start + timedelta(days=3))
    assert SMALL.drift_window is None


# --------------------------------------------------------------------------------------------
# Invalid configs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"n_users": 9}, "users"),
    ({"n_merchants": 4}, "merchants"),
    ({"days": 6}, "days"),
    ({"drift": ("amount", "weather")}, "weather"),
    ({"start": datetime(2026, 1, 1)}, "timezone"),
])
def test_invalid_configs_raise(kwargs: dict, words: str) -> None:
    with pytest.raises(FeastkitError, match=words):
        SyntheticConfig(**kwargs)


def test_night_spend_changes_how_hours_and_amounts_go_together_and_neither_alone() -> None:
    """Same seed with and without `night_spend`: the same amounts, the same timestamps on each day,
    but in the drift window big spenders now hold the night timestamps."""
    from datetime import UTC, datetime

    from pipelines.synthetic import SyntheticConfig, generate

    base = dict(n_users=300, n_merchants=30, days=30, seed=4, start=datetime(2026, 1, 1, tzinfo=UTC))
    clean = generate(SyntheticConfig(**base)).transactions
    drifted = generate(SyntheticConfig(**base, drift=("night_spend",))).transactions
    assert sorted(clean["amount"]) == sorted(drifted["amount"])
    assert sorted(clean["event_timestamp"]) == sorted(drifted["event_timestamp"])

    def hours_from_night_of_big(frame: pd.DataFrame) -> float:
        window = frame[frame["event_timestamp"] >= pd.Timestamp("2026-01-24", tz="UTC")]
        big = window[window["amount"] >= window["amount"].quantile(0.8)]
        t = big["event_timestamp"]
        offset = (t.dt.hour + t.dt.minute / 60 - 2.5).abs()
        return float(np.minimum(offset, 24 - offset).mean())

    assert hours_from_night_of_big(drifted) < hours_from_night_of_big(clean) - 1.0
