"""The prediction API: FastAPI app factory, start-up checks, and the predict, push and operations routes."""

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feastkit import __version__
from feastkit.bundle import ModelBundle, current_bundle
from feastkit.errors import FeastkitError
from feastkit.settings import Settings, get_settings
from serving.auth import Unauthorized, require_api_key
from serving.features import (
    OnlineStoreUnavailable,
    ServiceReader,
    StoreGuard,
    bound_online_store,
    describe_error,
)
from serving.inference import Scorer
from serving.logs import configure_logging, request_id_var
from serving.metrics import ServingMetrics
from serving.monitoring_routes import monitoring_router
from serving.push import PushRejected, PushTarget
from serving.schemas import (
    ChurnBatchResponse,
    ChurnRequest,
    ChurnResponse,
    DetailResponse,
    ErrorResponse,
    FraudBatchResponse,
    FraudRequest,
    FraudResponse,
    HealthResponse,
    PushResponse,
    ReadyResponse,
    batch_requests,
    push_request,
)

log = logging.getLogger("feastkit.serving")

PUSH_MODES = ("online", "online_and_offline")


@dataclass
class LoadedModel:
    """A bundle and the reader for its feature service."""

    bundle: ModelBundle
    reader: ServiceReader
    scorer: Scorer | None = None

    def __post_init__(self) -> None:
        if self.scorer is None:
            self.scorer = Scorer(self.bundle)


@dataclass
class ServingState:
    """Everything the routes need, loaded and checked once at start-up."""

    settings: Settings
    fraud: LoadedModel
    churn: LoadedModel
    store: Any = None
    push_targets: dict[str, PushTarget] = field(default_factory=dict)
    guard: StoreGuard = field(default_factory=StoreGuard)

    @classmethod
    def load(cls, settings: Settings) -> "ServingState":
        """Open the store and load both bundles; refuse (FeastkitError) on anything inconsistent."""
        from feastkit.store import open_store, require_applied

        if settings.push_to not in PUSH_MODES:
            raise FeastkitError(f"FEASTKIT_PUSH_TO is '{settings.push_to}'",
                                f"set it to one of {', '.join(PUSH_MODES)}")
        if settings.online_timeout_seconds <= 0 or settings.max_batch_size < 1:
            raise FeastkitError("FEASTKIT_ONLINE_TIMEOUT_SECONDS and FEASTKIT_MAX_BATCH_SIZE must be "
                                "positive", "set positive values (defaults: 0.5 and 1000)")
        store = open_store(settings)
        require_applied(store)
        try:
            bound_online_store(store, settings.online_timeout_seconds)
        except Exception as exc:
            raise FeastkitError(f"the online store client cannot be created ({describe_error(exc)})",
                                "check FEASTKIT_REDIS_CONNECTION_STRING and the profile") from None
        guard = StoreGuard(retry_seconds=settings.online_retry_seconds)
        models = {}
        for role, service in (("fraud", settings.fraud_service), ("churn", settings.churn_service)):
            bundle = current_bundle(settings.models_dir, service)
            if bundle.feature_service != service:
                raise FeastkitError(f"bundle {bundle.path} serves '{bundle.feature_service}', not '{service}'",
                                    "retrain with `feastkit train`")
            bundle.check_against(store)
            models[role] = LoadedModel(bundle, ServiceReader.build(store, service, guard))
        targets = PushTarget.discover(store)
        if settings.push_to == "online_and_offline":
            problems = [p for p in (t.offline_write_problem() for t in targets.values()) if p]
            if problems:
                raise FeastkitError(
                    f"FEASTKIT_PUSH_TO=online_and_offline is unsafe here: {problems[0]}",
                    "push online only (the default; `feastkit compute` writes these rows offline from the "
                    "raw events), or give the push source a single-file batch source")
        return cls(settings, models["fraud"], models["churn"], store, targets, guard)


def _epoch(ts: datetime) -> float:
    return ts.astimezone(UTC).timestamp()


def _score(model: LoadedModel, rows: list[dict[str, Any]], as_of: list[float],
           metrics: ServingMetrics) -> list[dict[str, Any]]:
    """One online read for all rows, then one model call; records read latency and missing features."""
    service = model.bundle.feature_service
    started = time.perf_counter()
    try:
        features = model.reader.read(rows, as_of)
    except OnlineStoreUnavailable as exc:
        reason = "fail_fast" if "failing fast" in str(exc) else "read_failed"
        metrics.online_errors.labels("read", reason).inc()
        raise
    metrics.online_seconds.labels(service).observe(time.perf_counter() - started)
    probabilities, missing = model.scorer.predict_proba(features)
    version = model.bundle.version
    score_hist = metrics.scores.labels(service, version)
    results = []
    for p, m, f in zip(probabilities, missing, features, strict=True):
        p = float(p)
        score_hist.observe(p)
        for name in m:
            metrics.missing.labels(service, name).inc()
        results.append({"probability": p, "missing": m, "features": f})
    return results


