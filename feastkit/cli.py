"""The `feastkit` command line: generate, validate, compute, apply, materialize, train, serve, doctor."""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
import pandas as pd

from feastkit.errors import FeastkitError, explain, one_line
from feastkit.scaffold import DEMO_SIZE
from feastkit.settings import Settings, get_settings
from feastkit.times import parse_interval, parse_time

if TYPE_CHECKING:
    from monitoring.multivariate import MultivariateDrift


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="FEASTKIT_DEBUG",
              help="On an error, write the full traceback to a log file and print its path (env FEASTKIT_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """feastkit: real-time fraud and churn prediction on Feast.

    Configuration comes from FEASTKIT_* environment variables (see README): FEASTKIT_DATA_DIR,
    FEASTKIT_PROFILE (local | redis | postgres-registry), FEASTKIT_MODELS_DIR, ...

    Exit codes: 0 done; 1 a check found something (drift, staleness, skew, a failed doctor check);
    2 the command could not do its job: bad input, an unknown name, a service that does not
    answer, or nothing to do. Errors are one line on stderr.
    """
    ctx.obj = get_settings()


@cli.command()
@click.option("--users", default=DEMO_SIZE[0], show_default=True, help="Number of users.")
@click.option("--merchants", default=300, show_default=True, help="Number of merchants.")
@click.option("--days", default=DEMO_SIZE[1], show_default=True, help="Days of card transactions.")
@click.option("--start", default="2026-01-01", show_default=True, help="First day (UTC).")
@click.option("--seed", default=7, show_default=True, help="Random seed: same seed, same data.")
@click.option("--txn-rate", default=1.0, show_default=True, help="Mean card transactions per user per day.")
@click.option("--drift", default="", help="Comma-separated kinds to shift: amount,night,channel,basket "
                                        "(feature drift), night_spend (joint drift only), concept, "
                                        "merchant_mix (for the performance check).")
@click.option("--drift-start", default=None, help="Start of the drift window (default: last --drift-days).")
@click.option("--drift-days", default=7, show_default=True, help="Length of the drift window in days.")
@click.option("--bad-rows", default=40, show_default=True, help="Dirty rows to inject (validation demo).")
@click.option("--users-per-part", default=50_000, show_default=True,
              help="Users generated at once: more users are written part by part, so memory holds one part.")
@click.pass_obj
def generate(settings: Settings, users: int, merchants: int, days: int, start: str, seed: int,
             txn_rate: float, drift: str, drift_start: str | None, drift_days: int, bad_rows: int,
             users_per_part: int) -> None:
    """Generate realistic raw events (users, merchants, transactions, late labels, activity)."""
    from pipelines.synthetic import SyntheticConfig, write_parts

    config = SyntheticConfig(
        n_users=users, n_merchants=merchants, days=days, start=parse_time(start, "start"), seed=seed,
        txn_per_user_per_day=txn_rate, drift=tuple(k for k in drift.split(",") if k),
        drift_start=parse_time(drift_start, "drift-start"), drift_days=drift_days, bad_rows=bad_rows)
    counts = write_parts(config, settings.raw_dir, users_per_part)
    click.echo(f"raw data in {settings.raw_dir}: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    if config.drift_window:
        a, b = config.drift_window
        click.echo(f"drift {','.join(config.drift)} injected in [{a:%Y-%m-%d}, {b:%Y-%m-%d})")


def _validate(settings: Settings, as_of: datetime | None) -> None:
    from pipelines.validation import validate_all

    # a run at the terminal without --as-of (or compute's --end) judges "future" by the time it starts
    reports = validate_all(settings.raw_dir, settings.clean_dir, settings.quarantine_dir,
                           as_of=as_of or datetime.now(UTC), lock_timeout=settings.lock_timeout_seconds,
                           memory_limit=settings.validation_memory_limit)
    click.echo(f"validation as of {reports[0].as_of:%Y-%m-%d %H:%M:%S} UTC (rows in = accepted + quarantined):")
    for report in reports:
        click.echo("  " + report.line())
    click.echo(f"  quarantined rows, with reasons: {settings.quarantine_dir}")


@cli.command()
@click.option("--as-of", default=None,
              help="Rows stamped later are quarantined as future (default: now; pass it for reproducible runs).")
@click.pass_obj
def validate(settings: Settings, as_of: str | None) -> None:
    """Check raw tables; bad rows go to quarantine/ with a reason column."""
    _validate(settings, parse_time(as_of, "as-of"))


@cli.command()
@click.option("--start", default=None, help="Interval start (default: start of the data).")
@click.option("--end", default=None, help="Interval end, exclusive (default: end of the data).")
@click.option("--views", default="", help="Comma-separated feature views (default: every declared view).")
@click.option("--skip-validation", is_flag=True, help="Use the existing clean tables as they are.")
@click.pass_obj
def compute(settings: Settings, start: str | None, end: str | None, views: str, skip_validation: bool) -> None:
    """Validate raw events, then compute the declared feature tables for [start, end).

    What each table holds comes from the applied registry (`feast apply` publishes the views
    declared in feature_repo/); a view whose definition changed is recomputed whole.
    """
    from feastkit.store import applied_specs, open_store
    from pipelines.aggregates import compute_features, rows_engine

    a, b = parse_interval(start, end)
    specs = applied_specs(open_store(settings))
    if not skip_validation:
        _validate(settings, b)
    engine = rows_engine(settings)
    report = compute_features(specs, settings.clean_dir, settings.features_dir, a, b,
                              [v for v in views.split(",") if v] or None, settings.lock_timeout_seconds, engine)
    if engine is not None:
        click.echo(f"windowed views computed on {engine.describe()}")
    click.echo(f"features for [{report.start:%Y-%m-%d %H:%M}, {report.end:%Y-%m-%d %H:%M}) UTC "
               f"in {settings.features_dir}:")
    for line in report.lines():
        click.echo("  " + line)


@cli.command()
@click.pass_obj
def apply(settings: Settings) -> None:
    """Register the feature repo with Feast (`feast apply` for the selected profile)."""
    from feastkit.errors import is_unreachable
    from feastkit.store import apply_repo, open_store

    try:  # a registry database that does not answer: say so, before `feast apply` prints a traceback
        open_store(settings).list_feature_views()
    except Exception as exc:  # noqa: BLE001 (anything else, e.g. no registry yet, is `feast apply`'s business)
        if is_unreachable(exc):
            raise
    apply_repo(settings)
    store = open_store(settings)
    click.echo(f"applied {settings.repo_path} with {settings.feature_store_yaml.name}: "
               f"{len(store.list_entities())} entities, {len(store.list_feature_views())} feature views, "
               f"{len(store.list_on_demand_feature_views())} on-demand view(s), "
               f"{len(store.list_feature_services())} feature services "
               f"({', '.join(sorted(s.name for s in store.list_feature_services()))})")


@cli.command()
@click.option("--start", default=None,
              help="Interval start (UTC). Default: what is still servable at --end (each view's TTL).")
@click.option("--end", default=None, help="Interval end, exclusive (UTC). Default: end of the data.")
@click.option("--incremental", is_flag=True, help="From the last materialized end up to --end (or the data end).")
@click.option("--views", default="", help="Comma-separated feature views (default: all online views).")
@click.option("--chunk", default=None, help="Chunk length, e.g. 6h or 1d (default FEASTKIT_MATERIALIZE_CHUNK).")
@click.pass_obj
def materialize(settings: Settings, start: str | None, end: str | None, incremental: bool, views: str,
                chunk: str | None) -> None:
    """Load feature rows with event time in [start, end) into the online store."""
    from feastkit.clean import data_range
    from feastkit.store import (
        last_materialized_end,
        materialize_interval,
        materialize_servable,
        open_store,
        parse_duration,
    )

    a, b = parse_interval(start, end)
    store = open_store(settings)
    chosen = [v for v in views.split(",") if v] or None
    if incremental:
        if a is not None:
            raise FeastkitError("--incremental picks its own start", "drop --start, or drop --incremental")
        a = last_materialized_end(store, chosen)
        if a is None:
            raise FeastkitError("nothing has been materialized yet, so there is no watermark to continue from",
                                "run `feastkit materialize --start ... --end ...` once first")
    if b is None:
        b = data_range(settings.clean_dir)[1]
    if a is None:
        for report in materialize_servable(settings, b, chosen, store):
            click.echo(report.line())
        return
    if b <= a:
        if not incremental:  # an explicit --start at or after the end of the data: nothing is there
            raise FeastkitError(f"--start {a:%Y-%m-%d %H:%M} UTC is not before the end of the data "
                                f"({b:%Y-%m-%d %H:%M} UTC), so there is nothing to materialize",
                                "pass an earlier --start (or an --end after it)")
        click.echo(f"online store already up to date (materialized up to {a:%Y-%m-%d %H:%M} UTC)")
        return
    report = materialize_interval(settings, a, b, chosen, parse_duration(chunk) if chunk else None, store)
    click.echo(report.line())


@cli.command("training-set")
@click.option("--service", required=True, help="Feature service, e.g. fraud_detection_v1.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the set as parquet.")
@click.option("--rows", default=3, show_default=True, help="Rows to print.")
@click.pass_obj
def training_set(settings: Settings, service: str, out: Path | None, rows: int) -> None:
    """Build the PIT training set of a feature service and summarise it."""
    from feastkit.recipes import labelled_entities
    from feastkit.services import build_training_set, get_service
    from feastkit.store import open_store, require_applied

    store = open_store(settings)
    require_applied(store)
    get_service(store, service)
    frame = build_training_set(store, service, labelled_entities(store, service, settings.clean_dir))
    click.echo(f"{service}: {frame.shape[0]:,} rows x {frame.shape[1]} columns, "
               f"label rate {frame['label'].mean():.4f}, "
               f"{frame['event_timestamp'].min():%Y-%m-%d} .. {frame['event_timestamp'].max():%Y-%m-%d}")
    with pd.option_context("display.width", 160, "display.max_columns", 12):
        shown = frame.sample(min(rows, len(frame)), random_state=0).sort_values("event_timestamp")
        click.echo(shown.to_string(max_cols=12))
    if out:
        frame.to_parquet(out, index=False)
        click.echo(f"written to {out}")


@cli.command()
@click.option("--service", "services", multiple=True,
              help="Feature service(s) to train (default: every service whose `model` tag names a label recipe).")
@click.option("--no-promote", is_flag=True, help="Save the bundle without making it the serving one.")
@click.option("--seed", default=0, show_default=True)
@click.pass_obj
def train(settings: Settings, services: tuple[str, ...], no_promote: bool, seed: int) -> None:
    """Train, evaluate on the later window, and save a model bundle per feature service."""
    from feastkit.recipes import trainable_services
    from feastkit.store import open_store, require_applied
    from pipelines.training import train_service

    store = open_store(settings)
    require_applied(store)
    chosen = list(services) or trainable_services(store)
    if not chosen:
        raise FeastkitError("no feature service in the registry names a label recipe, so there is nothing to train",
                            "pass --service, or tag a service with model=fraud|churn in feature_repo/ and run "
                            "`feastkit apply`")
    for service in chosen:
        result = train_service(store, service, settings.clean_dir, settings.models_dir, seed=seed,
                               promote_bundle=not no_promote)
        click.echo(result.line())
        click.echo(f"  bundle: {result.path}{' (promoted)' if result.promoted else ''}")


@cli.command()
@click.option("--service", default="churn_prediction_v1", show_default=True)
@click.pass_obj
def leakage(settings: Settings, service: str) -> None:
    """Show what leakage does: the same model on PIT features vs a naive latest-value join."""
    from feastkit.store import open_store, require_applied
    from pipelines.training import leaky_vs_pit

    store = open_store(settings)
    require_applied(store)
    result = leaky_vs_pit(store, settings.clean_dir, settings.features_dir, service)
    click.echo(f"{service} evaluation ROC AUC: point-in-time {result['pit_roc_auc']:.3f}  vs  "
               f"leaky latest-value join {result['leaky_roc_auc']:.3f} (optimistic: it saw the future)")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=1, show_default=True)
@click.pass_obj
def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    """Run the prediction API (FastAPI + uvicorn): every feature service with a promoted model
    (or those in FEASTKIT_SERVICES); refuses to start on an inconsistent bundle."""
    import uvicorn

    from serving.app import ServingState

    state = ServingState.load(settings)  # fail here, with a one-line reason, not inside uvicorn
    click.echo(f"serving {state.describe()} on http://{host}:{port} (docs at /docs)")
    if workers > 1:  # each worker process builds its own app (and loads its own state)
        uvicorn.run("feastkit.cli:serving_app", factory=True, host=host, port=port, workers=workers,
                    log_level="warning")
    else:
        uvicorn.run(serving_app(settings, state), host=host, port=port, log_level="warning")


def serving_app(settings: Settings | None = None, state: object | None = None) -> object:
    """The prediction API as `feastkit serve` runs it: serving's app with monitoring's freshness
    check wired in (serving never imports monitoring; the CLI, above both, assembles them)."""
    from monitoring.freshness import check_freshness
    from serving.app import create_app

    return create_app(settings or get_settings(), state, freshness=check_freshness)  # type: ignore[arg-type]


@cli.command()
@click.option("--worker", "worker_spec", default="0/1", show_default=True,
              help="i/N: this is worker i of N in the consumer group; it owns partitions i, i+N, ... "
                   "of FEASTKIT_STREAM_PARTITIONS.")
@click.option("--consumer", default=None, help="Consumer name in the group (default: the host name and "
                                              "--worker); keep it stable across restarts.")
@click.option("--exit-when-idle", type=float, default=None,
              help="Stop after this many seconds without events (a backfill through the stream).")
@click.option("--reset", is_flag=True, help="First delete the owned partitions' streams, dead letters and "
                                          "committed windows (after regenerating the data, as the demo does).")
@click.pass_obj
def stream(settings: Settings, worker_spec: str, consumer: str | None, exit_when_idle: float | None,
           reset: bool) -> None:
    """Keep the stream-fed views fresh from the event stream (Redis Streams), equal to `compute`."""
    import signal
    import threading

    from feastkit.store import open_store, require_applied
    from pipelines.stream import StreamWorker, connect_stream, default_consumer, owned_partitions

    try:
        index, workers = (int(part) for part in worker_spec.split("/"))
    except ValueError:
        raise FeastkitError(f"--worker {worker_spec!r} is not i/N", "pass e.g. --worker 0/2") from None
    partitions = owned_partitions(index, workers, settings.stream_partitions)
    store = open_store(settings)
    require_applied(store)
    worker = StreamWorker(settings, store, connect_stream(settings), partitions=partitions,
                          consumer=consumer or f"{default_consumer()}-{index}")
    if reset:
        worker.reset()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if settings.stream_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.stream_metrics_port, registry=worker.metrics.registry)
    worker.start()
    views = ", ".join(v.spec.name for v in worker.views)
    click.echo(f"stream worker {worker.consumer}: {', '.join(p.stream for p in worker.partitions)} -> {views} "
               f"(group {worker.group}, lateness {settings.stream_lateness})", err=True)
    worker.run(stop, idle_exit_seconds=exit_when_idle)
    click.echo(f"stream worker {worker.consumer} stopped", err=True)


@cli.command("demo-requests")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.pass_obj
def demo_requests(settings: Settings, url: str) -> None:
    """Send a known-fraud pattern, a normal transaction, an unknown user and churn requests, and one
    request to the generated route of every other served feature service."""
    from serving.examples import run_examples

    for title, request, response in run_examples(settings, url):
        click.echo(f"\n== {title}\n-> {json.dumps(request)}\n<- {json.dumps(response, indent=1)}")


@cli.command("demo-burst")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--service", default="fraud_detection_v2", show_default=True,
              help="A feature service reading a stream-fed view.")
@click.option("--count", default=5, show_default=True, help="Transactions in the burst.")
@click.pass_obj
def demo_burst(settings: Settings, url: str, service: str, count: int) -> None:
    """Send a burst of one user's transactions and show the realtime counters follow it (the server
    publishing scored transactions, `feastkit stream` running); exit 1 if they do not."""
    from serving.examples import run_burst

    seen = run_burst(settings, url, service, count)
    for at, features, probability in seen:
        shown = "  ".join(f"{k}={'missing (default 0)' if v is None else v}" for k, v in features.items())
        click.echo(f"{at}  {shown}  probability={probability:.3f}")
    # missing: no row within the view's TTL, i.e. no transaction in the window (served as 0)
    counts = [next((v or 0 for k, v in f.items() if k.startswith("txn_count")), None) for _, f, _ in seen]
    if counts != list(range(len(counts))):
        click.echo(f"the realtime counters did not follow the burst: {counts}, expected 0..{count - 1} "
                   "(is `feastkit stream` running, with FEASTKIT_STREAM_PUBLISH=true on the server?)", err=True)
        sys.exit(1)
    click.echo(f"{service} saw the burst as it happened: txn_count went {counts}")


@cli.command()
@click.pass_obj
def doctor(settings: Settings) -> None:
    """Check configuration, registry, online store and model bundles; exit 1 if something is off."""
    from feastkit.doctor import run_checks

    ok = True
    for name, passed, detail in run_checks(settings):
        ok &= passed
        click.echo(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}")
    if not ok:
        sys.exit(1)


# --- monitoring commands (drift, freshness, skew) ---


def multivariate_line(m: MultivariateDrift) -> str:
    """One line of `feastkit drift` for a domain-classifier test."""
    tops = ", ".join(t["feature"] for t in m.top_features[:3]) or "none"
    null = (f"permutation p {m.p_value:.3f} over {m.permutations} shuffle(s), best shuffle {m.null_auc_max:.3f}"
            if m.p_value is not None and m.null_auc_max is not None else "below the AUROC bar, no shuffle needed")
    return (f"  {'DRIFT' if m.drifted else 'ok   '} multivariate ({m.entity or 'rows'}, {len(m.features)} "
            f"features): domain classifier AUROC {m.auc:.3f}, {null}; most telling: {tops}")


@cli.command()
@click.option("--service", default=None, help="Feature service (default: the fraud and churn services).")
@click.option("--end", default=None, help="End of the current window, exclusive (default: end of the data).")
@click.option("--current-days", default=7, show_default=True, help="Length of the current window.")
@click.option("--reference-days", default=28, show_default=True, help="Reference window: days before it.")
@click.option("--alpha", default=0.05, show_default=True, help="Significance after Benjamini-Hochberg.")
@click.option("--ks-threshold", default=0.1, show_default=True, help="Minimum KS statistic (numeric).")
@click.option("--psi-threshold", default=0.2, show_default=True, help="Minimum PSI.")
@click.option("--max-rows", default=10_000, show_default=True, help="Entity rows sampled per window.")
@click.option("--fail-on-drift/--no-fail-on-drift", default=True, show_default=True,
              help="Exit 1 when a feature drifted (so a scheduler marks the task failed).")
@click.pass_obj
def drift(settings: Settings, service: str | None, end: str | None, current_days: int, reference_days: int,
          alpha: float, ks_threshold: float, psi_threshold: float, max_rows: int,
          fail_on_drift: bool) -> None:
    """Compare the last days' features with the weeks before (KS/PSI/chi-square + BH); write reports."""
    from monitoring.checks import run_monitoring
    from monitoring.drift import DriftThresholds

    thresholds = DriftThresholds(alpha=alpha, ks_statistic=ks_threshold, psi=psi_threshold)
    outcome = run_monitoring(settings, end=parse_time(end, "end"), current_days=current_days,
                             reference_days=reference_days, feature_service=service, checks=("drift",),
                             thresholds=thresholds, max_rows=max_rows)
    for run in outcome.drift:
        tested = len(run.features)
        click.echo(f"{run.feature_service}: current [{run.current.start:%Y-%m-%d}, {run.current.end:%Y-%m-%d}) "
                   f"{run.current.rows:,} rows vs reference [{run.reference.start:%Y-%m-%d}, "
                   f"{run.reference.end:%Y-%m-%d}) {run.reference.rows:,} rows: "
                   f"{len(run.drifted)} of {tested} feature(s) drifted")
        for f in run.features:
            if f.drifted:
                click.echo(f"  DRIFT {run.refs[f.feature]}: {'; '.join(f.reasons)}")
        for m in run.multivariate:
            click.echo(multivariate_line(m))
        if run.prediction is not None:
            p = run.prediction
            click.echo(f"  model score ({run.model_version}): mean {p.mean_reference:.4f} -> "
                       f"{p.mean_current:.4f}, KS {p.ks_statistic:.3f}, PSI {p.psi:.3f}"
                       f"{'  DRIFT' if p.drifted else ''}")
    for note in outcome.notes:
        click.echo(f"note: {note}")
    click.echo(f"report: {outcome.report_html}")
    click.echo(f"json:   {outcome.report_json}")
    if outcome.drifted and fail_on_drift:
        sys.exit(1)


