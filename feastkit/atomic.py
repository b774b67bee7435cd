"""Files replaced by rename, never rewritten under readers, and one writer per data folder (an OS lock).

- `replacing(target)` gives a unique temporary path beside `target` (same folder, so the final
  `os.replace` is atomic; the name ends in `.tmp`, so no `*.parquet` glob ever matches it) and
  renames it over `target` once the block succeeds: a reader sees the old file or the new one,
  whole, never a partial one.
- `swap_folder(link, fresh)` makes `link` (a symlink) point at the folder `fresh` in one rename:
  a table rebuilt whole replaces the old one at once, and readers of `link/*.parquet` never find
  the folder missing.
- `data_folder_lock(folder)` takes an exclusive `flock` on `<folder>/.feastkit.lock`: validation
  and compute over one data folder run one at a time, whoever starts them (CLI, DAG task,
  `feastkit run-interval`). A second run waits up to a timeout, then fails naming the holder. The
  OS releases the lock when its process exits or dies, so a crashed run never leaves it behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from feastkit.errors import FeastkitError

LOCK_FILE = ".feastkit.lock"
DEFAULT_LOCK_TIMEOUT_SECONDS = 600.0
TMP_SUFFIX = ".tmp"
_POLL_SECONDS = 0.05

log = logging.getLogger(__name__)


def temporary_path(target: Path) -> Path:
    """A unique hidden name beside `target` that no `*.parquet` glob matches."""
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """Write to the yielded temporary path; on success it atomically replaces `target`.

    On an exception the temporary file is removed and `target` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {tmp} for {target}")
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def replace_bytes(target: Path, data: bytes) -> None:
    """Atomically give `target` the content `data`."""
    with replacing(target) as tmp:
        tmp.write_bytes(data)


def replace_file(source: Path, target: Path) -> None:
    """Atomically make `target` a copy of `source`."""
    with replacing(target) as tmp:
        shutil.copyfile(source, tmp)


def swap_folder(link: Path, fresh: Path) -> Path | None:
    """Point the symlink `link` at the folder `fresh` in one rename; the folder it left, if any.

    `fresh` must sit beside `link`. When `link` is still a real folder (written before tables
    were versioned), it is moved aside first: the only moment a reader can miss the table, once
    per table.
    """
    previous: Path | None = None
    if link.is_symlink():
        previous = link.parent / os.readlink(link)
    elif link.exists():
        previous = link.parent / f".{link.name}.{uuid.uuid4().hex[:12]}.old"
        link.rename(previous)
    tmp_link = temporary_path(link)
    os.symlink(fresh.name, tmp_link)
    try:
        os.replace(tmp_link, link)
    finally:
        tmp_link.unlink(missing_ok=True)
    _fsync(link.parent)
    return previous if previous is not None and previous.resolve() != fresh.resolve() else None


# The data-folder lock -----------------------------------------------------------------------------


class _Held:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.depth = 1


_held: dict[tuple[str, int], _Held] = {}
_held_guard = threading.Lock()


def _holder_record(what: str) -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                       "command": " ".join(sys.argv)[:300],
                       "since": datetime.now(UTC).isoformat(timespec="seconds")})


def lock_holder(folder: Path) -> str:
    """Who holds (or last held) the lock of a data folder, in words; empty when unknown."""
    try:
        record = json.loads((folder / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(record, dict) or "pid" not in record:
        return ""
    return (f"pid {record.get('pid')} on {record.get('host', '?')} ({record.get('what', '?')}: "
            f"`{record.get('command', '?')}`, since {record.get('since', '?')})")


@contextlib.contextmanager
def data_folder_lock(folder: Path, what: str, timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the exclusive lock of a data folder for the block; wait up to `timeout` seconds for it.

    Re-entrant within a thread (validation inside a compute run takes it again for free); other
    threads and processes wait. Raises a FeastkitError naming the holder when the wait times out.
    """
    folder.mkdir(parents=True, exist_ok=True)
    key = (str(folder.resolve()), threading.get_ident())
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            held.depth += 1
    if held is not None:
        try:
            yield
        finally:
            with _held_guard:
                held.depth -= 1
        return
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, folder, what, timeout)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_record(what).encode(), 0)
        with _held_guard:
            _held[key] = _Held(fd)
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, folder: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + max(timeout, 0.0)
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
        if time.monotonic() >= deadline:
            holder = lock_holder(folder) or "another process"
            raise FeastkitError(
                f"data folder {folder} is in use by {holder}; {what} waited {timeout:g} s for it",
                "let that run finish (or stop it) and run again, or raise FEASTKIT_LOCK_TIMEOUT_SECONDS; "
                "the lock is released by itself when its process exits")
        if not announced:
            announced = True
            log.warning("%s waits for data folder %s, in use by %s (up to %g s)", what, folder,
                        lock_holder(folder) or "another process", timeout)
        time.sleep(_POLL_SECONDS)
