"""The event stream's layout on Redis Streams: stream keys per source and partition, the entry format, publishing.

One Redis stream per event source (`transactions`) and partition. An entry holds one event as a
JSON object in its `event` field, with the source's column names (`transaction_id`, `user_id`,
`amount`, `event_timestamp` as ISO 8601 with a timezone, ...). Events are partitioned by the
entity key of the views the stream feeds (crc32 of its JSON text), so one entity's events always
land in one partition, and the one worker owning that partition holds that entity's windows.

Every key of a partition -- the stream, the worker's committed state, the dead-letter stream --
shares one Redis Cluster hash tag, so a worker commits them in one MULTI/EXEC on any deployment.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

EVENT_FIELD = "event"


@dataclass(frozen=True)
class StreamLayout:
    """Where the events of one source go: `<prefix>{<source>}` or `<prefix>{<source>.<p>}` per partition."""

    prefix: str
    source: str
    partitions: int = 1

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"a stream needs at least one partition, not {self.partitions}")

    def stream_key(self, partition: int) -> str:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} is outside 0..{self.partitions - 1}")
        tag = self.source if self.partitions == 1 else f"{self.source}.{partition}"
        return f"{self.prefix}{{{tag}}}"

    def keys(self) -> list[str]:
        return [self.stream_key(p) for p in range(self.partitions)]

    def partition_of(self, entity_key: Any) -> int:
        """The partition of an entity: the same for one key whichever process asks."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(json.dumps(entity_key).encode()) % self.partitions

    @staticmethod
    def state_key(stream_key: str, group: str) -> str:
        """The hash holding a consumer group's committed windows for one partition (same hash tag)."""
        return f"{stream_key}:state:{group}"

    @staticmethod
    def dead_letter_key(stream_key: str) -> str:
        """Where events the worker cannot apply go, each with its reason (same hash tag)."""
        return f"{stream_key}:dead"


def encode_event(event: Mapping[str, Any]) -> dict[str, str]:
    """An entry's fields for one event."""
    return {EVENT_FIELD: json.dumps(event, separators=(",", ":"), allow_nan=False)}


def publish(client: Any, layout: StreamLayout, entity_column: str, events: Iterable[Mapping[str, Any]],
            max_length: int = 1_000_000) -> list[str]:
    """Append events to their partitions' streams in one pipelined round trip; the entry ids, in order.

    Each stream is trimmed to about `max_length` entries (`XADD ... MAXLEN ~`), so an unconsumed
    stream cannot grow without bound.
    """
    pipe = client.pipeline(transaction=False)
    count = 0
    for event in events:
        partition = layout.partition_of(event.get(entity_column))
        pipe.xadd(layout.stream_key(partition), encode_event(event), maxlen=max_length, approximate=True)
        count += 1
    if not count:
        return []
    return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]


@dataclass(frozen=True)
class StreamSource:
    """An event source feeding stream-fed views: what a producer must send and how it is partitioned."""

    name: str
    table: str                       # its clean table (the events' columns and types)
    entity_key: str                  # the key the stream is partitioned by
    event_id: str
    timestamp: str
    value_columns: tuple[str, ...]   # the columns the views aggregate (each event must carry them)


def stream_sources(feature_views: Iterable[Any]) -> list[StreamSource]:
    """The sources of the views declared stream-fed (`stream_event_id=`), read from the registry.

    The views of one source must agree on the entity key (its stream is partitioned by it) and on
    the event id; a DeclarationError names the source otherwise.
    """
    from feastkit.declarations import STREAM_EVENT_ID_TAG, DeclarationError, ViewSpec

    by_source: dict[str, list[tuple[Any, str]]] = {}
    for view in feature_views:
        event_id = (view.tags or {}).get(STREAM_EVENT_ID_TAG)
        spec = ViewSpec.of(view) if event_id else None
        if spec is not None and spec.sources:
            by_source.setdefault(spec.sources[0].name, []).append((spec, event_id))
    found = []
    for name, fed in sorted(by_source.items()):
        keys = {spec.entity_key for spec, _ in fed}
        if len(keys) != 1:
            raise DeclarationError(f"the stream-fed views of source '{name}' have different entity keys "
                                   f"({', '.join(sorted(keys))})", "a stream is partitioned by one entity key: "
                                   "feed views of another entity from another source")
        event_ids = {event_id for _, event_id in fed}
        if len(event_ids) != 1:
            raise DeclarationError(f"the stream-fed views of source '{name}' name different event ids "
                                   f"({', '.join(sorted(event_ids))})", "declare one stream_event_id per source")
        source = fed[0][0].sources[0]
        columns = tuple(sorted({a.column for spec, _ in fed for a in spec.aggregations if a.column}))
        found.append(StreamSource(name, source.table, keys.pop(), event_ids.pop(), source.timestamp, columns))
    return found