@cli.command()
@click.option("--as-of", default=None, help="Judge freshness at this time (default: now, UTC).")
@click.option("--fail-on-stale/--no-fail-on-stale", default=True, show_default=True,
              help="Exit 1 when a view is older than its SLA.")
@click.pass_obj
def freshness(settings: Settings, as_of: str | None, fail_on_stale: bool) -> None:
    """Age of each feature view's materialized data against its SLA (tag freshness_sla, else TTL)."""
    from datetime import UTC

    from feastkit.store import open_store, require_applied
    from monitoring.freshness import check_freshness

    store = open_store(settings)
    require_applied(store)
    moment = parse_time(as_of, "as-of") or datetime.now(UTC)
    results = check_freshness(store, moment)
    if not results:
        raise FeastkitError("the registry has no online feature view, so freshness has nothing to check",
                            "declare a view with online=True in feature_repo/ and run `feastkit apply`")
    click.echo(f"freshness at {moment:%Y-%m-%d %H:%M} UTC:")
    for r in results:
        click.echo(f"  {'STALE' if r.stale else 'ok   '} {r.view}: {r.reason}")
    if any(r.stale for r in results) and fail_on_stale:
        sys.exit(1)


@cli.command()
@click.option("--service", default=None, help="Feature service (default: the fraud and churn services).")
@click.option("--sample", default=200, show_default=True, help="Entities sampled per feature view.")
@click.option("--fail-on-skew/--no-fail-on-skew", default=True, show_default=True,
              help="Exit 1 when online and offline values disagree.")
