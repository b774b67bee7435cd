"""Prediction routes: a generated pair per served feature service, plus the typed fraud and churn aliases.

`POST /v1/predict/{service}` and `POST /v1/predict/{service}:batch` exist for every loaded model;
their bodies come from the feature service's registry description (serving/contracts.py).
`/v1/predict/fraud` and `/v1/predict/churn` (and their `:batch`) keep their own fixed bodies and
serve FEASTKIT_FRAUD_SERVICE / FEASTKIT_CHURN_SERVICE, when that service is loaded.

The online read and the model run in the scoring thread (`Scoring.decide_async`, where requests
that queue up are scored together); only request parsing and response building happen on the
event loop.
"""

# No `from __future__ import annotations` here: the endpoints below are defined in factories and
# annotated with body models built at run time, which FastAPI must see as real classes.

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query

from feastkit.settings import Settings
from serving.auth import require_api_key
from serving.responses import ERRORS
from serving.schemas import (
    ChurnBatchResponse,
    ChurnRequest,
    ChurnResponse,
    FraudBatchResponse,
    FraudRequest,
    FraudResponse,
    batch_requests,
)
from serving.scoring import ALIASES, LoadedModel, Scoring, ServingState, alias_services, epoch

EXPLAIN = Query(False, description="Return the feature values used.")


def predict_router(state: ServingState, scoring: Scoring, settings: Settings) -> APIRouter:
    """The predict routes of the loaded models (protected by the API key when keys are configured)."""
    router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS)
    aliases = alias_services(state.settings, state.models)  # the aliases checked at load
    fraud_batch, churn_batch = batch_requests(settings.max_batch_size)
    if "fraud" in aliases:
        _fraud_routes(router, aliases["fraud"], scoring, fraud_batch)
    if "churn" in aliases:
        _churn_routes(router, aliases["churn"], scoring, churn_batch)
    for model in state.models.values():
        _service_routes(router, model, scoring, settings.max_batch_size)
    return router


def _fraud_routes(router: APIRouter, model: LoadedModel, scoring: Scoring, batch_body: Any) -> None:
    labels = ALIASES["fraud"][3]

    async def responses(bodies: list[FraudRequest], explain: bool) -> list[FraudResponse]:
        rows, epochs = [], []
        for b in bodies:
            at = epoch(b.timestamp)
            rows.append({"user_id": b.user_id, "merchant_id": b.merchant_id, "amount": b.amount,
                         "transaction_epoch": at})
            epochs.append(at)
        decided = await scoring.decide_async(model, rows, epochs, explain, labels)
        scoring.publish([{**row, "channel": b.channel, "device_id": b.device_id}
                         for row, b in zip(rows, bodies, strict=True)], epochs, [b.transaction_id for b in bodies])
        return [FraudResponse(transaction_id=body.transaction_id, **fields)
                for body, fields in zip(bodies, decided, strict=True)]

    @router.post("/v1/predict/fraud", response_model=FraudResponse, tags=["predict"])
    async def predict_fraud(body: FraudRequest, explain: bool = EXPLAIN) -> FraudResponse:
        """Score one card transaction. Features are read as of the transaction's timestamp."""
        return (await responses([body], explain))[0]

    @router.post("/v1/predict/fraud:batch", response_model=FraudBatchResponse, tags=["predict"])
    async def predict_fraud_batch(body: batch_body, explain: bool = EXPLAIN) -> FraudBatchResponse:
        """Score up to FEASTKIT_MAX_BATCH_SIZE transactions with one online read; same results as
        one request each."""
        return FraudBatchResponse(predictions=await responses(body.transactions, explain))


def _churn_routes(router: APIRouter, model: LoadedModel, scoring: Scoring, batch_body: Any) -> None:
    labels = ALIASES["churn"][3]

    async def responses(bodies: list[ChurnRequest], explain: bool) -> list[ChurnResponse]:
        now = datetime.now(UTC)
        as_of = [epoch(b.as_of or now) for b in bodies]
        decided = await scoring.decide_async(model, [{"user_id": b.user_id} for b in bodies], as_of,
                                             explain, labels)
        return [ChurnResponse(user_id=body.user_id, **fields)
                for body, fields in zip(bodies, decided, strict=True)]

    @router.post("/v1/predict/churn", response_model=ChurnResponse, tags=["predict"])
    async def predict_churn(body: ChurnRequest, explain: bool = EXPLAIN) -> ChurnResponse:
        """Probability that the user churns within 30 days of `as_of` (default: now)."""
        return (await responses([body], explain))[0]

    @router.post("/v1/predict/churn:batch", response_model=ChurnBatchResponse, tags=["predict"])
    async def predict_churn_batch(body: batch_body, explain: bool = EXPLAIN) -> ChurnBatchResponse:
        """Score up to FEASTKIT_MAX_BATCH_SIZE users with one online read."""
        return ChurnBatchResponse(predictions=await responses(body.users, explain))


def _service_routes(router: APIRouter, model: LoadedModel, scoring: Scoring, max_batch_size: int) -> None:
    """`/v1/predict/{service}` and `:batch`, typed from the service's registry description."""
    contract = model.contract
    service = contract.service
    request_model, response_model = contract.request_model, contract.response_model
    batch_request, batch_response = contract.batch_models(max_batch_size)
    labels = contract.labels

    async def predictions(bodies: list[Any], explain: bool) -> list[dict[str, Any]]:
        now = None
        rows, as_of = [], []
        for body in bodies:
            row, at = contract.row(body)
            if at is None:
                now = now or datetime.now(UTC)
                at = now
            rows.append(row)
            as_of.append(epoch(at))
        decided = await scoring.decide_async(model, rows, as_of, explain, labels)
        scoring.publish(rows, as_of, [None] * len(rows))
        return [{**contract.entity_keys(row), **fields} for row, fields in zip(rows, decided, strict=True)]

    async def predict(body: request_model, explain: bool = EXPLAIN) -> Any:  # type: ignore[valid-type]
        return (await predictions([body], explain))[0]

    async def predict_batch(body: batch_request, explain: bool = EXPLAIN) -> Any:  # type: ignore[valid-type]
        return {"predictions": await predictions(body.rows, explain)}

    inputs = ", ".join(f"`{f.name}`" for f in contract.inputs)
    about = f" {contract.description}" if contract.description else ""
    router.add_api_route(
        f"/v1/predict/{service}", predict, methods=["POST"], response_model=response_model,
        tags=["predict"], name=f"predict_{service}", summary=f"Predict with {service}",
        description=f"Score one row with the promoted `{service}` model ({model.bundle.version}).{about} "
                    f"Takes {inputs}; features are read, and view TTLs applied, as of `as_of` "
                    f"(default now). Decision: `{labels[0]}` when the probability reaches the "
                    f"threshold, else `{labels[1]}`.")
    router.add_api_route(
        f"/v1/predict/{service}:batch", predict_batch, methods=["POST"], response_model=batch_response,
        tags=["predict"], name=f"predict_{service}_batch", summary=f"Predict with {service}, batch",
        description=f"Score up to {max_batch_size} `{service}` rows with one online read; same results "
                    "as one request each.")
