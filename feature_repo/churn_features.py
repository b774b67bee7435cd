"""Churn feature view: shop activity per user on a daily grid."""

from datetime import timedelta

from entities import user
from feast import FeatureView, Field
from feast.types import Float64, Int64
from sources import customer_activity_source

customer_activity = FeatureView(
    name="customer_activity",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[
        Field(name="purchase_count_30d", dtype=Int64, description="Purchases in the last 30 days.",
              tags={"default": "0"}),
        Field(name="purchase_count_prev_30d", dtype=Int64,
              description="Purchases in the 30 days before that.",
              tags={"default": "0"}),
        Field(name="purchase_trend_30d", dtype=Float64,
              description="(last 30d - previous 30d) / (previous 30d + 1): negative when slowing."),
        Field(name="avg_purchase_value_90d", dtype=Float64, description="Mean purchase value, 90 days."),
        Field(name="days_since_last_purchase", dtype=Float64,
              description="Days since the latest purchase in the last 180 days."),
        Field(name="return_rate_180d", dtype=Float64, description="Returns / purchases, 180 days."),
        Field(name="view_count_30d", dtype=Int64, description="Product views, 30 days.",
              tags={"default": "0"}),
    ],
    source=customer_activity_source,
    online=True,
    description="Customer activity snapshots at each UTC midnight while the user is active.",
    owner="growth-ml@feastkit.dev",
    tags={"domain": "churn", "cadence": "daily", "freshness_sla": "26h", "row_timestamp": "window_end"},
)
