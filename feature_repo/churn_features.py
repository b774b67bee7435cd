"""Churn feature view: shop activity per user, a snapshot at each UTC midnight while the user is active."""

from datetime import timedelta

from entities import user
from feast.types import Float64, Int64
from sources import activity

from feastkit.declarations import Aggregation, Derived, windowed_view

PURCHASE, RETURN, VIEW = "event_type = 'purchase'", "event_type = 'return'", "event_type = 'view'"
D30, D60, D90, D180 = (timedelta(days=n) for n in (30, 60, 90, 180))

customer_activity = windowed_view(
    name="customer_activity",
    entity=user,
    events=activity,
    grid=timedelta(days=1),
    ttl=timedelta(days=2),
    features=[
        Aggregation("purchase_count_30d", "count", D30, where=PURCHASE,
                    description="Purchases in the last 30 days.", default="0"),
        Derived("purchase_count_prev_30d", "purchase_count_60d - purchase_count_30d", Int64,
                description="Purchases in the 30 days before that.", default="0"),
        Derived("purchase_trend_30d",
                "(purchase_count_30d - (purchase_count_60d - purchase_count_30d))"
                " / (purchase_count_60d - purchase_count_30d + 1.0)", Float64,
                description="(last 30d - previous 30d) / (previous 30d + 1): negative when slowing."),
        Aggregation("avg_purchase_value_90d", "avg", D90, "amount", where=PURCHASE,
                    description="Mean purchase value, 90 days."),
        Derived("days_since_last_purchase",
                "(epoch_us(event_timestamp) - epoch_us(last_purchase_ts)) / 86400000000.0", Float64,
                description="Days since the latest purchase in the last 180 days."),
        Derived("return_rate_180d", "return_count_180d / nullif(purchase_count_180d, 0)::DOUBLE", Float64,
                description="Returns / purchases, 180 days."),
        Aggregation("view_count_30d", "count", D30, where=VIEW, description="Product views, 30 days.",
                    default="0"),
    ],
    helpers=[
        Aggregation("purchase_count_60d", "count", D60, where=PURCHASE),
        Aggregation("purchase_count_180d", "count", D180, where=PURCHASE),
        Aggregation("return_count_180d", "count", D180, where=RETURN),
        Aggregation("last_purchase_ts", "last_time", D180, where=PURCHASE),
    ],
    freshness_sla="26h",
    description="Customer activity snapshots at each UTC midnight while the user is active.",
    owner="growth-ml@feastkit.dev",
    tags={"domain": "churn", "cadence": "daily"},
)
