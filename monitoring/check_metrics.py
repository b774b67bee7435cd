"""The batch checks' findings as Prometheus metrics: one textfile per check, for node_exporter's textfile collector.

The server's metrics come from `/metrics`; drift, freshness, skew, replay and performance run as
jobs (the CLI, the `drift_check` DAG), so their findings are written as Prometheus text files
under `FEASTKIT_CHECK_METRICS_DIR` (default `<reports>/metrics`): `feastkit_<check>.prom`, each
replaced atomically (prometheus-client's `write_to_textfile`). Point node_exporter's
`--collector.textfile.directory` at that folder, and the alerting rules in
`monitoring/prometheus/feastkit-alerts.yml` fire on them.

Every file carries `feastkit_check_last_run_timestamp_seconds{check}` and `feastkit_check_ok{check}`,
so a check that stopped running alerts too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

CHECKS = ("drift", "freshness", "skew", "replay", "performance")


def metrics_dir(settings: Any) -> Path:
    """Where the check textfiles go."""
    return Path(settings.check_metrics_dir)


class CheckMetrics:
    """The gauges of one check run, written to `feastkit_<check>.prom` by `write`."""

    def __init__(self, check: str) -> None:
        if check not in CHECKS:
            raise ValueError(f"unknown check {check}")
        self.check = check
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}
        self.gauge("feastkit_check_last_run_timestamp_seconds", "When the check last ran (Unix seconds).",
                   ["check"]).labels(check).set(time.time())

    def gauge(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, documentation, list(labels), registry=self.registry)
        return self._gauges[name]

    def write(self, folder: Path, ok: bool) -> Path:
        self.gauge("feastkit_check_ok", "1 when the check's last run found nothing, else 0.",
                   ["check"]).labels(self.check).set(1 if ok else 0)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"feastkit_{self.check}.prom"
        write_to_textfile(str(path), self.registry)  # a temporary file renamed into place
        return path


def write_monitoring_metrics(settings: Any, outcome: Any) -> list[Path]:
    """Drift, freshness and skew of a `run_monitoring` outcome, one file per check that ran."""
    written = []
    folder = metrics_dir(settings)
    if outcome.drift:
        m = CheckMetrics("drift")
        drifted = m.gauge("feastkit_drift_features_drifted", "Features flagged as drifted per service.",
                          ["service"])
        tested = m.gauge("feastkit_drift_features_tested", "Features tested for drift per service.", ["service"])
        for run in outcome.drift:
            drifted.labels(run.feature_service).set(len(run.drifted))
            tested.labels(run.feature_service).set(len(run.features))
        written.append(m.write(folder, not outcome.drifted))
    if outcome.freshness:
        m = CheckMetrics("freshness")
        stale = m.gauge("feastkit_view_stale", "1 when a view's materialized data is older than its SLA.", ["view"])
        age = m.gauge("feastkit_view_age_seconds", "Age of a view's newest materialized data at the check.", ["view"])
        sla = m.gauge("feastkit_view_sla_seconds", "A view's freshness SLA.", ["view"])
        for f in outcome.freshness:
            stale.labels(f.view).set(1 if f.stale else 0)
            if f.age_seconds is not None:
                age.labels(f.view).set(f.age_seconds)
            if f.sla_seconds is not None:
                sla.labels(f.view).set(f.sla_seconds)
        written.append(m.write(folder, not outcome.stale))
    if outcome.skew:
        m = CheckMetrics("skew")
        skewed = m.gauge("feastkit_skew_features_mismatched", "Features whose online and offline values differ "
                         "for sampled entities, per service.", ["service"])
        for service, results in outcome.skew.items():
            skewed.labels(service).set(sum(1 for f in results if f.mismatches))
        written.append(m.write(folder, not outcome.skewed))
    return written


def write_replay_metrics(settings: Any, results: list[Any]) -> Path:
    m = CheckMetrics("replay")
    failing = m.gauge("feastkit_replay_features_failing", "Features above the allowed replay mismatch rate.",
                      ["service"])
    rows = m.gauge("feastkit_replay_rows", "Logged predictions replayed.", ["service"])
    worst = m.gauge("feastkit_replay_max_mismatch_rate", "The highest mismatch rate of any feature.", ["service"])
    for r in results:
        failing.labels(r.service).set(len(r.failing))
        rows.labels(r.service).set(r.rows)
        worst.labels(r.service).set(max((f.mismatch_rate for f in r.features), default=0.0))
    return m.write(metrics_dir(settings), not any(r.failing for r in results))


def write_performance_metrics(settings: Any, results: list[Any]) -> Path:
    """The latest week's metrics (realized and estimated), the reference's, and the weeks dropped."""
    m = CheckMetrics("performance")
    latest = m.gauge("feastkit_performance_latest", "The latest week's metric: realized (labels matured) "
                     "or estimated (CBPE).", ["service", "metric", "kind"])
    reference = m.gauge("feastkit_performance_reference", "The metric on the model's evaluation window.",
                        ["service", "metric"])
    dropped = m.gauge("feastkit_performance_weeks_dropped", "Weeks whose metrics fell below the allowed drop.",
                      ["service"])
    for r in results:
        for metric, value in r.reference.items():
            if value.value is not None:
                reference.labels(r.service, metric).set(value.value)
        for kind in ("realized", "estimated"):
            weeks = [p for p in r.periods if getattr(p, kind) is not None]
            if weeks:
                for metric, value in getattr(weeks[-1], kind).items():
                    if value.value is not None:
                        latest.labels(r.service, metric, kind).set(value.value)
        dropped.labels(r.service).set(len(r.degraded))
    return m.write(metrics_dir(settings), not any(r.degraded for r in results))
