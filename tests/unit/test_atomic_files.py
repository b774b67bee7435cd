"""Files replaced under readers, and concurrent runs over one data folder, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feastkit.atomic import LOCK_FILE, data_folder_lock
from feastkit.errors import FeastkitError
from pipelines.aggregates import compute_features
from pipelines.synthetic import SyntheticConfig, generate, write
from pipelines.validation import validate_all
from tests.unit.atomic_workers import AS_OF, END, START, folder_digests, specs

REPO = Path(__file__).resolve().parents[2]
CONFIG = SyntheticConfig(n_users=30, n_merchants=8, days=20, seed=5, bad_rows=8, start=START)


def worker(go: Path, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.unit.atomic_workers", *map(str, args)], cwd=REPO,
                            env={**os.environ, "ATOMIC_TEST_GO": str(go)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start(go: Path, procs: list[subprocess.Popen]) -> None:
    """Let the workers go at once, when every one of them is ready."""
    while len(list(go.parent.glob(f"{go.name}.*.ready"))) < len(procs):
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[0][-4000:]
        time.sleep(0.05)
    go.touch()


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """raw/ and clean/ of a small synthetic data set in one data folder."""
    write(generate(CONFIG), tmp_path / "raw")
    validate_all(tmp_path / "raw", tmp_path / "clean", tmp_path / "quarantine", as_of=AS_OF)
    return tmp_path


def versions(data: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The day files of view v under each of its two definitions, each computed alone."""
    a, b = specs()
    compute_features([a], data / "clean", data / "only-a", START, END)
    compute_features([b], data / "clean", data / "only-b", START, END)
    old, new = folder_digests(data / "only-a" / "v"), folder_digests(data / "only-b" / "v")
    assert set(old) == set(new) and len(old) >= 20 and old != new
    return old, new


def held_periods(log: Path) -> list[tuple[float, float]]:
    """(start, end) of every logged writing step, in order of start."""
    return sorted((r["in"], r["out"]) for r in map(json.loads, log.read_text().splitlines()))


def test_readers_only_ever_see_complete_old_or_new_files(data: Path) -> None:
    """While compute rebuilds view v whole (a definition change) and rewrites days in place, and
    validation rewrites the clean tables, readers globbing and reading both folders never meet a
    missing, torn or mixed file."""
    old, new = versions(data)
    compute_features([specs()[0]], data / "clean", data / "features", START, END)
    (data / "days.json").write_text(json.dumps({name: [old[name], new[name]] for name in old}))
    clean = folder_digests(data / "clean")
    (data / "clean.json").write_text(json.dumps({name: [digest] for name, digest in clean.items()}))
    stop = data / "stop"
    go = data / "go"
    readers = [worker(go, "read", data / "features" / "v", data / "days.json", stop, data / "days-report.json"),
               worker(go, "read", data / "clean", data / "clean.json", stop, data / "clean-report.json")]
    writers = [worker(go, "rewrite", data / "clean", data / "features", 6, data / "compute.log"),
               worker(go, "validate", data / "raw", data, 8, data / "validate.log")]
    try:
        start(go, readers + writers)
        for proc in writers:
            finish(proc)
    finally:
        stop.touch()
        for proc in readers:
            finish(proc)
    for name in ("days", "clean"):
        report = json.loads((data / f"{name}-report.json").read_text())
        assert report["problems"] == [], f"{name}: {report['problems'][:5]} ({report['reads']} reads)"
        assert report["reads"] > 100, report  # the reader really ran alongside the writers
    assert folder_digests(data / "features" / "v") == new  # 6 rounds: the last one is definition b
    assert folder_digests(data / "clean") == clean


def test_concurrent_runs_over_one_data_folder_take_turns_and_end_as_one_run(data: Path) -> None:
    """Two compute processes and a validation process over the same data folder: never two inside at
    once, no run fails, and the tables equal those of a single run."""
    old, new = versions(data)
    clean = folder_digests(data / "clean")
    log = data / "runs.log"
    go = data / "go"
    procs = [worker(go, "rewrite", data / "clean", data / "features", 4, log),
             worker(go, "rewrite", data / "clean", data / "features", 4, log),
             worker(go, "validate", data / "raw", data, 6, log)]
    start(go, procs)
    for proc in procs:
        finish(proc)
    steps = held_periods(log)
    assert len(steps) == 2 * 4 * 2 + 6 * 3  # merges into day files, tables validated
    overlapping = [(a, b) for a, b in zip(steps, steps[1:], strict=False) if b[0] < a[1]]
    assert overlapping == [], f"{len(overlapping)} of {len(steps)} writing steps ran at the same time"
    assert folder_digests(data / "features" / "v") in (old, new)
    assert folder_digests(data / "clean") == clean
    assert not list((data / "features").glob("v/.staging*")) and not list((data / "clean").glob(".*.tmp"))


def test_a_second_run_waits_then_fails_naming_the_holder_and_a_killed_holder_frees_the_folder(
        data: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from feastkit.atomic import data_folder_lock\n"
         f"with data_folder_lock(Path({str(data)!r}), 'compute'):\n"
         "    print('held', flush=True)\n    time.sleep(600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FeastkitError) as info:
            compute_features(specs()[:1], data / "clean", data / "features", START, END, lock_timeout=0.2)
        message = info.value.message
        assert f"pid {holder.pid}" in message and "compute" in message and "\n" not in message
        assert "FEASTKIT_LOCK_TIMEOUT_SECONDS" in message
        with pytest.raises(FeastkitError, match=f"pid {holder.pid}"):
            validate_all(data / "raw", data / "clean", data / "quarantine", as_of=AS_OF, lock_timeout=0)
        os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the OS releases the lock
        holder.wait(timeout=30)
        with data_folder_lock(data, "test", timeout=60):
            assert (data / LOCK_FILE).is_file()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path: Path) -> None:
    import threading

    with data_folder_lock(tmp_path, "outer", timeout=0), data_folder_lock(tmp_path, "inner", timeout=0):
        failures: list[str] = []

        def other() -> None:
            try:
                with data_folder_lock(tmp_path, "other thread", timeout=0):
                    failures.append("entered")
            except FeastkitError as exc:
                failures.append(exc.message)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(failures) == 1 and "in use by pid" in failures[0]
    with data_folder_lock(tmp_path, "after", timeout=0):
        pass
