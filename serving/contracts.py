"""What a feature service's prediction routes take and return, derived from the registry.

For every served feature service the API generates `POST /v1/predict/{service}` (and `:batch`).
Their bodies are built here with pydantic's `create_model` from the feature service as Feast
describes it (the same reading as training, `feastkit.services.describe_service`): every entity
join key, typed by the entity's value type, and every request-source field of its on-demand
views, typed by its Feast dtype, all required and documented with the registry's descriptions,
plus an optional `as_of`. Nothing here knows a particular service: a new feature service with a
trained bundle gets typed, validated and documented routes without a code change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model, field_validator

from feastkit.errors import FeastkitError
from feastkit.services import describe_service, get_service
from serving.schemas import PredictionFields, plausible_time

if TYPE_CHECKING:
    from feast import FeatureStore

DECISIONS_TAG = "decisions"
DEFAULT_DECISIONS = ("positive", "negative")
MAX_STRING = 256
MAX_MAGNITUDE = 1e15
INT_BOUNDS = {64: (-(2**63), 2**63 - 1), 32: (-(2**31), 2**31 - 1)}
AS_OF = "as_of"
RESERVED_NAMES = ("fraud", "churn")  # the typed alias routes
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")

# Feast ValueType name -> (kind, integer bits)
_KINDS = {"INT64": ("int", 64), "INT32": ("int", 32), "DOUBLE": ("float", 0), "FLOAT": ("float", 0),
          "STRING": ("str", 0), "BOOL": ("bool", 0), "UNIX_TIMESTAMP": ("timestamp", 0)}
_EXAMPLES: dict[str, Any] = {"int": 1001, "float": 1.0, "str": "example", "bool": False,
                             "timestamp": "2026-04-30T21:15:00Z"}


@dataclass(frozen=True)
class InputField:
    """One field a caller sends: an entity join key or a request-source field."""

    name: str
    kind: str                  # int | float | str | bool | timestamp
    bits: int                  # 64 or 32 for ints, else 0
    description: str
    source: str                # "entity" | "request"

    def pydantic_field(self, alias: str | None = None) -> tuple[Any, Any]:
        """(annotation, FieldInfo) for a required field of this type, with its bounds."""
        common: dict[str, Any] = {"description": self.description, "alias": alias,
                                  "examples": [_EXAMPLES[self.kind]]}
        if self.kind == "int":
            low, high = INT_BOUNDS[self.bits]
            return int, Field(..., ge=low, le=high, **common)
        if self.kind == "float":
            return float, Field(..., ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE, allow_inf_nan=False, **common)
        if self.kind == "str":
            return str, Field(..., max_length=MAX_STRING, **common)
        if self.kind == "bool":
            return bool, Field(..., **common)
        return AwareDatetime, Field(..., **common)


def _kind(value_type: Any, service: str, what: str) -> tuple[str, int]:
    name = getattr(value_type, "name", str(value_type))
    if name not in _KINDS:
        raise FeastkitError(f"feature service '{service}' needs {what} of Feast type {name}, which the "
                            "prediction API cannot take from JSON",
                            "exclude the service with FEASTKIT_SERVICES, or give the field a scalar type")
    return _KINDS[name]


def service_inputs(store: FeatureStore, service: str) -> list[InputField]:
    """The service's join keys then request fields (describe_service's order), typed and described."""
    spec = describe_service(store, service)
    entities_by_name = {e.name: e for e in store.list_entities()}
    views = {v.name: v for v in store.list_feature_views()}
    odfvs = {o.name: o for o in store.list_on_demand_feature_views()}
    keys: dict[str, InputField] = {}
    requests: dict[str, InputField] = {}

    def add_view_keys(view_name: str) -> None:
        view = views[view_name]
        for column in view.entity_columns:
            if column.name in keys:
                continue
            entity = next((entities_by_name[e] for e in view.entities if e in entities_by_name
                           and entities_by_name[e].join_key == column.name), None)
            value_type = entity.value_type if entity is not None else None
            if value_type is None or getattr(value_type, "name", "UNKNOWN") == "UNKNOWN":
                value_type = column.dtype.to_value_type()
            kind, bits = _kind(value_type, service, f"join key '{column.name}'")
            text = (entity.description if entity is not None else "") or column.description or ""
            if entity is not None:
                text = f"Entity `{entity.name}`: {text}" if text else f"Entity `{entity.name}`."
            keys[column.name] = InputField(column.name, kind, bits, text or "Entity join key.", "entity")

    for projection in get_service(store, service).feature_view_projections:
        if projection.name in views:
            add_view_keys(projection.name)
        elif projection.name in odfvs:
            odfv = odfvs[projection.name]
            for source in odfv.source_request_sources.values():
                for f in source.schema:
                    if f.name not in requests:
                        kind, bits = _kind(f.dtype.to_value_type(), service, f"request field '{f.name}'")
                        text = f.description or f"Request field of `{source.name}`."
                        requests[f.name] = InputField(f.name, kind, bits, text, "request")
            for fv_projection in odfv.source_feature_view_projections.values():
                add_view_keys(fv_projection.name)
    fields = [keys[k] for k in spec.join_keys] + [requests[r] for r in spec.request_fields]
    if any(f.name == AS_OF for f in fields):
        raise FeastkitError(f"feature service '{service}' has an input named '{AS_OF}', which the "
                            "prediction API reserves for the scoring time",
                            "rename the join key or request field")
    return fields


def decision_labels(store: FeatureStore, service: str) -> tuple[str, str]:
    """(positive, negative) decision labels from the service's tag `decisions`, e.g. "fraud,legit"."""
    tag = get_service(store, service).tags.get(DECISIONS_TAG)
    if tag is None:
        return DEFAULT_DECISIONS
    labels = tuple(part.strip() for part in tag.split(","))
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        raise FeastkitError(f"feature service '{service}' has tag {DECISIONS_TAG}={tag!r}, not two labels",
                            f'tag it like {DECISIONS_TAG}="fraud,legit" (positive label first) and apply')
    return labels  # type: ignore[return-value]


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


