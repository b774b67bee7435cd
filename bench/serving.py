"""Serving benchmark: POST /v1/predict/fraud vs `feast serve`, the Feast SDK and raw Redis, same run.

Everything runs on loopback against a private redis-server (started on a free port, stopped at
the end). The HTTP load comes from a separate process (`bench/serving.py loadgen`): an asyncio
keep-alive HTTP/1.1 client with pre-built requests, so the client costs as little as possible
and the same client drives both servers. Output: a table of p50/p95/p99 latency and throughput
per concurrency level, with ratios against `feast serve` for the same feature service
(fraud_detection_v1: two feature views + the python-mode on-demand view) and entities.

    python bench/serving.py                        # build (or reuse) data, run, print the table
    python bench/serving.py --duration 10 --concurrency 1,4,16,64 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVICE = "fraud_detection_v1"


# Load generator (runs in its own process) ---------------------------------------------------------


def _request_bytes(host: str, port: int, path: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n").encode()
    return head + payload


async def _connection(host: str, port: int, requests: list[bytes], offset: int, step: int,
                      warm_until: float, stop_at: float, latencies: list[float],
                      errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                break
            writer.write(requests[i % len(requests)])
            i += step
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            if started >= warm_until:
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(f"{status}: {body[:200]!r}")
    finally:
        writer.close()


async def _load(host: str, port: int, requests: list[bytes], concurrency: int, duration: float,
                warmup: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    now = time.perf_counter()
    warm_until, stop_at = now + warmup, now + warmup + duration
    await asyncio.gather(*(_connection(host, port, requests, k, concurrency, warm_until, stop_at,
                                       latencies, errors) for k in range(concurrency)))
    return {"latencies": latencies, "errors": len(errors), "first_error": errors[:1],
            "seconds": duration}


def loadgen_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="serving.py loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--bodies", required=True, help="JSON file: list of request bodies")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", required=True, help="write the JSON result to this file")
    args = parser.parse_args(argv)
    host, port = args.url.split("//", 1)[1].split(":")
    bodies = json.loads(Path(args.bodies).read_text())
    requests = [_request_bytes(host, int(port), args.path, b) for b in bodies]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_load(host, int(port), requests, args.concurrency, args.duration,
                               args.warmup))
    Path(args.out).write_text(json.dumps(result))


# Measurement helpers ----------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    concurrency: int | str
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rps: float
    errors: int = 0


def _summary(name: str, concurrency: int | str, latencies: list[float], seconds: float,
             errors: int = 0) -> Row:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return Row(name, concurrency, pct(0.50), pct(0.95), pct(0.99), len(ordered) / seconds, errors)


def run_load(url: str, path: str, bodies_file: Path, concurrency: int, duration: float) -> dict:
    out = bodies_file.with_suffix(f".result-{concurrency}.json")
    proc = subprocess.run(
        [sys.executable, __file__, "loadgen", "--url", url, "--path", path, "--bodies",
         str(bodies_file), "--concurrency", str(concurrency), "--duration", str(duration), "--out", str(out)],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"load generator failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server at {url} not up after {timeout}s:\n{log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


# Deployment -------------------------------------------------------------------------------------


def prepare(workdir: Path, redis_port: int, users: int, rebuild: bool):
    """Data, features, feast apply (redis profile), two bundles; reused when already built."""
    from feastkit.clean import data_range
    from feastkit.settings import Settings
    from feastkit.store import applied_specs, apply_repo, materialize_servable, open_store
    from pipelines.aggregates import compute_features
    from pipelines.synthetic import SyntheticConfig, generate, write
    from pipelines.training import train_service
    from pipelines.validation import validate_all

    if rebuild:
        shutil.rmtree(workdir, ignore_errors=True)
    repo = workdir / "repo"
    if not repo.is_dir():
        shutil.copytree(ROOT / "feature_repo", repo,
                        ignore=shutil.ignore_patterns("data", "__pycache__"))
    settings = Settings(project_root=ROOT, data_dir=workdir / "data", repo_path=repo, profile="redis",
                        redis_connection_string=f"127.0.0.1:{redis_port}")
    marker = workdir / "built.json"
    if not marker.is_file():
        print(f"building the benchmark deployment in {workdir} (once; reused next time)", flush=True)
        config = SyntheticConfig(n_users=users, n_merchants=max(20, users // 20), days=60, seed=5,
                                 start=datetime(2026, 1, 1, tzinfo=UTC))
        write(generate(config), settings.raw_dir)
        validate_all(settings.raw_dir, settings.clean_dir, settings.quarantine_dir,
                     as_of=config.end + timedelta(days=90))
        start, end = data_range(settings.clean_dir)
        apply_repo(settings)
        store = open_store(settings)
        compute_features(applied_specs(store), settings.clean_dir, settings.features_dir, start, end)
        for service in (SERVICE, "churn_prediction_v1"):
            train_service(store, service, settings.clean_dir, settings.models_dir)
        marker.write_text(json.dumps({"end": end.isoformat()}))
    end = datetime.fromisoformat(json.loads(marker.read_text())["end"])
    store = open_store(settings)
    materialize_servable(settings, end, store=store)
    return settings, store, end


def request_bodies(settings, end: datetime, n: int = 512) -> list[dict]:
    import pandas as pd

    tx = pd.read_parquet(settings.clean_dir / "transactions.parquet")
    recent = tx[tx["event_timestamp"] >= pd.Timestamp(end) - pd.Timedelta(days=1)]
    sample = recent.sample(n=min(n, len(recent)), random_state=3, replace=len(recent) < n)
    at = pd.Timestamp(end) + pd.Timedelta(hours=1)
    return [{"transaction_id": f"b-{i}", "user_id": int(r.user_id), "merchant_id": int(r.merchant_id),
             "amount": round(float(r.amount), 2), "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
            for i, r in enumerate(sample.itertuples())]


def feast_bodies(bodies: list[dict]) -> list[dict]:
    out = []
    for b in bodies:
        epoch = datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00")).timestamp()
        out.append({"feature_service": SERVICE, "entities": {
            "user_id": [b["user_id"]], "merchant_id": [b["merchant_id"]], "amount": [b["amount"]],
            "transaction_epoch": [epoch]}})
    return out


# In-process baselines -----------------------------------------------------------------------------


def _timed(name: str, fn, items: list, iterations: int) -> Row:
    for item in items[:50]:
        fn(item)
    latencies = []
    started = time.perf_counter()
    for i in range(iterations):
        t0 = time.perf_counter()
        fn(items[i % len(items)])
        latencies.append(time.perf_counter() - t0)
    return _summary(name, 1, latencies, time.perf_counter() - started)


def in_process_rows(settings, store, bodies: list[dict], iterations: int) -> list[Row]:
    import pandas as pd
    import redis
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from threadpoolctl import threadpool_limits

    from feastkit.bundle import current_bundle
    from feastkit.feast_compat import redis_key
    from serving.features import ServiceReader
    from serving.inference import Scorer

    service = store.get_feature_service(SERVICE)
    rows = [{"user_id": b["user_id"], "merchant_id": b["merchant_id"], "amount": b["amount"],
             "transaction_epoch": datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00"))
             .timestamp()} for b in bodies]
    out = [_timed("Feast SDK get_online_features (in-process)",
                  lambda r: store.get_online_features(features=service, entity_rows=[r]).to_dict(),
                  rows, iterations)]
    reader = ServiceReader.build(store, SERVICE)
    out.append(_timed("feastkit ServiceReader.read (in-process)",
                      lambda r: reader.read([r], [r["transaction_epoch"]]), rows, iterations))
    bundle = current_bundle(settings.models_dir, SERVICE)
    features = [reader.read([r], [r["transaction_epoch"]]) for r in rows[:64]]
    frames = [pd.DataFrame(f) for f in features]
    scorer = Scorer(bundle)
    with threadpool_limits(limits=1, user_api="openmp"):  # as the server runs it
        out.append(_timed("model: bundle.predict_proba, 1 row, pandas (in-process)",
                          bundle.predict_proba, frames, iterations))
        out.append(_timed("model: feastkit Scorer, 1 row (in-process)", scorer.predict_proba,
                          features, iterations))

    project = store.project
    client = redis.Redis(host="127.0.0.1", port=int(settings.redis_connection_string.split(":")[1]))

    def key(join_key: str, value: int) -> bytes:
        return redis_key(project, EntityKey(join_keys=[join_key],
                                            entity_values=[Value(int64_val=value)]), 3)

    keys = [(key("user_id", r["user_id"]), key("merchant_id", r["merchant_id"])) for r in rows]
    assert client.hgetall(keys[0][0]), "raw Redis baseline found no hash for a known user"

    def raw(pair: tuple[bytes, bytes]) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(pair[0])
        pipe.hgetall(pair[1])
        pipe.execute()

    out.append(_timed("raw redis-py HGETALL user+merchant (floor)", raw, keys, iterations))
    return out


# Main -----------------------------------------------------------------------------------------------


def print_table(http: list[Row], local: list[Row], levels: list[int]) -> str:
    by = {(r.name, r.concurrency): r for r in http}
    lines = ["| target | conc. | p50 ms | p95 ms | p99 ms | req/s | req/s vs feast serve "
             "| p99 vs feast serve |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in http + local:
        base = by.get(("feast serve /get-online-features", row.concurrency))
        ratio_rps = f"{row.rps / base.rps:.2f}x" if base else ""
        ratio_p99 = f"{row.p99_ms / base.p99_ms:.2f}x" if base else ""
        errors = f" ({row.errors} errors)" if row.errors else ""
        lines.append(f"| {row.name}{errors} | {row.concurrency} | {row.p50_ms:.2f} | "
                     f"{row.p95_ms:.2f} | {row.p99_ms:.2f} | {row.rps:,.0f} | {ratio_rps} | "
                     f"{ratio_p99} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "bench-serving",
                        help="where the benchmark deployment is built (reused across runs)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the deployment")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--concurrency", default="1,4,16,64",
                        help="comma-separated concurrency levels (keep-alive connections)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per level")
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes, the same for both servers")
    parser.add_argument("--iterations", type=int, default=1000, help="in-process calls per baseline")
    parser.add_argument("--log-rounds", type=int, default=5,
                        help="rounds of the prediction log on/off pair per level (alternating order); "
                             "the ratios printed are their medians, as one round on a shared host "
                             "swung from 0.39x to 1.44x and medians of 3 rounds by +-0.2x")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    log_rounds = max(1, args.log_rounds)

    from feastkit.store import quiet_feast

    quiet_feast()
    redis_port = free_port()
    redis_dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    redis_proc = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", str(redis_dir)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    servers: list[subprocess.Popen] = []
    try:
        settings, store, end = prepare(args.workdir, redis_port, args.users, args.rebuild)
        bodies = request_bodies(settings, end)
        files = Path(tempfile.mkdtemp(prefix="bench-serving-"))
        (files / "feastkit.json").write_text(json.dumps(bodies))
        (files / "feast.json").write_text(json.dumps(feast_bodies(bodies)))
        env = {**os.environ, "FEASTKIT_DATA_DIR": str(settings.data_dir),
               "FEASTKIT_REPO_PATH": str(settings.repo_path), "FEASTKIT_PROFILE": "redis",
               "FEASTKIT_REDIS_CONNECTION_STRING": settings.redis_connection_string,
               "FEASTKIT_ACCESS_LOG": "false", "FEASTKIT_REPLAY": "true"}  # historical data
        env["FEASTKIT_PREDICTION_LOG_DIR"] = str(files / "prediction_log")  # the log is on by default
        bin_dir = Path(sys.executable).parent
        ours_port, nolog_port, feast_port = free_port(), free_port(), free_port()
        ours_log, nolog_log, feast_log = (files / "feastkit-serve.log", files / "feastkit-nolog-serve.log",
                                          files / "feast-serve.log")
        ours = subprocess.Popen([str(bin_dir / "feastkit"), "serve", "--port", str(ours_port),
                                 "--workers", str(args.workers)], env=env,
                                stdout=ours_log.open("w"), stderr=subprocess.STDOUT)
        servers.append(ours)
        # the same server with the prediction log off: its cost, measured in the same run
        nolog = subprocess.Popen([str(bin_dir / "feastkit"), "serve", "--port", str(nolog_port),
                                  "--workers", str(args.workers)], env={**env, "FEASTKIT_PREDICTION_LOG": "false"},
                                 stdout=nolog_log.open("w"), stderr=subprocess.STDOUT)
        servers.append(nolog)
        # --max-requests 0: no worker recycling (its default 1000 causes ~800 ms spikes)
        feast = subprocess.Popen([str(bin_dir / "feast"), "-c", str(settings.repo_path), "-f",
                                  str(settings.feature_store_yaml), "serve", "-p", str(feast_port),
                                  "--no-access-log", "--max-requests", "0", "--workers",
                                  str(args.workers)], env=env, cwd=settings.repo_path,
                                 stdout=feast_log.open("w"), stderr=subprocess.STDOUT)
        servers.append(feast)
        ours_url, feast_url = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{feast_port}"
        nolog_url = f"http://127.0.0.1:{nolog_port}"
        wait_http(f"{ours_url}/ready", ours, ours_log)
        wait_http(f"{nolog_url}/ready", nolog, nolog_log)
        wait_http(f"{feast_url}/health", feast, feast_log)

        http: list[Row] = []
        rounds: dict[int, list[tuple[float, float]]] = {}  # level -> (p99 on/off, req/s on/off) per round
        for index, level in enumerate(levels):
            pair = [("feastkit POST /v1/predict/fraud", ours_url, "/v1/predict/fraud", files / "feastkit.json"),
                    ("feastkit, prediction log off", nolog_url, "/v1/predict/fraud", files / "feastkit.json")]
            for round_ in range(log_rounds):
                order = pair if (index + round_) % 2 == 0 else pair[::-1]  # alternate which runs first
                extra = [("feast serve /get-online-features", feast_url, "/get-online-features",
                          files / "feast.json")] if round_ == 0 else []
                measured = {}
                for name, url, path, file in (*order, *extra):
                    result = run_load(url, path, file, level, args.duration)
                    row = _summary(name, level, result["latencies"], result["seconds"], result["errors"])
                    measured[name] = row
                    if round_ == 0:
                        http.append(row)
                    if result["errors"]:
                        print(f"  {name} c={level}: {result['errors']} errors, first: "
                              f"{result['first_error']}", flush=True)
                    print(f"  measured {name} at concurrency {level} (round {round_ + 1})", flush=True)
                on, off = measured[pair[0][0]], measured[pair[1][0]]
                rounds.setdefault(level, []).append((on.p99_ms / off.p99_ms, on.rps / off.rps))
        for proc in servers:
            stop(proc)
        local = in_process_rows(settings, store, bodies, args.iterations)
        print()
        print(f"Serving benchmark: {SERVICE} on Redis, {args.workers} worker(s) per server, "
              f"{args.duration:g}s per level, loopback, {os.cpu_count()} CPUs")
        print(print_table(http, local, levels))
        ours_rows = {r.concurrency: r for r in http if r.name.startswith("feastkit POST")}
        feast_rows = {r.concurrency: r for r in http if r.name.startswith("feast serve")}
        print("\nthroughput ratio feastkit / feast serve: " + ", ".join(
            f"c={c}: {ours_rows[c].rps / feast_rows[c].rps:.2f}x" for c in levels))
        print("p99 feastkit (ms): " + ", ".join(f"c={c}: {ours_rows[c].p99_ms:.2f}" for c in levels))
        print(f"prediction log on / off, median of {log_rounds} round(s): " + ", ".join(
            f"c={c}: p99 {statistics.median(r[0] for r in rounds[c]):.2f}x, "
            f"throughput {statistics.median(r[1] for r in rounds[c]):.2f}x" for c in levels))
        print("  per round (p99, throughput): " + "; ".join(
            f"c={c}: " + ", ".join(f"{a:.2f}x/{b:.2f}x" for a, b in rounds[c]) for c in levels))
        import pyarrow.parquet as pq

        logged = sum(pq.read_metadata(f).num_rows for f in (files / "prediction_log").rglob("*.parquet"))
        print(f"prediction log: {logged:,} rows written by the logging server")
        print(f"(feastkit requests are end to end: features + on-demand view + model; "
              f"the model alone takes {statistics.median(r.p50_ms for r in local[3:4]):.3f} ms p50)")
    finally:
        for proc in servers:
            stop(proc)
        stop(redis_proc)
        shutil.rmtree(redis_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
