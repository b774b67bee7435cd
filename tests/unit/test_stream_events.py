"""The event stream's layout, the worker's event schema and the stream-fed declaration, without services."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from feastkit.declarations import DeclarationError
from feastkit.errors import FeastkitError
from feastkit.event_stream import StreamLayout, encode_event
from pipelines.stream import BadEvent, EventSchema, owned_partitions

SCHEMA = EventSchema(
    source="transactions", entity_key="user_id", event_id="transaction_id", timestamp="event_timestamp",
    columns={"user_id": pa.int64(), "amount": pa.float64(), "channel": pa.string(),
             "event_timestamp": pa.timestamp("us", tz="UTC")},
    required=("user_id", "amount", "event_timestamp"))
GOOD = {"transaction_id": 7, "user_id": 1001, "amount": 12.5, "channel": "web",
        "event_timestamp": "2026-03-02T10:00:00.123456+01:00"}


def payload(**change: object) -> bytes:
    event = {**GOOD, **change}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def test_a_good_event_parses_to_its_id_key_exact_utc_time_and_columns() -> None:
    event_id, key, ts, row = SCHEMA.parse(payload())
    assert (event_id, key, row) == ("7", 1001, {"user_id": 1001, "amount": 12.5, "channel": "web"})
    assert ts == int((datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC))
                     / timedelta(microseconds=1))
    # optional columns may be absent: they are null in the window's table
    assert SCHEMA.parse(payload(channel=...))[3]["channel"] is None


@pytest.mark.parametrize(("raw", "reason", "fragment"), [
    (b"not json", "schema", "not JSON"),
    (b"[1, 2]", "schema", "not a JSON object"),
    (None, "schema", "no 'event' field"),
    (payload(amount=...), "schema", "missing field(s) amount"),
    (payload(transaction_id=None), "schema", "missing field(s) transaction_id"),
    (payload(amount="12"), "schema", "amount must be a number"),
    (payload(amount=True), "schema", "amount must be a number"),
    (payload(user_id=1.5), "schema", "user_id must be a 64-bit integer"),
    (payload(user_id=2**63), "schema", "user_id must be a 64-bit integer"),
    (payload(channel=3), "schema", "channel must be a string"),
    (payload(event_timestamp="2026-03-02T10:00:00"), "schema", "with a timezone"),
    (payload(event_timestamp="yesterday"), "schema", "ISO 8601"),
    (payload(event_timestamp=1767225600), "schema", "ISO 8601"),
    (b'{"transaction_id": 1, "user_id": 1, "amount": NaN, "event_timestamp": "2026-03-02T10:00:00Z"}',
     "non_finite", "amount is nan"),
    (b'{"transaction_id": 1, "user_id": 1, "amount": -Infinity, "event_timestamp": "2026-03-02T10:00:00Z"}',
     "non_finite", "amount is -inf"),
])
def test_bad_events_are_refused_with_a_reason_and_a_message(raw: bytes | None, reason: str, fragment: str) -> None:
    with pytest.raises(BadEvent) as caught:
        SCHEMA.parse(raw)
    assert caught.value.reason == reason
    assert fragment in caught.value.detail


def test_the_window_table_has_the_clean_columns_and_exact_times() -> None:
    _, _, ts, row = SCHEMA.parse(payload())
    table = SCHEMA.table([(ts, row), (ts + 1, {**row, "channel": None})])
    assert table.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert table.column("event_timestamp").cast(pa.int64()).to_pylist() == [ts, ts + 1]
    assert table.column("channel").to_pylist() == ["web", None]


def test_partitions_keep_an_entity_in_one_place_and_share_a_cluster_hash_tag() -> None:
    one = StreamLayout("feastkit:events:", "transactions")
    assert one.keys() == ["feastkit:events:{transactions}"]
    assert one.partition_of(12345) == 0
    four = StreamLayout("feastkit:events:", "transactions", 4)
    assert four.keys() == [f"feastkit:events:{{transactions.{p}}}" for p in range(4)]
    spread = {four.partition_of(user) for user in range(1000)}
    assert spread == {0, 1, 2, 3}
    assert all(four.partition_of(user) == four.partition_of(user) for user in range(50))
    stream = four.stream_key(2)
    # the state and dead letters of a partition hash to its slot: one MULTI/EXEC on a cluster
    tag = stream[stream.index("{"):stream.index("}") + 1]
    assert tag in StreamLayout.state_key(stream, "g") and tag in StreamLayout.dead_letter_key(stream)
    with pytest.raises(ValueError, match="outside"):
        four.stream_key(4)
    assert json.loads(encode_event({"a": 1})["event"]) == {"a": 1}
    with pytest.raises(ValueError):
        encode_event({"amount": float("nan")})  # the producer refuses what the worker would


def test_workers_own_disjoint_partitions_covering_all() -> None:
    owned = [owned_partitions(i, 3, 8) for i in range(3)]
    assert owned == [[0, 3, 6], [1, 4, 7], [2, 5]]
    with pytest.raises(FeastkitError, match="outside"):
        owned_partitions(3, 3, 8)
    with pytest.raises(FeastkitError, match="some would own none"):
        owned_partitions(0, 4, 2)


def test_a_stream_fed_view_needs_one_row_per_event_and_a_push_source() -> None:
    from feast import Entity, FileSource

    from feastkit.declarations import Aggregation, windowed_view

    user = Entity(name="user", join_keys=["user_id"])
    events = FileSource(name="transactions", path="/data/clean/transactions.parquet",
                        timestamp_field="event_timestamp")
    count = [Aggregation("n_10m", "count", timedelta(minutes=10))]
    view = windowed_view(name="rt", entity=user, events=events, grid=None, ttl=timedelta(minutes=10),
                         features=count, push_source="rt_push", stream_event_id="transaction_id")
    assert view.tags["feastkit.stream_event_id"] == "transaction_id"
    for bad in ({"grid": timedelta(hours=1), "push_source": "rt_push"}, {"grid": None, "push_source": None}):
        with pytest.raises(DeclarationError, match="stream_event_id needs grid=None, a push_source"):
            windowed_view(name="rt", entity=user, events=events, ttl=timedelta(minutes=10), features=count,
                          stream_event_id="transaction_id", **bad)


def test_stream_sources_describe_what_producers_send_and_refuse_disagreeing_views() -> None:
    from feast import Entity, FileSource

    from feastkit.declarations import Aggregation, windowed_view
    from feastkit.event_stream import stream_sources

    user = Entity(name="user", join_keys=["user_id"])
    merchant = Entity(name="merchant", join_keys=["merchant_id"])
    events = FileSource(name="transactions", path="/data/clean/transactions.parquet",
                        timestamp_field="event_timestamp")
    minutes = timedelta(minutes=10)

    def view(name: str, entity: Entity, event_id: str = "transaction_id", column: str = "amount") -> object:
        return windowed_view(name=name, entity=entity, events=events, grid=None, ttl=minutes,
                             features=[Aggregation(f"{name}_sum", "sum", minutes, column)],
                             push_source=f"{name}_push", stream_event_id=event_id)

    (source,) = stream_sources([view("a", user), view("b", user, column="fee")])
    assert (source.name, source.table, source.entity_key, source.event_id, source.timestamp,
            source.value_columns) == ("transactions", "transactions", "user_id", "transaction_id",
                                      "event_timestamp", ("amount", "fee"))
    with pytest.raises(DeclarationError, match="different entity keys"):
        stream_sources([view("a", user), view("b", merchant)])
    with pytest.raises(DeclarationError, match="different event ids"):
        stream_sources([view("a", user), view("b", user, event_id="payment_id")])
