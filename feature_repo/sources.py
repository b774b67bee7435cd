"""Data sources: the raw event tables the views aggregate (clean tables) and the request source.

Feature views name these as their events, so the registry holds the lineage raw table -> view ->
feature service. Each view's own feature table (and push source) is created by its declaration.
"""

from feast import RequestSource
from feast.field import Field
from feast.types import Float64

from feastkit.declarations import clean_events

transactions = clean_events(
    "transactions", description="Card transactions: user, merchant, amount, channel, device, time.")
fraud_labels = clean_events(
    "fraud_labels", timestamp_field="label_timestamp",
    description="Fraud outcomes per transaction, stamped when they became known (chargebacks arrive late).")
activity = clean_events(
    "activity", description="Shop activity per user: purchases, product views and returns.")
users = clean_events("users", timestamp_field="signup_timestamp", description="Users and when they signed up.")

transaction_request = RequestSource(
    name="transaction_request",
    schema=[
        Field(name="amount", dtype=Float64, description="Transaction amount in EUR."),
        Field(name="transaction_epoch", dtype=Float64,
              description="Transaction time as UTC seconds since the epoch."),
    ],
    description="Fields of the transaction being scored, sent with the request.",
)
