"""Prometheus series of the prediction API, one registry per app (GET /metrics)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5)
SCORE_BUCKETS = tuple(round(i / 20, 2) for i in range(1, 21))

# The documented series (docs/serving.md); tests check each one exists and moves.
SERIES = (
    "feastkit_http_requests_total",
    "feastkit_http_request_duration_seconds",
    "feastkit_online_read_duration_seconds",
    "feastkit_online_store_errors_total",
    "feastkit_missing_features_total",
    "feastkit_prediction_score",
    "feastkit_predictions_total",
    "feastkit_push_rows_total",
    "feastkit_auth_failures_total",
    "feastkit_unexpected_errors_total",
    "feastkit_store_breaker_open",
    "feastkit_prediction_log_rows_total",
    "feastkit_prediction_log_queued",
)


class ServingMetrics:
    """Counters and histograms, registered on their own registry so apps never collide."""

    def __init__(self) -> None:
        # Plain in-memory values, one per metric object. Importing Feast sets
        # PROMETHEUS_MULTIPROC_DIR, and prometheus-client, when imported after it, keeps every value
        # in a file shared by all metrics of that name in the process: a second app in one process
        # then started from the first one's counts, and every update paid for a file write.
        values.ValueClass = values.MutexValue
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("feastkit_http_requests", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram(
            "feastkit_http_request_duration_seconds", "HTTP request latency by route (server side).",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.online_seconds = Histogram(
            "feastkit_online_read_duration_seconds",
            "Online feature store read latency per feature service (one read per request or batch; "
            "requests waiting together for the scoring thread share one).",
            ["feature_service"], buckets=LATENCY_BUCKETS, registry=r)
        self.online_errors = Counter(
            "feastkit_online_store_errors", "Online store reads or writes that failed, by reason.",
            ["operation", "reason"], registry=r)
        self.missing = Counter(
            "feastkit_missing_features",
            "Features served with the bundle default (unknown entity or older than the view's TTL).",
            ["feature_service", "feature"], registry=r)
        self.scores = Histogram("feastkit_prediction_score", "Predicted probability per model.",
                                ["model", "model_version"], buckets=SCORE_BUCKETS, registry=r)
        self.predictions = Counter("feastkit_predictions", "Predictions by model and decision.",
                                   ["model", "decision"], registry=r)
        self.pushed = Counter("feastkit_push_rows", "Rows pushed to the online store per push source.",
                              ["push_source"], registry=r)
        self.auth_failures = Counter("feastkit_auth_failures",
                                     "Requests refused for a missing or wrong API key.", registry=r)
        self.unexpected = Counter(
            "feastkit_unexpected_errors",
            "Requests answered 500 for an error that is not the store being unreachable (a bug or "
            "corrupt data; the traceback is in the log under the request id).", ["route"], registry=r)
        self.log_rows = Counter(
            "feastkit_prediction_log_rows",
            "Predictions handed to the prediction log, by outcome: written, or dropped because the "
            "queue was full (queue_full), the write failed (write_failed) or the server was stopping "
            "(closed).", ["outcome"], registry=r)
        self.log_queued = Gauge("feastkit_prediction_log_queued",
                                "Predictions waiting to be written to the prediction log.", registry=r)
        self.published = Counter(
            "feastkit_stream_published",
            "Scored transactions handed to the event stream (FEASTKIT_STREAM_PUBLISH), by outcome: "
            "appended, or dropped because the queue was full (queue_full) or the broker failed "
            "(broker_error).", ["outcome"], registry=r)
        self.breaker_open = Gauge(
            "feastkit_store_breaker_open",
            "1 while the fail-fast guard of reads or of pushes is open after a connectivity error.",
            ["operation"], registry=r)

    def render(self) -> tuple[bytes, str]:
        """The exposition text of this process's series.

        Only this registry is rendered: importing Feast sets PROMETHEUS_MULTIPROC_DIR to a
        private directory of its own, so prometheus-client's multiprocess mode cannot be
        relied on to mean "aggregate feastkit workers" (see docs/serving.md, several workers).
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
