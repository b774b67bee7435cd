"""Request and response bodies of the prediction API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

MAX_ID = 2**63 - 1
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=1)


def _plausible(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    latest = datetime.now(UTC) + FUTURE_TOLERANCE
    if not EARLIEST <= value <= latest:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {latest:%Y-%m-%d} (UTC); got {value.isoformat()}")
    return value


class FraudRequest(BaseModel):
    """A card transaction to score."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "transaction_id": "tx-42", "user_id": 1001, "merchant_id": 501, "amount": 129.9,
        "timestamp": "2026-04-30T21:15:00Z", "channel": "web"}]})

    transaction_id: str | None = Field(None, max_length=64, description="Caller's id, echoed back.")
    user_id: int = Field(..., ge=0, le=MAX_ID, description="Card holder.")
    merchant_id: int = Field(..., ge=0, le=MAX_ID, description="Merchant.")
    amount: float = Field(..., gt=0, le=100_000, allow_inf_nan=False, description="Amount in EUR.")
    timestamp: AwareDatetime = Field(
        ..., description="Transaction time: ISO 8601 with a timezone (or Unix seconds).")
    channel: Literal["pos", "web", "app"] | None = Field(None, description="Where it happened.")
    device_id: str | None = Field(None, max_length=128)

    _check_timestamp = field_validator("timestamp")(_plausible)


class ChurnRequest(BaseModel):
    """A user to score for churn."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": 1001}]})

    user_id: int = Field(..., ge=0, le=MAX_ID)
    as_of: AwareDatetime | None = Field(None, description="Score as of this time (default: now).")

    _check_as_of = field_validator("as_of")(_plausible)


FeatureValues = dict[str, float | int | None]


class _Prediction(BaseModel):
    probability: float = Field(..., ge=0, le=1)
    threshold: float
    model_version: str
    feature_service: str
    missing_features: list[str] = Field(
        default_factory=list,
        description="Features with no valid online value (unknown entity or older than the view's "
                    "TTL); the model used the bundle's documented defaults for them.")
    features: FeatureValues | None = Field(None, description="Feature values used (?explain=true).")


class FraudResponse(_Prediction):
    transaction_id: str | None = None
    decision: Literal["fraud", "legit"]


class ChurnResponse(_Prediction):
    user_id: int
    decision: Literal["likely_churn", "likely_stay"]


class ErrorResponse(BaseModel):
    error: str
    detail: list[str] = Field(default_factory=list)


class HealthResponse(BaseModel):
    status: Literal["ok"]
    version: str


class ReadyResponse(BaseModel):
    ready: bool
    checks: dict[str, str]
