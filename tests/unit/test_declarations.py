"""Feature view declarations: the spec they record, the refusals that name view and field, and every
aggregation function computed through `feastkit compute` against brute force from the raw events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureView, ValueType
from feast.types import Float64, Int64, String

from feastkit.declarations import (
    SPEC_TAG,
    Aggregation,
    DeclarationError,
    Derived,
    ViewSpec,
    clean_events,
    reference_view,
    windowed_view,
)
from pipelines.aggregates import compute_features, read_view

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
transactions = clean_events("transactions")
labels = clean_events("fraud_labels", timestamp_field="label_timestamp")
D1, D7 = timedelta(days=1), timedelta(days=7)
US = 1_000_000


def view(features: list, helpers: list | None = None, **kwargs: object) -> FeatureView:
    args = {"name": "v", "entity": user, "events": transactions, "grid": timedelta(hours=1),
            "ttl": timedelta(days=2), "features": features, "helpers": helpers or [], **kwargs}
    return windowed_view(**args)  # type: ignore[arg-type]


# The declaration and its spec ---------------------------------------------------------------


def test_a_declaration_is_a_feast_feature_view_with_its_spec_in_the_tags() -> None:
    fv = view([Aggregation("n_1d", "count", D1, description="Transactions, 1 day.", default="0"),
               Aggregation("sum_7d", "sum", D7, "amount"),
               Derived("share", "n_night / nullif(n_1d, 0)::DOUBLE", Float64)],
              helpers=[Aggregation("n_night", "count", D1, where="hour(ts) < 6")],
              freshness_sla="2h", tags={"domain": "fraud"})
    assert isinstance(fv, FeatureView)
    assert [f.name for f in fv.features] == ["n_1d", "sum_7d", "share"]
    assert [f.dtype for f in fv.features] == [Int64, Float64, Float64]
    assert fv.features[0].tags == {"default": "0", "aggregation": "count() of transactions over 1d"}
    assert fv.features[0].description == "Transactions, 1 day."
    assert fv.tags["domain"] == "fraud" and fv.tags["freshness_sla"] == "2h"
    assert fv.tags["row_timestamp"] == "window_end"
    assert fv.batch_source.path.endswith("/v/*.parquet")
    spec = ViewSpec.of(fv)
    assert spec is not None and spec.entity_key == "user_id" and spec.lookback == D7
    assert [(a.name, a.feature) for a in spec.aggregations] == [("n_night", False), ("n_1d", True), ("sum_7d", True)]
    assert ViewSpec.from_json("v", spec.to_json()) == spec
    # the digest ignores descriptions but not windows
    again = view([Aggregation("n_1d", "count", D1, description="other words", default="0"),
                  Aggregation("sum_7d", "sum", D7, "amount"),
                  Derived("share", "n_night / nullif(n_1d, 0)::DOUBLE", Float64)],
                 helpers=[Aggregation("n_night", "count", D1, where="hour(ts) < 6")])
    assert ViewSpec.of(again).digest == spec.digest
    longer = view([Aggregation("n_1d", "count", D7)])
    assert ViewSpec.of(longer).digest != ViewSpec.of(view([Aggregation("n_1d", "count", D1)])).digest


def test_a_feature_s_definition_names_what_its_value_depends_on() -> None:
    spec = ViewSpec.of(view([Aggregation("a", "count", D1), Aggregation("b", "sum", D7, "amount"),
                             Derived("c", "a * 2", Float64)]))
    assert [x["name"] for x in spec.feature_definition("c")["aggregations"]] == ["a"]
    assert spec.feature_definition("b")["aggregations"][0]["window_us"] == 7 * 86_400 * US
    assert spec.feature_definition("nope") == {}


def test_push_fed_per_event_views_and_reference_views() -> None:
    rt = view([Aggregation("n_10m", "count", timedelta(minutes=10))], grid=None, push_source="rt_push",
              name="rt")
    assert rt.stream_source.name == "rt_push" and rt.batch_source.name == "rt_source"
    assert rt.tags["row_timestamp"] == "event_time" and ViewSpec.of(rt).grid_us == 0
    ref = reference_view(name="profile", entity=user, source=clean_events("users", "signup_timestamp"),
                         features=[Derived("created", "epoch(signup_timestamp)", Float64)])
    spec = ViewSpec.of(ref)
    assert spec.kind == "reference" and spec.sources[0].timestamp == "signup_timestamp"
    assert ViewSpec.of(FeatureView(name="plain", entities=[user], ttl=D1, source=transactions)) is None
    assert SPEC_TAG in rt.tags


@pytest.mark.parametrize(("features", "helpers", "kwargs", "message"), [
    ([Aggregation("x", "median", D1, "amount")], [], {}, r"feature view 'v', feature 'x': unsupported function 'median'"),
    ([Aggregation("x", "sum", D1)], [], {}, r"feature view 'v', feature 'x': sum needs a column"),
    ([Aggregation("x", "last_n", D1, "amount")], [], {}, r"feature 'x': last_n needs n"),
    ([Aggregation("x", "count", timedelta(0))], [], {}, r"feature 'x': window must be a positive"),
    ([Aggregation("x", "count", timedelta(days=40))], [], {"lookback": timedelta(days=30)},
     r"feature 'x': window 40d is longer than the view's lookback 30d"),
    ([Aggregation("x", "count", D1), Aggregation("x", "count", D7)], [], {}, r"feature view 'v': duplicate name 'x'"),
    ([Aggregation("x", "count", D1)], [Aggregation("x", "count", D7)], {}, r"duplicate name 'x'"),
    ([Aggregation("user_id", "count", D1)], [], {}, r"feature name 'user_id' is reserved"),
    ([Aggregation("event_timestamp", "count", D1)], [], {}, r"'event_timestamp' is reserved"),
    ([Aggregation("x y", "count", D1)], [], {}, r"feature name 'x y' is not a SQL identifier"),
    ([Aggregation("x", "count", D1)], [], {"grid": timedelta(hours=7)}, r"grid 7:00:00 does not divide a day"),
    ([Aggregation("x", "count", D1, events=labels)], [], {}, r"feature 'x': events='fraud_labels' is not one of"),
    ([Derived("x", "  ", Float64)], [], {}, r"feature 'x': empty expression"),
    ([], [], {}, r"feature view 'v' declares no features"),
])
def test_bad_declarations_are_refused_naming_the_view_and_field(features: list, helpers: list, kwargs: dict,
                                                                 message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        view(features, helpers, **kwargs)


# Computing declared views --------------------------------------------------------------------

START = datetime(2026, 3, 1, tzinfo=UTC)


def write_clean(clean: Path, seed: int = 3, users: int = 6, n: int = 900) -> pd.DataFrame:
    """A clean transactions table with ties, repeated values and several channels."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 20 * 86_400, n))
    seconds[5:12] = seconds[5]  # ties
    tx = pd.DataFrame({
        "transaction_id": [f"t{i}" for i in range(n)],
        "user_id": rng.integers(1, users + 1, n).astype("int64"),
        "merchant_id": rng.integers(1, 40, n).astype("int64"),
        "amount": np.round(rng.choice([5.0, 12.5, 12.5, 99.99, 250.0, 3.1], n) * rng.integers(1, 4, n), 2),
        "channel": rng.choice(["pos", "web", "app"], n),
        "device_id": rng.choice([f"d{i}" for i in range(30)], n),
        "event_timestamp": pd.to_datetime(START) + pd.to_timedelta(seconds, unit="s"),
    })
    clean.mkdir(parents=True, exist_ok=True)
    tx.to_parquet(clean / "transactions.parquet", index=False)
    pd.DataFrame({"user_id": np.arange(1, users + 1, dtype="int64"),
                  "signup_timestamp": pd.to_datetime(START) - pd.to_timedelta(np.arange(users), unit="D")}
                 ).to_parquet(clean / "users.parquet", index=False)
    return tx


