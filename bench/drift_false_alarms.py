"""Benchmark: drift false alarms on clean data over several seeds, and power on each injected drift kind.

For each seed, data generated without drift goes through validation, the window engine and
`feast apply`; `feastkit drift`'s check (last 7 days vs the 28 before, every service) then
counts the features it flags: every flag is a false alarm. For each drift kind, the same on
data with that kind injected in the last 7 days: the flags are the check's power. Printed: false
flags per 100 feature tests (goal: at most 1), which features, and the flags per drift kind.

`--multivariate` adds the domain-classifier test (one per service and entity) and counts its
flags apart. `--evidently PYTHON` also runs Evidently's default data-drift preset on the very
same windows, in that interpreter (bench/evidently_drift.py; `make bench-drift-evidently` builds
one), and prints both side by side as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import applied_dataset  # noqa: E402

from monitoring.checks import run_monitoring  # noqa: E402
from pipelines.synthetic import SyntheticConfig  # noqa: E402


@dataclass
class Flags:
    """What the checks flagged on one generated dataset."""

    name: str
    services: int
    tests: int                                   # per-feature tests (service x feature)
    features: list[str]                          # per-feature (and score) refs flagged
    groups: int = 0                              # multivariate tests (service x entity)
    multivariate: list[str] = field(default_factory=list)
    multivariate_detail: list[str] = field(default_factory=list)
    evidently_tests: int = 0
    evidently: list[str] = field(default_factory=list)
    evidently_dataset: list[str] = field(default_factory=list)  # services the preset calls drifted


def flagged(seed: int, drift: tuple[str, ...], users: int, workdir: Path, multivariate: bool,
            evidently: str | None) -> Flags:
    """The drift check (and optionally Evidently's preset) on one generated dataset."""
    config = SyntheticConfig(n_users=users, n_merchants=300, days=120, seed=seed, drift=drift, bad_rows=0,
                             start=datetime(2026, 1, 1, tzinfo=UTC))
    name = f"{'-'.join(drift) or 'clean'}-{seed}"
    root = workdir / name
    settings, store, _ = applied_dataset(root, config)
    settings = settings.model_copy(update={"drift_multivariate": multivariate})
    outcome = run_monitoring(settings, end=config.end, checks=("drift",), store=store)
    out = Flags(name, len(outcome.drift), sum(len(d.features) for d in outcome.drift),
                [r for r in outcome.drifted if not r.startswith("multivariate:")],
                sum(len(d.multivariate) for d in outcome.drift),
                [r for r in outcome.drifted if r.startswith("multivariate:")])
    out.multivariate_detail = [
        f"{d.feature_service}:{m.entity} AUROC {m.auc:.3f}"
        + (f" p {m.p_value:.3f} ({m.permutations} shuffles)" if m.p_value is not None else " (no shuffle)")
        for d in outcome.drift for m in d.multivariate]
    if evidently:
        jobs = []
        for d in outcome.drift:
            columns = [f.feature for f in d.features]
            job = {"name": d.feature_service}
            for side, frame in (("reference", d.reference_frame), ("current", d.current_frame)):
                job[side] = str(root / f"{d.feature_service}-{side}.parquet")
                frame[columns].to_parquet(job[side])
            jobs.append(job)
        (root / "evidently-jobs.json").write_text(json.dumps(jobs))
        proc = subprocess.run([evidently, str(ROOT / "bench" / "evidently_drift.py"), str(root / "evidently-jobs.json")],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"Evidently's run failed:\n{proc.stderr[-3000:]}")
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        for d in outcome.drift:
            columns = results[d.feature_service]
            out.evidently_tests += sum(1 for c in columns if not c.startswith("__"))
            out.evidently += [d.refs[c] for c, r in columns.items() if not c.startswith("__") and r["drifted"]]
            if columns.get("__dataset_drift"):
                out.evidently_dataset.append(d.feature_service)
    shutil.rmtree(root, ignore_errors=True)
    return out


def _names(refs: list[str]) -> str:
    counts = Counter(refs)
    return ", ".join(f"{r}" + (f" (x{n})" if n > 1 else "") for r, n in sorted(counts.items())) or "none"


def side_by_side(rows: list[Flags], multivariate: bool, evidently: bool) -> str:
    head = ["data", "kit: per-feature flags"]
    if multivariate:
        head.append("kit: multivariate flags")
    if evidently:
        head += ["Evidently preset: column flags", "Evidently: dataset drift"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, f"{len(r.features)} of {r.tests}: {_names(r.features)}"]
        if multivariate:
            cells.append(f"{len(r.multivariate)} of {r.groups}: {_names(r.multivariate)}")
        if evidently:
            cells += [f"{len(r.evidently)} of {r.evidently_tests}: {_names(r.evidently)}",
                      ", ".join(r.evidently_dataset) or "none"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--kinds", default="amount,night,basket,channel,night_spend")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--multivariate", action="store_true", help="add the domain-classifier test")
    parser.add_argument("--evidently", metavar="PYTHON", help="an interpreter with Evidently installed")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="feastkit-drift-fa-"))
    rows: list[Flags] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        r = flagged(seed, (), args.users, workdir, args.multivariate, args.evidently)
        rows.append(r)
        print(f"seed {seed}: {len(r.features)} of {r.tests} feature tests flagged on clean data: {sorted(r.features)}",
              flush=True)
        if args.multivariate:
            print(f"  multivariate: {len(r.multivariate)} of {r.groups} flagged; {'; '.join(r.multivariate_detail)}",
                  flush=True)
    clean = list(rows)
    tests, flags = sum(r.tests for r in clean), Counter(f for r in clean for f in r.features)
    count = sum(flags.values())
    print(f"\nclean data: {count} false flag(s) in {tests} feature tests = "
          f"{100 * count / max(tests, 1):.2f} per 100 (goal: <= 1); by feature: {dict(flags)}")
    if args.multivariate:
        groups, mv = sum(r.groups for r in clean), sum(len(r.multivariate) for r in clean)
        print(f"clean data, multivariate: {mv} false flag(s) in {groups} tests")
    if args.evidently:
        ev_tests, ev = sum(r.evidently_tests for r in clean), sum(len(r.evidently) for r in clean)
        print(f"clean data, Evidently's preset: {ev} column flag(s) in {ev_tests} column tests = "
              f"{100 * ev / max(ev_tests, 1):.2f} per 100; dataset drift in "
              f"{sum(len(r.evidently_dataset) for r in clean)} of {sum(r.services for r in clean)} service windows")
    print()
    for kind in filter(None, args.kinds.split(",")):
        r = flagged(1, (kind,), args.users, workdir, args.multivariate, args.evidently)
        rows.append(r)
        print(f"drift {kind} (seed 1): {len(r.features)} of {r.tests} flagged: {sorted(r.features)}", flush=True)
        if args.multivariate:
            print(f"  multivariate: {_names(r.multivariate)}; {'; '.join(r.multivariate_detail)}", flush=True)
    if args.multivariate or args.evidently:
        print("\n" + side_by_side(rows, args.multivariate, bool(args.evidently)))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
