"""The column encoders produce Feast's exact bytes: values, entity keys and event timestamps."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from feast import Entity, FeatureView, Field, FileSource
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.types import Bool, Float32, Float64, Int32, Int64, String
from feast.utils import _convert_arrow_to_proto, make_tzaware
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from feastkit.arrow_encoding import (
    encode_entity_keys,
    encode_timestamps,
    encode_values,
    event_micros,
    naive_datetimes,
    optional_naive_datetimes,
    plan_batch,
    varints,
)

FEATURES = {"d": Float64, "f": Float32, "i64": Int64, "i32": Int32, "b": Bool, "s": String}


def _random_batch(rng: np.random.Generator, n: int, key_type: str) -> pa.RecordBatch:
    nulls = rng.random(n) < 0.15
    d = rng.normal(0, 1e6, n)
    d[rng.random(n) < 0.05] = np.nan  # NaN is null for Feast too
    d[:3] = [0.0, -0.0, 1e-310]
    words = ["", "a", "é", "çà漢字", "x" * 200, "with space"]
    big = rng.integers(-2**62, 2**62, n)
    big[:4] = [0, -1, 2**53 + 1, -(2**63) + 1]
    start = np.datetime64("1969-12-31T23:00:00", "us").astype(np.int64)
    ts = start + rng.integers(0, 10**12, n)
    ts[:2] = [0, -1]
    keys = (pa.array([f"u{i % 50}" for i in range(n)]) if key_type == "string"
            else pa.array(rng.integers(-10**12, 10**12, n), pa.int64()))
    return pa.record_batch({
        "entity_id": keys,
        "region": pa.array(rng.integers(-5, 5, n), pa.int32()),
        "d": pa.array(d, mask=nulls),
        "f": pa.array(rng.normal(0, 100, n).astype(np.float32), mask=rng.random(n) < 0.1),
        "i64": pa.array(big, mask=rng.random(n) < 0.1),
        "i32": pa.array(rng.integers(-2**31, 2**31, n).astype(np.int32), mask=rng.random(n) < 0.1),
        "b": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.1),
        "s": pa.array([words[i] for i in rng.integers(0, len(words), n)], mask=rng.random(n) < 0.1),
        "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "created": pa.array(ts + 7, pa.timestamp("us", tz="UTC")),
    })


def _view(key_type: ValueType, two_keys: bool) -> FeatureView:
    entities = [Entity(name="entity", join_keys=["entity_id"], value_type=key_type)]
    if two_keys:
        entities.append(Entity(name="region", join_keys=["region"], value_type=ValueType.INT32))
    source = FileSource(path="unused.parquet", timestamp_field="event_timestamp",
                        created_timestamp_column="created")
    return FeatureView(name="v", entities=entities, ttl=timedelta(days=1), source=source,
                       schema=[Field(name=n, dtype=t) for n, t in FEATURES.items()])


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("key_type", "two_keys"), [("int", False), ("string", False), ("int", True)])
def test_bytes_equal_feast_conversion(seed: int, key_type: str, two_keys: bool) -> None:
    batch = _random_batch(np.random.default_rng(seed), 600, key_type)
    value_type = ValueType.STRING if key_type == "string" else ValueType.INT64
    view = _view(value_type, two_keys)
    join_keys = {"entity_id": value_type, **({"region": ValueType.INT32} if two_keys else {})}
    plan = plan_batch(batch, view, join_keys)
    assert plan is not None
    expected = _convert_arrow_to_proto(batch, view, join_keys)

    assert encode_entity_keys(batch, join_keys) == [serialize_entity_key(k, 3) for k, _, _, _ in expected]
    for name, vt in plan.features:
        assert encode_values(batch.column(name), vt) == [row[1][name].SerializeToString()
                                                         for row in expected], name
    micros = event_micros(batch.column("event_timestamp"))
    stamps = []
    for _, _, when, _ in expected:
        stamp = Timestamp()
        stamp.FromDatetime(make_tzaware(when))
        stamps.append(stamp.SerializeToString())
    assert encode_timestamps(micros) == stamps
    assert naive_datetimes(micros) == [when.replace(tzinfo=None) for _, _, when, _ in expected]


def test_varints_match_protobuf_for_edge_values() -> None:
    from feast.protos.feast.types.Value_pb2 import Value

    values = np.array([0, 1, 127, 128, 300, 2**31 - 1, 2**63 - 1, -1, -128, -(2**63)], dtype=np.int64)
    assert varints(0x20, values) == [Value(int64_val=int(v)).SerializeToString() for v in values]


def test_plan_refuses_what_it_cannot_encode() -> None:
    batch = _random_batch(np.random.default_rng(0), 20, "int")
    view = _view(ValueType.INT64, False)
    keys = {"entity_id": ValueType.INT64}
    assert plan_batch(batch, view, keys) is not None
    as_float = batch.set_column(batch.schema.get_field_index("i64"), "i64",
                              batch.column("i64").cast(pa.float64(), safe=False))
    assert plan_batch(as_float, view, keys) is None  # column type differs from the declared one
    null_key = batch.set_column(0, "entity_id", pa.array([None] * 20, pa.int64()))
    assert plan_batch(null_key, view, keys) is None
    null_event = batch.set_column(batch.schema.get_field_index("event_timestamp"), "event_timestamp",
                                  pa.array([None] * 20, pa.timestamp("us", tz="UTC")))
    assert plan_batch(null_event, view, keys) is None


def test_optional_datetimes_keep_nulls() -> None:
    column = pa.array([0, None, 1_500_000], pa.timestamp("us", tz="UTC"))
    assert optional_naive_datetimes(column) == [datetime(1970, 1, 1), None, datetime(1970, 1, 1, 0, 0, 1, 500_000)]
