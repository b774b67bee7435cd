"""Sliding-window aggregates of per-entity event streams at probe times, by prefix sums (NumPy).

For a probe (entity k, time T) and a window w, the window holds k's events with timestamp in
[T - w, T). Events are sorted by (entity, time) once; a binary search gives, for every probe
and window, the index range [lo, hi) of its events, and each aggregate is read off prefix
arrays over that range in O(1):

- counts and sums are differences of cumulative integers, so they are exact: values are summed
  as fixed-point integers of 1/10,000 of a unit (`SCALE`), which is exact for money amounts;
- the sample standard deviation and variance come from n, the sum and the sum of squares, whose
  numerator n*S2 - S1^2 is computed exactly in 64-bit modular arithmetic whenever it is below
  2^61 (so a window of equal amounts gives exactly 0), and in floating point above that,
  where cancellation no longer matters;
- maxima and minima use a sparse table (max of two overlapping power-of-two blocks; minima
  over the negated values);
- the latest event of a kind is the last index of that kind before hi, which also gives the
  latest value (`last_value`); the n latest values (`last_n`) are the n last selected indices
  before hi that are at least lo;
- distinct values: each event of (k, value) covers probe times (t, min(t + w, next t of the
  same value)], so the distinct count is #events before T minus #cover ends before T;
- approximate distinct values (HyperLogLog): a register holds the largest rho of its events
  in the window, and the estimate needs only, for each rho level j, the number of registers
  reaching j, which is a distinct count of registers among the events of rho >= j, read off
  as above (there are about log2(events) levels).

Results are exact (the HyperLogLog estimate is exactly the estimate of the window's own
registers) and do not depend on where a stream starts, so an incremental run over an hour
equals the same rows of a full run bit for bit. Entities are processed in chunks, which bounds
memory and keeps the (entity, time) keys within 63 bits.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feastkit.times import micros

SCALE = 10_000  # sums are exact in 1/10,000 of a unit; values are rounded to it first
CHUNK_EVENTS = 50_000  # events per chunk of entities: small enough to stay in cache and reuse memory
_KEY_LIMIT = 2**62
DAY_US = 86_400_000_000
_EXACT_LIMIT = 2.0**61
_INT64_CEILING = 2.0**63 - 1024  # the largest float below 2^63 (HyperLogLog's estimate can exceed int64)
UTC_MICROS = pa.timestamp("us", tz="UTC")  # probe times and "last" results come out as this type
KINDS = ("count", "sum", "avg", "std", "var", "max", "min", "last", "last_value", "last_n", "distinct",
         "approx_distinct")
_NUMERIC = ("sum", "avg", "std", "var", "max", "min")  # kinds that read finite numbers
_VALUED = ("last_value", "last_n")  # kinds that return the column's own values
_COLUMN_KINDS = _NUMERIC + _VALUED + ("distinct", "approx_distinct")


@dataclass(frozen=True)
class Aggregate:
    """One output column: `kind` over the events in [T - window, T) selected by `where`.

    kinds:
    - count: number of events;
    - sum / avg / std / var / max / min of `column` (numbers): sum is 0 over no events, the
      others null; std and var are the sample ones (n - 1 denominator), null below 2 events,
      and exactly 0.0 over equal values;
    - last: timestamp of the latest event, null if none;
    - last_value: the value of `column` at the latest event (null if none, or if that value is
      null), of the column's own Arrow type; of several events at the latest timestamp, the
      one that comes last in the input order;
    - last_n: a list of the values of `column` at the `n` latest events, newest first (ties in
      time: the later in the input order first), shorter when the window holds fewer events and
      empty (not null) over none; null values stay in the list as nulls; list<double> for a
      numeric column, else a list of the column's type (list<string> for strings);
    - distinct: count of distinct non-null values of `column`;
    - approx_distinct: HyperLogLog estimate (int64) of that count with 2^`precision` registers
      (4 to 16, default 12), of standard error 1.04 / sqrt(2^precision) (1.6 % at 12), exact
      or nearly so for small counts (linear counting); 0 over no events; null values are not
      counted. Values are hashed by their value (integers and temporals as int64, floats by
      their float64 bits, both through the splitmix64 finalizer; strings and binaries by
      BLAKE2b with an 8-byte digest), so the estimate does not depend on chunking or on the
      other events.

    `where` names a boolean event column.
    """

    name: str
    kind: str
    window: timedelta
    column: str | None = None
    where: str | None = None
    n: int | None = None
    precision: int = 12

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"aggregate {self.name}: unknown kind {self.kind!r}, choose from {KINDS}")
        if self.kind in _COLUMN_KINDS and self.column is None:
            raise ValueError(f"aggregate {self.name}: kind {self.kind!r} needs a column")
        if self.kind == "last_n":
            if self.n is None:
                raise ValueError(f"aggregate {self.name}: kind 'last_n' needs n, the number of values to keep")
            if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
                raise ValueError(f"aggregate {self.name}: n must be an integer of at least 1, not {self.n!r}")
        elif self.n is not None:
            raise ValueError(f"aggregate {self.name}: n is only for kind 'last_n', not {self.kind!r}")
        if isinstance(self.precision, bool) or not isinstance(self.precision, int) or not 4 <= self.precision <= 16:
            raise ValueError(f"aggregate {self.name}: precision must be an integer from 4 to 16, "
                             f"not {self.precision!r}")


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).combine_chunks().to_numpy(zero_copy_only=False)


def _codes_of(table: pa.Table, name: str) -> np.ndarray:
    """A column's values as integer codes (equal values, equal codes), nulls as NaN."""
    encoded = pc.dictionary_encode(table.column(name).combine_chunks())
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.float64)
    codes[encoded.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return codes


def _mask(table: pa.Table, name: str | None) -> np.ndarray | None:
    if name is None:
        return None
    col = table.column(name).combine_chunks()
    return col.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)


