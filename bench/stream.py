"""Stream worker benchmark: events/s against a raw XREADGROUP + pipelined HSET floor, end-to-end lag, memory per entity.

Everything runs against a private redis-server on a free port (the broker and, for the worker,
the Redis online store), started here and stopped at the end. Same run, same events:

- floor: read the stream in a consumer group 1000 entries at a time and HSET one counter per
  entity in one pipeline per batch, then XACK -- the least any consumer of this stream can do;
- worker: `pipelines.stream.StreamWorker` on the same entries (parse and validate, deduplicate,
  recompute the changed rows with compute's window engine, push online through Feast into Redis,
  log offline, commit windows + acks);
- lag: a producer appends events at a steady rate with the current time; per event, append ->
  the worker's online write for it returned (the value is readable from then on), p50/p99;
- memory: Python heap per held entity (tracemalloc over the held windows) and Redis memory per
  committed entity (MEMORY USAGE of the state hash).

    python bench/stream.py                      # 20,000 events, 200 events/s for 10 s
    python bench/stream.py --events 50000 --rate 500 --duration 20
"""

from __future__ import annotations

import argparse
import copy
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def events_of(settings, count: int) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(settings.clean_dir / "transactions.parquet").sort_by("event_timestamp")
    rows = table.slice(max(0, table.num_rows - count)).to_pylist()
    for row in rows:
        row["event_timestamp"] = row["event_timestamp"].isoformat()
    return rows


def floor_run(client, stream: str, events: list[dict]) -> float:
    """XREADGROUP 1000 at a time, one HINCRBY per event and an XACK per batch, pipelined."""
    from feastkit.event_stream import EVENT_FIELD

    client.xgroup_create(stream, "floor", id="0", mkstream=True)
    started = time.perf_counter()
    done = 0
    while done < len(events):
        reply = client.xreadgroup("floor", "f", {stream: ">"}, count=1000)
        entries = reply[0][1] if reply else []
        pipe = client.pipeline(transaction=False)
        for _, fields in entries:
            event = json.loads(fields[EVENT_FIELD.encode()])
            pipe.hincrbyfloat(f"floor:{event['user_id']}", "amount_sum", event["amount"])
        pipe.xack(stream, "floor", *[e for e, _ in entries])
        pipe.execute()
        done += len(entries)
    return time.perf_counter() - started


def worker_run(settings, store, client, events: list[dict]) -> tuple[float, object]:
    from pipelines.stream import StreamWorker

    worker = StreamWorker(settings, store, client, consumer="bench")
    worker.start()
    started = time.perf_counter()
    done = 0
    while done < len(events):
        done += worker.step().entries
    worker.commit()
    return time.perf_counter() - started, worker


def lag_run(settings, store, client, users: list[int], rate: float, duration: float) -> list[float]:
    """A producer at `rate` events/s of the current time; per event, append -> online write returned."""
    import redis

    from feastkit.event_stream import StreamLayout, publish
    from pipelines.stream import StreamWorker

    appended: dict[str, float] = {}
    readable: dict[str, float] = {}

    class Timed(StreamWorker):
        def _apply(self, part, entries, report):  # noqa: ANN001 (the worker's own signature)
            super()._apply(part, entries, report)
            now = time.perf_counter()
            for _, fields in entries:
                readable.setdefault(json.loads(fields[b"event"])["transaction_id"], now)

    worker = Timed(settings, store, client, consumer="lag")
    worker.start()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    layout = StreamLayout(settings.stream_prefix, "transactions", settings.stream_partitions)
    producer = redis.Redis(port=client.connection_pool.connection_kwargs["port"])
    n = int(rate * duration)
    begin = time.perf_counter()
    for i in range(n):
        due = begin + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        tid = f"lag-{i}"
        event = {"transaction_id": tid, "user_id": users[i % len(users)], "amount": 10.0 + i % 7,
                 "event_timestamp": datetime.now(UTC).isoformat()}
        appended[tid] = time.perf_counter()
        publish(producer, layout, "user_id", [event])
    deadline = time.perf_counter() + 30
    while len(readable) < n and time.perf_counter() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=30)
    return [readable[t] - appended[t] for t in appended if t in readable]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=200.0, help="Events/s of the lag run.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds of the lag run.")
    parser.add_argument("--users", type=int, default=3000)
    args = parser.parse_args()

    import redis

    from pipelines.synthetic import SyntheticConfig

    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            from bench.common import applied_dataset
            from feastkit.store import apply_repo, open_store

            days = max(7, int(args.events / (args.users * 1.0)) + 2)
            config = SyntheticConfig(n_users=args.users, n_merchants=200, days=days, seed=5, bad_rows=0)
            local, _, _ = applied_dataset(Path(tmp), config)
            settings = local.model_copy(update={
                "profile": "redis", "redis_connection_string": f"127.0.0.1:{port}",
                "stream_redis_url": f"redis://127.0.0.1:{port}/0", "stream_prefix": "bench:",
                "stream_commit_seconds": 1.0, "stream_batch_events": 1000})
            import os

            os.environ["FEASTKIT_REDIS_CONNECTION_STRING"] = settings.redis_connection_string
            apply_repo(settings)
            store = open_store(settings)
            events = events_of(settings, args.events)
            from feastkit.event_stream import StreamLayout, publish

            layout = StreamLayout("bench:", "transactions")
            for i in range(0, len(events), 5000):
                publish(client, layout, "user_id", events[i:i + 5000], max_length=10 * len(events))
            floor_s = floor_run(client, layout.stream_key(0), events)
            worker_s, worker = worker_run(settings, store, client, events)
            held = worker.partitions[0].entities
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            clone = copy.deepcopy(held)  # what the held windows take, allocated afresh
            python_bytes = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            del clone
            redis_bytes = client.memory_usage(worker.partitions[0].state_key) or 0
            users = sorted({e["user_id"] for e in events})
            lags = lag_run(settings, store, client, users, args.rate, args.duration)
    finally:
        server.terminate()
        server.wait(timeout=10)

    n = len(events)
    lags.sort()
    p = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))] * 1000  # noqa: E731
    print(f"### Stream worker ({n:,} events, {len(users):,} users; lag at {args.rate:g} events/s for "
          f"{args.duration:g} s)\n")
    print("| contender | seconds | events/s | x floor (time) |")
    print("|---|---:|---:|---:|")
    print(f"| floor: XREADGROUP + pipelined HINCRBYFLOAT + XACK | {floor_s:.2f} | {n / floor_s:,.0f} | 1.00 |")
    print(f"| feastkit stream worker (Redis online store) | {worker_s:.2f} | {n / worker_s:,.0f} | "
          f"{worker_s / floor_s:.1f} |")
    print(f"\nend-to-end lag (append -> online write returned), {len(lags):,} events: "
          f"p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {lags[-1] * 1000:.1f} ms")
    entities = max(1, len(held))
    print(f"memory per held entity ({len(held):,} entities with events in the window + lateness at the "
          f"end of the run): Python heap {python_bytes / entities:,.0f} B, Redis committed state "
          f"{redis_bytes / entities:,.0f} B")
    if statistics.median(lags) <= 0:
        raise SystemExit("no lag measured")


if __name__ == "__main__":
    main()
