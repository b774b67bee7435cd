"""Benchmark: drift false alarms on clean data over several seeds, and power on each injected drift kind.

For each seed, data generated without drift goes through validation, the window engine and
`feast apply`; `feastkit drift`'s check (last 7 days vs the 28 before, every service) then
counts the features it flags: every flag is a false alarm. For each drift kind, the same on
data with that kind injected in the last 7 days: the flags are the check's power. Printed: false
flags per 100 feature tests (goal: at most 1), which features, and the flags per drift kind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import applied_dataset  # noqa: E402

from monitoring.checks import run_monitoring  # noqa: E402
from pipelines.synthetic import SyntheticConfig  # noqa: E402


def flagged(seed: int, drift: tuple[str, ...], users: int, workdir: Path) -> tuple[int, list[str]]:
    """(feature tests, flagged refs) of the drift check on one generated dataset."""
    config = SyntheticConfig(n_users=users, n_merchants=300, days=120, seed=seed, drift=drift, bad_rows=0,
                             start=datetime(2026, 1, 1, tzinfo=UTC))
    root = workdir / f"{'-'.join(drift) or 'clean'}-{seed}"
    settings, store, _ = applied_dataset(root, config)
    outcome = run_monitoring(settings, end=config.end, checks=("drift",), store=store)
    tests = sum(len(d.features) for d in outcome.drift)
    shutil.rmtree(root, ignore_errors=True)
    return tests, outcome.drifted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--kinds", default="amount,night,basket,channel")
    parser.add_argument("--users", type=int, default=2000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="feastkit-drift-fa-"))
    total_tests, false_flags = 0, Counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        tests, drifted = flagged(seed, (), args.users, workdir)
        total_tests += tests
        false_flags.update(drifted)
        print(f"seed {seed}: {len(drifted)} of {tests} feature tests flagged on clean data: {sorted(drifted)}",
              flush=True)
    count = sum(false_flags.values())
    print(f"\nclean data: {count} false flag(s) in {total_tests} feature tests = "
          f"{100 * count / max(total_tests, 1):.2f} per 100 (goal: <= 1); by feature: {dict(false_flags)}\n")
    for kind in filter(None, args.kinds.split(",")):
        tests, drifted = flagged(1, (kind,), args.users, workdir)
        print(f"drift {kind} (seed 1): {len(drifted)} of {tests} flagged: {sorted(drifted)}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