def _plain(table: pa.Table, name: str) -> pa.Array:
    """A column as one Arrow array of its values (a dictionary-encoded column decoded)."""
    col = table.column(name).combine_chunks()
    return col.dictionary_decode() if pa.types.is_dictionary(col.type) else col


def _mix64(bits: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer of 64-bit words (uint64 arithmetic wraps around)."""
    z = bits.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hashes(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per event, a fixed 64-bit hash of the column's value (uint64) and whether it is non-null.

    Integers, booleans and temporals hash their int64 value, floats their float64 bits (-0.0 as
    0.0), both through `_mix64`; strings and binaries hash their bytes (UTF-8 for strings) with
    BLAKE2b (8-byte digest, read little-endian), once per distinct value.
    """
    col = _plain(table, name)
    kind = col.type
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_temporal(kind):
        col, kind = col.view(pa.int64() if kind.bit_width == 64 else pa.int32()), pa.int64()
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        ints = pc.cast(col, pa.int64(), safe=False).fill_null(0).to_numpy(zero_copy_only=False)
        return _mix64(ints.astype(np.int64, copy=False).view(np.uint64)), valid
    if pa.types.is_floating(kind):
        floats = pc.cast(col, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False) + 0.0
        return _mix64(floats.astype(np.float64, copy=False).view(np.uint64)), valid
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        encoded = pc.dictionary_encode(col)
        words = [v.encode("utf-8") if isinstance(v, str) else v for v in encoded.dictionary.to_pylist()]
        per_value = np.array([int.from_bytes(hashlib.blake2b(w, digest_size=8).digest(), "little") for w in words],
                             dtype=np.uint64)
        indices = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return (per_value[indices] if len(per_value) else np.zeros(len(indices), dtype=np.uint64)), valid
    raise ValueError(f"column {name} has type {col.type}, which approx_distinct cannot hash")


def _bit_length(words: np.ndarray) -> np.ndarray:
    """Per uint64 word, the number of bits up to its highest set bit (0 for 0), exactly."""
    words = words.copy()
    length = np.zeros(len(words), dtype=np.int64)
    for shift in (32, 16, 8, 4, 2, 1):
        high = words >= np.uint64(1 << shift)
        length += high * shift
        words = np.where(high, words >> np.uint64(shift), words)
    return length + (words > 0)


def _hll_alpha(m: int) -> float:
    """The HyperLogLog bias constant for m registers."""
    return {16: 0.673, 32: 0.697, 64: 0.709}.get(m, 0.7213 / (1 + 1.079 / m))


@cache
def _linear_counts(precision: int) -> np.ndarray:
    """m * ln(m / V) for V = 0 .. m empty registers, by Python's math.log (NumPy's log may differ
    from it in the last bit, and a reference implementation would use math.log)."""
    m = 1 << precision
    return np.array([0.0] + [m * math.log(m / empty) for empty in range(1, m + 1)])


def _changes(keys: np.ndarray) -> np.ndarray:
    """Positions in a sorted key array where a new entity starts (after the first)."""
    return np.flatnonzero(keys[1:] != keys[:-1]) + 1


def entity_codes(keys: np.ndarray) -> np.ndarray:
    """Dense codes of a sorted key array: 0 for the first entity, +1 at every change."""
    codes = np.zeros(len(keys), dtype=np.int64)
    codes[_changes(keys)] = 1
    return np.cumsum(codes, out=codes)


def entity_keys(keys: np.ndarray) -> np.ndarray:
    """Each entity's key once, in order (the key of each code), from a sorted key array."""
    return keys[np.r_[0, _changes(keys)]] if len(keys) else keys


def _fixed_point(values: np.ndarray) -> np.ndarray:
    """Values as integers of 1/SCALE (finite and small enough: checked once per stream)."""
    return np.rint(values.astype(np.float64) * SCALE).astype(np.int64)


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, dtype=np.result_type(values.dtype, np.int64)
                   if values.dtype.kind in "iub" else values.dtype)
    np.cumsum(values, out=out[1:])
    return out


