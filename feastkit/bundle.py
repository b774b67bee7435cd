"""The model bundle format: a joblib model plus a JSON manifest, versioned per feature service."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pandas as pd

from feastkit.errors import FeastkitError

if TYPE_CHECKING:
    from feast import FeatureStore

FORMAT_VERSION = 1
MODEL_FILE = "model.joblib"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
PREVIOUS_FILE = "PREVIOUS"


# Fingerprints ---------------------------------------------------------------------------------


def _definition(store: FeatureStore, ref: str) -> dict[str, Any]:
    """What a feature means, from the registry: what changes here changes the model's input."""
    view_name, feature = ref.split(":", 1)
    views = {v.name: v for v in store.list_feature_views()}
    if view_name in views:
        view = views[view_name]
        field = next((f for f in view.features if f.name == feature), None)
        if field is None:
            return {"missing": True}
        from feastkit.declarations import ViewSpec

        spec = ViewSpec.of(view)
        return {
            "kind": "feature_view", "dtype": str(field.dtype), "default": field.tags.get("default"),
            "ttl_seconds": int(view.ttl.total_seconds()) if view.ttl else 0,
            "join_keys": sorted(view.join_keys), "source": view.batch_source.name,
            # how the value is computed from raw events (window, function, filter, expression)
            **({"computed": spec.feature_definition(feature)} if spec is not None else {}),
        }
    odfvs = {o.name: o for o in store.list_on_demand_feature_views()}
    if view_name in odfvs:
        odfv = odfvs[view_name]
        field = next((f for f in odfv.features if f.name == feature), None)
        if field is None:
            return {"missing": True}
        inputs = sorted(f"{p.name}:{f.name}" for p in odfv.source_feature_view_projections.values()
                        for f in p.features)
        inputs += sorted(f"request:{f.name}" for s in odfv.source_request_sources.values()
                         for f in s.schema)
        udf = getattr(odfv.feature_transformation, "udf_string", "") or ""
        return {"kind": "on_demand", "dtype": str(field.dtype), "mode": odfv.mode,
                "udf_sha256": hashlib.sha256(udf.encode()).hexdigest(), "inputs": inputs}
    return {"missing": True}


def feature_fingerprints(store: FeatureStore, refs: list[str]) -> dict[str, str]:
    """sha256 of each feature's registry definition, by feature ref."""
    return {ref: hashlib.sha256(json.dumps(_definition(store, ref), sort_keys=True).encode()).hexdigest()
            for ref in refs}


