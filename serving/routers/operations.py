"""Operations routes: `/health` (alive), `/ready` (models loaded, online store answers), `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from feastkit import __version__
from feastkit.settings import Settings
from serving.auth import require_api_key
from serving.metrics import ServingMetrics
from serving.readiness import ReadinessProbe
from serving.responses import ERRORS
from serving.schemas import HealthResponse, ReadyResponse
from serving.scoring import ServingState, alias_services


def operations_router(state: ServingState, metrics: ServingMetrics, probe: ReadinessProbe,
                      settings: Settings) -> APIRouter:
    """`/health` and `/ready` (always open), and `/metrics` (behind the API key unless
    FEASTKIT_METRICS_PUBLIC is set)."""
    router = APIRouter(tags=["operations"])
    # what /ready reports besides the store: the alias routes' models (fraud_model, churn_model)
    # and every loaded model as model:<feature service> -> version
    models = {f"{role}_model": m.bundle.version for role, m in alias_services(state.settings, state.models).items()}
    models.update({f"model:{service}": m.bundle.version for service, m in state.models.items()})

    @router.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        """Liveness: the process is up."""
        return HealthResponse(status="ok", version=__version__)

    @router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready() -> JSONResponse:
        """Readiness: bundles loaded (each listed with its version), the online store answered
        the background probe (every FEASTKIT_READY_PROBE_SECONDS, within the online timeout), and
        the registry still matches the served bundles (the registry watcher keeps that state).
        Answers from kept state: never waits for the store."""
        result = probe.result()
        problem = state.registry_problem
        ok = result.ok and not problem
        body = ReadyResponse(ready=ok, checks={**models, "online_store": result.check, "registry": problem or "ok"})
        return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())

    metrics_auth = [] if settings.metrics_public else [Depends(require_api_key)]

    @router.get("/metrics", response_class=Response, dependencies=metrics_auth,
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                 "description": "Prometheus text exposition."},
                           **({} if settings.metrics_public else {401: ERRORS[401]})})
    async def prometheus_metrics() -> Response:
        """Prometheus metrics: request latency per route, online-store latency and errors,
        missing-feature counts, prediction score histograms per model."""
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    return router
