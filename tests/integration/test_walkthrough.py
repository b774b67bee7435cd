"""The README's "Add your first feature": its diff applies to the repo, and the commands after it give a
better churn model whose predictions explain the new features, with the figures the README quotes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from feastkit.settings import Settings
from tests.conftest import REPO_ROOT, copy_repo_definitions, feastkit_bin, start_server, stop_server

pytestmark = pytest.mark.integration


def readme_section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    return text.split("## Add your first feature", 1)[1].split("\n## ", 1)[0]


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def pr_auc(trained: str) -> tuple[float, float]:
    found = re.search(r"churn_prediction_v1 .*ROC AUC=([0-9.]+)\s+PR AUC=([0-9.]+)", trained)
    assert found, trained
    return float(found.group(2)), float(found.group(1))


def test_the_readme_walkthrough_adds_features_that_improve_the_churn_model(tmp_path: Path) -> None:
    section = readme_section()
    diff = re.search(r"```diff\n(.*?)```", section, re.S).group(1)
    added = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert len(added) <= 10, "the walkthrough's diff should stay small"
    quoted = re.search(r"PR AUC ([0-9.]+) / ROC AUC ([0-9.]+) to \*\*PR AUC ([0-9.]+) / ROC AUC ([0-9.]+)\*\*",
                       section)
    assert quoted, "the README quotes the churn model's metrics before and after"

    project = tmp_path / "project"
    copy_repo_definitions(project / "feature_repo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEASTKIT_")}
    env["FEASTKIT_PROJECT_ROOT"] = str(project)
    cli = feastkit_bin()
    run([cli, "generate"], env, project)  # the defaults the README's figures were measured on
    run([cli, "apply"], env, project)
    run([cli, "compute", "--views", "customer_activity"], env, project)
    before = pr_auc(run([cli, "train", "--service", "churn_prediction_v1"], env, project))

    (tmp_path / "walkthrough.diff").write_text(diff)
    run(["git", "apply", "--verbose", str(tmp_path / "walkthrough.diff")], env, project)
    feast = str(Path(cli).with_name("feast"))
    run([feast, "apply"], {**env, "FEASTKIT_DATA_DIR": str(project / "data")}, project / "feature_repo")
    computed = run([cli, "compute", "--views", "customer_activity"], env, project)
    assert "customer_activity" in computed
    after = pr_auc(run([cli, "train", "--service", "churn_prediction_v1"], env, project))

    print(f"churn model: PR AUC {before[0]:.3f} -> {after[0]:.3f}, ROC AUC {before[1]:.3f} -> {after[1]:.3f}")
    assert after[0] > before[0] + 0.03 and after[1] > before[1]
    quoted_values = [float(v) for v in quoted.groups()]
    measured = [before[0], before[1], after[0], after[1]]
    assert all(abs(q - m) <= 0.01 for q, m in zip(quoted_values, measured, strict=True)), (quoted_values, measured)

    run([cli, "materialize", "--views", "customer_activity"], env, project)
    settings = Settings(project_root=project, data_dir=project / "data", repo_path=project / "feature_repo",
                        models_dir=project / "data" / "models", profile="local")
    server = start_server(settings, tmp_path / "server.log")
    try:
        body = json.loads(re.search(r"-d '(\{.*?\})'", section).group(1))
        got = httpx.post(f"{server.url}/v1/predict/churn?explain=true", json=body, timeout=30)
        assert got.status_code == 200, got.text
        features = got.json()["features"]
        for name in ("purchase_count_7d", "purchase_count_14d", "purchase_count_60_180d", "return_count_60d"):
            assert name in features
        shown = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
        assert features["purchase_count_60_180d"] == shown["features"]["purchase_count_60_180d"]
        assert got.json()["decision"] == shown["decision"]
    finally:
        stop_server(server)
