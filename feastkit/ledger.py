"""The interval ledger: which intervals each feature table holds and which each online store has loaded.

`feastkit compute` runs scheduled through `feastkit.jobs` record the interval they computed, and
every materialization records the interval it loaded into an online store. What is *pending* for
an online store is the difference, per view. A `materialize` run loads what is pending, whichever
asset events triggered it, so an interval whose event found Airflow's asset queue already taken
is loaded by the run that follows, not an hour later.

Recomputing an interval (a backfill, a replay) makes it pending again for every online store. A
load records only what was not recomputed while it ran: it notes the ledger's sequence number
before it reads the feature tables, and what a compute run recorded after that stays pending.

Intervals are half-open `[start, end)` in the sense of feature intervals (the rows a compute run
over the interval writes), kept merged: a year of hourly runs is one interval per view, not
8,760. The ledger is one small JSON file beside the feature tables, replaced atomically (a
unique temporary file renamed over it) under an exclusive lock, so concurrent writers never
lose each other's entries and a reader never sees a torn file.

This module imports nothing heavy: the DAG files import `feastkit.jobs`, which imports it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from feastkit.errors import FeastkitError
from feastkit.times import utc

Interval = tuple[datetime, datetime]
LEDGER_FILE = "_intervals.json"
LOCK_FILE = ".intervals.lock"
FORMAT_VERSION = 1
RECENT = 500  # compute records kept to tell a load whether its interval was rewritten meanwhile


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The sorted, disjoint union of half-open intervals; touching intervals become one."""
    out: list[Interval] = []
    for a, b in sorted((utc(a), utc(b)) for a, b in intervals):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract(these: Iterable[Interval], those: Iterable[Interval]) -> list[Interval]:
    """The parts of `these` that no interval of `those` covers (merged)."""
    left = merge(these)
    for c, d in merge(those):
        cut: list[Interval] = []
        for a, b in left:
            if d <= a or b <= c:
                cut.append((a, b))
                continue
            if a < c:
                cut.append((a, c))
            if d < b:
                cut.append((d, b))
        left = cut
    return left


def clip(intervals: Iterable[Interval], end: datetime) -> list[Interval]:
    """The parts of `intervals` before `end`."""
    end = utc(end)
    return merge((a, min(b, end)) for a, b in intervals if a < end)


def _encode(intervals: list[Interval]) -> list[list[str]]:
    return [[a.isoformat(), b.isoformat()] for a, b in merge(intervals)]


def _decode(items: Any, path: Path) -> list[Interval]:
    try:
        return merge((utc(a), utc(b)) for a, b in items)
    except (TypeError, ValueError, FeastkitError):
        raise FeastkitError(f"the interval ledger {path} holds an entry that is not a [start, end] pair",
                            "restore the file, or delete it and rerun the feature_pipeline intervals "
                            "you need loaded") from None