ALL_FUNCTIONS = [
    Aggregation("n_2d", "count", timedelta(days=2)),
    Aggregation("n_web_2d", "count", timedelta(days=2), where="channel = 'web'"),
    Aggregation("sum_2d", "sum", timedelta(days=2), "amount"),
    Aggregation("avg_2d", "avg", timedelta(days=2), "amount"),
    Aggregation("min_2d", "min", timedelta(days=2), "amount"),
    Aggregation("max_2d", "max", timedelta(days=2), "amount"),
    Aggregation("std_2d", "std", timedelta(days=2), "amount"),
    Aggregation("var_2d", "var", timedelta(days=2), "amount"),
    Aggregation("merchants_2d", "count_distinct", timedelta(days=2), "merchant_id"),
    Aggregation("approx_merchants_2d", "approx_count_distinct", timedelta(days=2), "merchant_id"),
    Aggregation("last_amount_2d", "last", timedelta(days=2), "amount"),
    Aggregation("last_channel_2d", "last", timedelta(days=2), "channel", dtype=String),
    Aggregation("last_time_2d", "last_time", timedelta(days=2)),
    Aggregation("last3_2d", "last_n", timedelta(days=2), "amount", n=3),
    Derived("web_share_2d", "n_web_2d / nullif(n_2d, 0)::DOUBLE", Float64),
]