class ServicePrediction(PredictionFields):
    """The fields every generated prediction response shares (entity keys and decision are added)."""

    features: dict[str, Any] | None = Field(None, description="Feature values used (?explain=true).")


@dataclass
class ServiceContract:
    """A feature service's generated API: inputs, decision labels and the single-row models."""

    service: str
    description: str
    inputs: list[InputField]
    labels: tuple[str, str]
    request_model: type[BaseModel]
    response_model: type[BaseModel]
    # (pydantic attribute, wire name, field) per input, for turning a body into a reader row
    attributes: list[tuple[str, str, InputField]]

    @classmethod
    def build(cls, store: FeatureStore, service: str) -> ServiceContract:
        if not _SERVICE_NAME.match(service):
            raise FeastkitError(f"feature service '{service}' has a name that cannot be a URL path segment",
                                "exclude it with FEASTKIT_SERVICES, or rename it to letters, digits, _ . -")
        if service in RESERVED_NAMES:
            raise FeastkitError(f"feature service '{service}' has the name of a fixed route (/v1/predict/{service})",
                                "rename the feature service, or exclude it with FEASTKIT_SERVICES")
        inputs = service_inputs(store, service)
        labels = decision_labels(store, service)
        description = get_service(store, service).description or ""
        camel = _camel(service) or "Service"
        # Registry names go on the wire as aliases; the attributes are plain identifiers, so any
        # field name (even one pydantic reserves, like model_*) is safe.
        attributes = [(f"in_{i}", f.name, f) for i, f in enumerate(inputs)]
        timestamps = [attr for attr, _, f in attributes if f.kind == "timestamp"]
        request_fields: dict[str, Any] = {attr: f.pydantic_field(alias=name) for attr, name, f in attributes}
        request_fields[AS_OF] = (AwareDatetime | None, Field(
            None, description="Score as of this time (ISO 8601 with a timezone; default now): features "
                              "are read, and view TTLs applied, as of this instant."))
        example = {f.name: _EXAMPLES[f.kind] for f in inputs}
        request = create_model(
            f"{camel}Request",
            __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [example]}),
            __doc__=f"One `{service}` prediction request: "
                    + ", ".join(f"`{f.name}`" for f in inputs) + " and optional `as_of`.",
            __validators__={"plausible_times": field_validator(AS_OF, *timestamps)(plausible_time)},
            **request_fields)
        keys = [(attr, name, f) for attr, name, f in attributes if f.source == "entity"]
        response_fields: dict[str, Any] = {attr: f.pydantic_field(alias=name) for attr, name, f in keys}
        response_fields["decision"] = (Literal[labels], Field(  # type: ignore[valid-type]
            ..., description=f"`{labels[0]}` when probability >= threshold, else `{labels[1]}`."))
        response = create_model(f"{camel}Prediction", __base__=ServicePrediction,
                                __doc__=f"A `{service}` prediction (entity keys echoed).", **response_fields)
        return cls(service, description, inputs, labels, request, response, attributes)

    def batch_models(self, max_batch_size: int) -> tuple[type[BaseModel], type[BaseModel]]:
        """Batch request/response bodies, bounded by the configured size (documented as maxItems)."""
        camel = _camel(self.service) or "Service"
        rows: Any = (list[self.request_model], Field(  # type: ignore[name-defined]
            ..., min_length=1, max_length=max_batch_size, description=f"1 to {max_batch_size} rows."))
        request = create_model(f"{camel}BatchRequest", __config__=ConfigDict(extra="forbid"), rows=rows)
        predictions: Any = (list[self.response_model], Field(  # type: ignore[name-defined]
            ..., description="One per row, same order."))
        return request, create_model(f"{camel}BatchResponse", predictions=predictions)

    def row(self, body: BaseModel) -> tuple[dict[str, Any], datetime | None]:
        """The reader row (registry names -> values) of a request body, and its `as_of`."""
        return {name: getattr(body, attr) for attr, name, _ in self.attributes}, getattr(body, AS_OF)

    def entity_keys(self, row: dict[str, Any]) -> dict[str, Any]:
        return {f.name: row[f.name] for f in self.inputs if f.source == "entity"}

    def example(self) -> dict[str, Any]:
        return {f.name: _EXAMPLES[f.kind] for f in self.inputs}
