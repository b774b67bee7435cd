"""The scoring service: the models loaded at start-up, their online readers, and score + decide.

`ServingState.load` opens the feature store and loads the promoted bundle of every feature service
that has one (or of those FEASTKIT_SERVICES lists), checking each against the registry. `Scoring`
turns feature rows into decided predictions: one online read, one model call, metrics. That work
blocks (network read, model), so the routes run it in the scoring thread (`ScoringWorker`, through
`Scoring.decide_async`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError

from feastkit.bundle import CURRENT_FILE, ModelBundle, current_bundle
from feastkit.errors import FeastkitError
from feastkit.services import get_service
from feastkit.settings import Settings
from serving.contracts import ServiceContract
from serving.features import (
    OnlineStoreUnavailable,
    ReadDetail,
    ServiceReader,
    StoreGuard,
    bound_online_store,
    describe_error,
)
from serving.inference import Scorer
from serving.log_writer import LogEntry
from serving.logs import request_id_var
from serving.prediction_log import PredictionLog
from serving.push import PushTarget
from serving.stream_publish import StreamPublisher

if TYPE_CHECKING:
    from feast import FeatureStore

    from serving.metrics import ServingMetrics

PUSH_MODES = ("online", "online_and_offline")

log = logging.getLogger("feastkit.serving")

# The typed alias routes: role -> (settings field, env var, the inputs their bodies carry, labels).
# The request and response bodies of these routes are fixed (serving/schemas.py); the service
# behind each is configurable, as long as it needs no input the alias body does not carry.
ALIASES: dict[str, tuple[str, str, dict[str, str], tuple[str, str]]] = {
    "fraud": ("fraud_service", "FEASTKIT_FRAUD_SERVICE",
              {"user_id": "int", "merchant_id": "int", "amount": "float", "transaction_epoch": "float"},
              ("fraud", "legit")),
    "churn": ("churn_service", "FEASTKIT_CHURN_SERVICE", {"user_id": "int"},
              ("likely_churn", "likely_stay")),
}


@dataclass
class LoadedModel:
    """A bundle, the reader for its feature service and the service's generated API contract."""

    bundle: ModelBundle
    reader: ServiceReader
    scorer: Scorer | None = None
    contract: ServiceContract | None = None

    def __post_init__(self) -> None:
        if self.scorer is None:
            self.scorer = Scorer(self.bundle)

    @property
    def service(self) -> str:
        return self.bundle.feature_service


def served_services(store: FeatureStore, settings: Settings) -> list[str]:
    """The feature services to serve: FEASTKIT_SERVICES, else every one with a promoted bundle."""
    models_dir = settings.models_dir
    listed = settings.service_list
    if listed:
        for name in listed:
            get_service(store, name)  # unknown names: a clear error listing the known ones
        missing = [name for name in listed if not (models_dir / name / CURRENT_FILE).is_file()]
        if missing:
            raise FeastkitError(f"FEASTKIT_SERVICES lists {', '.join(missing)}, with no promoted model "
                                f"in {models_dir}",
                                f"run `feastkit train --service {missing[0]}`, or leave it out of FEASTKIT_SERVICES")
        return list(dict.fromkeys(listed))
    names = sorted(s.name for s in store.list_feature_services())
    chosen = [name for name in names if (models_dir / name / CURRENT_FILE).is_file()]
    if not chosen:
        raise FeastkitError(f"no feature service in the registry ({', '.join(names) or 'none'}) has a promoted "
                            f"model in {models_dir}",
                            "train one with `feastkit train` (or point FEASTKIT_MODELS_DIR at the bundles)")
    return chosen


