"""Request-time fraud features: the transaction compared with the user's history, computed by Feast."""

from typing import Any

from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64
from fraud_features import user_profile, user_transaction_stats
from sources import transaction_request


@on_demand_feature_view(
    # only the features the function reads: adding features to those views leaves this view unchanged
    sources=[transaction_request,
             user_transaction_stats[["amount_avg_30d", "amount_std_30d", "last_txn_epoch"]],
             user_profile[["account_created_epoch"]]],
    schema=[
        Field(name="amount_to_avg_ratio", dtype=Float64),
        Field(name="amount_zscore", dtype=Float64),
        Field(name="transaction_hour", dtype=Int64),
        Field(name="is_night", dtype=Int64),
        Field(name="hours_since_last_txn", dtype=Float64),
        Field(name="account_age_days", dtype=Float64),
    ],
    mode="python",
    # Feast compares declared and inferred fields including descriptions, so they live here:
    # amount_to_avg_ratio: amount / 30d mean amount (1.0 without history);
    # amount_zscore: (amount - 30d mean) / 30d std (0.0 without enough history);
    # transaction_hour: hour of day UTC; is_night: 1 between 00:00 and 06:00 UTC;
    # hours_since_last_txn: hours since the previous transaction (720 = none in 30 days);
    # account_age_days: account age at transaction time (0 when unknown).
    description="Amount vs the user's norm, time of day, recency and account age, at request time.",
    owner="fraud-ml@feastkit.dev",
    tags={"domain": "fraud"},
)
def transaction_request_features(inputs: dict[str, Any]) -> dict[str, Any]:
    # Feast stores this function's source in the registry and runs it alone: keep it self-contained.
    night_end_hour = 6  # 00:00-05:59 UTC counts as night
    out: dict[str, list] = {k: [] for k in ("amount_to_avg_ratio", "amount_zscore", "transaction_hour",
                                            "is_night", "hours_since_last_txn", "account_age_days")}
    for amount, epoch, avg, std, last, created in zip(
        inputs["amount"], inputs["transaction_epoch"], inputs["amount_avg_30d"],
        inputs["amount_std_30d"], inputs["last_txn_epoch"], inputs["account_created_epoch"],
        strict=True,
    ):
        amount = float(amount or 0.0)
        epoch = float(epoch or 0.0)
        out["amount_to_avg_ratio"].append(amount / avg if avg else 1.0)
        out["amount_zscore"].append((amount - avg) / std if avg is not None and std else 0.0)
        hour = int(epoch // 3600) % 24
        out["transaction_hour"].append(hour)
        out["is_night"].append(1 if hour < night_end_hour else 0)
        out["hours_since_last_txn"].append(
            min(max((epoch - last) / 3600.0, 0.0), 720.0) if last is not None else 720.0)
        out["account_age_days"].append(max((epoch - created) / 86400.0, 0.0) if created is not None else 0.0)
    return out