@click.pass_obj
def skew(settings: Settings, service: str | None, sample: int, fail_on_skew: bool) -> None:
    """Online values of sampled entities vs Feast's offline values at the materialization end."""
    from monitoring.checks import run_monitoring

    if sample <= 0:
        raise FeastkitError(f"--sample {sample} is not positive", "pass e.g. --sample 200")
    outcome = run_monitoring(settings, feature_service=service, sample_entities=sample, checks=("skew",))
    for name, results in outcome.skew.items():
        bad = [r for r in results if r.mismatches]
        click.echo(f"{name}: {len(results)} feature(s) compared, {len(bad)} with mismatches")
        for r in bad:
            click.echo(f"  SKEW {r.feature}: {r.mismatches}/{r.compared} entities differ, e.g. {r.examples[0]}")
    click.echo(f"report: {outcome.report_html}")
    if outcome.skewed and fail_on_skew:
        sys.exit(1)


@cli.command("replay-check")
@click.option("--start", default=None, help="First request time to check (UTC), e.g. 2026-04-30T00:00Z "
                                             "(default: the first logged hour).")
@click.option("--end", default=None, help="End of the request times, exclusive (default: after the last logged hour).")
@click.option("--service", default=None, help="Feature service (default: every service with a prediction log).")
@click.option("--max-mismatch-rate", default=None, type=float,
              help="Exit 1 when a feature's mismatch rate is above this, e.g. 0.01 = 1 % "
                   "(default FEASTKIT_REPLAY_MAX_MISMATCH_RATE, 0).")