def _fraud_row(body: FraudRequest) -> tuple[dict[str, Any], float]:
    epoch = _epoch(body.timestamp)
    return ({"user_id": body.user_id, "merchant_id": body.merchant_id, "amount": body.amount,
             "transaction_epoch": epoch}, epoch)


def _decided(model: LoadedModel, rows: list[dict[str, Any]], as_of: list[float], explain: bool,
             metrics: ServingMetrics, labels: tuple[str, str]) -> list[dict[str, Any]]:
    """Score rows and decide each with the bundle's threshold: the fields every prediction shares."""
    bundle = model.bundle
    out = []
    for result in _score(model, rows, as_of, metrics):
        decision = labels[0] if result["probability"] >= bundle.threshold else labels[1]
        metrics.predictions.labels(bundle.feature_service, decision).inc()
        out.append({"probability": result["probability"], "decision": decision, "threshold": bundle.threshold,
                    "model_version": bundle.version, "feature_service": bundle.feature_service,
                    "missing_features": result["missing"], "features": result["features"] if explain else None})
    return out


def _fraud_responses(model: LoadedModel, bodies: list[FraudRequest], explain: bool,
                     metrics: ServingMetrics) -> list[FraudResponse]:
    rows, epochs = zip(*(_fraud_row(b) for b in bodies), strict=True)
    decided = _decided(model, list(rows), list(epochs), explain, metrics, ("fraud", "legit"))
    return [FraudResponse(transaction_id=body.transaction_id, **fields)
            for body, fields in zip(bodies, decided, strict=True)]


def _churn_responses(model: LoadedModel, bodies: list[ChurnRequest], explain: bool,
                     metrics: ServingMetrics) -> list[ChurnResponse]:
    now = datetime.now(UTC)
    as_of = [_epoch(b.as_of or now) for b in bodies]
    decided = _decided(model, [{"user_id": b.user_id} for b in bodies], as_of, explain, metrics,
                       ("likely_churn", "likely_stay"))
    return [ChurnResponse(user_id=body.user_id, **fields) for body, fields in zip(bodies, decided, strict=True)]


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
                except Exception as exc:  # never a stack trace to the caller
                    log.error("unexpected error", extra={"error": describe_error(exc)})
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


def _error(status: int, error: str, detail: list[str], headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers, content={
        "error": error, "detail": detail, "request_id": request_id_var.get()})


ERRORS = {401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
          413: {"model": ErrorResponse, "description": "Body or batch too large."},
          422: {"model": ErrorResponse, "description": "Invalid request; every problem named."},
          503: {"model": ErrorResponse, "description": "Online store unavailable; retry later."}}


MONITORING_ERRORS = {
    404: {"model": DetailResponse, "description": "No monitoring report yet."},
    422: {"model": ErrorResponse, "description": "Invalid query; every problem named."},
    503: {"model": DetailResponse, "description": "The feature store cannot be read."}}


