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
CHECKSUM_FILE = "SHA256SUMS"   # written at promote: sha256 of the model and manifest files
CHECKED_FILES = (MODEL_FILE, MANIFEST_FILE)


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

    def changed_features(self, store: FeatureStore) -> list[str]:
        """The bundle's feature refs whose registry definition differs from the one it was trained on."""
        now = feature_fingerprints(store, self.feature_refs)
        then = self.manifest["feature_fingerprints"]
        return sorted(ref for ref in self.feature_refs if now.get(ref) != then.get(ref))

    def check_against(self, store: FeatureStore) -> None:
        """Refuse a bundle whose features no longer mean what they meant at training time."""
        changed = self.changed_features(store)
        if changed:
            raise FeastkitError(
                f"model bundle {self.feature_service}/{self.version} was trained on feature definitions "
                f"that changed since: {', '.join(changed)}",
                f"retrain with `feastkit train --service {self.feature_service}` (or roll the registry back)")


def new_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_checksums(path: Path) -> dict[str, str] | None:
    """file name -> sha256 recorded in a bundle's SHA256SUMS (`sha256sum` format), None without one."""
    sums = path / CHECKSUM_FILE
    if not sums.is_file():
        return None
    out = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            out[name] = digest
    return out


def verify_checksums(path: Path) -> None:
    """Refuse a bundle whose files differ from the sha256 recorded when it was promoted.

    model.joblib is a pickle: loading it runs code. Only files whose digest matches the one
    recorded at promotion are loaded, so a bundle changed or replaced after promotion (a torn
    copy, a stray edit, a file swapped in) is refused before a byte of it is unpickled.
    """
    recorded = recorded_checksums(path)
    if recorded is None:
        raise FeastkitError(f"bundle {path} has no {CHECKSUM_FILE} (no sha256 was recorded at promotion)",
                            "retrain and promote it with `feastkit train`")
    for name in CHECKED_FILES:
        expected = recorded.get(name)
        if expected is None:
            raise FeastkitError(f"bundle {path}: {CHECKSUM_FILE} records no sha256 for {name}",
                                "retrain and promote it with `feastkit train`")
        actual = file_sha256(path / name)
        if actual != expected:
            raise FeastkitError(
                f"bundle {path}: {name} has sha256 {actual[:12]}..., not the {expected[:12]}... recorded at "
                f"promotion (changed since)", "restore the promoted file, or retrain and promote with "
                "`feastkit train`; never load a model file of unknown origin")


def load_bundle(path: Path, verify: bool = False) -> ModelBundle:
    """Load one bundle directory; a clear error when it is incomplete or of another format.

    `verify`: check the sha256 recorded at promotion before unpickling the model (serving does).
    """
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
    if verify:
        verify_checksums(path)
    try:
        model = joblib.load(model_path)
    except Exception as exc:
        raise FeastkitError(f"model file {model_path} cannot be loaded ({type(exc).__name__})",
                            "retrain with `feastkit train`") from None
    return ModelBundle(model, manifest, path)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def bundle_dir(models_dir: Path, feature_service: str, version: str) -> Path:
    """The folder of `version`, refused when the name or a symlink would lead out of the service's
    folder under models_dir (a pointer is a version name, never a path)."""
    base = models_dir / feature_service
    if (not version or version in (".", "..") or "/" in version or "\\" in version
            or version != version.strip() or Path(version).is_absolute()):
        raise FeastkitError(f"{base / CURRENT_FILE} names '{version}', which is not a version folder name",
                            f"point it at a version under {base} with `feastkit train --service {feature_service}` "
                            "(or feastkit.bundle.promote)")
    target = base / version
    resolved, home = target.resolve(), base.resolve()
    if not _inside(resolved, home) or resolved == home:
        raise FeastkitError(f"bundle {target} leads out of {base} (to {resolved})",
                            "keep bundles as real folders under the models folder; promote a version there")
    for name in CHECKED_FILES:
        if (target / name).exists() and not _inside((target / name).resolve(), resolved):
            raise FeastkitError(f"bundle file {target / name} leads out of {target} (symlink)",
                                "keep bundle files as real files; retrain with `feastkit train`")
    return target


def current_bundle(models_dir: Path, feature_service: str) -> ModelBundle:
    """The promoted bundle of a feature service: its pointer checked to stay inside the models
    folder and its files checked against the sha256 recorded at promotion before loading."""
    pointer = models_dir / feature_service / CURRENT_FILE
    if pointer.is_symlink():
        raise FeastkitError(f"{pointer} is a symlink", "promote a version with `feastkit train` (CURRENT is "
                            "written as a plain file holding a version name)")
    if not pointer.is_file():
        raise FeastkitError(f"no promoted model for '{feature_service}' in {models_dir}",
                            f"run `feastkit train --service {feature_service}`")
    return load_bundle(bundle_dir(models_dir, feature_service, pointer.read_text().strip()), verify=True)


def record_checksums(path: Path) -> None:
    """Record the sha256 of a bundle's files beside them, once; a bundle promoted again (rollback)
    is verified against what was recorded, never re-recorded."""
    if recorded_checksums(path) is not None:
        verify_checksums(path)
        return
    lines = "".join(f"{file_sha256(path / name)}  {name}\n" for name in CHECKED_FILES)
    tmp = path / (CHECKSUM_FILE + ".tmp")
    tmp.write_text(lines)
    tmp.replace(path / CHECKSUM_FILE)


def promote(models_dir: Path, feature_service: str, version: str) -> None:
    """Make `version` the serving bundle, recording its files' sha256 first; the one it replaces is
    kept as PREVIOUS for rollback."""
    base = models_dir / feature_service
    target = bundle_dir(models_dir, feature_service, version)
    if not (target / MANIFEST_FILE).is_file() or not (target / MODEL_FILE).is_file():
        raise FeastkitError(f"no bundle {feature_service}/{version}", "train it first")
    record_checksums(target)
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
