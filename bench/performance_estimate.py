"""Benchmark: how far the estimated (CBPE) weekly metrics are from the realized ones, with no shift, a concept shift and a covariate shift.

For each shift kind and seed: 112 days of synthetic data with the shift in the last three weeks
(which training, on mature labels only, never sees), one trained fraud model, then the weekly
performance with every label known. Printed per kind: the mean absolute error of the estimate
before and during the shift, and how often the realized value fell inside the estimate's 95 %
interval. The estimate should hold with no shift and under the covariate shift (`merchant_mix`),
and miss the concept shift (`concept`), which no score-based estimate can see.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import applied_dataset  # noqa: E402

from monitoring.performance import METRICS, service_performance  # noqa: E402
from pipelines.synthetic import SyntheticConfig  # noqa: E402
from pipelines.training import train_service  # noqa: E402

SERVICE = "fraud_detection_v1"
SHIFT_START = datetime(2026, 4, 6, tzinfo=UTC)
SHIFT_DAYS = 21


def run(kind: str, seed: int, users: int, workdir: Path) -> list[tuple[bool, dict]]:
    """(during the shift?, per-metric error and coverage) for each whole week of one dataset."""
    config = SyntheticConfig(n_users=users, n_merchants=max(20, users // 12), days=112, seed=seed,
                             start=datetime(2026, 1, 5, tzinfo=UTC), drift=() if kind == "none" else (kind,),
                             drift_start=SHIFT_START, drift_days=SHIFT_DAYS, bad_rows=0)
    settings, store, end = applied_dataset(workdir / f"{kind}-{seed}", config)
    train_service(store, SERVICE, settings.clean_dir, settings.models_dir, seed=seed)
    result = service_performance(store, settings, SERVICE, as_of=end + timedelta(days=45))
    weeks = []
    for p in result.periods:
        if p.rows < 0.25 * max(q.rows for q in result.periods) and p.start < SHIFT_START:
            continue  # a partial first week
        row = {}
        for m in METRICS:
            real, est = p.realized[m], p.estimated[m]
            if real.value is None or est.value is None:
                continue
            row[m] = (abs(est.value - real.value), est.low <= real.value <= est.high)
        weeks.append((p.start >= SHIFT_START, row))
    return weeks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kinds", default="none,concept,merchant_mix")
    parser.add_argument("--seeds", default="3,4,5")
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="feastkit-cbpe-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{len(seeds)} seed(s), {args.users} users, 112 days, shift in the last {SHIFT_DAYS} days; "
          "|estimated - realized| (mean) and the share of weeks whose realized value is inside the "
          "estimate's 95 % interval\n")
    print("| shift | weeks | " + " | ".join(f"{m} error / covered" for m in METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for kind in args.kinds.split(","):
        weeks = [w for seed in seeds for w in run(kind, seed, args.users, workdir)]
        for during, label in ((False, "before"), (True, "during")):
            chosen = [row for d, row in weeks if d == during]
            cells = []
            for m in METRICS:
                values = [row[m] for row in chosen if m in row]
                error = np.mean([e for e, _ in values]) if values else float("nan")
                covered = np.mean([c for _, c in values]) if values else float("nan")
                cells.append(f"{error:.3f} / {covered:.0%}")
            print(f"| {kind} ({label}) | {len(chosen)} | " + " | ".join(cells) + " |", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