class Ledger:
    """The ledger file of one feature-tables folder (`<data dir>/features/_intervals.json`)."""

    def __init__(self, features_dir: Path) -> None:
        self.dir = Path(features_dir)
        self.path = self.dir / LEDGER_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    # reading ---------------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        """The ledger's contents: {"seq", "computed": {view: [...]}, "loaded": {store: {view: [...]}},
        "recent": [[seq, view, start, end], ...]}."""
        if not self.path.is_file():
            return {"version": FORMAT_VERSION, "seq": 0, "computed": {}, "loaded": {}, "recent": []}
        broken = FeastkitError(f"the interval ledger {self.path} is not a feastkit interval ledger",
                               "restore the file, or delete it and rerun the feature_pipeline intervals "
                               "you need loaded")
        try:
            data = json.loads(self.path.read_text())
        except ValueError:
            raise broken from None
        if not isinstance(data, dict) or not isinstance(data.get("computed", {}), dict) \
                or not isinstance(data.get("loaded", {}), dict) or not isinstance(data.get("recent", []), list):
            raise broken
        try:
            recent = [(int(s), str(v), utc(a), utc(b)) for s, v, a, b in data.get("recent", [])]
            seq = int(data.get("seq", 0))
        except (TypeError, ValueError, FeastkitError):
            raise broken from None
        return {"version": data.get("version", FORMAT_VERSION), "seq": seq,
                "computed": {v: _decode(x, self.path) for v, x in data.get("computed", {}).items()},
                "loaded": {s: {v: _decode(x, self.path) for v, x in views.items()}
                           for s, views in data.get("loaded", {}).items()},
                "recent": recent}

    def seq(self) -> int:
        """The number of compute records so far: note it before reading the feature tables."""
        return self.read()["seq"]

    def computed(self) -> dict[str, list[Interval]]:
        return self.read()["computed"]

    def loaded(self, store_key: str) -> dict[str, list[Interval]]:
        return self.read()["loaded"].get(store_key, {})

    def pending(self, store_key: str, views: Iterable[str]) -> dict[str, list[Interval]]:
        """Per view: the intervals computed but not yet loaded into the store `store_key`."""
        data = self.read()
        loaded = data["loaded"].get(store_key, {})
        out = {}
        for view in views:
            left = subtract(data["computed"].get(view, []), loaded.get(view, []))
            if left:
                out[view] = left
        return out

    # writing ---------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read, let the caller change, write back atomically; one writer at a time."""
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self.read()
                yield data
                self._write(data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        body = {"version": FORMAT_VERSION, "seq": data["seq"],
                "computed": {v: _encode(x) for v, x in sorted(data["computed"].items()) if x},
                "loaded": {s: {v: _encode(x) for v, x in sorted(views.items()) if x}
                           for s, views in sorted(data["loaded"].items())},
                "recent": [[s, v, a.isoformat(), b.isoformat()] for s, v, a, b in data["recent"][-RECENT:]]}
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{LEDGER_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(body, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def record_computed(self, views: Iterable[str], interval: Interval) -> None:
        """The feature tables of `views` now hold the rows of `interval`, pending for every store."""
        interval = (utc(interval[0]), utc(interval[1]))
        with self._locked() as data:
            for view in views:
                data["seq"] += 1
                data["recent"].append((data["seq"], view, *interval))
                data["computed"][view] = merge([*data["computed"].get(view, []), interval])
                for loaded in data["loaded"].values():
                    if view in loaded:
                        loaded[view] = subtract(loaded[view], [interval])

    def record_loaded(self, store_key: str, views: Iterable[str], interval: Interval,
                      since: int | None = None) -> None:
        """The online store `store_key` now holds the rows of `interval` for `views`, as read after
        sequence number `since`: parts recomputed after it stay pending (all, when the records
        that would tell are no longer kept)."""
        interval = (utc(interval[0]), utc(interval[1]))
        with self._locked() as data:
            loaded = data["loaded"].setdefault(store_key, {})
            kept_from = data["recent"][0][0] if data["recent"] else data["seq"] + 1
            for view in views:
                done = [interval]
                if since is not None:
                    if since + 1 < kept_from and since < data["seq"]:
                        continue  # cannot tell what was recomputed meanwhile: leave it pending
                    done = subtract(done, [(a, b) for s, v, a, b in data["recent"] if s > since and v == view])
                loaded[view] = merge([*loaded.get(view, []), *done])

    def forget_loaded(self, views: Iterable[str]) -> None:
        """Every online store must load `views` again (their tables were recomputed whole)."""
        with self._locked() as data:
            for loaded in data["loaded"].values():
                for view in views:
                    loaded.pop(view, None)


def group_by_intervals(pending: dict[str, list[Interval]]) -> list[tuple[Interval, list[str]]]:
    """Pending intervals as (interval, views) pairs in time order, so views sharing an interval
    are materialized together."""
    by: dict[Interval, list[str]] = {}
    for view, intervals in pending.items():
        for interval in intervals:
            by.setdefault(interval, []).append(view)
    return [(interval, sorted(views)) for interval, views in sorted(by.items())]
