"""`POST /v1/push/{push_source}`: fresh events into the online (and optionally offline) store."""

# No `from __future__ import annotations`: the body model is built at run time (bounded batch size).

import logging
import time
from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from feastkit.settings import Settings
from serving.auth import require_api_key
from serving.features import OnlineStoreUnavailable, describe_error
from serving.metrics import ServingMetrics
from serving.push import PushRejected, PushTarget
from serving.responses import ERRORS, error_response
from serving.schemas import ErrorResponse, PushResponse, push_request
from serving.scoring import ServingState

log = logging.getLogger("feastkit.serving")


def _push(state: ServingState, target: PushTarget, events: list[dict[str, Any]], push_to: str,
          metrics: ServingMetrics) -> int:
    """Validate, build the frame and write it through Feast (blocking: runs in a worker thread)."""
    from feast.data_source import PushMode

    df = target.frame(events)  # PushRejected names every bad field
    state.guard.check()
    mode = PushMode.ONLINE_AND_OFFLINE if push_to == "online_and_offline" else PushMode.ONLINE
    started = time.perf_counter()
    try:
        state.store.push(target.name, df, to=mode)
    except Exception as exc:
        reason = describe_error(exc)
        metrics.online_errors.labels("push", "write_failed").inc()
        state.guard.failed(reason)
        raise OnlineStoreUnavailable(reason) from exc
    state.guard.succeeded()
    metrics.online_seconds.labels(f"push:{target.name}").observe(time.perf_counter() - started)
    metrics.pushed.labels(target.name).inc(len(df))
    log.info("pushed", extra={"push_source": target.name, "rows": len(df)})
    return len(df)


def push_router(state: ServingState, metrics: ServingMetrics, settings: Settings) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS)
    push_body = push_request(settings.max_batch_size)

    @router.post("/v1/push/{push_source}", response_model=PushResponse, tags=["push"],
                 responses={404: {"model": ErrorResponse, "description": "Unknown push source."}})
    async def push(push_source: str, body: push_body) -> Any:  # type: ignore[valid-type]
        """Write fresh events to the online store (and the offline store when FEASTKIT_PUSH_TO is
        `online_and_offline`) through Feast's push source. Older events never replace newer ones."""
        target = state.push_targets.get(push_source)
        if target is None:
            known = sorted(state.push_targets)
            return error_response(404, f"unknown push source '{push_source[:100]}'",
                                  [f"push sources: {', '.join(known) or 'none defined'}"])
        try:
            rows = await run_in_threadpool(_push, state, target, body.events, settings.push_to, metrics)
        except PushRejected as exc:
            return error_response(422, "invalid request: " + "; ".join(exc.problems[:5]), exc.problems)
        return PushResponse(push_source=push_source, rows=rows, feature_views=target.feature_views,
                            to=settings.push_to)

    return router