@click.pass_obj
def replay_check(settings: Settings, start: str | None, end: str | None, service: str | None,
                 max_mismatch_rate: float | None) -> None:
    """Features served in [start, end), from the prediction log, vs the same features rebuilt offline."""
    from monitoring.replay import replay_check as run_replay

    a, b = parse_interval(start, end)
    outcome = run_replay(settings, a, b, service, max_mismatch_rate)
    for result in outcome.results:
        click.echo(f"{result.service}: {result.rows:,} logged prediction(s), {len(result.features)} feature(s) "
                   f"compared, {len(result.failing)} above {result.max_mismatch_rate:.2%} mismatches")
        for f in result.features:
            if f.mismatches:
                click.echo(f"  {'MISMATCH' if f in result.failing else 'within  '} {f.feature}: "
                           f"{f.mismatches}/{f.compared} rows ({f.mismatch_rate:.2%}; values differ "
                           f"{f.value_mismatches}, missing online {f.missing_online_present_offline}, "
                           f"missing offline {f.present_online_missing_offline}), e.g. {f.examples[0]}")
    click.echo(f"report: {outcome.report_html}\njson:   {outcome.report_json}")
    if outcome.failing:
        sys.exit(1)


@cli.command("compact-log")
@click.option("--service", default=None, help="Feature service (default: every service with a prediction log).")
@click.option("--before", default=None,
              help="Merge the hours that end by this time (UTC; default: the start of the current hour).")
