"""Operations routes: `/health` (alive), `/ready` (models loaded, online store answers), `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from feastkit import __version__
from serving.features import OnlineStoreUnavailable
from serving.metrics import ServingMetrics
from serving.schemas import HealthResponse, ReadyResponse
from serving.scoring import ServingState, alias_services


def operations_router(state: ServingState, metrics: ServingMetrics) -> APIRouter:
    router = APIRouter(tags=["operations"])
    # what /ready reports besides the store: the alias routes' models (fraud_model, churn_model)
    # and every loaded model as model:<feature service> -> version
    models = {f"{role}_model": m.bundle.version for role, m in alias_services(state.settings, state.models).items()}
    models.update({f"model:{service}": m.bundle.version for service, m in state.models.items()})
    probe = next(iter(state.models.values()))  # every reader shares the store and its guard

    @router.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        """Liveness: the process is up."""
        return HealthResponse(status="ok", version=__version__)

    @router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready() -> JSONResponse:
        """Readiness: bundles loaded (each listed with its version) and the online store answers
        (within the online timeout)."""
        checks = dict(models)
        try:
            await run_in_threadpool(probe.reader.ping)  # the current reader (swapped on registry changes)
            checks["online_store"] = "ok"
            ok = True
        except OnlineStoreUnavailable as exc:
            metrics.online_errors.labels("ping", "read_failed").inc()
            checks["online_store"] = f"unavailable: {str(exc)[:200]}"
            ok = False
        # a `feast apply` the served bundles no longer match (the registry watcher keeps this)
        checks["registry"] = state.registry_problem or "ok"
        ok = ok and not state.registry_problem
        body = ReadyResponse(ready=ok, checks=checks)
        return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())

    @router.get("/metrics", response_class=Response,
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                 "description": "Prometheus text exposition."}})
    async def prometheus_metrics() -> Response:
        """Prometheus metrics: request latency per route, online-store latency and errors,
        missing-feature counts, prediction score histograms per model."""
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    return router