def brute(events: pd.DataFrame, t: pd.Timestamp, window: timedelta) -> pd.DataFrame:
    return events[(events["event_timestamp"] >= t - window) & (events["event_timestamp"] < t)]


def expected_row(events: pd.DataFrame, t: pd.Timestamp) -> dict:
    w = brute(events, t, timedelta(days=2))
    amounts = w["amount"].to_numpy()
    last = w.iloc[-1] if len(w) else None
    return {
        "n_2d": len(w), "n_web_2d": int((w["channel"] == "web").sum()), "sum_2d": float(amounts.sum()),
        "avg_2d": amounts.mean() if len(w) else None, "min_2d": amounts.min() if len(w) else None,
        "max_2d": amounts.max() if len(w) else None,
        "std_2d": float(np.std(amounts, ddof=1)) if len(w) > 1 else None,
        "var_2d": float(np.var(amounts, ddof=1)) if len(w) > 1 else None,
        "merchants_2d": w["merchant_id"].nunique(),
        "last_amount_2d": float(last["amount"]) if last is not None else None,
        "last_channel_2d": last["channel"] if last is not None else None,
        "last_time_2d": last["event_timestamp"].timestamp() if last is not None else None,
        "last3_2d": [float(a) for a in amounts[::-1][:3]],
        "web_share_2d": (w["channel"] == "web").sum() / len(w) if len(w) else None,
    }


def close(a: object, b: object) -> bool:
    if b is None:
        return a is None or (isinstance(a, float) and np.isnan(a))
    if isinstance(b, list):
        return list(a) == b
    if isinstance(b, str):
        return a == b
    return bool(np.isclose(float(a), float(b), rtol=1e-12, atol=1e-9))


def test_every_function_equals_brute_force_from_the_raw_events(tmp_path: Path) -> None:
    tx = write_clean(tmp_path / "clean")
    spec = ViewSpec.of(view(ALL_FUNCTIONS, name="all_functions"))
    compute_features([spec], tmp_path / "clean", tmp_path / "features", START, START + timedelta(days=22))
    table = read_view(tmp_path / "features", "all_functions")
    assert list(table.columns) == ["user_id", "event_timestamp", *(f.name for f in ALL_FUNCTIONS)]
    # ties resolve to the event that sorts last: order events the way the engine reads them
    tx = tx.sort_values(["user_id", "event_timestamp"], kind="stable")
    checked = 0
    for row in table.sample(min(len(table), 600), random_state=1).itertuples(index=False):
        events = tx[tx["user_id"] == row.user_id]
        expected = expected_row(events, pd.Timestamp(row.event_timestamp))
        got = row._asdict()
        for name, value in expected.items():
            assert close(got[name], value), (name, row.user_id, row.event_timestamp, got[name], value)
        # HyperLogLog: within 4 standard errors (1.6 % at precision 12) of the exact count
        exact = expected["merchants_2d"]
        assert abs(got["approx_merchants_2d"] - exact) <= max(1, 4 * 0.0163 * exact)
        checked += 1
    assert checked > 100


def test_a_reference_view_is_one_row_per_raw_row(tmp_path: Path) -> None:
    write_clean(tmp_path / "clean")
    ref = reference_view(name="profile", entity=user, source=clean_events("users", "signup_timestamp"),
                         features=[Derived("created", "epoch(signup_timestamp)", Float64)])
    compute_features([ViewSpec.of(ref)], tmp_path / "clean", tmp_path / "features", START, START + D1)
    table = read_view(tmp_path / "features", "profile")
    assert len(table) == 6
    assert (table["created"] == table["event_timestamp"].map(lambda t: t.timestamp())).all()


