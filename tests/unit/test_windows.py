"""Tests for pipelines.windows: prefix-sum window aggregates against brute force, edges and chunking."""

from __future__ import annotations

import hashlib
import math
import struct
from datetime import timedelta
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import pipelines.windows as windows
from pipelines.windows import Aggregate, window_aggregates

US = 1_000_000
DAY_US = 86_400 * US
W1, W3 = timedelta(days=1), timedelta(days=3)

AGGREGATES = [
    Aggregate("n_1d", "count", W1),
    Aggregate("n_3d", "count", W3),
    Aggregate("n_flag_3d", "count", W3, where="flag"),
    Aggregate("sum_1d", "sum", W1, "amount"),
    Aggregate("sum_flag_3d", "sum", W3, "amount", where="flag"),
    Aggregate("avg_3d", "avg", W3, "amount"),
    Aggregate("avg_flag_3d", "avg", W3, "amount", where="flag"),
    Aggregate("std_3d", "std", W3, "amount"),
    Aggregate("max_3d", "max", W3, "amount"),
    Aggregate("max_flag_1d", "max", W1, "amount", where="flag"),
    Aggregate("last_3d", "last", W3),
    Aggregate("last_flag_1d", "last", W1, where="flag"),
    Aggregate("distinct_shop_3d", "distinct", W3, "shop"),
    Aggregate("distinct_device_1d", "distinct", W1, "device"),
    Aggregate("distinct_shop_flag_3d", "distinct", W3, "shop", where="flag"),
]