@click.pass_obj
def compact_log(settings: Settings, service: str | None, before: str | None) -> None:
    """Merge each past hour of the prediction log into one file (rows, order and columns kept)."""
    from feastkit.jobs import run_compact_log

    summary = run_compact_log(settings, parse_time(before, "before"), service)
    for name, hours in summary["services"].items():
        if not hours["hours"] and not hours["leftovers"]:
            click.echo(f"{name}: nothing to merge (every past hour is one file)")
            continue
        click.echo(f"{name}: {hours['hours']} hour(s) merged, {hours['files_in']:,} file(s) -> {hours['hours']}, "
                   f"{hours['rows']:,} row(s) kept; {hours['leftovers']} file(s) of an interrupted run removed")


@cli.command()
@click.option("--service", default=None, help="Fraud feature service (default: every one with a promoted model).")
@click.option("--source", type=click.Choice(["history", "log"]), default="history", show_default=True,
              help="Scores from history (every transaction scored by the promoted model on its point-in-time "
                   "features) or from the prediction log (what was served).")
@click.option("--start", default=None, help="First transaction time (UTC; default: the model's evaluation window "
                                             "for history, the first logged hour for the log).")
@click.option("--end", default=None, help="End of the transaction times, exclusive (default: --as-of).")
@click.option("--as-of", "as_of", default=None,
              help="Chargebacks known by this time count (default: the last clean transaction's time).")
