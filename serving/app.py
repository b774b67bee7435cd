"""The prediction API: the app factory, request middleware and error handlers.

The routes live in `serving/routers/` (predict, push, operations, monitoring) over the scoring
service in `serving/scoring.py`. The predict routes are generated from the registry, so the app
needs the serving state (registry, bundles, readers) when it is built: `create_app` loads it
eagerly unless one is passed, and refuses with a FeastkitError naming the problem.
"""

import gc
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feastkit import __version__
from feastkit.errors import FeastkitError
from feastkit.event_stream import stream_sources
from feastkit.settings import Settings, get_settings
from serving.auth import Unauthorized, require_api_key
from serving.features import OnlineStoreUnavailable, describe_error
from serving.logs import configure_logging, request_id_var
from serving.metrics import ServingMetrics
from serving.prediction_log import PredictionLog
from serving.readiness import ReadinessProbe
from serving.responses import ERRORS, MONITORING_ERRORS, error_response
from serving.routers.monitoring import FreshnessCheck, monitoring_router
from serving.routers.operations import operations_router
from serving.routers.predict import predict_router
from serving.routers.push import push_router
from serving.scoring import PUSH_MODES, LoadedModel, Scoring, ServingState
from serving.stream_publish import StreamPublisher

__all__ = ["PUSH_MODES", "LoadedModel", "RequestContext", "ServingState", "create_app"]

log = logging.getLogger("feastkit.serving")


# Request plumbing ---------------------------------------------------------------------------------

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body to the app once, then defers to the server."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class RequestContext:
    """ASGI middleware: request id in and out, body size cap, latency metrics and the access log."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, max_bytes: int, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = None
        content_length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            too_large = False
            replay: Receive = receive
            if content_length is not None:
                try:
                    too_large = int(content_length) > self.max_bytes
                except ValueError:
                    too_large = False
            elif scope["method"] in ("POST", "PUT", "PATCH"):
                # no Content-Length (chunked): read up to the cap before the app sees the body
                chunks: list[bytes] = []
                size, more = 0, True
                while more and not too_large:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    more = message.get("more_body", False)
                    too_large = size > self.max_bytes
                replay = _replay(b"".join(chunks), receive)
            if too_large:
                await self._too_large(send_with_id, request_id)
            else:
                try:
                    await self.app(scope, replay, send_with_id)
                except Exception as exc:  # never a stack trace to the caller; always one in the log
                    route = getattr(scope.get("route"), "path", None) or "<unmatched>"
                    self.metrics.unexpected.labels(route).inc()
                    log.error("unexpected error", exc_info=exc,
                              extra={"error": describe_error(exc), "route": route})
                    if response_started:
                        raise
                    await self._send(send_with_id, 500, {
                        "error": "internal error; the request id locates it in the server log",
                        "detail": [], "request_id": request_id})
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"]
            self.metrics.request_seconds.labels(template, method).observe(elapsed)
            self.metrics.requests.labels(template, method, str(status)).inc()
            if self.access_log and template != "/metrics":
                log.info("request", extra={
                    "method": method, "path": scope["path"], "route": template, "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "client": (scope.get("client") or ("", 0))[0]})
            request_id_var.reset(token)

    async def _too_large(self, send: Send, request_id: str) -> None:
        await self._send(send, 413, {
            "error": f"request body larger than {self.max_bytes} bytes",
            "detail": ["send fewer rows per request (see FEASTKIT_MAX_BATCH_SIZE) or raise "
                       "FEASTKIT_MAX_REQUEST_BYTES"],
            "request_id": request_id})

    @staticmethod
    async def _send(send: Send, status: int, content: dict[str, Any]) -> None:
        body = JSONResponse(status_code=status, content=content)
        await send({"type": "http.response.start", "status": status, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


def stream_publisher(settings: Settings, state: ServingState, metrics: ServingMetrics) -> StreamPublisher:
    """The publisher of scored transactions to the stream-fed views' sources (FEASTKIT_STREAM_PUBLISH)."""
    sources = stream_sources(state.store.list_feature_views())
    if not sources:
        raise FeastkitError("FEASTKIT_STREAM_PUBLISH is on but no feature view is stream-fed",
                            "declare one with stream_event_id= (and run `feastkit apply`), or turn it off")
    return StreamPublisher(settings, sources, metrics)


