"""Entities: who the features describe. `user_id` is the join key requests and training rows carry."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A customer: the card holder.",
)
