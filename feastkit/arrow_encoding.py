"""Feast's online key and value bytes, computed column by column from an Arrow batch.

Feast's materialization turns every cell into a `ValueProto` in a Python loop (its Arrow-to-proto
conversion, reached through `feastkit.feast_compat.arrow_to_protos`) before an online store
serializes it again; at a million
entities that loop is a large share of the run. The encoders here produce the same bytes with
numpy for the common scalar types: `ValueProto.SerializeToString()` for values, Feast's
`serialize_entity_key` for entity keys and `Timestamp.SerializeToString()` for event times.
`tests/unit/test_arrow_encoding.py` compares them with Feast's own conversion byte for byte.

A batch with any other type (lists, maps, bytes, timestamps as values, nullable join keys, ...)
is not encodable here: `plan_batch` returns None and callers use Feast's own conversion.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast.value_type import ValueType

# ValueProto field tags (field number << 3 | wire type)
_TAG_STRING = 0x12  # string_val = 2, length-delimited
_TAG_INT32 = 0x18  # int32_val = 3, varint
_TAG_INT64 = 0x20  # int64_val = 4, varint
_TAG_DOUBLE = 0x29  # double_val = 5, 64-bit
_TAG_FLOAT = 0x35  # float_val = 6, 32-bit
_TAG_BOOL = 0x38  # bool_val = 7, varint
# google.protobuf.Timestamp: seconds = 1, nanos = 2 (varints, omitted when zero)
_TAG_SECONDS = 0x08
_TAG_NANOS = 0x10
_EPOCH = datetime(1970, 1, 1)

_VALUE_ARROW_TYPES = {
    ValueType.DOUBLE: (pa.float64(),),
    ValueType.FLOAT: (pa.float32(),),
    ValueType.INT64: (pa.int64(),),
    ValueType.INT32: (pa.int32(),),
    ValueType.BOOL: (pa.bool_(),),
    ValueType.STRING: (pa.string(), pa.large_string()),
}
_KEY_ARROW_TYPES = {
    ValueType.INT64: (pa.int64(),),
    ValueType.INT32: (pa.int32(),),
    ValueType.STRING: (pa.string(), pa.large_string()),
}


def _slices(buffer: bytes, width: int, lengths: Sequence[int] | None = None) -> list[bytes]:
    """Cut a buffer of fixed-width rows into bytes objects (each row's first `lengths[i]` bytes)."""
    if lengths is None:
        return [buffer[i:i + width] for i in range(0, len(buffer), width)]
    return [buffer[i:i + n] for i, n in zip(range(0, len(buffer), width), lengths, strict=True)]


def varints(tag: int, values: np.ndarray) -> list[bytes]:
    """`tag` + protobuf varint of each int64 (negative ones as 10-byte two's complement)."""
    rest = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64).copy()
    rows = np.zeros((len(rest), 11), dtype=np.uint8)
    rows[:, 0] = tag
    lengths = np.full(len(rest), 2, dtype=np.int64)
    for i in range(10):
        low = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
        more = rest != 0
        rows[:, 1 + i] = low | (more.astype(np.uint8) << 7)
        if not more.any():
            break
        lengths += more
    return _slices(rows.tobytes(), 11, lengths.tolist())


def _fixed(tag: int, values: np.ndarray, dtype: str) -> list[bytes]:
    """`tag` + little-endian fixed-width value for each element."""
    rows = np.empty(len(values), dtype=[("tag", "u1"), ("value", dtype)])
    rows["tag"] = tag
    rows["value"] = values
    return _slices(rows.tobytes(), rows.dtype.itemsize)


def _length_delimited(tag: int, strings: list[str]) -> list[bytes]:
    encoded = [s.encode("utf-8") for s in strings]
    heads = varints(tag, np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded)))
    return [head + body for head, body in zip(heads, encoded, strict=True)]


def integers_as_feast_sees_them(column: pa.Array) -> np.ndarray:
    """Integer values as Feast reads them: through float64 when the column has nulls."""
    if column.null_count:
        # Arrow -> numpy turns a nullable integer column into float64; Feast then calls int()
        as_float = column.to_numpy(zero_copy_only=False)
        return np.nan_to_num(as_float, nan=0.0).astype(np.int64)
    return column.to_numpy()


def encode_values(column: pa.Array, value_type: ValueType) -> list[bytes]:
    """`ValueProto(...).SerializeToString()` for every cell; a null (or NaN float) is b''."""
    if value_type in (ValueType.DOUBLE, ValueType.FLOAT):
        floats = column.to_numpy(zero_copy_only=False)
        null = np.isnan(floats)
        out = (_fixed(_TAG_DOUBLE, floats, "<f8") if value_type == ValueType.DOUBLE
               else _fixed(_TAG_FLOAT, floats, "<f4"))
    elif value_type in (ValueType.INT64, ValueType.INT32):
        ints = integers_as_feast_sees_them(column)
        if value_type == ValueType.INT32:
            ints = ints.astype(np.int32).astype(np.int64)  # int32 varints are sign-extended
        null = column.is_null().to_numpy(zero_copy_only=False)
        out = varints(_TAG_INT64 if value_type == ValueType.INT64 else _TAG_INT32, ints)
    elif value_type == ValueType.BOOL:
        null = column.is_null().to_numpy(zero_copy_only=False)
        flags = pc.fill_null(column, False).to_numpy(zero_copy_only=False)
        out = _fixed(_TAG_BOOL, flags.astype(np.uint8), "u1")
    elif value_type == ValueType.STRING:
        null = column.is_null().to_numpy(zero_copy_only=False)
        out = _length_delimited(_TAG_STRING, pc.fill_null(column, "").to_pylist())
    else:
        raise ValueError(f"no column encoder for {value_type}")
    if null.any():
        for i in np.flatnonzero(null).tolist():
            out[i] = b""
    return out


