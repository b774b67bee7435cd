"""The interval ledger: merged intervals, what is pending per online store, recomputes, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feastkit.errors import FeastkitError
from feastkit.ledger import Ledger, group_by_intervals, merge, subtract

T = datetime(2026, 4, 30, tzinfo=UTC)
H = timedelta(hours=1)


def hours(a: int, b: int) -> tuple[datetime, datetime]:
    return T + a * H, T + b * H


def test_merge_and_subtract_keep_disjoint_sorted_intervals() -> None:
    assert merge([hours(2, 3), hours(0, 1), hours(1, 2), hours(5, 6), hours(5, 5)]) == [hours(0, 3), hours(5, 6)]
    assert subtract([hours(0, 10)], [hours(2, 3), hours(5, 12)]) == [hours(0, 2), hours(3, 5)]
    assert subtract([hours(0, 1)], []) == [hours(0, 1)]


def test_pending_is_computed_minus_loaded_per_store_and_a_recompute_is_pending_again(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    for a in range(6):  # six hourly compute runs, out of order
        ledger.record_computed(["v", "w"], hours((a * 5) % 6, (a * 5) % 6 + 1))
    assert ledger.computed() == {"v": [hours(0, 6)], "w": [hours(0, 6)]}  # one interval, not six
    assert ledger.pending("s1", ["v", "w"]) == {"v": [hours(0, 6)], "w": [hours(0, 6)]}
    ledger.record_loaded("s1", ["v"], hours(0, 4), since=ledger.seq())
    assert ledger.pending("s1", ["v", "w"]) == {"v": [hours(4, 6)], "w": [hours(0, 6)]}
    assert ledger.pending("s2", ["v"]) == {"v": [hours(0, 6)]}  # another online store loaded nothing
    ledger.record_computed(["v"], hours(1, 2))  # a backfill rewrote an hour: pending again
    assert ledger.pending("s1", ["v"]) == {"v": [hours(1, 2), hours(4, 6)]}
    assert group_by_intervals(ledger.pending("s1", ["v", "w"])) == [
        (hours(0, 6), ["w"]), (hours(1, 2), ["v"]), (hours(4, 6), ["v"])]


def test_a_load_does_not_cover_what_was_recomputed_while_it_ran(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.record_computed(["v"], hours(0, 3))
    since = ledger.seq()  # the load notes this, then reads the feature tables ...
    ledger.record_computed(["v"], hours(1, 2))  # ... while a rerun rewrites an hour
    ledger.record_loaded("s", ["v"], hours(0, 3), since=since)
    assert ledger.pending("s", ["v"]) == {"v": [hours(1, 2)]}


def test_a_broken_ledger_is_one_line_naming_the_file(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.path.write_text("{not json")
    with pytest.raises(FeastkitError, match=f"interval ledger {ledger.path}"):
        ledger.pending("s", ["v"])
    ledger.path.write_text(json.dumps({"computed": {"v": [["x", "y"]]}}))
    with pytest.raises(FeastkitError, match="not a"):
        ledger.computed()


def _writer(args: tuple[str, int, int]) -> None:
    folder, worker, n = args
    ledger = Ledger(Path(folder))
    for i in range(n):
        hour = worker * n + i
        if i % 2:
            ledger.record_loaded("s", [f"v{worker % 2}"], hours(hour, hour + 1))
        else:
            ledger.record_computed([f"v{worker % 2}"], hours(hour, hour + 1))


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    workers, n = 4, 60
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_writer, [(str(tmp_path), w, n) for w in range(workers)])
    ledger = Ledger(tmp_path)
    computed, loaded = ledger.computed(), ledger.loaded("s")
    for view in ("v0", "v1"):
        mine = [w for w in range(workers) if w % 2 == int(view[1])]
        want_computed = merge(hours(w * n + i, w * n + i + 1) for w in mine for i in range(0, n, 2))
        want_loaded = merge(hours(w * n + i, w * n + i + 1) for w in mine for i in range(1, n, 2))
        assert computed[view] == want_computed
        assert loaded[view] == want_loaded
    assert ledger.seq() == workers * n // 2
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
