"""Fraud feature views: user spending stats, merchant risk, realtime counters and the user profile.

Each view is declared once, with its aggregations: `feast apply` publishes it and `feastkit
compute` computes it from the raw events (see feastkit/declarations.py for the semantics). Field
`default`: the value training and serving use when the view has no valid row for an entity (no
events in the window means zero); other features fall back to the training median.
"""

from datetime import timedelta

from entities import merchant, user
from feast.types import Float64
from sources import fraud_labels, transactions, users

from feastkit.declarations import Aggregation, Derived, reference_view, windowed_view

D1, D7, D30, D90 = (timedelta(days=n) for n in (1, 7, 30, 90))

user_transaction_stats = windowed_view(
    name="user_transaction_stats",
    entity=user,
    events=transactions,
    grid=timedelta(hours=1),
    ttl=timedelta(days=2),
    features=[
        Aggregation("txn_count_1d", "count", D1, description="Card transactions in the last day.", default="0"),
        Aggregation("txn_count_7d", "count", D7, description="Card transactions in the last 7 days.", default="0"),
        Aggregation("txn_count_30d", "count", D30, description="Card transactions in the last 30 days.",
                    default="0"),
        Aggregation("amount_sum_1d", "sum", D1, "amount", description="Amount spent in the last day.", default="0"),
        Aggregation("amount_sum_7d", "sum", D7, "amount", description="Amount spent in the last 7 days.",
                    default="0"),
        Aggregation("amount_avg_30d", "avg", D30, "amount", description="Mean transaction amount, 30 days."),
        Aggregation("amount_std_30d", "std", D30, "amount", description="Std. dev. of amounts, 30 days."),
        Aggregation("amount_max_30d", "max", D30, "amount", description="Largest transaction, 30 days."),
        Aggregation("distinct_merchants_30d", "count_distinct", D30, "merchant_id",
                    description="Distinct merchants, 30 days.", default="0"),
        Aggregation("distinct_devices_30d", "count_distinct", D30, "device_id",
                    description="Distinct devices, 30 days.", default="0"),
        Derived("night_txn_share_30d", "night_txn_count_30d / nullif(txn_count_30d, 0)::DOUBLE", Float64,
                description="Share of transactions between 00:00 and 06:00 UTC, 30 days."),
        Aggregation("last_txn_epoch", "last_time", D30,
                    description="Time of the latest transaction in the last 30 days (UTC epoch seconds)."),
    ],
    helpers=[Aggregation("night_txn_count_30d", "count", D30, where="hour(ts) < 6")],
    freshness_sla="2h",
    description="Windowed card spending statistics per user, on an hourly grid.",
    owner="fraud-ml@feastkit.dev",
    tags={"domain": "fraud", "cadence": "hourly"},
)

merchant_risk_stats = windowed_view(
    name="merchant_risk_stats",
    entity=merchant,
    events=[transactions, fraud_labels],
    grid=timedelta(hours=1),
    ttl=timedelta(days=2),
    features=[
        Aggregation("merchant_txn_count_1d", "count", D1, description="Transactions in the last day.",
                    default="0"),
        Aggregation("merchant_txn_count_7d", "count", D7, description="Transactions, 7 days.", default="0"),
        Aggregation("merchant_txn_count_30d", "count", D30, description="Transactions, 30 days.", default="0"),
        Aggregation("merchant_avg_ticket_30d", "avg", D30, "amount", description="Mean ticket, 30 days."),
        # labels count from when they became known (the source's timestamp is label_timestamp)
        Aggregation("merchant_chargebacks_30d", "count", D30, events=fraud_labels, where="is_fraud = 1",
                    description="Chargebacks that arrived in the last 30 days (by label availability time).",
                    default="0"),
        Aggregation("merchant_chargebacks_90d", "count", D90, events=fraud_labels, where="is_fraud = 1",
                    description="Chargebacks that arrived in the last 90 days.", default="0"),
        Derived("merchant_chargeback_rate_90d", "merchant_chargebacks_90d / nullif(merchant_txn_count_90d, 0)",
                Float64, description="Chargebacks arrived / transactions, 90 days."),
    ],
    helpers=[Aggregation("merchant_txn_count_90d", "count", D90)],
    freshness_sla="2h",
    description="Merchant volume and chargeback risk, using only labels available at the time.",
    owner="fraud-ml@feastkit.dev",
    tags={"domain": "fraud", "cadence": "hourly"},
)

user_realtime_activity = windowed_view(
    name="user_realtime_activity",
    entity=user,
    events=transactions,
    grid=None,  # a row per transaction, counting the 10 minutes up to and including it
    ttl=timedelta(minutes=10),
    features=[
        Aggregation("txn_count_10m", "count", timedelta(minutes=10),
                    description="Transactions in the 10 minutes up to the latest pushed one.", default="0"),
        Aggregation("amount_sum_10m", "sum", timedelta(minutes=10), "amount",
                    description="Amount in those 10 minutes.", default="0"),
    ],
    push_source="user_realtime_push",
    stream_event_id="transaction_id",  # stream-fed: `feastkit stream` keeps it fresh, deduplicating on this
    freshness_sla="15m",
    description="Burst counters kept fresh by the stream worker (`feastkit stream`); backfilled from transactions.",
    owner="fraud-ml@feastkit.dev",
    tags={"domain": "fraud", "cadence": "streaming"},
)

user_profile = reference_view(
    name="user_profile",
    entity=user,
    source=users,
    features=[Derived("account_created_epoch", "epoch(signup_timestamp)", Float64,
                      description="When the account was opened (UTC epoch seconds).", default="0")],
    ttl=timedelta(0),
    freshness_sla="2d",
    description="Static user attributes (no expiry).",
    owner="fraud-ml@feastkit.dev",
    tags={"domain": "fraud", "cadence": "daily"},
)
