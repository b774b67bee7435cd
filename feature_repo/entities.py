"""Entities: the card holder (user) and the merchant."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A customer: card holder for fraud, shopper for churn.",
)

merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.INT64,
    description="A merchant accepting card payments.",
)
