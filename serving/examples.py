"""Example requests for the demo: fraud-like and normal transactions, an unknown user, churn risks,
and one request to the generated route of every other served feature service."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd

from feastkit.clean import data_range
from feastkit.errors import FeastkitError
from feastkit.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

    from serving.contracts import InputField

Example = tuple[str, str, dict[str, Any]]


def feature_table(features_dir: Path, view: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Every row of a computed feature table (`<features_dir>/<view>/*.parquet`)."""
    files = sorted((features_dir / view).glob("*.parquet"))
    if not files:
        raise FeastkitError(f"feature table '{view}' has no files in {features_dir / view}",
                            "run `feastkit compute` first")
    return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)


def example_requests(settings: Settings, served: list[str] | None = None) -> list[Example]:
    """(title, path, body) for requests that exercise the served models on the generated data.

    `served`: the feature services the server loaded (default: what `feastkit serve` would load
    with these settings). The fraud and churn aliases get today's hand-picked cases; every other
    served service gets one request on its generated route, for an entity from its feature tables.
    """
    store = None
    if served is None:
        from feastkit.store import open_store
        from serving.scoring import served_services

        store = open_store(settings)
        served = served_services(store, settings)
    _, end = data_range(settings.clean_dir)
    reqs: list[Example] = []
    if settings.fraud_service in served:
        reqs += _fraud_examples(settings, pd.Timestamp(end))
    if settings.churn_service in served:
        reqs += _churn_examples(settings, pd.Timestamp(end))
    others = [s for s in served if s not in (settings.fraud_service, settings.churn_service)]
    if others:
        if store is None:
            from feastkit.store import open_store

            store = open_store(settings)
        reqs += [_service_example(settings, store, service, pd.Timestamp(end)) for service in others]
    return reqs


def _fraud_examples(settings: Settings, end: pd.Timestamp) -> list[Example]:
    tx = pd.read_parquet(settings.clean_dir / "transactions.parquet")
    recent = tx[tx["event_timestamp"] >= end - pd.Timedelta(days=7)]
    user = int(recent["user_id"].value_counts().index[0])
    mine = recent[recent["user_id"] == user]
    usual_amount = float(mine["amount"].median())
    usual_merchant = int(mine["merchant_id"].value_counts().index[0])
    merchants = feature_table(settings.features_dir, "merchant_risk_stats")
    merchants = merchants[merchants["event_timestamp"] <= end]  # as of the examples' time
    latest = merchants.sort_values("event_timestamp").groupby("merchant_id").tail(1)
    latest = latest[latest["merchant_txn_count_30d"] >= 20]
    risky_merchant = int(latest.sort_values("merchant_chargeback_rate_90d").iloc[-1]["merchant_id"])
    # both after the data's end: features are never read as of a time before the values the
    # online store holds (those would count as missing, stamped after the request's time)
    day = end.floor("D")
    night = day + pd.Timedelta(hours=2, minutes=30)
    if night <= end:
        night += pd.Timedelta(days=1)
    afternoon = day + pd.Timedelta(hours=14)
    if afternoon <= end:
        afternoon += pd.Timedelta(days=1)
    iso = _iso
    return [
        ("fraud-like: 8x the user's usual amount, 02:30 at night, riskiest merchant", "/v1/predict/fraud?explain=true",
         {"transaction_id": "demo-fraud", "user_id": user, "merchant_id": risky_merchant,
          "amount": round(usual_amount * 8, 2), "timestamp": iso(night), "channel": "web"}),
        ("normal: the same user, usual amount, usual merchant, afternoon", "/v1/predict/fraud",
         {"transaction_id": "demo-normal", "user_id": user, "merchant_id": usual_merchant,
          "amount": round(usual_amount, 2), "timestamp": iso(afternoon), "channel": "pos"}),
        ("unknown user: predicted with documented defaults", "/v1/predict/fraud",
         {"transaction_id": "demo-unknown", "user_id": 987654321, "merchant_id": usual_merchant,
          "amount": 49.9, "timestamp": iso(afternoon)}),
    ]


def _churn_examples(settings: Settings, end: pd.Timestamp) -> list[Example]:
    users = pd.read_parquet(settings.clean_dir / "users.parquet")
    horizon = end + pd.Timedelta(days=30)
    activity = feature_table(settings.features_dir, "customer_activity")
    active_now = activity[activity["event_timestamp"] == activity["event_timestamp"].max()]
    active_now = active_now.merge(users[["user_id", "churn_timestamp"]], on="user_id")
    leaving = active_now[active_now["churn_timestamp"].between(end, horizon)]
    staying = active_now[active_now["churn_timestamp"].isna()].sort_values("purchase_count_30d")
    iso = _iso
    reqs = []
    if len(leaving):
        reqs.append(("churn: a user whose activity is fading", "/v1/predict/churn",
                     {"user_id": int(leaving.sort_values("purchase_trend_30d").iloc[0]["user_id"]),
                      "as_of": iso(end)}))
    if len(staying):
        reqs.append(("churn: a steady, active customer", "/v1/predict/churn",
                     {"user_id": int(staying.iloc[-1]["user_id"]), "as_of": iso(end)}))
    reqs.append(("churn: unknown user", "/v1/predict/churn", {"user_id": 987654321, "as_of": iso(end)}))
    return reqs


def _service_views(store: FeatureStore, service: str) -> list[Any]:
    """The batch feature views a service reads (directly or through its on-demand views)."""
    views = {v.name: v for v in store.list_feature_views()}
    odfvs = {o.name: o for o in store.list_on_demand_feature_views()}
    out: dict[str, Any] = {}
    for projection in store.get_feature_service(service).feature_view_projections:
        if projection.name in views:
            out.setdefault(projection.name, views[projection.name])
        elif projection.name in odfvs:
            for source in odfvs[projection.name].source_feature_view_projections.values():
                out.setdefault(source.name, views[source.name])
    return list(out.values())