def random_events(rng: np.random.Generator, entities: int, per_entity: int) -> dict[str, np.ndarray]:
    """Events sorted by (k, ts) with same-microsecond ties, 2-decimal amounts, repeated amounts
    and a nullable device column."""
    k = np.repeat(np.arange(entities) * 7 + 3, per_entity)
    ts = rng.integers(0, 10 * DAY_US, size=len(k))
    ties = rng.random(len(k)) < 0.15
    ts[1:][ties[1:]] = ts[:-1][ties[1:]]
    ts = (ts // US) * US if rng.random() < 0.5 else ts
    order = np.lexsort((ts, k))
    amount = np.round(rng.choice([19.99, 5.0, 120.5, 0.01], size=len(k))
                      * (1 + (rng.random(len(k)) < 0.5) * rng.integers(1, 40, size=len(k))), 2)
    device = rng.integers(0, 4, size=len(k)).astype(float)
    device[rng.random(len(k)) < 0.2] = np.nan
    return {"k": k[order], "ts": ts[order], "amount": amount[order],
            "flag": rng.random(len(k))[order] < 0.4, "shop": rng.integers(0, 5, size=len(k))[order],
            "device": device[order]}


def probes_for(events: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Event times, one microsecond either side, and instants at and past each window edge."""
    k, ts = events["k"], events["ts"]
    offsets = [0, 1, -1, DAY_US, DAY_US + 1, 3 * DAY_US, 3 * DAY_US + 1]
    pk = np.concatenate([k] * len(offsets) + [k])
    pt = np.concatenate([ts + o for o in offsets] + [rng.integers(0, 12 * DAY_US, size=len(k))])
    order = np.lexsort((pt, pk))
    return {"k": pk[order], "ts": pt[order]}


def evaluate(events: dict[str, np.ndarray], probes: dict[str, np.ndarray],
             aggregates: list[Aggregate]) -> dict[str, list]:
    """The engine's rows for fixed probes (sorted by k, ts), with times as epoch microseconds."""
    def probes_of(keys: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mine = np.isin(probes["k"], keys)
        return probes["k"][mine], probes["ts"][mine]

    columns = {name: pa.array(values, from_pandas=True) for name, values in events.items()}  # NaN -> null
    table = pa.concat_tables(list(window_aggregates(pa.table(columns), aggregates, probes_of)))
    as_micros = [pc.cast(col, pa.int64()) if pa.types.is_timestamp(col.type) else col for col in table.columns]
    return pa.table(as_micros, names=table.column_names).to_pydict()


def brute(events: dict[str, np.ndarray], k: int, t: int, agg: Aggregate) -> object:
    width = int(agg.window.total_seconds()) * US
    inside = (events["k"] == k) & (events["ts"] >= t - width) & (events["ts"] < t)
    if agg.where:
        inside &= events[agg.where]
    values = events[agg.column][inside] if agg.column else None
    n = int(inside.sum())
    if agg.kind == "count":
        return n
    if agg.kind == "sum":
        return float(values.sum())
    if agg.kind == "avg":
        return float(values.mean()) if n else None
    if agg.kind == "std":
        return float(np.std(values, ddof=1)) if n >= 2 else None
    if agg.kind == "max":
        return float(values.max()) if n else None
    if agg.kind == "last":
        return int(events["ts"][inside].max()) if n else None
    present = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    return len(set(present.tolist()))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_kind_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    events = random_events(rng, entities=6, per_entity=60)
    probes = probes_for(events, rng)
    got = evaluate(events, probes, AGGREGATES)
    assert got["k"] == probes["k"].tolist() and got["ts"] == probes["ts"].tolist()
    for i, (k, t) in enumerate(zip(probes["k"].tolist(), probes["ts"].tolist(), strict=True)):
        for agg in AGGREGATES:
            want, value = brute(events, k, t, agg), got[agg.name][i]
            where = f"{agg.name} at k={k} t={t}"
            if want is None or agg.kind in ("count", "max", "last", "distinct"):
                assert value == want, where
            else:
                assert value == pytest.approx(want, rel=1e-12, abs=1e-12), where


def test_a_window_of_equal_amounts_has_a_standard_deviation_of_exactly_zero() -> None:
    events = {"k": np.array([1, 1, 1, 1]), "ts": np.array([0, 1, 2, 3]) * US,
              "amount": np.array([19.99, 19.99, 19.99, 0.1])}
    probes = {"k": np.array([1, 1, 1]), "ts": np.array([2, 3, 4]) * US}
    got = evaluate(events, probes, [Aggregate("std", "std", W1, "amount")])
    assert got["std"][:2] == [0.0, 0.0]
    assert got["std"][2] == pytest.approx(np.std([19.99] * 3 + [0.1], ddof=1), rel=1e-15)


def test_large_spreads_use_the_floating_point_numerator_accurately() -> None:
    amounts = np.array([1.0, 99_999.99, 1.0, 99_999.99, 50_000.5])
    events = {"k": np.ones(5, dtype=np.int64), "ts": np.arange(5) * US, "amount": amounts}
    probes = {"k": np.ones(1, dtype=np.int64), "ts": np.array([5 * US])}
    raw = np.rint(amounts * windows.SCALE)
    assert len(raw) * (raw ** 2).sum() - raw.sum() ** 2 > windows._EXACT_LIMIT  # the float branch
    got = evaluate(events, probes, [Aggregate("std", "std", W1, "amount")])
    assert got["std"][0] == pytest.approx(np.std(amounts, ddof=1), rel=1e-14)


def test_chunking_does_not_change_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    events = random_events(rng, entities=9, per_entity=40)
    probes = probes_for(events, rng)
    whole = evaluate(events, probes, AGGREGATES)
    monkeypatch.setattr(windows, "CHUNK_EVENTS", 1)  # one entity per chunk
    assert evaluate(events, probes, AGGREGATES) == whole
    monkeypatch.setattr(windows, "CHUNK_EVENTS", 10**9)
    monkeypatch.setattr(windows, "_KEY_LIMIT", 2**40)  # (entity, time) keys force small chunks
    assert evaluate(events, probes, AGGREGATES) == whole


def test_amounts_sum_exactly_at_a_ten_thousandth() -> None:
    amounts = np.array([0.1] * 10 + [0.00004])
    events = {"k": np.ones(11, dtype=np.int64), "ts": np.arange(11) * US, "amount": amounts}
    probes = {"k": np.ones(1, dtype=np.int64), "ts": np.array([11 * US])}
    got = evaluate(events, probes, [Aggregate("s", "sum", W1, "amount")])
    assert got["s"] == [1.0]  # float addition gives 0.9999999999999999; 0.00004 rounds to 0


@pytest.mark.parametrize("probe_key, probe_ts, message", [
    (2, US, "no events"),
    (1, 5 * DAY_US, "further than a window"),
])
def test_probes_the_events_cannot_answer_are_refused(probe_key: int, probe_ts: int, message: str) -> None:
    events = {"k": np.array([1]), "ts": np.array([0])}
    probes = {"k": np.array([probe_key]), "ts": np.array([probe_ts])}
    table = pa.table(events)
    with pytest.raises(ValueError, match=message):
        list(window_aggregates(table, [Aggregate("n", "count", W1)], lambda keys, ts: (probes["k"], probes["ts"])))


def test_amounts_too_large_to_sum_exactly_are_refused() -> None:
    events = {"k": np.ones(2, dtype=np.int64), "ts": np.arange(2), "amount": np.array([1e15, 1e15])}
    probes = {"k": np.ones(1, dtype=np.int64), "ts": np.array([US])}
    with pytest.raises(ValueError, match="too large"):
        evaluate(events, probes, [Aggregate("s", "sum", W1, "amount")])


def test_missing_values_are_refused_only_where_an_aggregate_reads_them() -> None:
    events = {"k": np.ones(3, dtype=np.int64), "ts": np.arange(3) * US,
              "amount": np.array([5.0, np.nan, 7.0]), "flag": np.array([True, False, True])}
    probes = {"k": np.ones(1, dtype=np.int64), "ts": np.array([3 * US])}
    got = evaluate(events, probes, [Aggregate("s", "sum", W1, "amount", where="flag")])
    assert got["s"] == [12.0]
    with pytest.raises(ValueError, match="column amount holds 1 null, NaN or infinite value"):
        evaluate(events, probes, [Aggregate("m", "max", W1, "amount")])


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "median", "column": "amount"}, "unknown kind"),
    ({"kind": "sum"}, "needs a column"),
])
def test_malformed_aggregates_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Aggregate("x", window=W1, **kwargs)


