"""Model bundles are executable (joblib): sha256 recorded at promote and verified before loading,
and a CURRENT pointer never leads out of the models folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from feastkit.bundle import (
    CHECKSUM_FILE,
    CURRENT_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    ModelBundle,
    current_bundle,
    promote,
    rollback,
)
from feastkit.errors import FeastkitError

SERVICE = "svc"


def _bundle(models: Path, version: str) -> Path:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = LogisticRegression().fit(x, [0, 0, 1, 1])
    manifest = {"format_version": FORMAT_VERSION, "version": version, "feature_service": SERVICE,
                "feature_refs": ["v:f"], "defaults": {"f": 0.0}, "threshold": 0.5,
                "feature_fingerprints": {}}
    return ModelBundle(model, manifest).save(models)


def test_promote_records_sha256_and_loading_verifies_it(tmp_path: Path) -> None:
    path = _bundle(tmp_path, "v1")
    promote(tmp_path, SERVICE, "v1")
    sums = (path / CHECKSUM_FILE).read_text()
    assert MODEL_FILE in sums and MANIFEST_FILE in sums
    assert current_bundle(tmp_path, SERVICE).version == "v1"


def test_a_model_file_changed_after_promotion_is_refused_before_unpickling(tmp_path: Path) -> None:
    path = _bundle(tmp_path, "v1")
    promote(tmp_path, SERVICE, "v1")
    other = LogisticRegression().fit(np.array([[0.0], [1.0]]), [1, 0])  # a different, loadable model
    joblib.dump(other, path / MODEL_FILE)
    with pytest.raises(FeastkitError, match=r"model.joblib has sha256 .* recorded at promotion") as err:
        current_bundle(tmp_path, SERVICE)
    assert "\n" not in str(err.value)


def test_a_changed_manifest_is_refused(tmp_path: Path) -> None:
    path = _bundle(tmp_path, "v1")
    promote(tmp_path, SERVICE, "v1")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["threshold"] = 0.01
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(FeastkitError, match="manifest.json has sha256"):
        current_bundle(tmp_path, SERVICE)


def test_a_bundle_without_recorded_sha256_is_refused(tmp_path: Path) -> None:
    _bundle(tmp_path, "v1")
    promote(tmp_path, SERVICE, "v1")
    (tmp_path / SERVICE / "v1" / CHECKSUM_FILE).unlink()
    with pytest.raises(FeastkitError, match="no SHA256SUMS"):
        current_bundle(tmp_path, SERVICE)


def test_rollback_verifies_instead_of_recording_again(tmp_path: Path) -> None:
    _bundle(tmp_path, "v1")
    _bundle(tmp_path, "v2")
    promote(tmp_path, SERVICE, "v1")
    promote(tmp_path, SERVICE, "v2")
    joblib.dump("swapped", tmp_path / SERVICE / "v1" / MODEL_FILE)
    with pytest.raises(FeastkitError, match="recorded at promotion"):
        rollback(tmp_path, SERVICE)
    assert current_bundle(tmp_path, SERVICE).version == "v2"


@pytest.mark.parametrize("pointer", ["../elsewhere", "/etc", "..", "a/../../elsewhere"])
def test_a_pointer_that_leaves_the_models_folder_is_refused(tmp_path: Path, pointer: str) -> None:
    models = tmp_path / "models"
    _bundle(tmp_path / "elsewhere-root", "v1")
    (tmp_path / "elsewhere").symlink_to(tmp_path / "elsewhere-root" / SERVICE / "v1")
    _bundle(models, "v1")
    promote(models, SERVICE, "v1")
    (models / SERVICE / CURRENT_FILE).write_text(pointer + "\n")
    with pytest.raises(FeastkitError, match="not a version folder name|leads out of"):
        current_bundle(models, SERVICE)


def test_a_version_folder_symlinked_out_of_the_models_folder_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    outside = _bundle(tmp_path / "outside", "v9")
    promote(tmp_path / "outside", SERVICE, "v9")  # a valid bundle with valid sums, elsewhere
    (models / SERVICE).mkdir(parents=True)
    os.symlink(outside, models / SERVICE / "v9")
    (models / SERVICE / CURRENT_FILE).write_text("v9\n")
    with pytest.raises(FeastkitError, match="leads out of"):
        current_bundle(models, SERVICE)
    with pytest.raises(FeastkitError, match="leads out of"):
        promote(models, SERVICE, "v9")


def test_a_symlinked_pointer_is_refused(tmp_path: Path) -> None:
    _bundle(tmp_path, "v1")
    promote(tmp_path, SERVICE, "v1")
    real = tmp_path / "pointer"
    real.write_text("v1\n")
    (tmp_path / SERVICE / CURRENT_FILE).unlink()
    (tmp_path / SERVICE / CURRENT_FILE).symlink_to(real)
    with pytest.raises(FeastkitError, match="is a symlink"):
        current_bundle(tmp_path, SERVICE)