def registry_signature(store: FeatureStore) -> str:
    """sha256 over the specs of the registry's entities, views, on-demand views and services.

    Specs only: a materialization (which appends an interval to a view's metadata) leaves it
    unchanged, a `feast apply` that changes a definition does not.
    """
    digest = hashlib.sha256()
    for kind, objects in (("entity", store.list_entities()), ("view", store.list_feature_views()),
                          ("odfv", store.list_on_demand_feature_views()),
                          ("service", store.list_feature_services())):
        for obj in sorted(objects, key=lambda o: o.name):
            digest.update(f"{kind}:{obj.name}:".encode())
            digest.update(obj.to_proto().spec.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _registry_problem(store: FeatureStore, model: LoadedModel) -> str:
    """Why a served bundle no longer matches the registry, with what to run ("" when it matches)."""
    service, version = model.service, model.bundle.version
    if service not in {s.name for s in store.list_feature_services()}:
        return (f"{service} ({version}): the feature service is no longer in the registry; apply it again, "
                "or restart the server without it (FEASTKIT_SERVICES)")
    changed = model.bundle.changed_features(store)
    if changed:
        names = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        return (f"{service} ({version}) was trained on feature definitions that changed since: {names}; "
                f"run `feastkit train --service {service}` (it promotes the new bundle) and restart the "
                "server, or apply the previous definitions again")
    return ""


class RegistryWatcher:
    """Polls the registry every `interval` seconds and hands a change to `ServingState.apply_registry`.

    The readers resolve views, TTLs and features once, so Feast's registry cache
    (`cache_ttl_seconds`) never reaches them: without this, a `feast apply` would go unnoticed
    until a restart. A poll re-reads the registry (`FeatureStore.refresh_registry`), so a change is
    seen within one interval; a registry that cannot be read is logged and tried again.
    """

    def __init__(self, state: ServingState, interval: float) -> None:
        self.state = state
        self.interval = interval
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval <= 0 or self.state.store is None or self.thread is not None:
            return
        self.thread = threading.Thread(target=self._run, name="feastkit-registry", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
            self.thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """One look at the registry; applies a change when there is one."""
        store = self.state.store
        try:
            store.refresh_registry()
            signature = registry_signature(store)
        except Exception as exc:
            log.warning("the registry cannot be read; serving the last configuration",
                        extra={"error": describe_error(exc)})
            return
        if signature != self.state.registry_signature:
            try:
                self.state.apply_registry(signature)
            except Exception:
                log.exception("registry change not applied; serving the last configuration")


def alias_services(settings: Settings, models: dict[str, LoadedModel]) -> dict[str, LoadedModel]:
    """role -> model for each alias route whose service is loaded."""
    out = {}
    for role, (attr, _, _, _) in ALIASES.items():
        model = models.get(getattr(settings, attr))
        if model is not None:
            out[role] = model
    return out


def _check_aliases(settings: Settings, models: dict[str, LoadedModel]) -> None:
    for role, (attr, env, carried, _) in ALIASES.items():
        service = getattr(settings, attr)
        model = models.get(service)
        if model is None:
            if attr in settings.model_fields_set:  # named explicitly but not served: say so
                raise FeastkitError(f"{env} is '{service}', which this server does not serve (no promoted "
                                    f"model, or not in FEASTKIT_SERVICES)",
                                    f"train it with `feastkit train --service {service}`, or unset {env}")
            continue
        needs = {f.name: f.kind for f in model.contract.inputs}
        wrong = sorted(name for name, kind in needs.items() if carried.get(name) != kind)
        if wrong:
            raise FeastkitError(
                f"{env} is '{service}', whose inputs {wrong} the /v1/predict/{role} body does not carry",
                f"call it on /v1/predict/{service}, and point {env} at a service with the {role} inputs "
                f"({', '.join(carried)})")


@dataclass
class ServingState:
    """Everything the routes need, loaded and checked once at start-up."""

    settings: Settings
    models: dict[str, LoadedModel]
    store: Any = None
    push_targets: dict[str, PushTarget] = field(default_factory=dict)
    guard: StoreGuard = field(default_factory=StoreGuard)
    registry_signature: str = ""
    registry_problem: str = ""  # why the registry no longer matches the served models ("" = it does)

    @property
    def fraud(self) -> LoadedModel | None:
        """The model behind /v1/predict/fraud (FEASTKIT_FRAUD_SERVICE), when it is served."""
        return self.models.get(self.settings.fraud_service)

    @property
    def churn(self) -> LoadedModel | None:
        """The model behind /v1/predict/churn (FEASTKIT_CHURN_SERVICE), when it is served."""
        return self.models.get(self.settings.churn_service)

    @classmethod
    def load(cls, settings: Settings) -> ServingState:
        """Open the store and load every served bundle; refuse (FeastkitError) on anything inconsistent."""
        from feastkit.store import open_store, require_applied

        if settings.push_to not in PUSH_MODES:
            raise FeastkitError(f"FEASTKIT_PUSH_TO is '{settings.push_to}'",
                                f"set it to one of {', '.join(PUSH_MODES)}")
        if settings.online_timeout_seconds <= 0 or settings.max_batch_size < 1:
            raise FeastkitError("FEASTKIT_ONLINE_TIMEOUT_SECONDS and FEASTKIT_MAX_BATCH_SIZE must be "
                                "positive", "set positive values (defaults: 0.5 and 1000)")
        request_window(settings)  # an invalid FEASTKIT_REQUEST_TIME_WINDOW refuses to start
        store = open_store(settings)
        require_applied(store)
        try:
            bound_online_store(store, settings.online_timeout_seconds)
        except Exception as exc:
            raise FeastkitError(f"the online store client cannot be created ({describe_error(exc)})",
                                "check FEASTKIT_REDIS_CONNECTION_STRING and the profile") from None
        guard = StoreGuard(retry_seconds=settings.online_retry_seconds)
        models: dict[str, LoadedModel] = {}
        for service in served_services(store, settings):
            bundle = current_bundle(settings.models_dir, service)
            if bundle.feature_service != service:
                raise FeastkitError(f"bundle {bundle.path} serves '{bundle.feature_service}', not '{service}'",
                                    "retrain with `feastkit train`")
            bundle.check_against(store)
            models[service] = LoadedModel(bundle, ServiceReader.build(store, service, guard),
                                          contract=ServiceContract.build(store, service))
        _check_aliases(settings, models)
        targets = PushTarget.discover(store)
        if settings.push_to == "online_and_offline":
            problems = [p for p in (t.offline_write_problem() for t in targets.values()) if p]
            if problems:
                raise FeastkitError(
                    f"FEASTKIT_PUSH_TO=online_and_offline is unsafe here: {problems[0]}",
                    "push online only (the default; `feastkit compute` writes these rows offline from the "
                    "raw events), or give the push source a single-file batch source")
        return cls(settings, models, store, targets, guard, registry_signature(store))

    def apply_registry(self, signature: str) -> None:
        """Take a changed registry into account (the registry watcher calls this).

        Every served bundle is checked against the new definitions. When all still match, the
        readers are rebuilt from the new registry (views, TTLs, on-demand views as now applied) and
        swapped in. When one does not, nothing is swapped: the last good configuration keeps
        serving, `/ready` reports not-ready with the reason and what to run, and a read that then
        fails (a dropped view's table) names the registry change instead of the online store.
        """
        problems: list[str] = []
        readers: dict[str, ServiceReader] = {}
        for service, model in self.models.items():
            problem = _registry_problem(self.store, model)
            if problem:
                problems.append(problem)
                continue
            try:
                readers[service] = ServiceReader.build(self.store, service, self.guard)
            except Exception as exc:  # a registry the checks above did not foresee: keep the last good one
                log.exception("cannot rebuild the reader of %s", service)
                problems.append(f"{service}: its reader cannot be rebuilt from the registry "
                                f"({type(exc).__name__}); restart the server to see the error")
        self.registry_signature = signature
        if problems:
            reason = "; ".join(problems)
            live = frozenset(v.name for v in self.store.list_feature_views())
            for model in self.models.values():
                model.reader.live_views = live
                model.reader.stale = reason
            if reason != self.registry_problem:
                log.error("the registry no longer matches the served models", extra={"reason": reason})
            self.registry_problem = reason
            return
        for service, reader in readers.items():
            self.models[service].reader = reader
        if self.registry_problem:
            log.info("the registry matches the served models again")
        self.registry_problem = ""
        log.info("registry change picked up", extra={"services": sorted(readers)})

    def describe(self) -> str:
        """One line for the start-up message: model versions and the alias routes."""
        aliases = {m.service: role for role, m in alias_services(self.settings, self.models).items()}
        parts = [f"{s} {m.bundle.version}" + (f" (also /v1/predict/{aliases[s]})" if s in aliases else "")
                 for s, m in self.models.items()]
        return ", ".join(parts)


# Scoring ------------------------------------------------------------------------------------------

_thread_state = threading.local()
_controller_lock = threading.Lock()
_controller: list[Any] = []


def one_openmp_thread() -> None:
    """Limit OpenMP to one thread in the calling thread (once per thread).

    OpenMP's thread count is per calling thread, so the limit the app sets at start-up does not
    reach the worker threads predictions run in. A one-row prediction gains nothing from a thread
    team, and on a busy host waking one costs milliseconds.
    """
    if getattr(_thread_state, "limited", False):
        return
    if not _controller:
        with _controller_lock:
            if not _controller:
                from threadpoolctl import ThreadpoolController

                _controller.append(ThreadpoolController())
    _controller[0].limit(limits=1, user_api="openmp")
    _thread_state.limited = True


def epoch(ts: datetime) -> float:
    return ts.astimezone(UTC).timestamp()


def request_window(settings: Settings) -> int | None:
    """The bound on |request time - server clock| in microseconds, or None in replay mode."""
    if settings.replay_mode:
        return None
    from feastkit.store import parse_duration

    try:
        window = parse_duration(settings.request_time_window)
    except FeastkitError as exc:
        raise FeastkitError(f"FEASTKIT_REQUEST_TIME_WINDOW: {exc.args[0]}", "write it like 90m, 6h or 1d "
                            "(default 15m), or set FEASTKIT_REPLAY=true to score historical times") from None
    return window // timedelta(microseconds=1)


def check_request_times(as_of: list[float], window_us: int | None, now_us: int | None = None) -> None:
    """Refuse (422) request times farther than the window from the server clock (live serving).

    Live, a request's time decides which values are still within their TTL and which are stamped
    after it; a caller sending a time far in the past would have stale values served as valid.
    Integer microseconds of UTC epochs on both sides: no timezone enters the comparison.
    """
    if window_us is None:
        return
    now = time.time_ns() // 1000 if now_us is None else now_us
    problems = []
    for i, at in enumerate(as_of):
        at_us = round(at * 1_000_000)
        if abs(at_us - now) > window_us:
            when = datetime.fromtimestamp(at_us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")
            gap = timedelta(microseconds=abs(at_us - now))
            where = f"row {i}: " if len(as_of) > 1 else ""
            problems.append({
                "loc": ("body",), "type": "value_error",
                "msg": f"{where}request time {when} is {gap} {'before' if at_us < now else 'after'} the server "
                       f"clock; live serving scores times within {timedelta(microseconds=window_us)} of it "
                       "(FEASTKIT_REQUEST_TIME_WINDOW): send the event's own time, or set FEASTKIT_REPLAY=true "
                       "to score historical times (backtests)"})
    if problems:
        raise RequestValidationError(problems)


class Scoring:
    """Score + decide for the loaded models, recording the serving metrics of one app."""

    def __init__(self, state: ServingState, metrics: ServingMetrics, max_group_rows: int | None = None,
                 prediction_log: PredictionLog | None = None, publisher: StreamPublisher | None = None) -> None:
        self.state = state
        self.metrics = metrics
        self.prediction_log = prediction_log
        self.publisher = publisher
        self.window_us = request_window(state.settings)
        self.worker = ScoringWorker(self, max_group_rows or state.settings.max_batch_size)
        self.watcher = RegistryWatcher(state, state.settings.registry_poll_seconds)
        self.watcher.start()

    def score(self, model: LoadedModel, rows: list[dict[str, Any]], as_of: list[float],
              detail: ReadDetail | None = None) -> list[dict[str, Any]]:
        """One online read for all rows, then one model call; records read latency and missing features
        (and, with `detail`, what the read found per feature, for the prediction log)."""
        metrics = self.metrics
        service = model.bundle.feature_service
        started = time.perf_counter()
        try:
            features = model.reader.read(rows, as_of, detail)
        except OnlineStoreUnavailable as exc:
            reason = "fail_fast" if "failing fast" in str(exc) else "read_failed"
            metrics.online_errors.labels("read", reason).inc()
            raise
        metrics.online_seconds.labels(service).observe(time.perf_counter() - started)
        one_openmp_thread()
        probabilities, missing = model.scorer.predict_proba(features)
        score_hist = metrics.scores.labels(service, model.bundle.version)
        results = []
        for p, m, f in zip(probabilities, missing, features, strict=True):
            p = float(p)
            score_hist.observe(p)
            for name in m:
                metrics.missing.labels(service, name).inc()
            results.append({"probability": p, "missing": m, "features": f})
        return results

    def decided(self, model: LoadedModel, results: list[dict[str, Any]], explain: bool,
                labels: tuple[str, str]) -> list[dict[str, Any]]:
        """Decide scored rows with the bundle's threshold: the fields every prediction shares."""
        bundle = model.bundle
        out = []
        for result in results:
            decision = labels[0] if result["probability"] >= bundle.threshold else labels[1]
            self.metrics.predictions.labels(bundle.feature_service, decision).inc()
            out.append({"probability": result["probability"], "decision": decision,
                        "threshold": bundle.threshold, "model_version": bundle.version,
                        "feature_service": bundle.feature_service, "missing_features": result["missing"],
                        "features": result["features"] if explain else None})
        return out

    def decide(self, model: LoadedModel, rows: list[dict[str, Any]], as_of: list[float], explain: bool,
               labels: tuple[str, str]) -> list[dict[str, Any]]:
        """Score and decide rows here and now. Blocking (online read + model): the routes use
        `decide_async`, which runs this in the scoring thread."""
        return self.decided(model, self.score(model, rows, as_of), explain, labels)

    async def decide_async(self, model: LoadedModel, rows: list[dict[str, Any]], as_of: list[float],
                           explain: bool, labels: tuple[str, str]) -> list[dict[str, Any]]:
        """`decide` in the scoring thread: the event loop keeps serving other requests meanwhile.
        Live (not replay), request times outside the window around the server clock get 422."""
        check_request_times(as_of, self.window_us)
        return await self.worker.submit(_Job(model, rows, as_of, explain, labels, request_id=request_id_var.get()))

    def publish(self, rows: list[dict[str, Any]], as_of: list[float], ids: list[str | None]) -> None:
        """Hand scored transactions to the event stream (FEASTKIT_STREAM_PUBLISH): a queue append.
        A row without an id of its own gets the request id and its position in the request."""
        if self.publisher is None:
            return
        request_id = request_id_var.get() or "request"
        self.publisher.offer(rows, as_of, [i if i is not None else f"{request_id}-{n}" for n, i in enumerate(ids)])

    def close(self) -> None:
        self.watcher.stop()
        self.worker.stop()

    def log_predictions(self, model: LoadedModel, jobs: list[_Job], results: list[dict[str, Any]],
                        decided: list[list[dict[str, Any]]], detail: ReadDetail) -> None:
        """Hand the rows scored together to the prediction log (a pickle and a queue append)."""
        log = self.prediction_log
        if log is None:
            return
        log.submit(model, LogEntry(
            service=model.service, version=model.bundle.version,
            request_ids=[job.request_id for job in jobs for _ in job.rows],
            row_numbers=[i for job in jobs for i in range(len(job.rows))],
            rows=[row for job in jobs for row in job.rows], as_of=[at for job in jobs for at in job.as_of],
            logged_at=time.time(), values=detail.values, stamps=detail.stamps, status=detail.status,
            probabilities=[r["probability"] for r in results],
            decisions=[d["decision"] for out in decided for d in out], threshold=model.bundle.threshold))


@dataclass
class _Job:
    model: LoadedModel
    rows: list[dict[str, Any]]
    as_of: list[float]
    explain: bool
    labels: tuple[str, str]
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    request_id: str | None = None


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (request cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ScoringWorker:
    """The thread predictions run in, off the event loop; requests that queue up are scored together.

    Every predict request hands its rows to this one thread and awaits the result. While the thread
    reads and scores, new requests queue; it then takes everything waiting (up to `max_rows` rows)
    and, per model, makes one online read and one model call for all of it, and hands each request
    its own rows' results. Rows are scored independently (the reader applies TTLs per row's `as_of`,
    on-demand views and the model work row by row: a batch equals its single requests), so a
    request gets the same answer alone or grouped; under load the round trip and the per-call
    overheads are shared. A failed read fails the requests of that read, as each would have failed.
    One thread, not a pool: the work holds the GIL almost throughout, and several threads contending
    for it were slower than one, measured (bench/serving.py).
    """

    def __init__(self, scoring: Scoring, max_rows: int) -> None:
        self.scoring = scoring
        self.max_rows = max(1, max_rows)
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="feastkit-scoring", daemon=True)
                self.thread.start()

    def stop(self) -> None:
        with self._lock:
            if self.thread is not None and self.thread.is_alive():
                self.jobs.put(None)
                self.thread.join(timeout=10)
            self.thread = None

    async def submit(self, job: _Job) -> list[dict[str, Any]]:
        if self.thread is None:
            self.start()
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        self.jobs.put(job)
        return await job.future

    def _run(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            jobs, rows = [first], len(first.rows)
            while rows < self.max_rows:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self.jobs.put(None)  # stop after this round
                    break
                jobs.append(job)
                rows += len(job.rows)
            groups: dict[int, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(id(job.model), []).append(job)
            for group in groups.values():
                self._score(group)

    def _score(self, group: list[_Job]) -> None:
        scoring = self.scoring
        model = group[0].model
        detail = ReadDetail() if scoring.prediction_log is not None else None
        try:
            if len(group) == 1:
                results = scoring.score(model, group[0].rows, group[0].as_of, detail)
            else:
                results = scoring.score(model, [r for job in group for r in job.rows],
                                        [a for job in group for a in job.as_of], detail)
        except Exception as exc:  # delivered to each waiting request, as its own error
            for job in group:
                job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
            return
        at, answered, decided = 0, [], []
        for job in group:
            part = results[at:at + len(job.rows)]
            try:
                out, error = scoring.decided(model, part, job.explain, job.labels), None
            except Exception as exc:
                out, error = None, exc
            job.loop.call_soon_threadsafe(_settle, job.future, out, error)
            if out is not None:
                answered.append((job, at))
                decided.append(out)
            at += len(job.rows)
        if detail is not None and answered:
            if len(answered) < len(group):  # only what was answered is logged
                keep = [i for job, start in answered for i in range(start, start + len(job.rows))]
                results = [results[i] for i in keep]
                detail = ReadDetail(*({k: [v[i] for i in keep] for k, v in part.items()}
                                      for part in (detail.stamps, detail.status, detail.values)))
            scoring.log_predictions(model, [job for job, _ in answered], results, decided, detail)