# --- min, var, last_value, last_n, approx_distinct ----------------------------------------------

NEW_AGGREGATES = [
    Aggregate("min_3d", "min", W3, "amount"),
    Aggregate("min_flag_1d", "min", W1, "amount", where="flag"),
    Aggregate("min_delta_3d", "min", W3, "delta"),
    Aggregate("var_3d", "var", W3, "amount"),
    Aggregate("var_flag_1d", "var", W1, "amount", where="flag"),
    Aggregate("var_delta_3d", "var", W3, "delta"),
    Aggregate("last_amount_3d", "last_value", W3, "amount"),
    Aggregate("last_shop_1d", "last_value", W1, "shop"),
    Aggregate("last_device_flag_1d", "last_value", W1, "device", where="flag"),
    Aggregate("last_label_3d", "last_value", W3, "label"),
    Aggregate("last_label_flag_1d", "last_value", W1, "label", where="flag"),
    Aggregate("last1_amount_1d", "last_n", W1, "amount", n=1),
    Aggregate("last3_amount_flag_3d", "last_n", W3, "amount", where="flag", n=3),
    Aggregate("last3_device_1d", "last_n", W1, "device", n=3),
    Aggregate("last3_shop_flag_1d", "last_n", W1, "shop", where="flag", n=3),
    Aggregate("last1_label_flag_3d", "last_n", W3, "label", where="flag", n=1),
    Aggregate("last3_label_1d", "last_n", W1, "label", n=3),
    Aggregate("approx_shop_3d", "approx_distinct", W3, "shop", precision=4),
    Aggregate("approx_amount_3d", "approx_distinct", W3, "amount", precision=6),
    Aggregate("approx_device_flag_3d", "approx_distinct", W3, "device", where="flag", precision=8),
    Aggregate("approx_label_1d", "approx_distinct", W1, "label"),
]
MASK64 = 2**64 - 1


