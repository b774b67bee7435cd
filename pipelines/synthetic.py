"""Synthetic-but-realistic raw events: users, merchants, card transactions, late fraud labels, shop activity."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feastkit.atomic import replacing
from feastkit.errors import FeastkitError

CHANNELS = ("pos", "web", "app")
MERCHANT_CATEGORIES = ("grocery", "fuel", "restaurants", "electronics", "travel", "fashion",
                       "gaming", "pharmacy", "gift_cards", "utilities")
ACTIVITY_TYPES = ("purchase", "view", "return")
DRIFT_KINDS = ("amount", "night", "channel", "basket", "concept", "merchant_mix", "night_spend")
# the raw columns each drift kind changes: the drift check says when no feature reads them
DRIFT_SHIFTS = {
    "amount": {"transactions": ["amount"]},
    "night": {"transactions": ["event_timestamp"]},
    "channel": {"transactions": ["channel"]},
    "basket": {"activity": ["amount"]},
    "concept": {"transactions": ["amount", "merchant_id", "channel", "device_id", "event_timestamp"]},
    "merchant_mix": {"transactions": ["merchant_id"]},
    "night_spend": {"transactions": ["event_timestamp"]},
}
DRIFT_MANIFEST = "injected_drift.json"

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND

# Hour-of-day profile for legitimate card use (people shop by day, rarely at 3am).
_LEGIT_HOURS = np.array([0.6, 0.3, 0.2, 0.15, 0.15, 0.3, 1.0, 2.5, 4.0, 4.5, 5.0, 5.5,
                         6.5, 6.0, 5.5, 5.5, 6.0, 7.0, 7.5, 7.0, 5.5, 4.0, 2.5, 1.2])
_NIGHT_HOURS = np.array([5.0, 6.0, 6.0, 5.5, 4.5, 3.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5,
                         0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.7, 1.0, 1.5, 2.5, 3.5, 4.5])


@dataclass(frozen=True)
class SyntheticConfig:
    """How much data to make, over which period, and which distributions to shift where."""

    n_users: int = 2_000
    n_merchants: int = 300
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    days: int = 120
    seed: int = 7
    txn_per_user_per_day: float = 1.0
    drift: tuple[str, ...] = ()
    drift_start: datetime | None = None
    drift_days: int = 7
    bad_rows: int = 0
    churn_share: float = 0.4
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_users < 10 or self.n_merchants < 5:
            raise FeastkitError("need at least 10 users and 5 merchants",
                                "raise --users / --merchants")
        if self.days < 7:
            raise FeastkitError(f"--days {self.days} is too short", "generate at least 7 days")
        unknown = sorted(set(self.drift) - set(DRIFT_KINDS))
        if unknown:
            raise FeastkitError(f"unknown drift kind(s) {unknown}",
                                f"choose from {list(DRIFT_KINDS)}")
        if self.start.tzinfo is None:
            raise FeastkitError("start must be timezone-aware", "pass a UTC datetime")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    @property
    def drift_window(self) -> tuple[datetime, datetime] | None:
        if not self.drift:
            return None
        start = self.drift_start or (self.end - timedelta(days=self.drift_days))
        return start, start + timedelta(days=self.drift_days)


@dataclass
class RawTables:
    """The raw tables, as pandas frames (timestamps are UTC)."""

    users: pd.DataFrame
    merchants: pd.DataFrame
    transactions: pd.DataFrame
    fraud_labels: pd.DataFrame
    activity: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [("users", self.users), ("merchants", self.merchants),
                ("transactions", self.transactions), ("fraud_labels", self.fraud_labels),
                ("activity", self.activity)]


def _ts(ns: np.ndarray) -> pd.DatetimeIndex:
    return pd.to_datetime(ns.astype("int64"), unit="ns", utc=True)


def _sample_times(rng: np.random.Generator, day_start_ns: np.ndarray,
                  hour_profile: np.ndarray) -> np.ndarray:
    """A timestamp within each given day, with hour-of-day drawn from a profile."""
    hours = rng.choice(24, size=len(day_start_ns), p=hour_profile / hour_profile.sum())
    seconds = rng.integers(0, 3600, size=len(day_start_ns))
    return day_start_ns + (hours * 3600 + seconds) * NS_PER_SECOND


def _night_spend(rng: np.random.Generator, ts: np.ndarray, spend_ratio: np.ndarray,
                 eligible: np.ndarray, share: float = 0.6) -> np.ndarray:
    """A change in correlation only: big purchases move to the night, small ones to the day.

    Within each day, a random `share` of the eligible transactions trade timestamps among
    themselves so that the largest spend ratio (amount over the user's usual amount) gets the
    timestamp closest to 02:30 and so on. Each day keeps its multiset of timestamps, and every
    transaction keeps its amount, so the hours and the amounts each keep their distribution;
    only how they go together changes.
    """
    out = ts.copy()
    chosen = np.flatnonzero(eligible & (rng.random(len(ts)) < share))
    day = ts[chosen] // NS_PER_DAY
    for d in np.unique(day):
        idx = chosen[day == d]
        offset = (ts[idx] - d * NS_PER_DAY) / (3600 * NS_PER_SECOND) - 2.5
        distance_to_night = np.minimum(np.abs(offset), 24.0 - np.abs(offset))
        by_night = ts[idx][np.argsort(distance_to_night, kind="stable")]
        out[idx[np.argsort(-spend_ratio[idx], kind="stable")]] = by_night
    return out


@dataclass(frozen=True)
class _Merchants:
    """The merchants every part of a partitioned generation shares, with the traits behind their traffic."""

    frame: pd.DataFrame
    risk: np.ndarray
    popularity: np.ndarray


def generate(config: SyntheticConfig) -> RawTables:
    """Make every raw table for the configured period; the same config gives the same data."""
    return next(generate_parts(config, config.n_users))


def generate_parts(config: SyntheticConfig, users_per_part: int) -> Iterator[RawTables]:
    """The raw tables of `config` in parts of at most `users_per_part` users each, one part in memory
    at a time, for data too big to build whole: the first part holds every merchant and the dirty
    rows (`bad_rows`); the others hold their own users and those users' events, with transaction
    ids that follow on. One part (`users_per_part >= n_users`) gives exactly `generate(config)`;
    the same config and part size give the same data."""
    if users_per_part < 10:
        raise FeastkitError(f"--users-per-part {users_per_part} is too small", "use at least 10 users per part")
    merchants, first_transaction = None, 0
    for part, first_user in enumerate(range(0, config.n_users, users_per_part)):
        rng = np.random.default_rng(config.seed if part == 0 else [config.seed, part])
        n_users = min(users_per_part, config.n_users - first_user)
        tables, merchants = _generate_part(config, rng, n_users, first_user, merchants, first_transaction)
        if part > 0:
            tables.merchants = tables.merchants.iloc[:0]
        first_transaction += len(tables.transactions)
        if part == 0 and config.bad_rows:
            inject_bad_rows(tables, config.bad_rows, rng)
        yield tables


def _generate_part(config: SyntheticConfig, rng: np.random.Generator, n_u: int, first_user: int,
                   merchants: _Merchants | None, first_transaction: int) -> tuple[RawTables, _Merchants]:
    """The users [first_user, first_user + n_u) and their events; the merchants are drawn unless given."""
    start_ns = pd.Timestamp(config.start).value
    end_ns = pd.Timestamp(config.end).value
    n_m = config.n_merchants

    # Users ---------------------------------------------------------------------------------
    user_ids = np.arange(1001 + first_user, 1001 + first_user + n_u, dtype="int64")
    signup_ns = start_ns - rng.integers(30, 900, size=n_u) * NS_PER_DAY
    late = rng.random(n_u) < 0.15  # some accounts open during the period
    signup_ns[late] = start_ns + rng.integers(0, config.days * 2 // 3, size=late.sum()) * NS_PER_DAY
    signup_ns += rng.integers(0, NS_PER_DAY, size=n_u)
    segment = rng.choice(["casual", "regular", "premium"], size=n_u, p=[0.5, 0.35, 0.15])
    base_amount = np.where(segment == "premium", 120.0, np.where(segment == "regular", 55.0, 30.0))
    base_amount = base_amount * rng.lognormal(0.0, 0.35, size=n_u)
    txn_rate = config.txn_per_user_per_day * rng.gamma(2.0, 0.5, size=n_u)
    preferred_channel = rng.choice(len(CHANNELS), size=n_u, p=[0.5, 0.3, 0.2])
    country = rng.choice(["DE", "FR", "NL", "ES", "IT", "PL"], size=n_u)

    churner = rng.random(n_u) < config.churn_share
    churn_ns = np.full(n_u, np.iinfo("int64").max, dtype="int64")
    # churn anywhere from 60 days before the period (activity history starts 180 days before)
    # to 30 days after it, but never in an account's first 60 days
    churn_lo = np.maximum(signup_ns + 60 * NS_PER_DAY, start_ns - 60 * NS_PER_DAY)
    churn_hi = end_ns + 30 * NS_PER_DAY
    churn_ns[churner] = (churn_lo + rng.random(n_u) * np.maximum(churn_hi - churn_lo, NS_PER_DAY)
                         ).astype("int64")[churner]
    users = pd.DataFrame({
        "user_id": user_ids,
        "signup_timestamp": _ts(signup_ns),
        "country": country,
        "segment": segment,
        "churn_timestamp": pd.Series(_ts(np.where(churner, churn_ns, 0))).where(churner),
    })

    # Merchants -----------------------------------------------------------------------------
    merchant_ids = np.arange(501, 501 + n_m, dtype="int64")
    if merchants is None:
        category = rng.choice(MERCHANT_CATEGORIES, size=n_m)
        risk = rng.choice([1.0, 3.0, 12.0], size=n_m, p=[0.8, 0.15, 0.05])
        risk[np.isin(category, ["gift_cards", "gaming", "electronics"])] *= 2.0
        merchant_popularity = rng.pareto(1.2, size=n_m) + 1.0
        merchants = _Merchants(pd.DataFrame({
            "merchant_id": merchant_ids,
            "category": category,
            "country": rng.choice(["DE", "FR", "NL", "ES", "IT", "PL"], size=n_m),
            "onboarded_timestamp": _ts(start_ns - rng.integers(60, 2000, size=n_m) * NS_PER_DAY),
        }), risk, merchant_popularity)
    risk, merchant_popularity = merchants.risk, merchants.popularity

    # Legitimate card transactions ----------------------------------------------------------
    active_from = np.maximum(signup_ns, start_ns)
    active_days = np.maximum((end_ns - active_from) / NS_PER_DAY, 0.0)
    counts = rng.poisson(txn_rate * active_days)
    uidx = np.repeat(np.arange(n_u), counts)
    day_offsets = np.floor(rng.random(len(uidx)) * active_days[uidx]).astype("int64")
    day_start = (active_from[uidx] // NS_PER_DAY + day_offsets) * NS_PER_DAY
    legit_ts = _sample_times(rng, day_start, _LEGIT_HOURS)
    legit_ts = np.clip(legit_ts, active_from[uidx], end_ns - 1)
    # each user shops mostly at a handful of favourite merchants
    favourites = rng.choice(n_m, size=(n_u, 4), p=merchant_popularity / merchant_popularity.sum())
    use_fav = rng.random(len(uidx)) < 0.75
    legit_m = np.where(use_fav, favourites[uidx, rng.integers(0, 4, size=len(uidx))],
                       rng.choice(n_m, size=len(uidx), p=merchant_popularity / merchant_popularity.sum()))
    legit_amount = base_amount[uidx] * rng.lognormal(0.0, 0.45, size=len(uidx))
    legit_channel = np.where(rng.random(len(uidx)) < 0.8, preferred_channel[uidx],
                             rng.integers(0, 3, size=len(uidx)))
    legit_device = rng.integers(0, 2, size=len(uidx))  # one of the user's two devices
    # legitimate transactions at risky merchants are still mostly legitimate; a small base rate
    # of isolated fraud follows merchant risk
    legit_fraud = rng.random(len(uidx)) < 0.002 * risk[legit_m]

    # Fraud bursts: a compromised card is used several times within minutes ------------------
    n_episodes = max(1, int(n_u * 0.12 * config.days / 120))
    ep_user = rng.integers(0, n_u, size=n_episodes)
    ep_start_lo = np.maximum(signup_ns[ep_user], start_ns) + NS_PER_DAY
    ep_day = ep_start_lo // NS_PER_DAY + np.floor(
        rng.random(n_episodes) * np.maximum((end_ns - ep_start_lo) / NS_PER_DAY - 1, 1)).astype("int64")
    ep_t0 = _sample_times(rng, ep_day * NS_PER_DAY, _NIGHT_HOURS)
    ep_size = rng.integers(2, 7, size=n_episodes)
    f_ep = np.repeat(np.arange(n_episodes), ep_size)
    f_ts = ep_t0[f_ep] + rng.integers(0, 25 * 60, size=len(f_ep)) * NS_PER_SECOND
    f_u = ep_user[f_ep]
    # risk >= 3, or with few merchants (maybe none that risky) the riskiest there are
    risky = np.flatnonzero(risk >= min(3.0, risk.max()))
    f_m = np.where(rng.random(len(f_ep)) < 0.6, rng.choice(risky, size=len(f_ep)),
                   rng.integers(0, n_m, size=len(f_ep)))
    f_amount = base_amount[f_u] * rng.uniform(2.5, 9.0, size=len(f_ep))
    f_channel = np.where(rng.random(len(f_ep)) < 0.75, 1, rng.integers(0, 3, size=len(f_ep)))
    f_device = 100 + f_ep  # a device the user never used before
    keep = f_ts < end_ns
    f_ts, f_u, f_m, f_amount, f_channel, f_device = (a[keep] for a in
                                                      (f_ts, f_u, f_m, f_amount, f_channel, f_device))

    ts = np.concatenate([legit_ts, f_ts])
    u = np.concatenate([uidx, f_u])
    m = np.concatenate([legit_m, f_m])
    amount = np.concatenate([legit_amount, f_amount])
    channel = np.concatenate([legit_channel, f_channel])
    device = np.concatenate([legit_device, f_device])
    is_fraud = np.concatenate([legit_fraud, np.ones(len(f_ts), dtype=bool)])

    legit = np.r_[np.ones(len(legit_ts), dtype=bool), np.zeros(len(f_ts), dtype=bool)]  # not a fraud burst
    window = config.drift_window
    if window is not None:
        w0, w1 = pd.Timestamp(window[0]).value, pd.Timestamp(window[1]).value
        in_w = (ts >= w0) & (ts < w1)
        if "amount" in config.drift:
            amount = np.where(in_w, amount * 1.8, amount)
        if "channel" in config.drift:
            flip = in_w & (rng.random(len(ts)) < 0.5)
            channel = np.where(flip, 1, channel)
        if "night" in config.drift:
            shift = in_w & (rng.random(len(ts)) < 0.4)
            night_ts = (ts // NS_PER_DAY) * NS_PER_DAY + rng.integers(0, 5 * 3600, size=len(ts)) * NS_PER_SECOND
            ts = np.where(shift, night_ts, ts)
        if "concept" in config.drift:
            # a concept shift: 60 % of the window's fraud bursts now look like the card holder's own
            # use (usual amount, favourite merchant, known device, day hours, spread over the day),
            # so the same features mean more fraud than they did; the features barely move
            mimic = ~legit & in_w & (rng.random(len(ts)) < 0.6)
            k, mu = int(mimic.sum()), u[mimic]
            amount[mimic] = base_amount[mu] * rng.lognormal(0.0, 0.45, size=k)
            m[mimic] = favourites[mu, rng.integers(0, 4, size=k)]
            channel[mimic] = preferred_channel[mu]
            device[mimic] = rng.integers(0, 2, size=k)
            ts[mimic] = np.minimum(_sample_times(rng, (ts[mimic] // NS_PER_DAY) * NS_PER_DAY, _LEGIT_HOURS),
                                   w1 - 1)
        if "merchant_mix" in config.drift:
            # a covariate shift: 90 % of the window's transactions at ordinary merchants (risk below 3)
            # vanish, legitimate and fraudulent alike, so risky merchants carry most of the traffic
            # while the odds of fraud at each merchant stay what they were
            keep = ~(in_w & (risk[m] < 3.0) & (rng.random(len(ts)) < 0.9))
            ts, u, m, amount, channel, device, is_fraud, legit, in_w = (
                a[keep] for a in (ts, u, m, amount, channel, device, is_fraud, legit, in_w))

        if "night_spend" in config.drift:
            ts = _night_spend(rng, ts, amount / base_amount[u], legit & in_w)

    order = np.argsort(ts, kind="stable")
    ts, u, m, amount, channel, device, is_fraud = (a[order] for a in
                                                    (ts, u, m, amount, channel, device, is_fraud))
    n_t = len(ts)
    transaction_ids = np.arange(1, n_t + 1, dtype="int64") + 10_000_000 + first_transaction
    transactions = pd.DataFrame({
        "transaction_id": transaction_ids,
        "user_id": user_ids[u],
        "merchant_id": merchant_ids[m],
        "amount": np.round(amount, 2),
        "channel": np.array(CHANNELS)[channel],
        "device_id": [f"d{user_ids[a]}-{b}" for a, b in zip(u, device, strict=True)],
        "event_timestamp": _ts(ts),
    })

    # Late labels: chargebacks arrive days to weeks after the transaction ---------------------
    reported = is_fraud & (rng.random(n_t) < 0.92)
    delay_s = np.round(rng.gamma(2.0, 6.0, size=n_t) * 86_400 + 86_400).astype("int64")
    delay_ns = delay_s * NS_PER_SECOND
    delay_ns = np.minimum(delay_ns, 60 * NS_PER_DAY)
    fraud_labels = pd.DataFrame({
        "transaction_id": transaction_ids[reported],
        "user_id": user_ids[u[reported]],
        "merchant_id": merchant_ids[m[reported]],
        "transaction_timestamp": _ts(ts[reported]),
        "label_timestamp": _ts(ts[reported] + delay_ns[reported]),
        "is_fraud": np.ones(int(reported.sum()), dtype="int64"),
    })

    activity = _generate_activity(rng, config, signup_ns, churn_ns, base_amount, start_ns, end_ns)
    activity.insert(0, "user_id", user_ids[activity.pop("uidx").to_numpy()])

    return RawTables(users, merchants.frame, transactions, fraud_labels, activity), merchants


def _generate_activity(rng: np.random.Generator, config: SyntheticConfig, signup_ns: np.ndarray,
                       churn_ns: np.ndarray, base_amount: np.ndarray, start_ns: int,
                       end_ns: int) -> pd.DataFrame:
    """Shop activity: purchases slow down and returns rise in the ~60 days before a user churns."""
    n_u = len(signup_ns)
    # history starts 180 days before the period so 90/180-day windows are full from day one
    hist_start = start_ns - 180 * NS_PER_DAY
    purchase_rate = rng.gamma(2.0, 0.12, size=n_u) + 0.02  # purchases per day
    active_from = np.maximum(signup_ns, hist_start)
    active_to = np.minimum(churn_ns, end_ns)
    span_days = np.maximum((active_to - active_from) / NS_PER_DAY, 0.0)
    # oversample, then thin by the decay towards churn
    n_candidates = rng.poisson(purchase_rate * span_days * 4.0)
    uidx = np.repeat(np.arange(n_u), n_candidates)
    t = active_from[uidx] + (rng.random(len(uidx)) * span_days[uidx] * 86_400).astype("int64") * NS_PER_SECOND
    days_to_churn = (churn_ns[uidx] - t) / NS_PER_DAY  # huge for non-churners
    decay = np.clip(days_to_churn / 60.0, 0.12, 1.0)  # activity fades over the last 60 days
    is_view = rng.random(len(uidx)) < 0.5  # about as many views as purchases
    keep = rng.random(len(uidx)) < decay * 0.25
    uidx, t, is_view, decay = uidx[keep], t[keep], is_view[keep], decay[keep]
    value = base_amount[uidx] * rng.lognormal(0.2, 0.5, size=len(uidx))
    window = config.drift_window
    if window is not None and "basket" in config.drift:
        w0, w1 = pd.Timestamp(window[0]).value, pd.Timestamp(window[1]).value
        value = np.where((t >= w0) & (t < w1), value * 1.7, value)
    event_type = np.where(is_view, "view", "purchase").astype(object)
    amount = np.where(is_view, 0.0, np.round(value, 2))
    # returns: a purchase is followed by a return with a probability that rises before churn
    purchases = ~is_view
    return_p = 0.04 + 0.30 * (1.0 - decay)
    returned = purchases & (rng.random(len(uidx)) < return_p)
    r_t = t[returned] + rng.integers(1, 14, size=returned.sum()) * NS_PER_DAY
    r_ok = r_t < np.minimum(end_ns, churn_ns[uidx[returned]])
    frame = pd.DataFrame({
        "uidx": np.concatenate([uidx, uidx[returned][r_ok]]),
        "event_type": np.concatenate([event_type, np.full(r_ok.sum(), "return", dtype=object)]),
        "amount": np.concatenate([amount, amount[returned][r_ok]]),
        "event_timestamp": _ts(np.concatenate([t, r_t[r_ok]])),
    })
    return frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def inject_bad_rows(tables: RawTables, n: int, rng: np.random.Generator) -> None:
    """Append n bad transaction rows of every kind validation must catch (a realistic dirty feed)."""
    tx = tables.transactions
    sample = tx.sample(n=min(n, len(tx)), random_state=int(rng.integers(0, 2**31))).copy()
    kinds = ["null_key", "negative_amount", "absurd_amount", "future_timestamp",
             "unknown_channel", "duplicate", "unknown_user", "before_range"]
    parts = []
    for i, kind in enumerate(kinds):
        rows = sample.iloc[i::len(kinds)].copy()
        if rows.empty:
            continue
        if kind == "null_key":
            rows["user_id"] = pd.NA
        elif kind == "negative_amount":
            rows["amount"] = -rows["amount"]
        elif kind == "absurd_amount":
            rows["amount"] = 5_000_000.0
        elif kind == "future_timestamp":
            rows["event_timestamp"] = pd.Timestamp("2100-01-01", tz="UTC")
        elif kind == "unknown_channel":
            rows["channel"] = "fax"
        elif kind == "unknown_user":
            rows["user_id"] = 999_999_999
        elif kind == "before_range":
            rows["event_timestamp"] = pd.Timestamp("1999-12-31", tz="UTC")
        if kind != "duplicate":
            rows["transaction_id"] = rows["transaction_id"] + 900_000_000
        parts.append(rows)
    bad = pd.concat(parts)
    bad["user_id"] = bad["user_id"].astype("Int64")
    tx = tx.astype({"user_id": "Int64"})
    tables.transactions = pd.concat([tx, bad], ignore_index=True)


def write_drift_manifest(config: SyntheticConfig, raw_dir: Path) -> Path | None:
    """Record which drift kinds were injected, where, and which raw columns they change
    (`<raw>/injected_drift.json`, removed when there is none), for the drift check to read."""
    import json

    path = Path(raw_dir) / DRIFT_MANIFEST
    window = config.drift_window
    if window is None:
        path.unlink(missing_ok=True)
        return None
    path.write_text(json.dumps({"kinds": list(config.drift), "start": window[0].isoformat(),
                                "end": window[1].isoformat(),
                                "shifts": {k: DRIFT_SHIFTS[k] for k in config.drift}}, indent=2))
    return path


def _arrow(frame: pd.DataFrame) -> pa.Table:
    """A raw table as Arrow, its UTC timestamps in microseconds (as DuckDB and Spark read them)."""
    frame = frame.copy()
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.DatetimeTZDtype):
            frame[col] = frame[col].astype("datetime64[us, UTC]")
    return pa.Table.from_pandas(frame, preserve_index=False)


def write(tables: RawTables, raw_dir: Path, config: SyntheticConfig | None = None) -> dict[str, int]:
    """Write each raw table as parquet under raw_dir (and, given the config, its drift manifest);
    return row counts."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        write_drift_manifest(config, raw_dir)
    counts = {}
    for name, frame in tables.items():
        pq.write_table(_arrow(frame), raw_dir / f"{name}.parquet")
        counts[name] = len(frame)
    return counts


def write_parts(config: SyntheticConfig, raw_dir: Path, users_per_part: int) -> dict[str, int]:
    """Generate `config` part by part (`generate_parts`) and append each part to the raw tables'
    Parquet files, so memory holds one part; return row counts. Each file is written beside its
    place and renamed into it at the end (`feastkit.atomic.replacing`): a failed run leaves the old
    tables whole."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    write_drift_manifest(config, raw_dir)
    counts: dict[str, int] = {}
    with contextlib.ExitStack() as files:  # each writer closes before its file is renamed into place
        writers: dict[str, pq.ParquetWriter] = {}
        for tables in generate_parts(config, users_per_part):
            for name, frame in tables.items():
                table = _arrow(frame)
                if name not in writers:
                    tmp = files.enter_context(replacing(raw_dir / f"{name}.parquet"))
                    writers[name] = files.enter_context(pq.ParquetWriter(tmp, table.schema))
                writers[name].write_table(table.cast(writers[name].schema))
                counts[name] = counts.get(name, 0) + len(frame)
    return counts
