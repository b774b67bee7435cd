"""Feature views, each declared once with its aggregations (feastkit.declarations.windowed_view).

`feast apply` publishes the view; `feastkit compute` computes its table from the raw events,
point in time: a row stamped T aggregates the user's events in [T - window, T). Field `default`:
the value training and serving use when there is no valid row (no events means zero); other
features fall back to their training median.
"""

from datetime import timedelta

from entities import user
from sources import transactions

from feastkit.declarations import Aggregation, windowed_view

D1, D7, D30 = (timedelta(days=n) for n in (1, 7, 30))

user_spending = windowed_view(
    name="user_spending",
    entity=user,
    events=transactions,
    grid=timedelta(hours=1),
    ttl=timedelta(days=2),
    features=[
        Aggregation("txn_count_1d", "count", D1, description="Card transactions in the last day.", default="0"),
        Aggregation("txn_count_7d", "count", D7, description="Card transactions in the last 7 days.", default="0"),
        Aggregation("amount_sum_7d", "sum", D7, "amount", description="Amount spent in the last 7 days.",
                    default="0"),
        Aggregation("amount_avg_30d", "avg", D30, "amount", description="Mean transaction amount, 30 days."),
        Aggregation("amount_max_30d", "max", D30, "amount", description="Largest transaction, 30 days."),
        Aggregation("distinct_merchants_30d", "count_distinct", D30, "merchant_id",
                    description="Distinct merchants, 30 days.", default="0"),
    ],
    freshness_sla="2h",
    description="Card spending per user on an hourly grid.",
    tags={"domain": "fraud", "cadence": "hourly"},
)