class _SparseMax:
    """Range maxima over [lo, hi) from power-of-two blocks, only as tall as the longest range."""

    def __init__(self, values: np.ndarray, longest: int) -> None:
        self.levels = [values]
        span = 1
        while span * 2 <= longest:
            prev = self.levels[-1]
            self.levels.append(np.maximum(prev[:-span], prev[span:]))
            span *= 2

    def query(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        length = hi - lo
        out = np.full(len(lo), -np.inf)
        some = length > 0
        if not some.any():
            return out
        lo, hi, length = lo[some], hi[some], length[some]
        level = np.floor(np.log2(length)).astype(np.int64)
        result = np.empty(len(lo))
        for j in np.unique(level):
            at = level == j
            table = self.levels[j]
            result[at] = np.maximum(table[lo[at]], table[hi[at] - (1 << int(j))])
        out[some] = result
        return out


def _chunks(codes: np.ndarray, span_us: int) -> Iterator[slice]:
    """Slices of events covering whole entities, bounded in events and in (entity, time) key range."""
    n_entities = int(codes[-1]) + 1 if len(codes) else 0
    per_key = max(1, _KEY_LIMIT // max(span_us, 1))
    starts = np.searchsorted(codes, np.arange(n_entities + 1), side="left")
    first = 0
    while first < n_entities:
        limit = int(np.searchsorted(starts, starts[first] + CHUNK_EVENTS, side="right")) - 1
        last = max(first + 1, min(first + per_key, n_entities, limit))
        yield slice(int(starts[first]), int(starts[last]))
        first = last


Probes = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def window_aggregates(events: pa.Table, aggregates: list[Aggregate], probes_of: Probes) -> Iterator[pa.Table]:
    """Per chunk of entities, a table (k, ts, one column per aggregate), one row per probe.

    Bad input (events with no key or time, null / NaN / infinite values to sum or compare, sums
    that would not be exact) raises ValueError here, before any chunk is evaluated.

    `events` holds k, ts (microseconds since the epoch, int64) and the columns the aggregates
    name, sorted by (k, ts). `probes_of(keys, ts)` gets a chunk's events (whole entities) and
    returns the probes (keys, ts) of those entities, sorted the same way; a probe lies at most
    a window plus a day before the entity's first event or after its last. Times come out as
    UTC timestamps.
    """
    for name in ("k", "ts"):
        if events.column(name).null_count:
            raise ValueError(f"{events.column(name).null_count} event(s) have no {'entity key' if name == 'k' else 'time'}")
    ev_keys = _column(events, "k")
    ev_ts = _column(events, "ts").astype(np.int64, copy=False)
    if len(ev_keys) == 0:
        return iter(())
    codes = entity_codes(ev_keys)
    longest = max(micros(a.window) for a in aggregates)
    margin = longest + DAY_US
    span_bound = int(ev_ts.max()) - int(ev_ts.min()) + 2 * margin + longest + 1

    def used_by(*kinds: str) -> set[str]:
        return {a.column for a in aggregates if a.kind in kinds}

    columns = {name: _column(events, name) for name in used_by(*_NUMERIC)}
    codes_of = {name: _codes_of(events, name) for name in used_by("distinct")}
    plain = {name: _plain(events, name) for name in used_by(*_VALUED)}
    hashes = {name: _hashes(events, name) for name in used_by("approx_distinct")}
    masks = {name: _mask(events, name) for name in {a.where for a in aggregates} - {None}}
    for agg in aggregates:
        if agg.kind not in _NUMERIC:
            continue
        values = columns[agg.column].astype(np.float64, copy=False)
        if agg.where is not None:
            values = values[masks[agg.where]]  # only the events the aggregate selects
        if not np.isfinite(values).all():
            raise ValueError(f"column {agg.column} holds {int((~np.isfinite(values)).sum())} null, NaN or "
                             f"infinite value(s) where {agg.name} needs numbers")
        if len(values) and np.abs(values).max() * SCALE * len(values) >= _KEY_LIMIT:
            raise ValueError(f"column {agg.column}: values too large to sum exactly at 1/{SCALE} of a unit")

    def evaluate(ev_slice: slice) -> pa.Table | None:
        keys, ts = ev_keys[ev_slice], ev_ts[ev_slice]
        probe_keys, probe_ts = probes_of(keys, ts)
        if len(probe_keys) == 0:
            return None
        local = codes[ev_slice] - codes[ev_slice.start]
        chunk_keys = entity_keys(keys)
        probe_codes = np.searchsorted(chunk_keys, probe_keys)
        if (probe_codes >= len(chunk_keys)).any() or (chunk_keys[probe_codes] != probe_keys).any():
            raise ValueError("a probe's entity has no events: probes must come from the events")
        probed = np.unique(probe_codes)
        keep = None
        if len(probed) < len(chunk_keys):  # entities with no row here (an hourly run): drop their events
            keep = np.flatnonzero(np.isin(local, probed))
            local, ts = np.searchsorted(probed, local[keep]), ts[keep]
            probe_codes = np.searchsorted(probed, probe_codes)
        lowest, highest = int(ts.min()) - margin, int(ts.max()) + margin
        if int(probe_ts.min()) < lowest or int(probe_ts.max()) > highest:
            raise ValueError("a probe lies further than a window and a day from its entity's events")
        base = lowest - longest
        chunk = _Chunk(local, ts - base, span_bound, base, probe_codes * span_bound + probe_ts - base)
        out = {"k": pa.array(probe_keys), "ts": pa.array(probe_ts, type=UTC_MICROS)}
        def of_chunk(values: np.ndarray) -> np.ndarray:
            return values[ev_slice] if keep is None else values[ev_slice][keep]

        def values_of(agg: Aggregate) -> Any:
            if agg.kind in _NUMERIC:
                return of_chunk(columns[agg.column])
            if agg.kind == "distinct":
                return of_chunk(codes_of[agg.column])
            if agg.kind in _VALUED:
                mine = plain[agg.column].slice(ev_slice.start, ev_slice.stop - ev_slice.start)
                return mine if keep is None else mine.take(pa.array(keep))
            if agg.kind == "approx_distinct":
                return tuple(of_chunk(part) for part in hashes[agg.column])
            return None

        for agg in aggregates:
            values = values_of(agg)
            where = of_chunk(masks[agg.where]) if agg.where else None
            result = chunk.evaluate(agg, values, where)
            out[agg.name] = result if isinstance(result, pa.Array) else pa.array(result)
        return pa.table(out)

    def stream() -> Iterator[pa.Table]:
        # NumPy releases the GIL in its kernels, so chunks run side by side on every core; only a
        # few run ahead of the consumer, so memory stays bounded whatever the number of chunks
        workers = min(os.cpu_count() or 1, 4)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque[Future] = deque()
            for ev_slice in _chunks(codes, span_bound):
                pending.append(pool.submit(evaluate, ev_slice))
                if len(pending) > 2 * workers:
                    table = pending.popleft().result()
                    if table is not None:
                        yield table
            while pending:
                table = pending.popleft().result()
                if table is not None:
                    yield table

    return stream()


class _Chunk:
    """One chunk's sorted keys and the probes' [lo, hi) index ranges, cached per window."""

    def __init__(self, codes: np.ndarray, ts: np.ndarray, span: int, base: int, probe_keys: np.ndarray) -> None:
        self.codes, self.ts, self.span, self.base = codes, ts, span, base
        self.keys = codes * span + ts  # (entity, time) as one sortable integer; probe_keys likewise
        self.probe_keys = probe_keys
        self._bounds: dict[int, np.ndarray] = {}
        self._prefixes: dict[tuple, Any] = {}

    def bound(self, offset_us: int) -> np.ndarray:
        """Per probe, the number of this chunk's events sorted before (k, T - offset)."""
        if offset_us not in self._bounds:
            self._bounds[offset_us] = np.searchsorted(self.keys, self.probe_keys - offset_us, side="left")
        return self._bounds[offset_us]

    def prefix(self, key: tuple, make: Callable[[], Any]) -> Any:
        """A per-chunk array (or table) built once and shared by the aggregates that need it."""
        if key not in self._prefixes:
            self._prefixes[key] = make()
        return self._prefixes[key]

    def counts(self, where: np.ndarray | None, lo: np.ndarray, hi: np.ndarray, tag: object) -> np.ndarray:
        if where is None:
            return hi - lo
        cum = self.prefix(("count", tag), lambda: _prefix(where.astype(np.int64)))
        return cum[hi] - cum[lo]

    def evaluate(self, agg: Aggregate, values: Any, where: np.ndarray | None) -> pa.Array | np.ndarray:
        hi, lo = self.bound(0), self.bound(micros(agg.window))
        n = self.counts(where, lo, hi, agg.where)
        if agg.kind == "count":
            return n
        if agg.kind == "distinct":
            # events the filter leaves out count like nulls: they cover no probe
            chosen = values if where is None else np.where(where, values, np.nan)
            return self.distinct(chosen, micros(agg.window), hi)
        if agg.kind == "approx_distinct":
            return self.approx_distinct(values, where, agg, hi)
        if agg.kind == "last_n":
            return self.last_n(values, where, agg, lo, hi)
        if agg.kind in ("last", "last_value"):
            picked = np.arange(len(self.ts)) if where is None else np.where(where, np.arange(len(self.ts)), -1)
            last = self.prefix(("last", agg.where), lambda: np.maximum.accumulate(picked) if len(picked) else picked)
            found = n > 0
            if agg.kind == "last_value":  # the highest selected index before hi: latest, and last of a tie
                index = np.zeros(len(hi), dtype=np.int64)
                index[found] = last[hi[found] - 1]
                return values.take(pa.array(index, mask=~found))
            stamp = np.zeros(len(hi), dtype=np.int64)
            stamp[found] = self.ts[last[hi[found] - 1]]
            return pa.array(stamp + self.base, type=UTC_MICROS, mask=~found)
        selected = values if where is None else np.where(where, values, 0)
        if agg.kind == "max":
            candidates = np.where(where, values, -np.inf) if where is not None else values
            longest = int((hi - lo).max()) if len(hi) else 0
            table = self.prefix(("max", agg.column, agg.where, agg.window),
                                lambda: _SparseMax(candidates.astype(np.float64), longest))
            return pa.array(table.query(lo, hi), mask=n == 0)
        if agg.kind == "min":  # the max of the negated values, negated back (exact)
            longest = int((hi - lo).max()) if len(hi) else 0

            def negated() -> _SparseMax:
                minus = -values.astype(np.float64)
                return _SparseMax(minus if where is None else np.where(where, minus, -np.inf), longest)

            table = self.prefix(("min", agg.column, agg.where, agg.window), negated)
            return pa.array(-table.query(lo, hi), mask=n == 0)
        raw = self.prefix(("raw", agg.column, agg.where), lambda: _fixed_point(selected))
        cum1 = self.prefix(("sum", agg.column, agg.where), lambda: _prefix(raw))
        s1 = cum1[hi] - cum1[lo]
        if agg.kind == "sum":
            return s1 / SCALE
        if agg.kind == "avg":
            return pa.array(s1 / np.maximum(n, 1) / SCALE, mask=n == 0)
        cum2 = self.prefix(("sq", agg.column, agg.where), lambda: _prefix(raw.astype(np.uint64) * raw.astype(np.uint64)))
        cum2f = self.prefix(("sqf", agg.column, agg.where), lambda: _prefix(raw.astype(np.float64) ** 2))
        nu = n.astype(np.uint64)
        exact = (nu * (cum2[hi] - cum2[lo]) - s1.astype(np.uint64) * s1.astype(np.uint64)).astype(np.int64)
        approx = n * (cum2f[hi] - cum2f[lo]) - s1.astype(np.float64) ** 2
        numerator = np.where(approx < _EXACT_LIMIT, exact.astype(np.float64), approx)
        pairs = np.maximum(n * (n - 1), 1).astype(np.float64)
        if agg.kind == "var":  # n*S2 - S1^2 over n(n-1), in units of 1/SCALE^2
            return pa.array(np.maximum(numerator, 0.0) / pairs / SCALE**2, mask=n < 2)
        std = np.sqrt(np.maximum(numerator, 0.0) / pairs) / SCALE
        return pa.array(std, mask=n < 2)

    def last_n(self, values: pa.Array, where: np.ndarray | None, agg: Aggregate,
               lo: np.ndarray, hi: np.ndarray) -> pa.Array:
        """Per probe, the values at the (up to) n highest selected indices in [lo, hi), highest first."""
        if where is None:
            chosen, upto, since = None, hi, lo
        else:
            chosen = self.prefix(("chosen", agg.where), lambda: np.flatnonzero(where))
            rank = self.prefix(("count", agg.where), lambda: _prefix(where.astype(np.int64)))
            upto, since = rank[hi], rank[lo]  # the probe's selected events are chosen[since:upto]
        taken = np.minimum(upto - since, agg.n)
        offsets = np.zeros(len(hi) + 1, dtype=np.int64)
        np.cumsum(taken, out=offsets[1:])
        back = np.arange(offsets[-1]) - np.repeat(offsets[:-1], taken)  # 0 for the newest, 1, ...
        position = np.repeat(upto - 1, taken) - back
        index = position if chosen is None else chosen[position]
        flat = values.take(pa.array(index, type=pa.int64()))
        kind = flat.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            flat = pc.cast(flat, pa.float64())
        return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), flat)  # raises past 2^31 values

    def approx_distinct(self, values: tuple[np.ndarray, np.ndarray], where: np.ndarray | None,
                        agg: Aggregate, hi: np.ndarray) -> np.ndarray:
        """HyperLogLog over each probe's window, from the registers of exactly its events.

        With M_r the largest rho of register r in the window (0 if none) and D_j the number of
        registers with M_r >= j, sum_r 2^-M_r = m - sum_j D_j 2^-j. D_j is a distinct count of
        registers among the events of rho >= j, by covers as in `distinct`: the events of rho >= j
        before T minus their cover ends before T. The sums over j of both, weighted by 2^-j, come
        from one prefix array over the events and one over the cover ends of every level, in
        integers (exact); the register sum is then rounded once, to the nearest float, so it
        equals a direct evaluation over the registers.
        """
        precision = agg.precision
        m = 1 << precision
        before, cover_ts, cover_codes, cover_next, cover_weights = self.prefix(
            ("hll", agg.column, agg.where, precision), lambda: self._hll_covers(values, where, precision))
        ends = cover_codes * self.span + np.minimum(cover_ts + micros(agg.window), cover_next)
        order = np.argsort(ends)
        ended = np.zeros((len(order) + 1, 3), dtype=np.int64)
        np.cumsum(cover_weights[order], axis=0, out=ended[1:])
        reached = before[hi] - ended[np.searchsorted(ends[order], self.probe_keys, side="left")]
        occupied, high, low = reached.T  # D_1, sum_(j <= 32) D_j 2^(32 - j), sum_(j > 32) D_j 2^(top - j)
        top = 65 - precision  # the largest rho
        total = (m * 2**32 - high).astype(np.float64) * 2.0**-32 - low.astype(np.float64) * 2.0**-top
        raw = _hll_alpha(m) * m * m / total
        empty = m - occupied
        estimate = np.where((raw <= 2.5 * m) & (empty > 0), _linear_counts(precision)[empty], raw)
        return np.rint(np.minimum(estimate, _INT64_CEILING)).astype(np.int64)

    def _hll_covers(self, values: tuple[np.ndarray, np.ndarray], where: np.ndarray | None,
                    precision: int) -> tuple[np.ndarray, ...]:
        """The window-free parts of `approx_distinct`: the prefix sums over the chunk's events of
        their weights (1, sum_(j <= min(rho, 32)) 2^(32 - j), sum_(32 < j <= rho) 2^(top - j)) and,
        for each level j = 1, 2, ... and each event of rho >= j, its time, entity code, the time
        of the next event of rho >= j of the same entity and register (int64 max if none) and the
        level's weights (j == 1, 2^(32 - j) if j <= 32, 2^(top - j) if j > 32)."""
        hashes, valid = values
        chosen = np.flatnonzero(valid if where is None else valid & where)
        bits, top = 64 - precision, 65 - precision
        register = (hashes[chosen] >> np.uint64(bits)).astype(np.int64)
        rho = top - _bit_length(hashes[chosen] & np.uint64((1 << bits) - 1))
        weights = np.zeros((len(self.ts), 3), dtype=np.int64)
        weights[chosen, 0] = 1
        weights[chosen, 1] = 2**32 - np.left_shift(1, 32 - np.minimum(rho, 32))
        weights[chosen, 2] = np.where(rho > 32, 2 ** (top - 32) - np.left_shift(1, np.maximum(top - rho, 0)), 0)
        before = np.zeros((len(self.ts) + 1, 3), dtype=np.int64)
        np.cumsum(weights, axis=0, out=before[1:])
        groups = self.codes[chosen] * (1 << precision) + register
        order = np.argsort(groups, kind="stable")  # time order within an (entity, register)
        groups, rho, ts, codes = groups[order], rho[order], self.ts[chosen][order], self.codes[chosen][order]
        levels = []
        for j in range(1, top + 1):
            deep = rho >= j
            groups, rho, ts, codes = groups[deep], rho[deep], ts[deep], codes[deep]
            if not len(rho):
                break
            next_ts = np.full(len(rho), np.iinfo(np.int64).max)
            same = groups[1:] == groups[:-1]
            next_ts[:-1][same] = ts[1:][same]
            level = [int(j == 1), 2 ** (32 - j) if j <= 32 else 0, 2 ** (top - j) if j > 32 else 0]
            levels.append((ts, codes, next_ts, np.tile(np.array(level, dtype=np.int64), (len(rho), 1))))
        if not levels:
            empty = np.zeros(0, dtype=np.int64)
            return before, empty, empty, empty, np.zeros((0, 3), dtype=np.int64)
        return (before, *(np.concatenate(parts) for parts in zip(*levels, strict=True)))

    def distinct(self, values: np.ndarray, window_us: int, hi: np.ndarray) -> np.ndarray:
        """`values` are dense integer codes (NaN for null), from `_codes_of`."""
        present = ~np.isnan(values)
        n_values = int(np.nanmax(values)) + 2 if present.any() else 1
        codes = self.codes
        groups = codes * n_values + np.where(present, values, n_values - 1).astype(np.int64)
        order = np.argsort(groups, kind="stable")  # stable: time order within each (entity, value)
        sorted_groups = groups[order]
        next_ts = np.full(len(order), np.iinfo(np.int64).max)
        same = sorted_groups[1:] == sorted_groups[:-1]
        next_ts[:-1][same] = self.ts[order][1:][same]
        ends = np.empty(len(order), dtype=np.int64)
        ends[order] = np.minimum(self.ts[order] + window_us, next_ts)
        ends = np.where(present, ends, self.ts)  # a null covers nothing
        end_keys = np.sort(codes * self.span + ends)
        return hi - np.searchsorted(end_keys, self.probe_keys, side="left")