def create_app(settings: Settings | None = None, state: ServingState | None = None) -> FastAPI:
    """Build the app; bundles and the feature store are loaded (and checked) at start-up."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    metrics = ServingMetrics()
    fraud_batch, churn_batch = batch_requests(settings.max_batch_size)
    push_body = push_request(settings.max_batch_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from threadpoolctl import threadpool_limits

        if getattr(app.state, "serving", None) is None:
            app.state.serving = ServingState.load(settings)
        # One OpenMP thread for inference: a one-row prediction gains nothing from a thread team,
        # and on a busy host waking it costs milliseconds (p99 in seconds when cores are shared).
        limits = threadpool_limits(limits=1, user_api="openmp")
        try:
            yield
        finally:
            limits.restore_original_limits()

    app = FastAPI(
        title="feastkit prediction API",
        version=__version__,
        description="Fraud and churn predictions on Feast online features. Features missing for an "
                    "entity (unknown, or older than their view's TTL) are replaced by the documented "
                    "defaults in the model bundle and listed in `missing_features`. Predict and push "
                    "routes need an API key when FEASTKIT_API_KEYS is set.",
        lifespan=lifespan,
    )
    app.state.serving = state
    app.state.metrics = metrics
    app.state.api_keys = [k.encode() for k in settings.api_key_list]
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
            return _error(413, "batch too large: " + "; ".join(too_many),
                          ["split the batch, or raise FEASTKIT_MAX_BATCH_SIZE"])
        return _error(422, "invalid request: " + "; ".join(problems), problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI: a body that is not JSON at all (e.g. not UTF-8)
            return _error(422, "invalid request: body: not valid JSON", ["body: not valid JSON"])
        return await http_exception_handler(request, exc)

    @app.exception_handler(OnlineStoreUnavailable)
    async def store_down(_: Request, exc: OnlineStoreUnavailable) -> JSONResponse:
        log.error("online store unavailable", extra={"reason": str(exc)[:300]})
        return _error(503, "online feature store unavailable; retry later", [str(exc)[:300]],
                      {"Retry-After": str(max(1, round(settings.online_retry_seconds)))})

    @app.exception_handler(Unauthorized)
    async def unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        metrics.auth_failures.inc()
        log.warning("unauthorized", extra={"reason": exc.reason})
        return _error(401, "unauthorized: " + exc.reason, [], {"WWW-Authenticate": "Bearer"})

    def serving(request: Request) -> ServingState:
        return request.app.state.serving

    @app.get("/health", response_model=HealthResponse, tags=["operations"])
    async def health() -> HealthResponse:
        """Liveness: the process is up."""
        return HealthResponse(status="ok", version=__version__)

    @app.get("/ready", response_model=ReadyResponse, tags=["operations"],
             responses={503: {"model": ReadyResponse}})
    async def ready(request: Request) -> JSONResponse:
        """Readiness: bundles loaded and the online store answers (within the online timeout)."""
        st = serving(request)
        checks = {"fraud_model": st.fraud.bundle.version, "churn_model": st.churn.bundle.version}
        try:
            st.fraud.reader.ping()
            checks["online_store"] = "ok"
            ok = True
        except OnlineStoreUnavailable as exc:
            metrics.online_errors.labels("ping", "read_failed").inc()
            checks["online_store"] = f"unavailable: {str(exc)[:200]}"
            ok = False
        body = ReadyResponse(ready=ok, checks=checks)
        return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition."}})
    async def prometheus_metrics() -> Response:
        """Prometheus metrics: request latency per route, online-store latency and errors,
        missing-feature counts, prediction score histograms per model."""
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    protected = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS)
    explain_param = Query(False, description="Return the feature values used.")

    @protected.post("/v1/predict/fraud", response_model=FraudResponse, tags=["predict"])
    async def predict_fraud(body: FraudRequest, request: Request, explain: bool = explain_param
                            ) -> FraudResponse:
        """Score one card transaction. Features are read as of the transaction's timestamp."""
        return _fraud_responses(serving(request).fraud, [body], explain, metrics)[0]

    @protected.post("/v1/predict/fraud:batch", response_model=FraudBatchResponse, tags=["predict"])
    async def predict_fraud_batch(body: fraud_batch, request: Request,  # type: ignore[valid-type]
                                  explain: bool = explain_param) -> FraudBatchResponse:
        """Score up to FEASTKIT_MAX_BATCH_SIZE transactions with one online read; same results as
        one request each."""
        return FraudBatchResponse(predictions=_fraud_responses(
            serving(request).fraud, body.transactions, explain, metrics))

    @protected.post("/v1/predict/churn", response_model=ChurnResponse, tags=["predict"])
    async def predict_churn(body: ChurnRequest, request: Request, explain: bool = explain_param
                            ) -> ChurnResponse:
        """Probability that the user churns within 30 days of `as_of` (default: now)."""
        return _churn_responses(serving(request).churn, [body], explain, metrics)[0]

    @protected.post("/v1/predict/churn:batch", response_model=ChurnBatchResponse, tags=["predict"])
    async def predict_churn_batch(body: churn_batch, request: Request,  # type: ignore[valid-type]
                                  explain: bool = explain_param) -> ChurnBatchResponse:
        """Score up to FEASTKIT_MAX_BATCH_SIZE users with one online read."""
        return ChurnBatchResponse(predictions=_churn_responses(
            serving(request).churn, body.users, explain, metrics))

    @protected.post("/v1/push/{push_source}", response_model=PushResponse, tags=["push"],
                    responses={404: {"model": ErrorResponse, "description": "Unknown push source."}})
    async def push(push_source: str, body: push_body, request: Request  # type: ignore[valid-type]
                   ) -> Any:
        """Write fresh events to the online store (and the offline store when FEASTKIT_PUSH_TO is
        `online_and_offline`) through Feast's push source. Older events never replace newer ones."""
        from feast.data_source import PushMode

        st = serving(request)
        target = st.push_targets.get(push_source)
        if target is None:
            known = sorted(st.push_targets)
            return _error(404, f"unknown push source '{push_source[:100]}'",
                          [f"push sources: {', '.join(known) or 'none defined'}"])
        try:
            df = target.frame(body.events)
        except PushRejected as exc:
            return _error(422, "invalid request: " + "; ".join(exc.problems[:5]), exc.problems)
        st.guard.check()
        mode = PushMode.ONLINE_AND_OFFLINE if settings.push_to == "online_and_offline" else PushMode.ONLINE
        started = time.perf_counter()
        try:
            st.store.push(push_source, df, to=mode)
        except Exception as exc:
            reason = describe_error(exc)
            metrics.online_errors.labels("push", "write_failed").inc()
            st.guard.failed(reason)
            raise OnlineStoreUnavailable(reason) from exc
        st.guard.succeeded()
        metrics.online_seconds.labels(f"push:{push_source}").observe(time.perf_counter() - started)
        metrics.pushed.labels(push_source).inc(len(df))
        log.info("pushed", extra={"push_source": push_source, "rows": len(df)})
        return PushResponse(push_source=push_source, rows=len(df), feature_views=target.feature_views,
                            to=settings.push_to)

    app.include_router(protected)
    app.include_router(monitoring_router(settings), responses=MONITORING_ERRORS)
    return app