def combined_fingerprint(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# Defaults and reference statistics -------------------------------------------------------------


def registry_defaults(store: FeatureStore, refs: list[str]) -> dict[str, float]:
    """Values declared in the registry (Field tag `default`) for when an entity has no row."""
    out = {}
    views = {v.name: v for v in store.list_feature_views()}
    for ref in refs:
        view_name, feature = ref.split(":", 1)
        if view_name in views:
            field = next((f for f in views[view_name].features if f.name == feature), None)
            if field is not None and "default" in field.tags:
                out[feature] = float(field.tags["default"])
    return out


def reference_stats(frame: pd.DataFrame, columns: list[str]) -> dict[str, dict[str, Any]]:
    """Per-feature summary of the training data: what monitoring compares new data against."""
    out = {}
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        present = values.dropna()
        quantiles = (np.quantile(present, np.linspace(0, 1, 11)).tolist() if len(present) else [])
        out[col] = {
            "count": int(len(values)), "null_rate": float(values.isna().mean()),
            "mean": float(present.mean()) if len(present) else None,
            "std": float(present.std()) if len(present) > 1 else None,
            "min": float(present.min()) if len(present) else None,
            "max": float(present.max()) if len(present) else None,
            "deciles": [float(q) for q in quantiles],
        }
    return out


# The bundle ----------------------------------------------------------------------------------


@dataclass
class ModelBundle:
    """A trained model and everything needed to serve it exactly as it was trained."""

    model: Any
    manifest: dict[str, Any]
    path: Path | None = None

    @property
    def feature_service(self) -> str:
        return self.manifest["feature_service"]

    @property
    def feature_refs(self) -> list[str]:
        return list(self.manifest["feature_refs"])

    @property
    def feature_columns(self) -> list[str]:
        return [ref.split(":", 1)[1] for ref in self.feature_refs]

    @property
    def defaults(self) -> dict[str, float]:
        return dict(self.manifest["defaults"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def matrix(self, features: pd.DataFrame) -> tuple[np.ndarray, list[list[str]]]:
        """Model input in manifest order, with defaults for missing values; and which were missing per row."""
        frame = features.reindex(columns=self.feature_columns)
        values = frame.apply(pd.to_numeric, errors="coerce").astype("float64")
        missing_mask = values.isna().to_numpy()
        defaults = self.defaults
        filled = values.fillna({c: defaults.get(c, math.nan) for c in self.feature_columns})
        cols = np.array(self.feature_columns)
        missing = [cols[row].tolist() for row in missing_mask]
        return filled.to_numpy(), missing

    def predict_proba(self, features: pd.DataFrame) -> tuple[np.ndarray, list[list[str]]]:
        """Positive-class probabilities and, per row, the features that fell back to defaults."""
        x, missing = self.matrix(features)
        return self.model.predict_proba(x)[:, 1], missing

    def save(self, models_dir: Path) -> Path:
        """Write model.joblib + manifest.json under models_dir/<feature_service>/<version>/."""
        target = models_dir / self.feature_service / self.version
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        joblib.dump(self.model, tmp / MODEL_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        self.path = target
        return target

    def check_against(self, store: FeatureStore) -> None:
        """Refuse a bundle whose features no longer mean what they meant at training time."""
        now = feature_fingerprints(store, self.feature_refs)
        then = self.manifest["feature_fingerprints"]
        changed = sorted(ref for ref in self.feature_refs if now.get(ref) != then.get(ref))
        if changed:
            raise FeastkitError(
                f"model bundle {self.feature_service}/{self.version} was trained on feature definitions "
                f"that changed since: {', '.join(changed)}",
                f"retrain with `feastkit train --service {self.feature_service}` (or roll the registry back)")


def new_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def load_bundle(path: Path) -> ModelBundle:
    """Load one bundle directory; a clear error when it is incomplete or of another format."""
    manifest_path, model_path = path / MANIFEST_FILE, path / MODEL_FILE
    if not manifest_path.is_file() or not model_path.is_file():
        raise FeastkitError(f"no complete model bundle at {path}",
                            "train one with `feastkit train` (or point FEASTKIT_MODELS_DIR elsewhere)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise FeastkitError(f"manifest {manifest_path} is not valid JSON ({exc})",
                            "retrain with `feastkit train`") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FeastkitError(f"bundle {path} has format {manifest.get('format_version')}, "
                            f"this server reads format {FORMAT_VERSION}", "retrain with `feastkit train`")
    try:
        model = joblib.load(model_path)
    except Exception as exc:
        raise FeastkitError(f"model file {model_path} cannot be loaded ({type(exc).__name__})",
                            "retrain with `feastkit train`") from None
    return ModelBundle(model, manifest, path)


def current_bundle(models_dir: Path, feature_service: str) -> ModelBundle:
    """The promoted bundle of a feature service."""
    pointer = models_dir / feature_service / CURRENT_FILE
    if not pointer.is_file():
        raise FeastkitError(f"no promoted model for '{feature_service}' in {models_dir}",
                            f"run `feastkit train --service {feature_service}`")
    return load_bundle(models_dir / feature_service / pointer.read_text().strip())


def promote(models_dir: Path, feature_service: str, version: str) -> None:
    """Make `version` the serving bundle; the one it replaces is kept as PREVIOUS for rollback."""
    base = models_dir / feature_service
    if not (base / version / MANIFEST_FILE).is_file():
        raise FeastkitError(f"no bundle {feature_service}/{version}", "train it first")
    current = base / CURRENT_FILE
    if current.is_file() and current.read_text().strip() != version:
        (base / PREVIOUS_FILE).write_text(current.read_text())
    tmp = base / (CURRENT_FILE + ".tmp")
    tmp.write_text(version + "\n")
    tmp.replace(current)


def rollback(models_dir: Path, feature_service: str) -> str:
    """Serve the previous bundle again; returns its version."""
    previous = models_dir / feature_service / PREVIOUS_FILE
    if not previous.is_file():
        raise FeastkitError(f"'{feature_service}' has no previous bundle to roll back to",
                            "nothing to do, or promote a version explicitly")
    version = previous.read_text().strip()
    promote(models_dir, feature_service, version)
    return version