@click.option("--maturity-days", default=None, type=float,
              help="Days after a week ends when its chargebacks are complete (default "
                   "FEASTKIT_PERFORMANCE_MATURITY_DAYS, 30).")
@click.option("--max-auc-drop", default=None, type=float,
              help="Exit 1 when a week's ROC AUC is surely more than this under the reference's "
                   "(default FEASTKIT_PERFORMANCE_MAX_AUC_DROP, 0.05).")
@click.option("--max-rate-drop", default=None, type=float,
              help="Exit 1 when a week's precision or recall at the threshold is surely more than this under "
                   "the reference's (default FEASTKIT_PERFORMANCE_MAX_RATE_DROP, 0.2).")
@click.option("--fail-on-drop/--no-fail-on-drop", default=True, show_default=True,
              help="Exit 1 when a week's performance dropped (so a scheduler marks the task failed).")
@click.pass_obj
def performance(settings: Settings, service: str | None, source: str, start: str | None, end: str | None,
                as_of: str | None, maturity_days: float | None, max_auc_drop: float | None,
                max_rate_drop: float | None, fail_on_drop: bool) -> None:
    """Weekly ROC AUC, PR AUC, precision and recall: realized once chargebacks matured, estimated (CBPE) before."""
    from monitoring.performance import METRICS, performance_check

    a, b = parse_interval(start, end)
    outcome = performance_check(settings, service, source, a, b, parse_time(as_of, "as-of"), maturity_days,
                                max_auc_drop, max_rate_drop)
    for result in outcome.results:
        cal = result.calibration
        ref = result.reference
        click.echo(f"{result.service} ({result.model_version}, scores from {result.source}): reference ROC AUC "
                   f"{ref['roc_auc'].value:.3f}, calibration p={cal.spiegelhalter_p:.3g} (above the threshold "
                   f"p={cal.flagged_p:.3g}) ECE {cal.ece:.4f}"
                   f"{' -> isotonic' if cal.calibrated else ''}")
        for p in result.periods:
            shown = p.realized or p.estimated
            values = "  ".join(f"{m} {'-' if shown[m].value is None else f'{shown[m].value:.3f}'}" for m in METRICS)
            error = p.error
            extra = "" if error is None or error["roc_auc"] is None else f"  (estimate {error['roc_auc']:+.3f})"
            click.echo(f"  {p.start:%Y-%m-%d} {p.rows:>7,} rows  {'realized ' if p.realized else 'estimated'}  "
                       f"{values}{extra}{'  DROP ' + ','.join(p.dropped) if p.degraded else ''}")
    click.echo(f"report: {outcome.report_html}\njson:   {outcome.report_json}")
    if outcome.degraded and fail_on_drop:
        sys.exit(1)


