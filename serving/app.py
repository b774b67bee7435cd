"""The prediction API: FastAPI app factory, start-up checks, and the fraud and churn routes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from feastkit import __version__
from feastkit.errors import FeastkitError
from feastkit.settings import Settings, get_settings
from serving.bundle import ModelBundle, current_bundle
from serving.features import OnlineStoreUnavailable, ServiceReader
from serving.schemas import (
    ChurnRequest,
    ChurnResponse,
    ErrorResponse,
    FraudRequest,
    FraudResponse,
    HealthResponse,
    ReadyResponse,
)

log = logging.getLogger("feastkit.serving")


@dataclass
class LoadedModel:
    """A bundle and the reader for its feature service."""

    bundle: ModelBundle
    reader: ServiceReader


@dataclass
class ServingState:
    """Everything the routes need, loaded and checked once at start-up."""

    settings: Settings
    fraud: LoadedModel
    churn: LoadedModel

    @classmethod
    def load(cls, settings: Settings) -> ServingState:
        """Open the store and load both bundles; refuse (FeastkitError) on anything inconsistent."""
        from feastkit.store import open_store, require_applied

        store = open_store(settings)
        require_applied(store)
        models = {}
        for role, service in (("fraud", settings.fraud_service), ("churn", settings.churn_service)):
            bundle = current_bundle(settings.models_dir, service)
            if bundle.feature_service != service:
                raise FeastkitError(f"bundle {bundle.path} serves '{bundle.feature_service}', not '{service}'",
                                    "retrain with `feastkit train`")
            bundle.check_against(store)
            models[role] = LoadedModel(bundle, ServiceReader.build(store, service))
        return cls(settings, models["fraud"], models["churn"])


def _epoch(ts: datetime) -> float:
    return ts.astimezone(UTC).timestamp()


def _score(model: LoadedModel, rows: list[dict[str, Any]], as_of: list[float]) -> list[dict[str, Any]]:
    import pandas as pd

    features = model.reader.read(rows, as_of)
    probabilities, missing = model.bundle.predict_proba(pd.DataFrame(features))
    return [{"probability": float(p), "missing": m, "features": f}
            for p, m, f in zip(probabilities, missing, features, strict=True)]


def create_app(settings: Settings | None = None, state: ServingState | None = None) -> FastAPI:
    """Build the app; bundles and the feature store are loaded (and checked) at start-up."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.serving = state or ServingState.load(settings)
        yield

    app = FastAPI(
        title="feastkit prediction API",
        version=__version__,
        description="Fraud and churn predictions on Feast online features. Features missing for an "
                    "entity (unknown, or older than their view's TTL) are replaced by the documented "
                    "defaults in the model bundle and listed in `missing_features`.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse(status_code=422, content={
            "error": "invalid request: " + "; ".join(problems),
            "detail": problems,
        })

    @app.exception_handler(OnlineStoreUnavailable)
    async def store_down(_: Request, exc: OnlineStoreUnavailable) -> JSONResponse:
        log.error("online store unavailable: %s", exc)
        return JSONResponse(status_code=503, content={
            "error": "online feature store unavailable; retry later", "detail": [str(exc)[:300]]})

    def serving(request: Request) -> ServingState:
        return request.app.state.serving

    @app.get("/health", response_model=HealthResponse, tags=["operations"])
    async def health() -> HealthResponse:
        """Liveness: the process is up."""
        return HealthResponse(status="ok", version=__version__)

    @app.get("/ready", response_model=ReadyResponse, tags=["operations"],
             responses={503: {"model": ReadyResponse}})
    async def ready(request: Request) -> JSONResponse:
        """Readiness: bundles loaded and the online store answers."""
        st = serving(request)
        checks = {"fraud_model": st.fraud.bundle.version, "churn_model": st.churn.bundle.version}
        try:
            st.fraud.reader.ping()
            checks["online_store"] = "ok"
            ok = True
        except OnlineStoreUnavailable as exc:
            checks["online_store"] = f"unavailable: {str(exc)[:200]}"
            ok = False
        body = ReadyResponse(ready=ok, checks=checks)
        return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())

    @app.post("/v1/predict/fraud", response_model=FraudResponse, tags=["predict"],
              responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def predict_fraud(body: FraudRequest, request: Request,
                            explain: bool = Query(False, description="Return the feature values used.")
                            ) -> FraudResponse:
        """Score one card transaction. Features are read as of the transaction's timestamp."""
        st = serving(request)
        model = st.fraud
        epoch = _epoch(body.timestamp)
        row = {"user_id": body.user_id, "merchant_id": body.merchant_id, "amount": body.amount,
               "transaction_epoch": epoch}
        started = time.perf_counter()
        result = _score(model, [row], [epoch])[0]
        log.debug("fraud scored in %.2f ms", (time.perf_counter() - started) * 1000)
        threshold = model.bundle.threshold
        return FraudResponse(
            transaction_id=body.transaction_id,
            probability=result["probability"],
            decision="fraud" if result["probability"] >= threshold else "legit",
            threshold=threshold,
            model_version=model.bundle.version,
            feature_service=model.bundle.feature_service,
            missing_features=result["missing"],
            features=result["features"] if explain else None,
        )

    @app.post("/v1/predict/churn", response_model=ChurnResponse, tags=["predict"],
              responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def predict_churn(body: ChurnRequest, request: Request,
                            explain: bool = Query(False, description="Return the feature values used.")
                            ) -> ChurnResponse:
        """Probability that the user churns within 30 days of `as_of` (default: now)."""
        st = serving(request)
        model = st.churn
        as_of = body.as_of or datetime.now(UTC)
        result = _score(model, [{"user_id": body.user_id}], [_epoch(as_of)])[0]
        threshold = model.bundle.threshold
        return ChurnResponse(
            user_id=body.user_id,
            probability=result["probability"],
            decision="likely_churn" if result["probability"] >= threshold else "likely_stay",
            threshold=threshold,
            model_version=model.bundle.version,
            feature_service=model.bundle.feature_service,
            missing_features=result["missing"],
            features=result["features"] if explain else None,
        )

    return app
