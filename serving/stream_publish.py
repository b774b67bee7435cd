"""Scored transactions onto the event stream, off the request path, so the realtime counters follow the traffic being scored."""

from __future__ import annotations

import logging
import queue
import threading
from datetime import UTC, datetime
from typing import Any

from feastkit.event_stream import StreamLayout, StreamSource, publish
from feastkit.settings import Settings
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

QUEUE_EVENTS = 100_000   # events waiting to be appended; past it they are dropped and counted
BATCH_EVENTS = 500       # events appended per pipelined round trip


class StreamPublisher:
    """Appends each scored row that carries a stream source's columns to that source's stream.

    A route hands over its rows after answering (a queue append); one thread sends them with
    pipelined XADDs. A full queue or an unreachable broker drops events and counts them
    (`feastkit_stream_published_total{outcome}`): the request is never slowed or failed by it.
    """

    def __init__(self, settings: Settings, sources: list[StreamSource], metrics: ServingMetrics) -> None:
        import redis

        self.settings, self.sources, self.metrics = settings, sources, metrics
        self.layouts = {s.name: StreamLayout(settings.stream_prefix, s.name, settings.stream_partitions)
                        for s in sources}
        self.client = redis.Redis.from_url(settings.stream_redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.queue: queue.Queue[tuple[StreamSource, dict[str, Any]] | None] = queue.Queue(QUEUE_EVENTS)
        self.thread: threading.Thread | None = None

    def offer(self, rows: list[dict[str, Any]], as_of: list[float], ids: list[str]) -> None:
        """Queue the events of scored rows (each row's request time is the event's time)."""
        for source in self.sources:
            needed = (source.entity_key, *source.value_columns)
            for row, at, event_id in zip(rows, as_of, ids, strict=True):
                if any(row.get(c) is None for c in needed):
                    continue
                event = {k: v for k, v in row.items() if not k.endswith("_epoch")}
                event[source.event_id] = event_id
                event[source.timestamp] = datetime.fromtimestamp(at, UTC).isoformat()
                try:
                    self.queue.put_nowait((source, event))
                except queue.Full:
                    self.metrics.published.labels("queue_full").inc()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="feastkit-stream-publish", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Send what is queued, then stop."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join(timeout=10)
            self.thread = None

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            batch = [] if first is None else [first]
            stopping = first is None
            while not stopping and len(batch) < BATCH_EVENTS:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            self._send(batch)
            if stopping:
                return

    def _send(self, batch: list[tuple[StreamSource, dict[str, Any]]]) -> None:
        by_source: dict[str, list[dict[str, Any]]] = {}
        for source, event in batch:
            by_source.setdefault(source.name, []).append(event)
        for source in self.sources:
            events = by_source.get(source.name)
            if not events:
                continue
            try:
                publish(self.client, self.layouts[source.name], source.entity_key, events,
                        self.settings.stream_max_length)
                self.metrics.published.labels("appended").inc(len(events))
            except Exception as exc:  # the broker is down: the predictions stand, the events are counted lost
                self.metrics.published.labels("broker_error").inc(len(events))
                log.warning("scored transactions not appended to the stream",
                            extra={"events": len(events), "error": f"{type(exc).__name__}: {exc}"})
