"""Sliding-window aggregates of per-entity event streams at probe times, by prefix sums (NumPy).

For a probe (entity k, time T) and a window w, the window holds k's events with timestamp in
[T - w, T). Events are sorted by (entity, time) once; a binary search gives, for every probe
and window, the index range [lo, hi) of its events, and each aggregate is read off prefix
arrays over that range in O(1):

- counts and sums are differences of cumulative integers, so they are exact: values are summed
  as fixed-point integers of 1/10,000 of a unit (`SCALE`), which is exact for money amounts;
- the sample standard deviation comes from n, the sum and the sum of squares, whose
  numerator n*S2 - S1^2 is computed exactly in 64-bit modular arithmetic whenever it is below
  2^61 (so a window of equal amounts gives exactly 0), and in floating point above that,
  where cancellation no longer matters;
- maxima use a sparse table (max of two overlapping power-of-two blocks);
- the latest event of a kind is the last index of that kind before hi;
- distinct values: each event of (k, value) covers probe times (t, min(t + w, next t of the
  same value)], so the distinct count is #events before T minus #cover ends before T.

Results are exact and do not depend on where a stream starts, so an incremental run over an
hour equals the same rows of a full run bit for bit. Entities are processed in chunks, which
bounds memory and keeps the (entity, time) keys within 63 bits.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCALE = 10_000  # sums are exact in 1/10,000 of a unit; values are rounded to it first
CHUNK_EVENTS = 50_000  # events per chunk of entities: small enough to stay in cache and reuse memory
_KEY_LIMIT = 2**62
DAY_US = 86_400_000_000
_EXACT_LIMIT = 2.0**61
UTC_MICROS = pa.timestamp("us", tz="UTC")  # probe times and "last" results come out as this type
KINDS = ("count", "sum", "avg", "std", "max", "last", "distinct")


@dataclass(frozen=True)
class Aggregate:
    """One output column: `kind` over the events in [T - window, T) selected by `where`.

    kinds: count (events), sum / avg / std / max (of `column`; sum is 0 over no events,
    the others null), last (timestamp of the latest event, null if none), distinct (count of
    distinct non-null values of `column`). `where` names a boolean event column.
    """

    name: str
    kind: str
    window: timedelta
    column: str | None = None
    where: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"aggregate {self.name}: unknown kind {self.kind!r}, choose from {KINDS}")
        if self.kind in ("sum", "avg", "std", "max", "distinct") and self.column is None:
            raise ValueError(f"aggregate {self.name}: kind {self.kind!r} needs a column")


def micros(duration: timedelta) -> int:
    """A timedelta in whole microseconds, exactly (no float seconds on the way)."""
    return (duration.days * 86_400 + duration.seconds) * 1_000_000 + duration.microseconds


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
    distinct = {a.column for a in aggregates if a.kind == "distinct"}
    columns = {name: _codes_of(events, name) if name in distinct else _column(events, name)
               for name in {a.column for a in aggregates} - {None}}
    masks = {name: _mask(events, name) for name in {a.where for a in aggregates} - {None}}
    for agg in aggregates:
        if agg.kind not in ("sum", "avg", "std", "max"):
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

        for agg in aggregates:
            values = of_chunk(columns[agg.column]) if agg.column else None
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

    def evaluate(self, agg: Aggregate, values: np.ndarray | None, where: np.ndarray | None) -> pa.Array | np.ndarray:
        hi, lo = self.bound(0), self.bound(micros(agg.window))
        n = self.counts(where, lo, hi, agg.where)
        if agg.kind == "count":
            return n
        if agg.kind == "distinct":
            return self.distinct(values, micros(agg.window), hi)
        if agg.kind == "last":
            picked = np.arange(len(self.ts)) if where is None else np.where(where, np.arange(len(self.ts)), -1)
            last = self.prefix(("last", agg.where), lambda: np.maximum.accumulate(picked) if len(picked) else picked)
            found = n > 0
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
        std = np.sqrt(np.maximum(numerator, 0.0) / pairs) / SCALE
        return pa.array(std, mask=n < 2)

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