@pytest.mark.parametrize(("features", "message"), [
    ([Aggregation("x", "sum", D1, "amout")],
     r"feature view 'v': feature 'x' reads column 'amout', which raw table 'transactions' does not have"),
    ([Aggregation("x", "count", D1, where="chanel = 'web'")],
     r"feature view 'v', feature 'x': filter \"chanel = 'web'\" does not apply to raw table 'transactions'"),
    ([Aggregation("n", "count", D1), Derived("x", "n / nope", Float64)],
     r"feature view 'v', feature 'x': expression 'n / nope' fails"),
])
def test_declarations_that_do_not_fit_the_raw_table_fail_at_compute_naming_the_field(
        tmp_path: Path, features: list, message: str) -> None:
    write_clean(tmp_path / "clean")
    with pytest.raises(DeclarationError, match=message):
        compute_features([ViewSpec.of(view(features))], tmp_path / "clean", tmp_path / "features",
                         START, START + D1)
    assert not list((tmp_path / "features").glob("v/part-*.parquet"))


def test_a_changed_definition_recomputes_the_whole_table(tmp_path: Path) -> None:
    tx = write_clean(tmp_path / "clean")
    out = tmp_path / "features"
    end = START + timedelta(days=21)
    compute_features([ViewSpec.of(view([Aggregation("s", "sum", timedelta(days=1), "amount")]))],
                     tmp_path / "clean", out, START, end)
    before = read_view(out, "v")
    # the window grows from 1 to 3 days; an hourly run must not leave 1-day rows behind
    wider = ViewSpec.of(view([Aggregation("s", "sum", timedelta(days=3), "amount")]))
    compute_features([wider], tmp_path / "clean", out, end - timedelta(hours=1), end)
    after = read_view(out, "v")
    assert after["event_timestamp"].min() <= before["event_timestamp"].min() + timedelta(days=1)
    # nothing left behind but the folder of the current version, which features/v points at
    assert [p.resolve() for p in tmp_path.glob("features/.v.*")] == [(out / "v").resolve()]
    tx = tx.sort_values(["user_id", "event_timestamp"], kind="stable")
    for row in after.sample(300, random_state=2).itertuples(index=False):
        events = tx[tx["user_id"] == row.user_id]
        expected = brute(events, pd.Timestamp(row.event_timestamp), timedelta(days=3))["amount"].sum()
        assert np.isclose(row.s, expected, rtol=1e-12, atol=1e-9), row
    assert "digest" in (out / "v" / "_definition.json").read_text()


def test_every_compute_run_enters_the_ledger_and_a_rebuild_is_loaded_again(tmp_path: Path) -> None:
    """Whoever runs the computation (a DAG task, `feastkit compute`), the interval ledger learns what
    was computed, so the next materialization loads it; a table rebuilt under a changed definition
    counts as computed over all its rows and loaded nowhere."""
    from feastkit.ledger import Ledger

    write_clean(tmp_path / "clean")
    out = tmp_path / "features"
    end = START + timedelta(days=21)
    one_day = ViewSpec.of(view([Aggregation("s", "sum", timedelta(days=1), "amount")]))
    report = compute_features([one_day], tmp_path / "clean", out, START, end)
    ledger = Ledger(out)
    assert ledger.computed() == {"v": [(START, end)]} and report.computed == {"v": (START, end)}
    ledger.record_loaded("online", ["v"], (START, end))
    assert ledger.pending("online", ["v"]) == {}
    hour = (end - timedelta(hours=1), end)
    compute_features([one_day], tmp_path / "clean", out, *hour)  # a rerun of one hour: that hour again
    assert ledger.pending("online", ["v"]) == {"v": [hour]}
    ledger.record_loaded("online", ["v"], hour)
    wider = ViewSpec.of(view([Aggregation("s", "sum", timedelta(days=3), "amount")]))
    rebuilt = compute_features([wider], tmp_path / "clean", out, *hour)
    lo, hi = rebuilt.computed["v"]
    assert lo <= START and hi >= end  # the whole table, not the hour the run was asked for
    assert ledger.pending("online", ["v"]) == {"v": [(lo, hi)]}
