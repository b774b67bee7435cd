"""Online feature reads for a feature service, with the view TTLs applied exactly as training applied them.

Feast does not apply a view's TTL at online retrieval (a value 10 days old comes back for a
view with a 1-day TTL), while historical retrieval does. Here every base feature older than
its view's TTL at the request's time is treated as missing, and the on-demand views are
then run by Feast (`OnDemandFeatureView.transform_dict`, the same UDF used offline) on those
inputs, so a model sees online what it saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.on_demand_feature_view import OnDemandFeatureView


class OnlineStoreUnavailable(RuntimeError):
    """The online store could not be read (down, unreachable, or timing out)."""


@dataclass
class ServiceReader:
    """Reads one feature service online; built once at start-up (refs parsed once, not per request)."""

    store: FeatureStore
    service: str
    base_refs: list[str]
    ttl_seconds: dict[str, float]        # base feature column -> TTL (0 = never expires)
    join_keys: list[str]
    request_fields: list[str]
    odfvs: list[tuple[OnDemandFeatureView, list[str]]]  # (view, its output columns in the service)
    output_columns: list[str]

    @classmethod
    def build(cls, store: FeatureStore, service: str) -> ServiceReader:
        fs = store.get_feature_service(service)
        views = {v.name: v for v in store.list_feature_views()}
        odfv_by_name = {o.name: o for o in store.list_on_demand_feature_views()}
        base_refs: list[str] = []
        ttl: dict[str, float] = {}
        join_keys: list[str] = []
        request_fields: list[str] = []
        odfvs = []
        outputs: list[str] = []

        def add_view_features(view_name: str, names: list[str]) -> None:
            view = views[view_name]
            for key in view.join_keys:
                if key not in join_keys:
                    join_keys.append(key)
            for name in names:
                ref = f"{view_name}:{name}"
                if ref not in base_refs:
                    base_refs.append(ref)
                    ttl[name] = view.ttl.total_seconds() if view.ttl else 0.0

        for projection in fs.feature_view_projections:
            names = [f.name for f in projection.features]
            outputs += names
            if projection.name in views:
                add_view_features(projection.name, names)
            else:
                odfv = odfv_by_name[projection.name]
                for source in odfv.source_feature_view_projections.values():
                    add_view_features(source.name, [f.name for f in source.features])
                for req in odfv.source_request_sources.values():
                    request_fields += [f.name for f in req.schema if f.name not in request_fields]
                odfvs.append((odfv, names))
        return cls(store, service, base_refs, ttl, join_keys, request_fields, odfvs, outputs)

    def read(self, rows: list[dict[str, Any]], as_of_epochs: list[float]) -> list[dict[str, Any]]:
        """Feature values per row (None where missing or expired at that row's time)."""
        entity_rows = [{k: row[k] for k in self.join_keys} for row in rows]
        try:
            response = self.store.get_online_features(features=self.base_refs, entity_rows=entity_rows)
            raw = response.to_dict(include_event_timestamps=True)
        except Exception as exc:  # any store failure becomes one clear, typed error
            raise OnlineStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        columns: dict[str, list[Any]] = {}
        for name, ttl in self.ttl_seconds.items():
            values, stamps = raw.get(name, [None] * len(rows)), raw.get(f"{name}__ts", [0] * len(rows))
            columns[name] = [
                None if value is None or (ttl and (ts or 0) < as_of - ttl) else value
                for value, ts, as_of in zip(values, stamps, as_of_epochs, strict=True)
            ]
        for odfv, names in self.odfvs:
            inputs = {f: [row.get(f) for row in rows] for f in self.request_fields}
            for source in odfv.source_feature_view_projections.values():
                for feature in source.features:
                    inputs[feature.name] = columns[feature.name]
            result = odfv.transform_dict(inputs)
            for name in names:
                columns[name] = list(result[name])
        return [{name: columns[name][i] for name in self.output_columns} for i in range(len(rows))]

    def ping(self) -> None:
        """One cheap read: raises OnlineStoreUnavailable when the store cannot answer."""
        probe = {k: -1 for k in self.join_keys}
        try:
            self.store.get_online_features(features=self.base_refs[:1], entity_rows=[probe])
        except Exception as exc:
            raise OnlineStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
