"""The one configuration object: every path, host and knob, overridable by FEASTKIT_* env vars."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feastkit.errors import FeastkitError

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def _default_project_root() -> Path:
    """The project holding feature_repo/: the working directory when it has one (a project made by
    `feastkit init`), else the package's parent (this checkout, installed editable), else cwd."""
    if (Path.cwd() / "feature_repo").is_dir():
        return Path.cwd()
    if Path.cwd().name == "feature_repo" and (Path.cwd() / "feature_store.yaml").is_file():
        return Path.cwd().parent  # `cd feature_repo && feast apply` in such a project
    if (_PACKAGE_PARENT / "feature_repo").is_dir():
        return _PACKAGE_PARENT
    return Path.cwd()


class Settings(BaseSettings):
    """feastkit configuration. Every field can be set as FEASTKIT_<FIELD> (e.g. FEASTKIT_PROFILE=redis)."""

    model_config = SettingsConfigDict(env_prefix="FEASTKIT_", extra="ignore")

    project_root: Path = Field(default_factory=_default_project_root)
    data_dir: Path | None = None
    repo_path: Path | None = None
    models_dir: Path | None = None
    reports_dir: Path | None = None
    prediction_log_dir: Path | None = None   # default <data_dir>/prediction_log
    check_metrics_dir: Path | None = None    # the checks' Prometheus textfiles; default <reports_dir>/metrics
    profile: str = "local"

    redis_connection_string: str = "127.0.0.1:6379"
    registry_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

    fraud_service: str = "fraud_detection_v1"
    churn_service: str = "churn_prediction_v1"
    max_batch_size: int = 1000

    materialize_chunk: str = "1d"
    # validate and compute hold the data folder's lock; a second run waits this long, then fails
    lock_timeout_seconds: float = 600.0
    # DuckDB's memory while validating (say "4GB"): past it the checked rows spill to disk, in the data
    # folder; "" is DuckDB's default (80 % of RAM), which 100M raw events fill to about 12 GB
    validation_memory_limit: str = ""
    online_timeout_seconds: float = 0.5
    api_keys: str = ""
    # Serving (serving/app.py, docs/serving.md)
    services: str = ""                    # comma-separated feature services to serve (default: all trained)
    online_retry_seconds: float = 1.0     # after a failed online read, fail fast this long
    max_request_bytes: int = 1_048_576    # request bodies above this get 413
    push_to: str = "online"               # "online" or "online_and_offline"
    log_level: str = "INFO"
    access_log: bool = True
    ready_probe_seconds: float = 1.0      # the background /ready probe pings the store this often
    # freeze what start-up loaded (Feast, the registry, the models) out of the garbage collector's
    # full passes: they otherwise walk ~280k long-lived objects and stall requests (docs/serving.md)
    gc_freeze: bool = True
    # how long a thread may hold the GIL before a waiting one gets it; 0 keeps Python's 5 ms. The
    # prediction log's writer converting its queue makes a lone request wait up to that long: 0.5
    # improved p99 at one request in flight, but the high-concurrency figures were no better
    # (docs/serving.md "The prediction log's cost"), so it is a knob, not the default
    switch_interval_ms: float = 0.0
    metrics_public: bool = False          # with API keys set, /metrics needs one unless this is true
    docs_public: bool = False             # with API keys set, /docs and /openapi.json need one unless this is true
    # Request times (docs/serving.md "Request times"): live serving answers 422 to a request time
    # farther than this from the server clock; replay mode (historical data: the demo, backtests)
    # accepts any. Replay defaults to on for the embedded `local` profile only.
    request_time_window: str = "15m"
    replay: bool | None = None
    # The registry under a running server (docs/serving.md "Registry changes"): polled this often
    registry_poll_seconds: float = 10.0
    # The prediction log (docs/serving.md "Prediction log"): every prediction and the features it was
    # scored on, queued off the request path and written as Parquet by one thread. Past the queue's
    # bound, predictions are not logged and are counted (feastkit_prediction_log_rows_total).
    prediction_log: bool = True
    prediction_log_queue_rows: int = 100_000
    prediction_log_flush_seconds: float = 10.0
    prediction_log_flush_rows: int = 20_000
    # the replay check (docs/monitoring.md): a feature whose served values disagree with the offline
    # rebuild on more than this share of logged rows fails the check
    replay_max_mismatch_rate: float = 0.0
    # the drift check's multivariate test (docs/monitoring.md): a domain classifier per entity's
    # features, flagged when its out-of-fold AUROC beats every shuffled refit and reaches this.
    # Off by default: it refits 80 classifiers per entity group, and its power on the kit's own
    # data is not measured yet
    drift_multivariate: bool = False
    drift_multivariate_min_auc: float = 0.55
    # the performance check (docs/monitoring.md): a week's chargebacks are complete this many days
    # after it ends; a week whose ROC AUC, or precision or recall at the threshold (realized, or
    # estimated before the labels matured), has its upper 95 % bound further than these under the
    # model's evaluation window fails the check
    performance_maturity_days: float = 30.0
    performance_max_auc_drop: float = 0.05
    performance_max_rate_drop: float = 0.2
    performance_lookback_days: float = 112.0   # the drift_check DAG's performance task: weeks of log read

    # The stream worker (`feastkit stream`, docs/streaming.md): events of each stream-fed view's source
    # arrive on the Redis stream `<stream_prefix>{<source>}` (`{<source>.<p>}` for partition p of
    # `stream_partitions`); workers in `stream_group` keep the views' windows, accept events up to
    # `stream_lateness` behind the latest seen, and commit state, offline rows and acks together
    stream_redis_url: str = "redis://127.0.0.1:6379/0"
    stream_prefix: str = "feastkit:events:"
    stream_group: str = "feastkit-stream"
    stream_partitions: int = Field(1, ge=1, le=1024)
    stream_lateness: str = "2m"
    stream_batch_events: int = Field(1000, ge=1, le=100_000)
    stream_commit_seconds: float = 1.0
    stream_max_length: int = 1_000_000    # XADD trims each stream to about this many entries
    stream_metrics_port: int = 0          # the worker's Prometheus endpoint (0: none)
    # the prediction API appends every scored transaction to its source's stream, so the realtime
    # counters follow the traffic being scored (on in the demo; the worker must run beside it)
    stream_publish: bool = False

    # The batch plane on Spark (docs/scaling.md): each windowed view's rows are computed by Spark's
    # executors, one entity bucket at a time, by the same window engine (`pipelines.spark_windows`).
    # "" picks Spark for the `spark` profile and the local engine for every other profile
    aggregate_engine: str = ""
    # the local engine over this many buckets of entities, one after another: memory follows a
    # bucket's events (docs/scaling.md); 1 is one pass, faster while the events fit in memory
    compute_buckets: int = Field(1, ge=1, le=100_000)
    spark_master: str = "local[2]"
    spark_buckets: int = Field(16, ge=1, le=100_000)
    spark_driver_memory: str = "2g"
    # the Python that Spark's executors run (Feast's store and engine start the session themselves);
    # "" is this process's interpreter, right for local[*] and for executors with the same layout
    spark_python: str = ""

    # Orchestration (dags/): cron schedules in UTC, first interval, catchup, promotion rule
    schedule_feature_pipeline: str = "0 * * * *"
    schedule_train: str = "0 3 * * 1"
    schedule_drift_check: str = "30 4 * * *"
    dag_start_date: str = "2026-01-01"
    dag_catchup: bool = False
    promote_metric: str = "pr_auc"
    promote_tolerance: float = 0.0

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.project_root = self.project_root.resolve()
        if self.data_dir is None:
            self.data_dir = self.project_root / "data"
        if self.repo_path is None:
            self.repo_path = self.project_root / "feature_repo"
        self.data_dir = self.data_dir.resolve()
        self.repo_path = self.repo_path.resolve()
        if self.models_dir is None:
            self.models_dir = self.data_dir / "models"
        if self.reports_dir is None:
            self.reports_dir = self.data_dir / "reports"
        if self.prediction_log_dir is None:
            self.prediction_log_dir = self.data_dir / "prediction_log"
        if self.check_metrics_dir is None:
            self.check_metrics_dir = self.reports_dir / "metrics"
        return self

    # Paths derived from data_dir ---------------------------------------------------------
    @property
    def stream_log_dir(self) -> Path:
        """The stream workers' offline logs: every row written online, per view and day (the applied
        registry records each stream-fed view's folder, `feastkit.stream_log`)."""
        return self.data_dir / "stream_log"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def clean_dir(self) -> Path:
        return self.data_dir / "clean"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def feature_store_yaml(self) -> Path:
        """The feature_store.yaml the selected profile points at."""
        if self.profile in ("local", "default", ""):
            path = self.repo_path / "feature_store.yaml"
        else:
            path = self.repo_path / "profiles" / f"{self.profile}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (self.repo_path / "profiles").glob("*.yaml"))
            raise FeastkitError(
                f"profile '{self.profile}' has no feature_store.yaml at {path}",
                f"set FEASTKIT_PROFILE to 'local' or one of {known}",
            )
        return path

    @property
    def offline_store_type(self) -> str:
        """The `offline_store.type` of the selected profile's feature_store.yaml ("" when it names none)."""
        import yaml

        try:
            config = yaml.safe_load(self.feature_store_yaml.read_text()) or {}
        except yaml.YAMLError as exc:
            raise FeastkitError(f"{self.feature_store_yaml} is not valid YAML ({' '.join(str(exc).split())[:200]})",
                                "fix the profile's feature_store.yaml") from None
        store = config.get("offline_store") if isinstance(config, dict) else None
        return str(store.get("type", "")) if isinstance(store, dict) else str(store or "")

    @property
    def aggregate_engine_name(self) -> str:
        """Where windowed views are computed: "local" or "spark" (FEASTKIT_AGGREGATE_ENGINE, else the profile's)."""
        name = self.aggregate_engine.strip().lower() or ("spark" if self.profile == "spark" else "local")
        if name not in ("local", "spark"):
            raise FeastkitError(f"unknown aggregate engine {self.aggregate_engine!r}",
                                "set FEASTKIT_AGGREGATE_ENGINE to 'local' or 'spark' (or leave it unset)")
        return name

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def replay_mode(self) -> bool:
        """FEASTKIT_REPLAY when set, else on for the embedded `local` profile (demo data is historical)."""
        return self.replay if self.replay is not None else self.profile in ("local", "default", "")

    @property
    def service_list(self) -> list[str]:
        """FEASTKIT_SERVICES as a list (empty: serve every feature service with a promoted model)."""
        return [s.strip() for s in self.services.split(",") if s.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
