"""`POST /v1/push/{push_source}`: fresh events into the online (and optionally offline) store."""

# No `from __future__ import annotations`: the body models are built at run time (one per push
# source, typed from its columns, bounded by the batch size).

import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from feastkit.settings import Settings
from serving.auth import require_api_key
from serving.features import StoreGuard
from serving.metrics import ServingMetrics
from serving.push import PushRejected, PushTarget
from serving.responses import ERRORS, error_response
from serving.schemas import PushResponse, push_request
from serving.scoring import ServingState

log = logging.getLogger("feastkit.serving")


def _push(state: ServingState, target: PushTarget, events: list[dict[str, Any]], push_to: str,
          metrics: ServingMetrics, guard: StoreGuard) -> int:
    """Validate, build the frame and write it through Feast (blocking: runs in a worker thread).

    Writes have their own guard: a failed push never opens the read guard (predictions and
    /ready are not affected), and only connectivity errors and timeouts open it; anything else
    propagates as an unexpected error (500, traceback in the log).
    """
    from feast.data_source import PushMode

    df = target.frame(events)  # PushRejected names every bad field
    guard.check()
    mode = PushMode.ONLINE_AND_OFFLINE if push_to == "online_and_offline" else PushMode.ONLINE
    started = time.perf_counter()
    try:
        state.store.push(target.name, df, to=mode)
    except Exception as exc:
        down = guard.unavailable(exc)
        metrics.online_errors.labels("push", "write_failed" if down else "unexpected").inc()
        if down is None:
            raise
        raise down from exc
    guard.succeeded()
    metrics.online_seconds.labels(f"push:{target.name}").observe(time.perf_counter() - started)
    metrics.pushed.labels(target.name).inc(len(df))
    log.info("pushed", extra={"push_source": target.name, "rows": len(df)})
    return len(df)


def push_router(state: ServingState, metrics: ServingMetrics, settings: Settings) -> APIRouter:
    """One typed push route per push source, and a 404 naming the known ones for any other name."""
    router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS)
    guard = StoreGuard(retry_seconds=settings.online_retry_seconds)
    metrics.breaker_open.labels("push").set_function(lambda: float(guard.is_down))
    for target in state.push_targets.values():
        _push_route(router, state, target, metrics, settings, guard)

    @router.post("/v1/push/{push_source}", include_in_schema=False)
    async def unknown_push_source(push_source: str, request: Request) -> Any:
        known = sorted(state.push_targets)
        return error_response(404, f"unknown push source '{push_source[:100]}'",
                              [f"push sources: {', '.join(known) or 'none defined'}"])

    return router


def _push_route(router: APIRouter, state: ServingState, target: PushTarget, metrics: ServingMetrics,
                settings: Settings, guard: StoreGuard) -> None:
    body_model = push_request(target.name, target.columns, settings.max_batch_size)

    async def push(body: body_model) -> Any:  # type: ignore[valid-type]
        events = [event.model_dump(mode="json") for event in body.events]
        try:
            rows = await run_in_threadpool(_push, state, target, events, settings.push_to, metrics, guard)
        except PushRejected as exc:
            return error_response(422, "invalid request: " + "; ".join(exc.problems[:5]), exc.problems)
        return PushResponse(push_source=target.name, rows=rows, feature_views=target.feature_views,
                            to=settings.push_to)

    router.add_api_route(
        f"/v1/push/{target.name}", push, methods=["POST"], response_model=PushResponse, tags=["push"],
        name=f"push_{target.name}", summary=f"Push to {target.name}",
        description=f"Write fresh events to the online store (and the offline store when "
                    f"FEASTKIT_PUSH_TO is `online_and_offline`) through Feast's push source "
                    f"`{target.name}`, feeding {', '.join(target.feature_views)}. Older events never "
                    "replace newer ones.")