# --- orchestration commands ---


@cli.command("run-interval")
@click.option("--start", required=True, help="Interval start (UTC), e.g. 2026-03-21T18:00Z.")
@click.option("--end", required=True, help="Interval end, exclusive (UTC).")
@click.option("--no-materialize", is_flag=True, help="Only validate and compute the feature tables.")
@click.pass_obj
def run_interval(settings: Settings, start: str, end: str, no_materialize: bool) -> None:
    """What one feature_pipeline + materialize DAG run does, for [start, end), without Airflow."""
    from feastkit.jobs import run_feature_pipeline, run_materialize

    a, b = parse_interval(start, end)
    report = run_feature_pipeline(settings, a, b)
    click.echo(f"features for [{a:%Y-%m-%d %H:%M}, {b:%Y-%m-%d %H:%M}) UTC: "
               + ", ".join(f"{k}={v:,}" for k, v in report["rows"].items()))
    if not no_materialize:
        for line in run_materialize(settings, [(a, b)]).lines:
            click.echo(line)


# --- serving and benchmark commands ---


@cli.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--example", default=None,
              help="What feature_repo/ starts with: fraud-churn (default; the kit's own repo) or minimal.")
@click.option("--minimal", is_flag=True, help="One entity, one event source, one windowed view, one service.")
@click.option("--force", is_flag=True, help="Write into a non-empty directory (overwrites the files it writes).")
@click.option("--kit-source", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The feastkit checkout to copy from and install (default: the one feastkit is installed from).")
def init(directory: Path, example: str | None, minimal: bool, force: bool, kit_source: Path | None) -> None:
    """Scaffold a new project in DIRECTORY: feature_repo/, dags/, Makefile, scripts/demo.sh, tests/, README."""
    from feastkit.scaffold import DEFAULT_EXAMPLE, MINIMAL, init_project

    if minimal and example not in (None, MINIMAL):
        raise FeastkitError(f"--minimal and --example {example} both choose the feature repo", "pass only one")
    made = init_project(directory, MINIMAL if minimal else example or DEFAULT_EXAMPLE, force, kit_source)
    for line in made.summary():
        click.echo(line)


def _debug_requested(args: list[str]) -> bool:
    """--debug before the command, or FEASTKIT_DEBUG set to a true value."""
    command_at = next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))
    env = os.environ.get("FEASTKIT_DEBUG", "").strip().lower()
    return "--debug" in args[:command_at] or env in ("1", "true", "yes", "on")


