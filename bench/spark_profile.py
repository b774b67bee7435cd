"""The spark profile's Feast side vs the local one, same run: training sets and materialization into Redis.

One synthetic data set, computed once by the local engine, is applied twice: with the `redis`
profile (the DuckDB ASOF offline store, the Arrow write engine) and with the `spark` profile
(Feast's Spark offline store over SparkSources, Feast's Spark compute engine). Each round times
`build_training_set` for every trainable service on both, and a materialization of the whole history
in one chunk into a flushed Redis database per profile. Before the rounds, one unmeasured call
starts Spark's JVM. Every result is checked equal (training sets cell for cell, Redis contents
byte for byte) before a time is reported. Ratios are spark / local, medians over rounds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DBS = {"redis": 2, "spark": 3}  # this benchmark's Redis databases (flushed)


def _contents(db: int) -> dict[bytes, dict[bytes, bytes]]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    return {key: client.hgetall(key) for key in client.scan_iter(count=10_000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=6000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spark-buckets", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "bench-spark-profile")
    args = parser.parse_args()

    import pandas as pd
    import redis

    from feastkit.clean import data_range
    from feastkit.recipes import churn_entities, fraud_entities
    from feastkit.services import build_training_set
    from feastkit.settings import Settings
    from feastkit.store import (
        applied_specs,
        apply_repo,
        materialize_interval,
        open_store,
        quiet_feast,
    )
    from pipelines.aggregates import compute_features
    from pipelines.synthetic import SyntheticConfig, generate, write
    from pipelines.validation import validate_all

    quiet_feast()
    # Feast's Spark store says it is experimental on every call (its import resets the filters)
    import feast.infra.offline_stores.contrib.spark_offline_store.spark  # noqa: F401

    warnings.filterwarnings("ignore", message=".*experimental feature.*")
    shutil.rmtree(args.workdir, ignore_errors=True)
    config = SyntheticConfig(n_users=args.users, n_merchants=max(20, args.users // 25), days=args.days,
                             seed=11, start=datetime(2026, 1, 1, tzinfo=UTC))
    data = args.workdir / "data"
    settings = {}
    for profile in DBS:
        repo = args.workdir / f"repo-{profile}"
        shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
        settings[profile] = Settings(project_root=ROOT, data_dir=data, repo_path=repo, profile=profile,
                                     redis_connection_string=f"127.0.0.1:6379,db={DBS[profile]}",
                                     spark_buckets=args.spark_buckets, gc_freeze=False)
    first = settings["redis"]
    write(generate(config), first.raw_dir, config)
    validate_all(first.raw_dir, first.clean_dir, first.quarantine_dir, as_of=config.end + timedelta(days=90))
    start, end = data_range(first.clean_dir)
    apply_repo(first)
    compute_features(applied_specs(open_store(first)), first.clean_dir, first.features_dir, start, end)
    apply_repo(settings["spark"])
    stores = {p: open_store(s) for p, s in settings.items()}
    entities = {"fraud_detection_v2": fraud_entities(first.clean_dir),
                "churn_prediction_v1": churn_entities(first.clean_dir)}
    events = sum(len(pd.read_parquet(first.clean_dir / f"{t}.parquet", columns=[])) for t in
                 ("transactions", "activity"))
    print(f"{events:,} events, {args.users:,} users, {args.days} days; "
          f"training rows: {', '.join(f'{s} {len(e):,}' for s, e in entities.items())}")
    build_training_set(stores["spark"], "churn_prediction_v1", entities["churn_prediction_v1"].head(10))

    times: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for service, frame in entities.items():
            results = {}
            for profile, store in stores.items():
                t0 = time.perf_counter()
                results[profile] = build_training_set(store, service, frame)
                times.setdefault(f"training set {service}", {}).setdefault(profile, []).append(
                    time.perf_counter() - t0)
            pd.testing.assert_frame_equal(results["spark"], results["redis"])
        for profile, s in settings.items():
            redis.Redis(host="127.0.0.1", port=6379, db=DBS[profile]).flushdb()
            t0 = time.perf_counter()
            materialize_interval(s, start, end, sorted(v.name for v in stores[profile].list_feature_views()
                                                       if v.online), end - start + timedelta(days=1),
                                 stores[profile])
            times.setdefault("materialize the history", {}).setdefault(profile, []).append(time.perf_counter() - t0)
        local, spark = _contents(DBS["redis"]), _contents(DBS["spark"])
        assert local == spark and len(local) > 0, "the Spark engine wrote other bytes than the local engine"
    print(f"\n{'medians of ' + str(args.rounds) + ' rounds':<44} {'local (s)':>10} {'spark (s)':>10} {'spark/local':>12}")
    for name, by in times.items():
        a, b = statistics.median(by["redis"]), statistics.median(by["spark"])
        print(f"{name:<44} {a:>10.2f} {b:>10.2f} {b / a:>11.2f}x")
    print(f"\nequal: training sets cell for cell, {len(local):,} Redis keys byte for byte")


if __name__ == "__main__":
    main()