def create_app(settings: Settings | None = None, state: ServingState | None = None, *,
               freshness: FreshnessCheck | None = None) -> FastAPI:
    """Build the app over `state` (loaded and checked here when not given).

    `freshness` is the check behind GET /v1/monitoring/freshness (`feastkit serve` passes
    monitoring's); without it that route answers 503.
    """
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    if state is None:
        state = ServingState.load(settings)  # the routes are generated from it
    metrics = ServingMetrics()
    prediction_log = PredictionLog(settings, metrics) if settings.prediction_log else None
    publisher = stream_publisher(settings, state, metrics) if settings.stream_publish else None
    scoring = Scoring(state, metrics, prediction_log=prediction_log, publisher=publisher)
    # /ready answers from this probe's last ping (serving/readiness.py); every reader shares the
    # store and its read guard
    first = next(iter(state.models.values()))  # its reader is swapped when the registry changes
    probe = ReadinessProbe(
        lambda: first.reader.ping(), settings.ready_probe_seconds,
        settings.online_timeout_seconds,
        on_failure=lambda _: metrics.online_errors.labels("ping", "read_failed").inc())
    metrics.breaker_open.labels("read").set_function(lambda: float(state.guard.is_down))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from threadpoolctl import threadpool_limits

        # One OpenMP thread for inference: a one-row prediction gains nothing from a thread team,
        # and on a busy host waking it costs milliseconds (p99 in seconds when cores are shared).
        # This covers the event loop's thread; the scoring thread limits itself on first use
        # (serving.scoring.one_openmp_thread: OpenMP's limit is per thread).
        limits = threadpool_limits(limits=1, user_api="openmp")
        if settings.switch_interval_ms > 0:
            sys.setswitchinterval(settings.switch_interval_ms / 1000)
        if settings.gc_freeze:
            # everything loaded so far lives as long as the server: keep it out of the collector's
            # full passes (with the prediction log's queue churning objects they came every few
            # seconds and walked ~280k objects each; measured in-process: 0.6 -> 0.4 ms per prediction)
            gc.collect()
            gc.freeze()
        probe.start()
        if prediction_log is not None:
            prediction_log.start()
        if publisher is not None:
            publisher.start()
        # ready from the first request on when the store answers (bounded: a dead store starts not ready)
        await run_in_threadpool(probe.wait_first, settings.online_timeout_seconds + 1.0)
        try:
            yield
        finally:
            probe.stop()
            scoring.close()  # the scoring thread (started by the first prediction)
            if prediction_log is not None:
                prediction_log.close()  # writes what is still queued
            if publisher is not None:
                publisher.close()  # appends what is still queued
            limits.restore_original_limits()

    # with keys set, the schema needs one too (unless FEASTKIT_DOCS_PUBLIC): it is added below
    schema_protected = bool(settings.api_key_list) and not settings.docs_public
    app = FastAPI(
        title="feastkit prediction API",
        version=__version__,
        description="Predictions on Feast online features, one route pair per served feature service "
                    "(`/v1/predict/{service}`, typed from the registry) plus the fraud and churn "
                    "aliases. Features missing for an entity (unknown, or older than their view's "
                    "TTL) are replaced by the documented defaults in the model bundle and listed in "
                    "`missing_features`. When FEASTKIT_API_KEYS is set, every route but `/health` "
                    "and `/ready` needs an API key (`/metrics` and this schema too, unless "
                    "FEASTKIT_METRICS_PUBLIC or FEASTKIT_DOCS_PUBLIC is set).",
        lifespan=lifespan,
        **({"openapi_url": None, "docs_url": None, "redoc_url": None} if schema_protected else {}),
    )
    if schema_protected:
        _protected_schema_routes(app)
    app.state.serving = state
    app.state.metrics = metrics
    app.state.scoring = scoring
    app.state.prediction_log = prediction_log
    app.state.api_keys = [k.encode() for k in settings.api_key_list]
    app.state.readiness = probe
    app.add_middleware(RequestContext, metrics=metrics, max_bytes=settings.max_request_bytes,
                       access_log=settings.access_log)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        too_many = []
        for err in exc.errors():
            loc = err.get("loc", ())
            where = ".".join(str(p) for p in loc if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
            if err.get("type") == "too_long" and len(loc) == 2 and loc[0] == "body":
                too_many.append(f"{where}: at most {settings.max_batch_size} items per request")
        if too_many:
            return error_response(413, "batch too large: " + "; ".join(too_many),
                                  ["split the batch, or raise FEASTKIT_MAX_BATCH_SIZE"])
        return error_response(422, "invalid request: " + "; ".join(problems), problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI: a body that is not JSON at all (e.g. not UTF-8)
            return error_response(422, "invalid request: body: not valid JSON", ["body: not valid JSON"])
        return await http_exception_handler(request, exc)

    @app.exception_handler(OnlineStoreUnavailable)
    async def store_down(_: Request, exc: OnlineStoreUnavailable) -> JSONResponse:
        # the client's error text (host:port, paths) goes to the log only, under the request id
        log.error("online store unavailable", extra={"reason": str(exc)[:300]})
        return error_response(503, "online feature store unavailable; retry later",
                              [f"the online store {exc.kind}; the request id locates the details in "
                               "the server log"],
                              {"Retry-After": str(max(1, round(settings.online_retry_seconds)))})

    @app.exception_handler(Unauthorized)
    async def unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        metrics.auth_failures.inc()
        log.warning("unauthorized", extra={"reason": exc.reason})
        return error_response(401, "unauthorized: " + exc.reason, [], {"WWW-Authenticate": "Bearer"})

    app.include_router(operations_router(state, metrics, probe, settings))
    app.include_router(predict_router(state, scoring, settings))
    app.include_router(push_router(state, metrics, settings))
    app.include_router(monitoring_router(settings, freshness), dependencies=[Depends(require_api_key)],
                       responses={**MONITORING_ERRORS, 401: ERRORS[401]})
    return app


def _protected_schema_routes(app: FastAPI) -> None:
    """`/openapi.json` and `/docs` behind the API key. The docs page carries the schema inline, so
    a browser that sends the key for the page (a proxy, a header extension) needs nothing more."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def swagger_page() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="", title=f"{app.title} - docs",
                                   swagger_ui_parameters={"spec": app.openapi()})
