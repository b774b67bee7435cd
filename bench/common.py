"""Shared benchmark helpers: isolated child runs with peak memory, medians and ratio tables."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    On Linux, VmHWM of /proc/self/status: ru_maxrss survives exec, so a child started by a
    parent holding gigabytes (say, right after generating the data) would report the parent's
    size. Elsewhere ru_maxrss (KB on Linux, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def report(payload: dict) -> None:
    """Print a child's measurement as the last stdout line, with its peak memory."""
    print(json.dumps({**payload, "peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)


def run_child(args: Sequence[str], timeout: float | None = None) -> dict:
    """Run `python <args>` in a fresh process (so peak memory is its own) and parse its report."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class Contender:
    """One measured way of doing the job: seconds and peak RSS of each run."""

    name: str
    seconds: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def max_peak_mb(self) -> float:
        return max(self.peak_mb)


def table(title: str, contenders: list[Contender], floor: str, default: str,
          units: int = 0, unit_name: str = "rows/s") -> str:
    """A markdown table: median seconds, throughput, peak RSS and ratios vs the floor and the default."""
    by_name = {c.name: c for c in contenders}
    lines = [f"### {title}", "",
             f"| contender | median s | runs | {unit_name} | peak RSS MB | x floor (time) | "
             f"x floor (RSS) | speed-up vs {default} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in contenders:
        rate = f"{units / c.median_s:,.0f}" if units else "-"
        vs_floor = c.median_s / by_name[floor].median_s if floor in by_name else float("nan")
        rss_floor = c.max_peak_mb / by_name[floor].max_peak_mb if floor in by_name else float("nan")
        speedup = by_name[default].median_s / c.median_s if default in by_name else float("nan")
        lines.append(f"| {c.name}{' ' + c.note if c.note else ''} | {c.median_s:.2f} | {len(c.seconds)} "
                     f"| {rate} | {c.max_peak_mb:,.0f} | {vs_floor:.2f} | {rss_floor:.2f} | "
                     f"{speedup:.1f}x |")
    return "\n".join(lines)


def applied_dataset(root: Path, config: object) -> tuple[object, object, object]:
    """Generated data through the kit, as a deployment builds it: a copy of feature_repo/'s
    definitions under `root`, the config's raw events, validation (every late label kept), the
    declared views computed, `feast apply`. Returns (settings, open store, the data's end)."""
    import shutil
    from datetime import timedelta

    from feastkit.clean import data_range
    from feastkit.settings import Settings
    from feastkit.store import apply_repo, open_store, repo_specs
    from pipelines.aggregates import compute_features
    from pipelines.synthetic import generate, write
    from pipelines.validation import validate_all

    project = Path(__file__).resolve().parents[1]
    shutil.copytree(project / "feature_repo", root / "repo", ignore=shutil.ignore_patterns("data", "__pycache__"))
    settings = Settings(project_root=project, data_dir=root / "data", repo_path=root / "repo", replay=True)
    write(generate(config), settings.raw_dir, config)
    validate_all(settings.raw_dir, settings.clean_dir, settings.quarantine_dir, as_of=config.end + timedelta(days=90))
    start, end = data_range(settings.clean_dir)
    compute_features(repo_specs(settings.repo_path), settings.clean_dir, settings.features_dir, start, end)
    apply_repo(settings)
    return settings, open_store(settings), end
