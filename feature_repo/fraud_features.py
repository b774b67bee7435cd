"""Fraud feature views: user spending stats, merchant risk, realtime counters and the user profile."""

from datetime import timedelta

from entities import merchant, user
from feast import FeatureView, Field
from feast.types import Float64, Int64
from sources import (
    merchant_risk_stats_source,
    user_profile_source,
    user_realtime_push,
    user_transaction_stats_source,
)

# Field tag "default": the value training and serving use when the view has no valid row for the
# entity (no events in the window means zero). Other features fall back to the training median
# recorded in the model bundle.
# Tag "row_timestamp": "window_end" means a row stamped T summarises events before T, so a run over
# [start, end) writes rows start < T <= end and materialization loads exactly those; "event_time"
# rows carry their event's own time and belong to [start, end).
# A row stamped T covers events in [T - window, T); rows are written whenever a value changes
# and at every midnight while the user is active, so a 2-day TTL only expires stale data.
user_transaction_stats = FeatureView(
    name="user_transaction_stats",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[
        Field(name="txn_count_1d", dtype=Int64, description="Card transactions in the last day.",
              tags={"default": "0"}),
        Field(name="txn_count_7d", dtype=Int64, description="Card transactions in the last 7 days.",
              tags={"default": "0"}),
        Field(name="txn_count_30d", dtype=Int64, description="Card transactions in the last 30 days.",
              tags={"default": "0"}),
        Field(name="amount_sum_1d", dtype=Float64, description="Amount spent in the last day.",
              tags={"default": "0"}),
        Field(name="amount_sum_7d", dtype=Float64, description="Amount spent in the last 7 days.",
              tags={"default": "0"}),
        Field(name="amount_avg_30d", dtype=Float64, description="Mean transaction amount, 30 days."),
        Field(name="amount_std_30d", dtype=Float64, description="Std. dev. of amounts, 30 days."),
        Field(name="amount_max_30d", dtype=Float64, description="Largest transaction, 30 days."),
        Field(name="distinct_merchants_30d", dtype=Int64, description="Distinct merchants, 30 days.",
              tags={"default": "0"}),
        Field(name="distinct_devices_30d", dtype=Int64, description="Distinct devices, 30 days.",
              tags={"default": "0"}),
        Field(name="night_txn_share_30d", dtype=Float64,
              description="Share of transactions between 00:00 and 06:00 UTC, 30 days."),
        Field(name="last_txn_epoch", dtype=Float64,
              description="Time of the latest transaction in the last 30 days (UTC epoch seconds)."),
    ],
    source=user_transaction_stats_source,
    online=True,
    description="Windowed card spending statistics per user, on an hourly grid.",
    owner="fraud-ml@feastkit.dev",
    tags={"domain": "fraud", "cadence": "hourly", "freshness_sla": "2h", "row_timestamp": "window_end"},
)

merchant_risk_stats = FeatureView(
    name="merchant_risk_stats",
    entities=[merchant],
    ttl=timedelta(days=2),
    schema=[
        Field(name="merchant_txn_count_1d", dtype=Int64, description="Transactions in the last day.",
              tags={"default": "0"}),
        Field(name="merchant_txn_count_7d", dtype=Int64, description="Transactions, 7 days.",
              tags={"default": "0"}),
        Field(name="merchant_txn_count_30d", dtype=Int64, description="Transactions, 30 days.",
              tags={"default": "0"}),
        Field(name="merchant_avg_ticket_30d", dtype=Float64, description="Mean ticket, 30 days."),
        Field(name="merchant_chargebacks_30d", dtype=Int64,
              description="Chargebacks that arrived in the last 30 days (by label availability time).",
              tags={"default": "0"}),
        Field(name="merchant_chargebacks_90d", dtype=Int64,
              description="Chargebacks that arrived in the last 90 days.",
              tags={"default": "0"}),
        Field(name="merchant_chargeback_rate_90d", dtype=Float64,
              description="Chargebacks arrived / transactions, 90 days."),
    ],
    source=merchant_risk_stats_source,
    online=True,
    description="Merchant volume and chargeback risk, using only labels available at the time.",
    owner="fraud-ml@feastkit.dev",
    tags={"domain": "fraud", "cadence": "hourly", "freshness_sla": "2h", "row_timestamp": "window_end"},
)

user_realtime_activity = FeatureView(
    name="user_realtime_activity",
    entities=[user],
    ttl=timedelta(minutes=10),
    schema=[
        Field(name="txn_count_10m", dtype=Int64,
              description="Transactions in the 10 minutes up to the latest pushed one.",
              tags={"default": "0"}),
        Field(name="amount_sum_10m", dtype=Float64, description="Amount in those 10 minutes.",
              tags={"default": "0"}),
    ],
    source=user_realtime_push,
    online=True,
    description="Burst counters pushed by the payment stream; backfilled from transactions.",
    owner="fraud-ml@feastkit.dev",
    tags={"domain": "fraud", "cadence": "streaming", "freshness_sla": "15m", "row_timestamp": "event_time"},
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="account_created_epoch", dtype=Float64,
              description="When the account was opened (UTC epoch seconds).",
              tags={"default": "0"}),
    ],
    source=user_profile_source,
    online=True,
    description="Static user attributes (no expiry).",
    owner="fraud-ml@feastkit.dev",
    tags={"domain": "fraud", "cadence": "daily", "freshness_sla": "2d", "row_timestamp": "event_time"},
)
