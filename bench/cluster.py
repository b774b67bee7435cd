"""Redis Cluster vs a single Redis, same run: materialization, online reads, memory per entity.

Both are private: a redis-server and a local cluster (3 masters + 3 replicas) on free ports,
started and stopped here. The deployment is the serving benchmark's (`data/bench-serving`, built
once). Each round flushes both, materializes what is servable into each (the `redis` and
`redis-cluster` profiles, the same write path), then times the server's reader on the same rows:
one entity row per call (a single prediction) and 64 per call (a batch). Rounds alternate the order;
ratios are cluster / single, medians over rounds, after one round that is not measured. Memory is
`used_memory` after materialization minus before, per entity key (on the cluster: summed over the
masters; replicas hold a second copy).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import SERVICE, Row, _summary, free_port, prepare, request_bodies  # noqa: E402


@dataclass
class Measured:
    materialize_s: float
    single_p50_ms: float
    single_p99_ms: float
    batch_p50_ms: float
    batch_p99_ms: float
    bytes_per_key: float
    keys: int


def _used_memory(clients: list) -> int:
    return sum(int(c.info("memory")["used_memory"]) for c in clients)


def measure(settings, end, rows: list[dict], masters: list, iterations: int) -> Measured:
    from feastkit.store import materialize_servable, open_store
    from serving.features import ServiceReader

    for client in masters:
        client.flushall()
    before = _used_memory(masters)
    store = open_store(settings)
    started = time.perf_counter()
    materialize_servable(settings, end, store=store)
    materialize_s = time.perf_counter() - started
    keys = sum(c.dbsize() for c in masters)
    used = _used_memory(masters) - before
    reader = ServiceReader.build(store, SERVICE)
    stamps = [r["transaction_epoch"] for r in rows]

    def timed(size: int) -> Row:
        latencies = []
        started = time.perf_counter()
        for i in range(iterations):
            at = (i * size) % (len(rows) - size)
            t0 = time.perf_counter()
            reader.read(rows[at:at + size], stamps[at:at + size])
            latencies.append(time.perf_counter() - t0)
        return _summary(f"read {size}", 1, latencies, time.perf_counter() - started)

    timed(1)  # warm: connections to every node made
    one, batch = timed(1), timed(64)
    return Measured(materialize_s, one.p50_ms, one.p99_ms, batch.p50_ms, batch.p99_ms, used / max(keys, 1), keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "bench-serving")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2000, help="reads per shape and round")
    args = parser.parse_args()

    import redis

    from feastkit.store import quiet_feast
    from tests.integration.redis_cluster import LocalRedisCluster

    quiet_feast()
    port = free_port()
    single_dir = Path(tempfile.mkdtemp(prefix="bench-single-redis-"))
    single = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(single_dir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    cluster = LocalRedisCluster.start_new(Path(tempfile.mkdtemp(prefix="bench-cluster-")))
    try:
        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        settings, _, end = prepare(args.workdir, port, args.users, rebuild=False)
        profile = settings.repo_path / "profiles" / "redis-cluster.yaml"
        if not profile.is_file():  # a deployment built before the profile shipped
            shutil.copy(ROOT / "feature_repo" / "profiles" / "redis-cluster.yaml", profile)
        on_cluster = settings.model_copy(update={"profile": "redis-cluster",
                                                 "redis_connection_string": cluster.connection_string})
        bodies = request_bodies(settings, end, n=2048)
        rows = [{"user_id": b["user_id"], "merchant_id": b["merchant_id"], "amount": b["amount"],
                 "transaction_epoch": datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00")).timestamp()}
                for b in bodies]
        targets = {"single Redis": (settings, [redis.Redis(port=port)]),
                   "Redis Cluster (3 masters)": (on_cluster, [redis.Redis(port=p) for p in cluster.masters()])}
        results: dict[str, list[Measured]] = {name: [] for name in targets}
        # a round that is not measured: the first materialization into a fresh server also pays its
        # one-time allocations (1,229 bytes per key in a new cluster's first round; 569, the median of 3)
        for target_settings, masters in targets.values():
            measure(target_settings, end, rows, masters, 10)
        print("  warmed up both", flush=True)
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                target_settings, masters = targets[name]
                results[name].append(measure(target_settings, end, rows, masters, args.iterations))
                print(f"  measured {name} (round {r + 1})", flush=True)
    finally:
        cluster.stop()
        single.terminate()
        single.wait(timeout=30)
        shutil.rmtree(single_dir, ignore_errors=True)

    def med(name: str, field: str) -> float:
        return statistics.median(getattr(m, field) for m in results[name])

    fields = [("materialize_s", "materialize s"), ("single_p50_ms", "read 1 row p50 ms"),
              ("single_p99_ms", "read 1 row p99 ms"), ("batch_p50_ms", "read 64 rows p50 ms"),
              ("batch_p99_ms", "read 64 rows p99 ms"), ("bytes_per_key", "bytes per key")]
    names = list(results)
    print(f"\nRedis Cluster vs single Redis: {SERVICE} reader, {results[names[0]][0].keys:,} keys, "
          f"medians of {args.rounds} round(s), loopback, 2 CPUs")
    print("| measure | " + " | ".join(names) + " | cluster / single |")
    print("|---|" + "---:|" * (len(names) + 1))
    for field, label in fields:
        a, b = med(names[0], field), med(names[1], field)
        print(f"| {label} | {a:,.3f} | {b:,.3f} | {b / a:.2f}x |")
    for name in names:
        print(f"{name} per round (materialize s): {[round(m.materialize_s, 2) for m in results[name]]}")


if __name__ == "__main__":
    main()
