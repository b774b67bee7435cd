"""Example requests for the demo: a fraud-like transaction, a normal one, an unknown user, churn risks."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pandas as pd

from feastkit.settings import Settings
from pipelines.aggregates import data_range, read_view


def example_requests(settings: Settings) -> list[tuple[str, str, dict[str, Any]]]:
    """(title, path, body) for requests that exercise the models on the generated data."""
    _, end = data_range(settings.clean_dir)
    tx = pd.read_parquet(settings.clean_dir / "transactions.parquet")
    recent = tx[tx["event_timestamp"] >= pd.Timestamp(end) - pd.Timedelta(days=7)]
    user = int(recent["user_id"].value_counts().index[0])
    mine = recent[recent["user_id"] == user]
    usual_amount = float(mine["amount"].median())
    usual_merchant = int(mine["merchant_id"].value_counts().index[0])
    merchants = read_view(settings.features_dir, "merchant_risk_stats")
    latest = merchants.sort_values("event_timestamp").groupby("merchant_id").tail(1)
    latest = latest[latest["merchant_txn_count_30d"] >= 20]
    risky_merchant = int(latest.sort_values("merchant_chargeback_rate_90d").iloc[-1]["merchant_id"])
    day = pd.Timestamp(end).floor("D")
    night = day + pd.Timedelta(hours=2, minutes=30)
    afternoon = day + pd.Timedelta(hours=14)
    if afternoon <= pd.Timestamp(end):
        afternoon += pd.Timedelta(days=1)

    users = pd.read_parquet(settings.clean_dir / "users.parquet")
    horizon = pd.Timestamp(end) + pd.Timedelta(days=30)
    activity = read_view(settings.features_dir, "customer_activity")
    active_now = activity[activity["event_timestamp"] == activity["event_timestamp"].max()]
    active_now = active_now.merge(users[["user_id", "churn_timestamp"]], on="user_id")
    leaving = active_now[active_now["churn_timestamp"].between(pd.Timestamp(end), horizon)]
    staying = active_now[active_now["churn_timestamp"].isna()].sort_values("purchase_count_30d")
    iso = _iso
    reqs = [
        ("fraud-like: 8x the user's usual amount, 02:30 at night, riskiest merchant", "/v1/predict/fraud?explain=true",
         {"transaction_id": "demo-fraud", "user_id": user, "merchant_id": risky_merchant,
          "amount": round(usual_amount * 8, 2), "timestamp": iso(night), "channel": "web"}),
        ("normal: the same user, usual amount, usual merchant, afternoon", "/v1/predict/fraud",
         {"transaction_id": "demo-normal", "user_id": user, "merchant_id": usual_merchant,
          "amount": round(usual_amount, 2), "timestamp": iso(afternoon), "channel": "pos"}),
        ("unknown user: predicted with documented defaults", "/v1/predict/fraud",
         {"transaction_id": "demo-unknown", "user_id": 987654321, "merchant_id": usual_merchant,
          "amount": 49.9, "timestamp": iso(afternoon)}),
    ]
    if len(leaving):
        reqs.append(("churn: a user whose activity is fading", "/v1/predict/churn",
                     {"user_id": int(leaving.sort_values("purchase_trend_30d").iloc[0]["user_id"]),
                      "as_of": iso(pd.Timestamp(end))}))
    if len(staying):
        reqs.append(("churn: a steady, active customer", "/v1/predict/churn",
                     {"user_id": int(staying.iloc[-1]["user_id"]), "as_of": iso(pd.Timestamp(end))}))
    reqs.append(("churn: unknown user", "/v1/predict/churn",
                 {"user_id": 987654321, "as_of": iso(pd.Timestamp(end))}))
    return reqs


def _iso(ts: pd.Timestamp | datetime) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def run_examples(settings: Settings, url: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Send every example request to a running server; (title, body, response JSON)."""
    out = []
    with httpx.Client(base_url=url, timeout=timedelta(seconds=30).total_seconds()) as client:
        for title, path, body in example_requests(settings):
            response = client.post(path, json=body)
            out.append((title, body, {"status": response.status_code, **response.json()}))
    return out
