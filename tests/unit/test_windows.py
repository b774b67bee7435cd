"""Tests for pipelines.windows: prefix-sum window aggregates against brute force, edges and chunking."""

from __future__ import annotations

from datetime import timedelta

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
