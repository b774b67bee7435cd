"""Request and response bodies of the prediction API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
)

MAX_ID = 2**63 - 1
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=1)


def plausible_time(value: datetime | None) -> datetime | None:
    """Reject timestamps before 2000 or more than a day in the future (ValueError names the range)."""
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

    _check_timestamp = field_validator("timestamp")(plausible_time)


class ChurnRequest(BaseModel):
    """A user to score for churn."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": 1001}]})

    user_id: int = Field(..., ge=0, le=MAX_ID)
    as_of: AwareDatetime | None = Field(None, description="Score as of this time (default: now).")

    _check_as_of = field_validator("as_of")(plausible_time)


FeatureValues = dict[str, float | int | None]


class PredictionFields(BaseModel):  # the fields every prediction response shares
    probability: float = Field(..., ge=0, le=1)
    threshold: float
    model_version: str
    feature_service: str
    missing_features: list[str] = Field(
        default_factory=list,
        description="Features with no valid online value (unknown entity or older than the view's "
                    "TTL); the model used the bundle's documented defaults for them.")
    features: FeatureValues | None = Field(None, description="Feature values used (?explain=true).")


class FraudResponse(PredictionFields):
    transaction_id: str | None = None
    decision: Literal["fraud", "legit"]


class ChurnResponse(PredictionFields):
    user_id: int
    decision: Literal["likely_churn", "likely_stay"]


class ErrorResponse(BaseModel):
    error: str
    detail: list[str] = Field(default_factory=list)
    request_id: str | None = Field(None, description="The request's X-Request-ID, also in the logs.")


class DetailResponse(BaseModel):
    """FastAPI's error body (`HTTPException`), used by the monitoring routes."""

    detail: str


class HealthResponse(BaseModel):
    status: Literal["ok"]
    version: str


class ReadyResponse(BaseModel):
    ready: bool
    checks: dict[str, str]


class FraudBatchResponse(BaseModel):
    predictions: list[FraudResponse] = Field(..., description="One per transaction, same order.")


class ChurnBatchResponse(BaseModel):
    predictions: list[ChurnResponse] = Field(..., description="One per user, same order.")


def batch_requests(max_batch_size: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """Batch request bodies bounded by the configured size (documented as maxItems)."""
    config = ConfigDict(extra="forbid")
    fraud: Any = (list[FraudRequest], Field(..., min_length=1, max_length=max_batch_size,
                                            description=f"1 to {max_batch_size} transactions."))
    churn: Any = (list[ChurnRequest], Field(..., min_length=1, max_length=max_batch_size,
                                            description=f"1 to {max_batch_size} users."))
    return (create_model("FraudBatchRequest", __config__=config, transactions=fraud),
            create_model("ChurnBatchRequest", __config__=config, users=churn))


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_EVENT_FIELDS: dict[str, Any] = {
    "int": Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)],
    "float": Annotated[float, Field(strict=True, ge=-1e15, le=1e15, allow_inf_nan=False)],
    "bool": Annotated[bool, Field(strict=True)],
    "timestamp": Annotated[AwareDatetime, AfterValidator(plausible_time),
                           Field(description="ISO 8601 with a timezone.")],
    "str": Annotated[str, Field(strict=True, max_length=256)],
}


def _model_name(push_source: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", push_source) if part)


def push_request(push_source: str, columns: dict[str, str], max_batch_size: int) -> type[BaseModel]:
    """Push body of one push source: `events`, 1 to `max_batch_size` rows typed from its columns
    (column -> int | float | bool | str | timestamp, as `PushTarget` reads them from the registry)."""
    name = _model_name(push_source) or "Push"
    event = create_model(f"{name}Event", __config__=ConfigDict(extra="forbid"),
                         **{column: (_EVENT_FIELDS[kind], ...) for column, kind in columns.items()})
    events: Any = (list[event], Field(  # type: ignore[valid-type]
        ..., min_length=1, max_length=max_batch_size,
        description=f"1 to {max_batch_size} rows with the push source's columns: its feature views' "
                    "entity keys, features and timestamp field."))
    example = {column: {"int": 1001, "float": 412.5, "bool": True, "str": "a",
                        "timestamp": "2026-04-30T21:15:00Z"}[kind] for column, kind in columns.items()}
    return create_model(f"{name}PushRequest", __config__=ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"events": [example]}]}), events=events)


class PushResponse(BaseModel):
    push_source: str
    rows: int
    feature_views: list[str]
    to: Literal["online", "online_and_offline"]