def _active_entity(settings: Settings, views: list[Any], key: str, end: pd.Timestamp) -> Any:
    """The value of join key `key` with the most rows among those present in a view's latest rows."""
    for view in views:
        if key not in view.join_keys or not (settings.features_dir / view.name).is_dir():
            continue
        table = feature_table(settings.features_dir, view.name, [key, "event_timestamp"])
        table = table[table["event_timestamp"] <= end]
        if table.empty:
            continue
        latest = table[table["event_timestamp"] == table["event_timestamp"].max()][key].unique()
        counts = table[table[key].isin(latest)][key].value_counts()
        return counts.index[0].item() if hasattr(counts.index[0], "item") else counts.index[0]
    return None


def _request_value(settings: Settings, field: InputField, end: pd.Timestamp) -> Any:
    """A plausible value for a request field: the recent median of a clean column of that name,
    the scoring time for an `*epoch*` number, else a neutral value of its type."""
    import pyarrow.parquet as pq

    if field.kind in ("int", "float"):
        if "epoch" in field.name:
            return int(end.timestamp()) if field.kind == "int" else float(end.timestamp())
        for path in sorted(settings.clean_dir.glob("*.parquet")):
            names = pq.read_schema(path).names
            if field.name in names and "event_timestamp" in names:
                frame = pd.read_parquet(path, columns=[field.name, "event_timestamp"])
                recent = frame[frame["event_timestamp"] >= end - pd.Timedelta(days=7)][field.name].dropna()
                if len(recent):
                    value = float(recent.median())
                    return int(value) if field.kind == "int" else round(value, 2)
        return 0 if field.kind == "int" else 0.0
    return {"str": "example", "bool": False, "timestamp": _iso(end)}[field.kind]


def _service_example(settings: Settings, store: FeatureStore, service: str, end: pd.Timestamp) -> Example:
    from serving.contracts import service_inputs

    views = _service_views(store, service)
    # scored a minute after the data's end: the online store holds each entity's latest row, so a
    # request at or before the last stamp would be served without it while training (and the
    # replay check) would read the row before (a fraud service reads as of the instant before)
    at = end + pd.Timedelta(minutes=1)
    body: dict[str, Any] = {}
    for field in service_inputs(store, service):
        if field.source == "entity":
            value = _active_entity(settings, views, field.name, end)
            body[field.name] = value if value is not None else _request_value(settings, field, at)
        else:
            body[field.name] = _request_value(settings, field, at)
    body["as_of"] = _iso(at)
    return (f"{service}: an active entity from its feature tables", f"/v1/predict/{service}?explain=true", body)


def _iso(ts: pd.Timestamp | datetime) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def served_by(client: httpx.Client) -> list[str] | None:
    """The feature services a running server loaded (from /ready), or None when it cannot tell."""
    try:
        checks = client.get("/ready").json().get("checks", {})
    except (httpx.HTTPError, ValueError):
        return None
    served = [key.split(":", 1)[1] for key in checks if key.startswith("model:")]
    return served or None


def run_examples(settings: Settings, url: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Send every example request to a running server; (title, body, response JSON)."""
    out = []
    with httpx.Client(base_url=url, timeout=timedelta(seconds=30).total_seconds()) as client:
        for title, path, body in example_requests(settings, served_by(client)):
            response = client.post(path, json=body)
            out.append((title, body, {"status": response.status_code, **response.json()}))
    return out


def run_burst(settings: Settings, url: str, service: str, count: int = 5,
              pause: float = 1.0) -> list[tuple[str, Any, float]]:
    """A burst of `count` transactions of one user, a minute apart, scored by a service that reads
    the stream-fed realtime view: (request time, the realtime features it was scored with, the
    probability). With the server publishing scored transactions and the stream worker running,
    each one sees the ones before it (`pause` seconds apart, so the worker has applied them)."""
    import time

    from feastkit.declarations import STREAM_EVENT_ID_TAG
    from feastkit.store import open_store

    store = open_store(settings)
    end = pd.Timestamp(pd.read_parquet(settings.clean_dir / "transactions.parquet",
                                       columns=["event_timestamp"])["event_timestamp"].max())
    _, path, body = _service_example(settings, store, service, end)
    # after every other demo request (those are at most a day after the data's end)
    start = end.floor("D") + pd.Timedelta(days=2, hours=10)
    streamed = [view for view in _service_views(store, service) if (view.tags or {}).get(STREAM_EVENT_ID_TAG)]
    realtime = [f.name for view in streamed for f in view.features]
    if streamed:  # and after what an earlier burst left online (a read never sees a row stamped later)
        key = streamed[0].join_keys[0]
        got = store.get_online_features(features=[f"{streamed[0].name}:{realtime[0]}"],
                                        entity_rows=[{key: body[key]}]).to_dict(include_event_timestamps=True)
        stamps = [t for t in got.get(f"{realtime[0]}__ts", []) if t]
        if stamps and pd.Timestamp(max(stamps), unit="s", tz="UTC") >= start:
            start = pd.Timestamp(max(stamps), unit="s", tz="UTC").ceil("h") + pd.Timedelta(hours=1)
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(count):
            at = start + pd.Timedelta(minutes=i)
            request = {**body, "as_of": _iso(at)}
            for name in request:
                if "epoch" in name:
                    request[name] = type(body[name])(at.timestamp())
            response = client.post(path, json=request)
            response.raise_for_status()
            answer = response.json()
            seen = {name: (answer.get("features") or {}).get(name) for name in realtime}
            out.append((_iso(at), seen, float(answer["probability"])))
            time.sleep(pause)
    return out
