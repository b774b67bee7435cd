"""Benchmark: the Feast registry's size after many hourly materializations, Feast's list vs merged.

Each hourly `materialize` run makes Feast append one interval per view to the registry (what
`FeatureStore.materialize` does through `registry.apply_materialization`). This replays that for
every online view of the demo repo, `--runs` consecutive hours, on two fresh registries: one left
as Feast keeps it, one merged after every run as `feastkit.store.materialize_interval` does
(`compact_materialization_intervals`). It prints the registry file's size as it grows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feastkit.settings import Settings  # noqa: E402
from feastkit.store import apply_repo, compact_materialization_intervals, open_store  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
ONE = timedelta(microseconds=1)


def fresh_registry(root: Path) -> Settings:
    repo = root / "repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    settings = Settings(project_root=ROOT, data_dir=root / "data", repo_path=repo)
    apply_repo(settings)
    return settings


def grow(settings: Settings, runs: int, merged: bool, report: list[int]) -> dict[int, int]:
    store = open_store(settings)
    registry = settings.repo_path / "data" / "registry.db"
    views = [fv for fv in store.list_feature_views() if fv.online]
    sizes = {0: registry.stat().st_size}
    for k in range(runs):
        a = START + k * timedelta(hours=1)
        for fv in views:  # Feast's inclusive bounds for a window-end view's hour: (a, a + 1h]
            # as Feast's materialize does, one commit per view and run; the unmerged registry is
            # only written when its size is reported (its size is what is measured, not its time)
            store.registry.apply_materialization(fv, store.project, a + ONE, a + timedelta(hours=1),
                                                 commit=merged)
        if merged:
            compact_materialization_intervals(store)
        if k + 1 in report:
            store.registry.commit()
            sizes[k + 1] = registry.stat().st_size
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000, help="hourly materializations of every view")
    args = parser.parse_args()
    report = sorted({r for r in (10, 100, 500, 1000, 2000, args.runs) if r <= args.runs})
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for merged in (False, True):
            root = Path(tmp) / ("merged" if merged else "feast")
            t0 = time.perf_counter()
            rows[merged] = grow(fresh_registry(root), args.runs, merged, report)
            print(f"{'merged' if merged else 'feast'}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print("| hourly runs | Feast's interval list (bytes) | merged by feastkit (bytes) |")
    print("|---:|---:|---:|")
    for runs in [0, *report]:
        print(f"| {runs:,} | {rows[False][runs]:,} | {rows[True][runs]:,} |")


if __name__ == "__main__":
    main()
