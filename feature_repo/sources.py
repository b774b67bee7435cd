"""Data sources: feature tables written by `feastkit compute`, the request source and the push source."""

from feast import FileSource, PushSource, RequestSource
from feast.data_format import ParquetFormat
from feast.field import Field
from feast.types import Float64

from feastkit.settings import get_settings

# Absolute paths, resolved from FEASTKIT_DATA_DIR when the repo is applied, so `feast apply` inside
# feature_repo/, the CLI from the project root and scheduler workers all read the same files.
_FEATURES = get_settings().features_dir


def _table(name: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=str(_FEATURES / name / "*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description=f"Feature table {name}, computed by `feastkit compute`.",
    )


user_transaction_stats_source = _table("user_transaction_stats")
merchant_risk_stats_source = _table("merchant_risk_stats")
customer_activity_source = _table("customer_activity")
user_profile_source = _table("user_profile")
user_realtime_activity_source = _table("user_realtime_activity")

user_realtime_push = PushSource(
    name="user_realtime_push",
    batch_source=user_realtime_activity_source,
    description="Last-10-minute transaction counters pushed by the payment stream.",
)

transaction_request = RequestSource(
    name="transaction_request",
    schema=[
        Field(name="amount", dtype=Float64, description="Transaction amount in EUR."),
        Field(name="transaction_epoch", dtype=Float64,
              description="Transaction time as UTC seconds since the epoch."),
    ],
    description="Fields of the transaction being scored, sent with the request.",
)