def _debug_log(exc: BaseException, args: list[str]) -> Path:
    """Write the traceback of `exc` to a new log file (the data folder's logs/, else the temp folder)."""
    import tempfile

    try:
        data_dir = get_settings().data_dir
        folder = data_dir / "logs" if data_dir.is_dir() else Path(tempfile.gettempdir()) / "feastkit-logs"
    except Exception:  # noqa: BLE001 (the settings themselves may be what failed)
        folder = Path(tempfile.gettempdir()) / "feastkit-logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"feastkit-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{os.getpid()}.log"
    path.write_text(f"feastkit {' '.join(args)}\n\n" + "".join(traceback.format_exception(exc)),
                    encoding="utf-8")
    return path


def error_line(exc: BaseException, debug: bool = False, args: list[str] | None = None) -> str:
    """The one line a failed command prints: what is wrong and what to do (never a traceback)."""
    found = explain(exc)
    if found is not None:
        problem, fix = found
        line = f"{problem} — {fix}" if fix else problem
    else:  # not an error we know how to explain: a bug, or an input nothing checks yet
        line = (f"unexpected {type(exc).__name__}: {one_line(str(exc), 200) or '(no message)'} — this is a bug or an "
                "unchecked input" + ("" if debug else "; run again with --debug to write the traceback to a log file"))
    line = one_line(line)
    if debug:
        line += f" (traceback in {_debug_log(exc, args or [])})"
    return f"feastkit: error: {line}"


def _usage_line(exc: click.ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    where = f" — see `{ctx.command_path} --help`" if ctx is not None else ""
    return f"feastkit: error: {one_line(exc.format_message())}{where}"


def main(args: list[str] | None = None) -> None:
    """Entry point: every failure is one line on stderr with exit code 2, never a traceback
    (with --debug or FEASTKIT_DEBUG=1 the traceback goes to a log file named in that line)."""
    argv = sys.argv[1:] if args is None else list(args)
    debug = _debug_requested(argv)
    try:
        code = cli.main(args=argv, prog_name="feastkit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # bad arguments: click's own message, on one line
        click.echo(_usage_line(exc), err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 (the one place errors become a line and an exit code)
        click.echo(error_line(exc, debug, argv), err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