def _key_parts(column: pa.Array, value_type: ValueType) -> list[bytes]:
    """The value part of Feast's v3 entity key serialization: type, length, bytes."""
    if value_type == ValueType.STRING:
        encoded = [s.encode("utf-8") for s in column.to_pylist()]
        head = struct.pack("<I", ValueType.STRING.value)
        return [head + struct.pack("<I", len(b)) + b for b in encoded]
    width, dtype = (8, "<i8") if value_type == ValueType.INT64 else (4, "<i4")
    head = struct.pack("<II", value_type.value, width)
    return [head + body for body in _slices(column.to_numpy().astype(dtype).tobytes(), width)]


def encode_entity_keys(batch: pa.RecordBatch, join_keys: dict[str, ValueType]) -> list[bytes]:
    """Feast's `serialize_entity_key` (version 3) of every row's join key values."""
    names = sorted(join_keys)  # Feast sorts join keys by name
    head = struct.pack("<I", len(names)) + b"".join(
        struct.pack("<II", ValueType.STRING.value, len(n.encode("utf-8"))) + n.encode("utf-8") for n in names)
    parts = [_key_parts(batch.column(n), join_keys[n]) for n in names]
    if len(parts) == 1:
        return [head + p for p in parts[0]]
    return [head + b"".join(row) for row in zip(*parts, strict=True)]


def event_micros(column: pa.Array) -> np.ndarray:
    """Epoch microseconds (UTC) of a timestamp column, truncated like `Timestamp.to_pydatetime()`."""
    micros = pc.cast(column, pa.timestamp("us", tz="UTC"), safe=False)
    return micros.to_numpy(zero_copy_only=False).view(np.int64)


def encode_timestamps(micros: np.ndarray) -> list[bytes]:
    """`google.protobuf.Timestamp.FromDatetime(...).SerializeToString()` for epoch microseconds."""
    seconds, rest = np.divmod(micros, 1_000_000)
    nanos = rest * 1000
    sec = varints(_TAG_SECONDS, seconds)
    nan = varints(_TAG_NANOS, nanos)
    return [(s if has_s else b"") + (n if has_n else b"")
            for s, n, has_s, has_n in zip(sec, nan, (seconds != 0).tolist(), (nanos != 0).tolist(),
                                          strict=True)]


def naive_datetimes(micros: np.ndarray) -> list[datetime]:
    """Naive UTC datetimes for epoch microseconds, building each distinct instant once."""
    unique, inverse = np.unique(micros, return_inverse=True)
    built = [_EPOCH + timedelta(microseconds=u) for u in unique.tolist()]
    return [built[i] for i in inverse.tolist()]


def optional_naive_datetimes(column: pa.Array) -> list[datetime | None]:
    """Naive UTC datetimes of a timestamp column, None where it is null."""
    times: list[datetime | None] = list(naive_datetimes(event_micros(pc.fill_null(column, 0).cast(column.type))))
    if column.null_count:
        for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).tolist():
            times[i] = None
    return times


@dataclass(frozen=True)
class EncodablePlan:
    """How to encode one feature view's batches: its features with their types and its time fields."""

    features: list[tuple[str, ValueType]]
    timestamp_field: str
    created_field: str | None


def plan_batch(batch: pa.RecordBatch, feature_view, join_keys: dict[str, ValueType],
               key_serialization_version: int = 3) -> EncodablePlan | None:
    """The encoding plan when every column of the batch has an encoder here, else None.

    Entity keys are encoded in Feast's serialization version 3 only.
    """
    source = getattr(feature_view, "batch_source", None)
    if (source is None or getattr(feature_view, "source_request_sources", None) is not None
            or key_serialization_version != 3):
        return None
    schema = batch.schema
    features = [(f.name, f.dtype.to_value_type()) for f in feature_view.features]
    for name, value_type in features:
        if name not in schema.names or schema.field(name).type not in _VALUE_ARROW_TYPES.get(value_type, ()):
            return None
    for name, value_type in join_keys.items():
        if (name not in schema.names or schema.field(name).type not in _KEY_ARROW_TYPES.get(value_type, ())
                or batch.column(name).null_count):
            return None
    timestamp_field = source.timestamp_field
    created_field = source.created_timestamp_column or None
    for name in filter(None, (timestamp_field, created_field)):
        if name not in schema.names or not pa.types.is_timestamp(schema.field(name).type):
            return None
    if batch.column(timestamp_field).null_count:
        return None
    return EncodablePlan(features, timestamp_field, created_field)
