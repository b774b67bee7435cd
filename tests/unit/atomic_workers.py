"""Writer and reader processes for the atomic-file tests: real concurrent runs over one data folder."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

START = datetime(2026, 3, 1, tzinfo=UTC)
END = START + timedelta(days=20)
AS_OF = START + timedelta(days=30)


def specs() -> list:
    """Two definitions of one view `v` (a 1-day and a 3-day sum): switching recomputes the table whole."""
    from datetime import timedelta as td

    from feast import Entity, ValueType

    from feastkit.declarations import Aggregation, ViewSpec, clean_events, windowed_view

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    transactions = clean_events("transactions")
    made = []
    for days in (1, 3):
        view = windowed_view(name="v", entity=user, events=transactions, grid=td(hours=1), ttl=td(days=2),
                             features=[Aggregation("s", "sum", td(days=days), "amount")])
        made.append(ViewSpec.of(view))
    return made


def day_digest(path: Path) -> str:
    """The content of one day file, independent of row order within it."""
    import pyarrow.parquet as pq

    with path.open("rb") as handle:  # one open: a path read opens the file twice (footer, then data)
        table = pq.read_table(handle)
    rows = sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True), key=repr)
    return hashlib.sha256(repr((table.column_names, rows)).encode()).hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    return {f.name: day_digest(f) for f in sorted(folder.glob("*.parquet"))}


def traced(module: object, name: str, log: Path) -> None:
    """Log when each call of module.name (a step that writes files) starts and ends."""
    original = getattr(module, name)

    def call(*args: object, **kwargs: object) -> object:
        entered = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            with log.open("a") as out:
                out.write(json.dumps({"pid": os.getpid(), "step": name, "in": entered,
                                      "out": time.monotonic()}) + "\n")

    setattr(module, name, call)


def rewrite(clean: Path, features: Path, rounds: int, log: Path) -> None:
    """Alternate the two definitions (each switch rebuilds the table whole) and, between switches,
    recompute some days in place; log when each merge into the day files starts and ends."""
    import pipelines.aggregates as aggregates

    traced(aggregates, "_merge_interval", log)
    a, b = specs()
    for i in range(rounds):
        spec = (a, b)[i % 2]
        aggregates.compute_features([spec], clean, features, START, END)
        aggregates.compute_features([spec], clean, features, START + timedelta(days=3), START + timedelta(days=9))


def validate(raw: Path, data: Path, rounds: int, log: Path) -> None:
    """Validate the same raw tables again and again, logging when each table's rewrite starts and ends."""
    import pipelines.validation as validation

    traced(validation, "validate_table", log)
    for _ in range(rounds):
        validation.validate_all(raw, data / "clean", data / "quarantine", as_of=AS_OF)


def read(folder: Path, expected: Path, stop: Path, report: Path) -> None:
    """Glob and read `folder` until `stop` exists; record every file that was missing, unreadable or
    neither a complete old nor a complete new version of its day."""
    import duckdb

    allowed: dict[str, list[str]] = json.loads(expected.read_text())
    problems: list[str] = []
    reads = 0
    con = duckdb.connect()
    while not stop.exists() and len(problems) < 20:
        reads += 1
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            problems.append("the folder was missing")
            continue
        found = {n for n in names if n.endswith(".parquet")}
        if found != set(allowed):
            problems.append(f"files {sorted(set(allowed) - found)} missing, {sorted(found - set(allowed))} extra")
        if reads % 5:
            continue
        for name in sorted(found):
            try:
                digest = day_digest(folder / name)
            except Exception as exc:  # a torn or vanished file
                problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            if digest not in allowed.get(name, ()):
                problems.append(f"{name}: neither the old nor the new content")
        try:  # the whole folder through its glob, as Feast's offline store reads it
            con.execute(f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchone()
        except duckdb.Error as exc:
            problems.append(f"glob read: {str(exc).splitlines()[0][:160]}")
    report.write_text(json.dumps({"reads": reads, "problems": problems}))


def start_together() -> None:
    """With ATOMIC_TEST_GO set: everything imported, say so, and wait for the signal to start, so
    workers with slow imports still run at the same time."""
    go = os.environ.get("ATOMIC_TEST_GO")
    if not go:
        return
    import duckdb  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import pipelines.aggregates  # noqa: F401
    import pipelines.validation  # noqa: F401

    specs()
    Path(f"{go}.{os.getpid()}.ready").touch()
    while not Path(go).exists():
        time.sleep(0.01)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    start_together()
    if command == "rewrite":
        rewrite(Path(args[0]), Path(args[1]), int(args[2]), Path(args[3]))
    elif command == "validate":
        validate(Path(args[0]), Path(args[1]), int(args[2]), Path(args[3]))
    elif command == "read":
        read(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3]))
    else:
        raise SystemExit(f"unknown command {command}")
