"""Aggregate benchmark: raw events -> every feature table, full history vs one incremental hour.

Contenders, each in its own process (so its peak RSS is its own), on the same clean events:
- `full`: `compute_features` over the whole data range (what a first run or a rebuild costs);
- `incremental-hour`: the hour up to noon of the last day, into the existing tables (what a
  scheduled run costs), and `incremental-midnight-hour`: the hour up to the last midnight, the
  dearest one (every live entity gets its daily heartbeat row);
- `duckdb-scan-floor`: one DuckDB pass over the same raw parquet (count, sum, max per user and
  per merchant) -- reading the input once, below which no aggregation can go.

    python bench/aggregates.py                      # 2.5M events, 3 runs: about a minute
    python bench/aggregates.py --users 48000 --days 150 --runs 3   # 10M events: under a minute a run
    python bench/aggregates.py --spark ...          # adds `spark-full`: the full run on local Spark
    python bench/aggregates.py --compute-buckets 8  # adds `full-bucketed`: 8 entity buckets in turn
    python bench/aggregates.py --users 480000 --days 150 --runs 1 --engine-buckets 16  # 100M events,
                                                    # every contender over 16 buckets: memory stays bounded

`spark-full` (with --spark) is the full run on Spark in local mode (`local[2]`, --spark-buckets entity
buckets; the spark profile's engine, `pipelines.spark_windows`). Its time leaves out the JVM's start;
its peak memory is the Python driver's plus the JVM's (the executors' Python workers are not counted).
On one machine Spark can only add cost: the ratio shows what the scale-out path costs here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import Contender, peak_rss_mb, report, run_child, table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONTENDERS = ("full", "incremental-hour", "incremental-midnight-hour", "duckdb-scan-floor")


def make_events(work: Path, users: int, days: int, seed: int, users_per_part: int) -> dict[str, float]:
    """Generate (part by part) and validate synthetic raw events once per flag set; returns clean row
    counts, and the seconds and peak memory of each step when it ran."""
    import duckdb

    from pipelines.synthetic import SyntheticConfig, write_parts
    from pipelines.validation import validate_all

    marker = work / "events.json"
    spec = {"users": users, "days": days, "seed": seed, "users_per_part": users_per_part}
    if marker.exists() and json.loads(marker.read_text())["spec"] == spec:
        return json.loads(marker.read_text())["counts"]
    for sub in ("raw", "clean", "quarantine", "features"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)
    config = SyntheticConfig(n_users=users, n_merchants=max(users // 25, 5), days=days, seed=seed,
                             start=datetime(2026, 1, 1, tzinfo=UTC))
    started = time.perf_counter()
    write_parts(config, work / "raw", users_per_part)
    generated, generated_mb = time.perf_counter() - started, peak_rss_mb()
    validate_all(work / "raw", work / "clean", work / "quarantine", as_of=config.end + timedelta(days=90))
    validated = time.perf_counter() - started - generated
    con = duckdb.connect()
    counts = {t: con.execute(f"SELECT count(*) FROM read_parquet('{work / 'clean' / t}.parquet')").fetchone()[0]
              for t in ("transactions", "activity", "fraud_labels")}
    marker.write_text(json.dumps({"spec": spec, "counts": counts}))
    return {**counts, "generate_s": generated, "generate_peak_mb": generated_mb, "validate_s": validated}


def child(contender: str, work: Path) -> None:
    from feastkit.clean import data_range
    from feastkit.store import repo_specs
    from pipelines.aggregates import compute_features as compute

    specs = repo_specs(ROOT / "feature_repo")

    def compute_features(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return compute(specs, *args, **kwargs)

    from pipelines.aggregates import BucketedWindowEngine

    clean, features = work / "clean", work / "features"
    every = int(os.environ.get("FEASTKIT_BENCH_ENGINE_BUCKETS", "1"))
    engine = BucketedWindowEngine(every) if every > 1 else None  # the engine of every computing contender
    if contender in ("full", "full-bucketed"):
        if contender == "full-bucketed":
            engine = BucketedWindowEngine(int(os.environ.get("FEASTKIT_COMPUTE_BUCKETS", "1")))
            features = work / "features-bucketed"
        shutil.rmtree(features, ignore_errors=True)
        started = time.perf_counter()
        result = compute_features(clean, features, engine=engine)
        seconds = time.perf_counter() - started
        rows = sum(result.rows.values())
    elif contender.startswith("incremental"):
        _, end = data_range(clean)
        end = end.replace(hour=0)  # the last midnight: every live entity gets its heartbeat row
        if contender == "incremental-hour":
            end -= timedelta(hours=12)  # noon of the last day: an ordinary hour
        if not features.exists():
            compute_features(clean, features, end=end - timedelta(hours=1), engine=engine)
        started = time.perf_counter()
        result = compute_features(clean, features, start=end - timedelta(hours=1), end=end, engine=engine)
        seconds = time.perf_counter() - started
        rows = sum(result.rows.values())
    elif contender == "spark-full":
        from pipelines.spark_windows import SparkWindowEngine, spark_session

        buckets = int(os.environ.get("FEASTKIT_SPARK_BUCKETS", "16"))
        spark = spark_session("local[2]", shuffle_partitions=buckets)
        out = work / "features-spark"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        result = compute_features(clean, out, engine=SparkWindowEngine(spark, buckets))
        seconds = time.perf_counter() - started
        rows = sum(result.rows.values())
        jvm = Path(f"/proc/{spark.sparkContext._gateway.proc.pid}/status").read_text()
        jvm_mb = int(next(line.split()[1] for line in jvm.splitlines() if line.startswith("VmHWM"))) / 1024
        report({"seconds": seconds, "rows": rows, "extra_peak_mb": jvm_mb})
        spark.stop()
        return
    else:
        import duckdb

        con = duckdb.connect()
        started = time.perf_counter()
        for source, key in (("transactions", "user_id"), ("transactions", "merchant_id"),
                            ("activity", "user_id")):
            con.execute(f"SELECT {key}, count(*), sum(amount), max(event_timestamp) "
                        f"FROM read_parquet('{work / 'clean' / source}.parquet') GROUP BY {key}").fetchall()
        seconds = time.perf_counter() - started
        rows = 0
    report({"seconds": seconds, "rows": rows})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        child(argv[1], Path(argv[2]))
        return
    if argv and argv[0] == "prepare":
        report(make_events(Path(argv[1]), *(int(a) for a in argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=12_000, help="synthetic users (events grow with them)")
    parser.add_argument("--days", type=int, default=150, help="days of history")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender (the median is shown)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users-per-part", type=int, default=50_000,
                        help="users generated at once (more are written part by part: memory holds one part)")
    parser.add_argument("--workdir", type=Path, help="keep generated events here (reused when flags match)")
    parser.add_argument("--spark", action="store_true", help="add the full run on local Spark (spark-full)")
    parser.add_argument("--compute-buckets", type=int, default=0,
                        help="add the full run of the local engine over this many entity buckets (full-bucketed)")
    parser.add_argument("--spark-buckets", type=int, default=16, help="entity buckets of the Spark run")
    parser.add_argument("--engine-buckets", type=int, default=1,
                        help="every computing contender runs the local engine over this many entity buckets "
                             "(for events that do not fit in memory at once; 1 is the one pass)")
    args = parser.parse_args(argv)
    if min(args.users, args.days, args.runs) < 1:
        parser.error("users, days and runs must be positive")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="feastkit-bench-aggregates-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        counts = run_child([__file__, "prepare", str(work), str(args.users), str(args.days), str(args.seed),
                            str(args.users_per_part)])
        events = counts["transactions"] + counts["activity"]
        made = (f": generated in {counts['generate_s']:.0f}s (peak {counts['generate_peak_mb']:,.0f} MB), "
                f"validated in {counts['validate_s']:.0f}s (peak {counts['peak_rss_mb']:,.0f} MB)"
                if "generate_s" in counts else " (the kept events)")
        print(f"events: {events:,} ({counts['transactions']:,} transactions, {counts['activity']:,} "
              f"activity, {counts['fraud_labels']:,} labels), ready in {time.perf_counter() - started:.0f}s"
              f"{made}", flush=True)
        names = (CONTENDERS + (("full-bucketed",) if args.compute_buckets > 1 else ())
                 + (("spark-full",) if args.spark else ()))
        os.environ["FEASTKIT_COMPUTE_BUCKETS"] = str(max(args.compute_buckets, 1))
        os.environ["FEASTKIT_BENCH_ENGINE_BUCKETS"] = str(max(args.engine_buckets, 1))
        contenders = {name: Contender(name) for name in names}
        os.environ["FEASTKIT_SPARK_BUCKETS"] = str(args.spark_buckets)
        produced: dict[str, int] = {}
        for run in range(args.runs):
            for name, contender in contenders.items():
                measured = run_child([__file__, "child", name, str(work)])
                contender.seconds.append(measured["seconds"])
                contender.peak_mb.append(measured["peak_rss_mb"] + measured.get("extra_peak_mb", 0))
                produced[name] = measured["rows"]
                print(f"  run {run + 1}: {name:20s} {measured['seconds']:8.2f}s {measured['peak_rss_mb']:8.0f} MB",
                      flush=True)
        how = f", the local engine over {args.engine_buckets} entity buckets" if args.engine_buckets > 1 else ""
        lines = [table(f"Aggregates: {events:,} raw events ({args.users:,} users, {args.days} days) -> "
                       f"all feature tables{how}", list(contenders.values()), floor="duckdb-scan-floor",
                       default="full", units=events, unit_name="events/s")]
        share = contenders["incremental-hour"].median_s / contenders["full"].median_s
        midnight = contenders["incremental-midnight-hour"].median_s / contenders["full"].median_s
        lines.append(f"- feature rows written: full {produced['full']:,}, last hour "
                     f"{produced['incremental-hour']:,}, midnight hour {produced['incremental-midnight-hour']:,}")
        lines.append(f"- one incremental hour costs {share:.3f} of a full run (1/{1 / share:.0f}); "
                     f"the midnight hour {midnight:.3f} (1/{1 / midnight:.0f})")
        def versus_full(name: str, label: str) -> str:
            other, full = contenders[name], contenders["full"]
            return (f"- {label} / one pass, full run: {other.median_s / full.median_s:.2f}x the time, "
                    f"{other.max_peak_mb / full.max_peak_mb:.2f}x the peak memory; rows "
                    f"{'equal' if produced[name] == produced['full'] else 'DIFFER'} ({produced[name]:,})")

        if args.compute_buckets > 1:
            lines.append(versus_full("full-bucketed", f"the local engine over {args.compute_buckets} entity buckets"))
        if args.spark:
            lines.append(versus_full("spark-full", f"Spark (local[2], {args.spark_buckets} buckets)"))
        print("\n" + "\n".join(lines))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
