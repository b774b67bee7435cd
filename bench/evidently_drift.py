"""Evidently's default data-drift preset on windows written by bench/drift_false_alarms.py.

Run by an interpreter that has Evidently (`make bench-drift-evidently` builds .venv-evidently);
it imports nothing from the kit. Reads a JSON list of {"name", "reference", "current"} (Parquet
paths) and prints, as its last line, {name: {column: {"method", "score", "threshold", "drifted"},
"__dataset_drift": bool}}. A column counts as drifted as the preset decides: p-value methods when
p < threshold, distance methods when the distance >= threshold; the dataset when at least half the
columns drift (DriftedColumnsCount's default share).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset


def drift_of(reference: pd.DataFrame, current: pd.DataFrame) -> dict:
    result = Report([DataDriftPreset()]).run(current, reference).dict()
    out: dict = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            method, threshold, score = config["method"], float(config["threshold"]), float(metric["value"])
            drifted = score < threshold if "p_value" in method else score >= threshold
            out[config["column"]] = {"method": method, "score": score, "threshold": threshold, "drifted": drifted}
        elif config["type"].endswith("DriftedColumnsCount"):
            out["__dataset_drift"] = metric["value"]["share"] >= float(config.get("drift_share", 0.5))
    return out


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    results = {job["name"]: drift_of(pd.read_parquet(job["reference"]), pd.read_parquet(job["current"]))
               for job in jobs}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