def with_new_columns(events: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The events plus a signed amount with repeats and a nullable string column."""
    size = len(events["k"])
    label = rng.choice(np.array(["a", "bb", "ccc", "δ", "e e"], dtype=object), size=size)
    label[rng.random(size) < 0.2] = None
    return {**events, "delta": rng.choice([-3.5, 0.0, 2.25, -0.01, 7.0], size=size), "label": label}


def plain(value: object) -> object:
    """A raw event value as the engine's output gives it (NaN as None, NumPy scalars as Python)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def splitmix64(word: int) -> int:
    z = (word + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def reference_hash(value: object) -> int:
    """The documented value hash, in plain Python."""
    if isinstance(value, str):
        return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")
    if isinstance(value, float):
        return splitmix64(struct.unpack("<Q", struct.pack("<d", value + 0.0))[0])
    return splitmix64(int(value) & MASK64)


def reference_hll(hashes: list[int], precision: int) -> int:
    """HyperLogLog of 64-bit hashes, registers and estimator written out directly."""
    m, bits = 1 << precision, 64 - precision
    registers: dict[int, int] = {}
    for h in hashes:
        rho = bits - (h & ((1 << bits) - 1)).bit_length() + 1
        registers[h >> bits] = max(registers.get(h >> bits, 0), rho)
    total = float(Fraction(m - len(registers)) + sum(Fraction(1, 2**rho) for rho in registers.values()))
    alpha = {16: 0.673, 32: 0.697, 64: 0.709}.get(m, 0.7213 / (1 + 1.079 / m))
    raw = alpha * m * m / total
    empty = m - len(registers)
    return round(m * math.log(m / empty)) if raw <= 2.5 * m and empty > 0 else round(raw)


def brute_new(events: dict[str, np.ndarray], k: int, t: int, agg: Aggregate) -> object:
    width = int(agg.window.total_seconds()) * US
    inside = (events["k"] == k) & (events["ts"] >= t - width) & (events["ts"] < t)
    if agg.where:
        inside &= events[agg.where]
    index = np.flatnonzero(inside)
    values = events[agg.column][index]
    if agg.kind == "min":
        return float(values.min()) if len(index) else None
    if agg.kind == "var":
        return float(np.var(values, ddof=1)) if len(index) >= 2 else None
    newest_first = sorted(index.tolist(), key=lambda i: (int(events["ts"][i]), i), reverse=True)
    if agg.kind == "last_value":
        return plain(events[agg.column][newest_first[0]]) if newest_first else None
    if agg.kind == "last_n":
        got = [plain(events[agg.column][i]) for i in newest_first[:agg.n]]
        return [float(v) if isinstance(v, int) else v for v in got]
    assert agg.kind == "approx_distinct"
    present = [v for v in map(plain, values.tolist()) if v is not None]
    return reference_hll([reference_hash(v) for v in present], agg.precision)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_new_kind_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    events = random_events(rng, entities=6, per_entity=60)
    probes = probes_for(events, rng)
    events = with_new_columns(events, rng)
    got = evaluate(events, probes, NEW_AGGREGATES)
    assert got["k"] == probes["k"].tolist() and got["ts"] == probes["ts"].tolist()
    short = 0
    for i, (k, t) in enumerate(zip(probes["k"].tolist(), probes["ts"].tolist(), strict=True)):
        for agg in NEW_AGGREGATES:
            want, value = brute_new(events, k, t, agg), got[agg.name][i]
            where = f"{agg.name} at k={k} t={t}"
            if agg.kind == "var" and want is not None:
                assert value == pytest.approx(want, rel=1e-12, abs=1e-12), where
            else:
                assert value == want, where
            short += agg.kind == "last_n" and 0 < len(want) < agg.n
    assert short > 100  # windows with fewer than n events are exercised


def test_new_kinds_keep_the_column_types() -> None:
    events = {"k": np.ones(3, dtype=np.int64), "ts": np.arange(3) * US, "shop": np.array([4, 5, 4]),
              "label": np.array(["x", None, "y"], dtype=object)}
    probes = {"k": np.ones(2, dtype=np.int64), "ts": np.array([0, 3 * US])}
    aggregates = [Aggregate("ls", "last_value", W1, "shop"), Aggregate("ll", "last_value", W1, "label"),
                  Aggregate("ns", "last_n", W1, "shop", n=2), Aggregate("nl", "last_n", W1, "label", n=2),
                  Aggregate("a", "approx_distinct", W1, "label")]
    columns = {name: pa.array(values, from_pandas=True) for name, values in events.items()}
    table = pa.concat_tables(list(window_aggregates(pa.table(columns), aggregates,
                                                    lambda keys, ts: (probes["k"], probes["ts"]))))
    assert [table.schema.field(a.name).type for a in aggregates] == [
        pa.int64(), pa.string(), pa.list_(pa.float64()), pa.list_(pa.string()), pa.int64()]
    assert table.to_pydict()["ll"] == [None, "y"]
    assert table.to_pydict()["nl"] == [[], ["y", None]]
    assert table.to_pydict()["ns"] == [[], [4.0, 5.0]]
    assert table.to_pydict()["a"] == [0, 2]


def test_a_dictionary_encoded_string_column_gives_strings() -> None:
    table = pa.table({"k": [1, 1, 1], "ts": [0, 1, 2],
                      "label": pa.array(["b", "a", "b"]).dictionary_encode()})
    aggregates = [Aggregate("l", "last_value", W1, "label"), Aggregate("n", "last_n", W1, "label", n=3),
                  Aggregate("a", "approx_distinct", W1, "label")]
    got = pa.concat_tables(list(window_aggregates(table, aggregates, lambda k, t: (np.array([1]), np.array([3])))))
    assert got.to_pydict() == {"k": [1], "ts": got.column("ts").to_pylist(), "l": ["b"],
                               "n": [["b", "a", "b"]], "a": [2]}


def test_last_value_and_last_n_break_ties_in_time_by_input_order() -> None:
    events = {"k": np.ones(4, dtype=np.int64), "ts": np.array([0, 5, 5, 5]) * US,
              "amount": np.array([1.0, 2.0, 3.0, 4.0]), "flag": np.array([True, True, True, False])}
    probes = {"k": np.ones(1, dtype=np.int64), "ts": np.array([6 * US])}
    got = evaluate(events, probes, [Aggregate("v", "last_value", W1, "amount"),
                                    Aggregate("vf", "last_value", W1, "amount", where="flag"),
                                    Aggregate("n", "last_n", W1, "amount", n=3),
                                    Aggregate("nf", "last_n", W1, "amount", where="flag", n=5)])
    assert (got["v"], got["vf"], got["n"], got["nf"]) == ([4.0], [3.0], [[4.0, 3.0, 2.0]], [[3.0, 2.0, 1.0]])


def test_a_window_of_equal_amounts_has_a_variance_of_exactly_zero() -> None:
    events = {"k": np.array([1, 1, 1, 1]), "ts": np.array([0, 1, 2, 3]) * US,
              "amount": np.array([19.99, 19.99, 19.99, 0.1])}
    probes = {"k": np.array([1, 1, 1, 1]), "ts": np.array([1, 2, 3, 4]) * US}
    got = evaluate(events, probes, [Aggregate("var", "var", W1, "amount"), Aggregate("std", "std", W1, "amount")])
    assert got["var"][:3] == [None, 0.0, 0.0]
    assert got["var"][3] == pytest.approx(np.var([19.99] * 3 + [0.1], ddof=1), rel=1e-15)
    assert got["var"][3] == pytest.approx(got["std"][3] ** 2, rel=1e-15)


def test_new_kinds_do_not_change_with_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(12)
    events = random_events(rng, entities=9, per_entity=40)
    probes = probes_for(events, rng)
    events = with_new_columns(events, rng)
    aggregates = AGGREGATES + NEW_AGGREGATES
    whole = evaluate(events, probes, aggregates)
    assert whole == {**evaluate(events, probes, AGGREGATES), **evaluate(events, probes, NEW_AGGREGATES)}
    monkeypatch.setattr(windows, "CHUNK_EVENTS", 1)  # one entity per chunk
    assert evaluate(events, probes, aggregates) == whole
    monkeypatch.setattr(windows, "CHUNK_EVENTS", 10**9)
    monkeypatch.setattr(windows, "_KEY_LIMIT", 2**40)  # (entity, time) keys force small chunks
    assert evaluate(events, probes, aggregates) == whole


def big_streams(rng: np.random.Generator, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """One entity per size, with that many events over 10 days of (almost surely) distinct
    integer ids, plus string ids drawn from as many values (so with repeats)."""
    k = np.repeat(np.arange(len(sizes)), sizes)
    ts = rng.integers(0, 10 * DAY_US, size=len(k))
    order = np.lexsort((ts, k))
    ids = rng.integers(-(2**62), 2**62, size=len(k))
    tags = np.array([f"user-{i}" for i in (rng.random(len(k)) * np.repeat(sizes, sizes)).astype(np.int64)],
                    dtype=object)
    return {"k": k, "ts": ts[order], "id": ids, "tag": tags}


@pytest.mark.parametrize("precision", [4, 6, 12])
def test_approx_distinct_equals_a_reference_hyperloglog_of_each_window(precision: int) -> None:
    rng = np.random.default_rng(precision)
    events = big_streams(rng, np.array([5, 300, 2500]))
    events["id"] = np.where(rng.random(len(events["k"])) < 0.5, events["id"], events["id"] % 50)  # repeats
    probes = {"k": np.repeat(np.arange(3), 40), "ts": np.tile(np.linspace(0, 11 * DAY_US, 40).astype(np.int64), 3)}
    aggregates = [Aggregate("ids", "approx_distinct", W3, "id", precision=precision),
                  Aggregate("tags", "approx_distinct", timedelta(days=9), "tag", precision=precision)]
    got = evaluate(events, probes, aggregates)
    raw_branch = 0
    for i, (k, t) in enumerate(zip(probes["k"].tolist(), probes["ts"].tolist(), strict=True)):
        for agg in aggregates:
            width = micros_of(agg.window)
            inside = (events["k"] == k) & (events["ts"] >= t - width) & (events["ts"] < t)
            hashes = [reference_hash(v) for v in events[agg.column][inside].tolist()]
            assert got[agg.name][i] == reference_hll(hashes, precision), f"{agg.name} at k={k} t={t}"
            raw_branch += len(set(hashes)) > 3 * (1 << precision)
    assert raw_branch > 0 or precision == 12  # the raw estimate is exercised, not only linear counting


def micros_of(window: timedelta) -> int:
    return int(window.total_seconds()) * US


def test_approx_distinct_sums_the_registers_exactly_even_at_the_deepest_levels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashes with rho up to 61 (p = 4): 2^-rho is far below the sum's last bit, yet the
    estimate equals the reference's exact register sum, rounded once."""
    precision, bits = 4, 60
    words = [(r << bits) | (1 << shift) for r in range(16) for shift in (59, 57, 50, 40)]
    words += [(3 << bits) | 1, (9 << bits) | 2**20, (12 << bits) | 2**27, 7 << bits]  # rho 60, 40, 33, 61
    events = {"k": np.ones(len(words), dtype=np.int64), "ts": np.arange(len(words)) * US,
              "id": np.arange(len(words))}
    hashes = np.array(words, dtype=np.uint64)
    monkeypatch.setattr(windows, "_hashes", lambda table, name: (hashes, np.ones(len(hashes), dtype=bool)))
    probes = {"k": np.ones(len(words) + 1, dtype=np.int64), "ts": np.arange(len(words) + 1) * US}
    got = evaluate(events, probes, [Aggregate("a", "approx_distinct", W1, "id", precision=precision)])
    assert got["a"] == [reference_hll(words[:i], precision) for i in range(len(words) + 1)]


def test_approx_distinct_errs_within_the_standard_error() -> None:
    precision = 12
    standard_error = 1.04 / np.sqrt(2**precision)
    rng = np.random.default_rng(2024)
    sizes = np.geomspace(50, 20_000, 60).astype(np.int64)
    events = big_streams(rng, sizes)
    late = 12 * DAY_US  # probes after every event, and in the middle of each stream
    probes = {"k": np.repeat(np.arange(len(sizes)), 2), "ts": np.tile([5 * DAY_US, late], len(sizes))}
    window = timedelta(days=12)
    got = evaluate(events, probes, [Aggregate("ids", "approx_distinct", window, "id"),
                                    Aggregate("tags", "approx_distinct", window, "tag")])
    errors, truths = [], []
    for i, (k, t) in enumerate(zip(probes["k"].tolist(), probes["ts"].tolist(), strict=True)):
        inside = (events["k"] == k) & (events["ts"] < t)
        for name, column in (("ids", "id"), ("tags", "tag")):
            truth = len(set(events[column][inside].tolist()))
            truths.append(truth)
            errors.append((got[name][i] - truth) / truth)
    errors = np.array(errors)
    assert min(truths) < 60 and max(truths) > 15_000
    assert np.sqrt(np.mean(errors**2)) <= 1.5 * standard_error
    assert np.abs(errors).max() <= 4 * standard_error


def test_approx_distinct_of_small_counts_is_exact_or_within_one() -> None:
    rng = np.random.default_rng(5)
    truths = np.tile(np.arange(1, 21), 10)
    k = np.repeat(np.arange(len(truths)), 3 * truths)  # each value three times
    values = np.concatenate([rng.permutation(np.repeat(rng.integers(0, 2**40, size=n), 3)) for n in truths])
    events = {"k": k, "ts": np.concatenate([np.arange(3 * n) * US for n in truths]), "v": values,
              "s": np.array([f"v{v}" for v in values], dtype=object)}
    probes = {"k": np.arange(len(truths)), "ts": np.full(len(truths), 61 * US)}
    got = evaluate(events, probes, [Aggregate("v", "approx_distinct", W1, "v"),
                                    Aggregate("s", "approx_distinct", W1, "s")])
    for name in ("v", "s"):
        off = np.abs(np.array(got[name]) - truths)
        assert off.max() <= 1, name
        assert (off == 0).mean() >= 0.9, name


def test_approx_distinct_does_not_count_nulls() -> None:
    events = {"k": np.ones(6, dtype=np.int64), "ts": np.arange(6) * US,
              "device": np.array([np.nan, 5.0, np.nan, 5.0, 7.0, np.nan]),
              "label": np.array([None, "a", None, "a", "b", None], dtype=object)}
    probes = {"k": np.ones(4, dtype=np.int64), "ts": np.array([0, 1, 3, 6]) * US}
    got = evaluate(events, probes, [Aggregate("d", "approx_distinct", W1, "device"),
                                    Aggregate("l", "approx_distinct", W1, "label"),
                                    Aggregate("n", "last_n", W1, "label", n=2)])
    assert got["d"] == got["l"] == [0, 0, 1, 2]
    assert got["n"] == [[], [None], [None, "a"], [None, "b"]]  # a null value stays in the list


def test_a_column_read_as_numbers_and_as_distinct_values_keeps_its_numbers() -> None:
    events = {"k": np.ones(3, dtype=np.int64), "ts": np.arange(3) * US, "amount": np.array([10.0, 20.0, 10.0])}
    probes = {"k": np.ones(1, dtype=np.int64), "ts": np.array([3 * US])}
    got = evaluate(events, probes, [Aggregate("s", "sum", W1, "amount"), Aggregate("d", "distinct", W1, "amount"),
                                    Aggregate("m", "min", W1, "amount")])
    assert (got["s"], got["d"], got["m"]) == ([40.0], [2], [10.0])


def test_missing_values_are_refused_for_min_and_var() -> None:
    events = {"k": np.ones(3, dtype=np.int64), "ts": np.arange(3) * US, "amount": np.array([5.0, np.nan, 7.0])}
    probes = {"k": np.ones(1, dtype=np.int64), "ts": np.array([3 * US])}
    for kind in ("min", "var"):
        with pytest.raises(ValueError, match="column amount holds 1 null, NaN or infinite value"):
            evaluate(events, probes, [Aggregate("x", kind, W1, "amount")])


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "last_n", "column": "amount"}, "needs n"),
    ({"kind": "last_n", "column": "amount", "n": 0}, "at least 1"),
    ({"kind": "last_n", "column": "amount", "n": -2}, "at least 1"),
    ({"kind": "last_n", "column": "amount", "n": 2.0}, "at least 1"),
    ({"kind": "last_value", "column": "amount", "n": 2}, "only for kind 'last_n'"),
    ({"kind": "approx_distinct", "column": "amount", "precision": 3}, "precision must be an integer from 4 to 16"),
    ({"kind": "approx_distinct", "column": "amount", "precision": 17}, "precision must be an integer from 4 to 16"),
    ({"kind": "min"}, "needs a column"),
    ({"kind": "var"}, "needs a column"),
    ({"kind": "last_value"}, "needs a column"),
    ({"kind": "last_n", "n": 3}, "needs a column"),
    ({"kind": "approx_distinct"}, "needs a column"),
])
def test_malformed_new_aggregates_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Aggregate("x", window=W1, **kwargs)


def test_approx_distinct_refuses_a_column_it_cannot_hash() -> None:
    table = pa.table({"k": [1], "ts": [0], "v": pa.array([[1, 2]])})
    with pytest.raises(ValueError, match="cannot hash"):
        list(window_aggregates(table, [Aggregate("a", "approx_distinct", W1, "v")],
                               lambda k, t: (np.array([1]), np.array([1]))))
