"""Which online-store errors count as the store being down (503, guard opened), and which are bugs."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
import redis
from google.protobuf.message import DecodeError

from serving.features import OnlineStoreUnavailable, StoreGuard, unavailable_kind


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def _redis(port: int, **options: float) -> redis.Redis:
    """A client that tries once (as the server's does: bound_online_store turns retries off)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0), **options)


def _raised(action) -> BaseException:
    try:
        action()
    except BaseException as exc:  # noqa: BLE001 - the error itself is what is tested
        return exc
    raise AssertionError("expected an error")


def test_an_unreachable_redis_is_down() -> None:
    client = _redis(_closed_port(), socket_connect_timeout=1)
    assert unavailable_kind(_raised(client.ping)) == "could not be reached"


def test_a_redis_that_accepts_and_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = _redis(listener.getsockname()[1], socket_timeout=0.2)
        assert unavailable_kind(_raised(client.ping)) == "timed out"


def test_sqlite_that_cannot_open_or_stays_locked_is_down(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "online.db"
    assert unavailable_kind(_raised(lambda: sqlite3.connect(missing))) == "is busy or cannot be opened"
    db = tmp_path / "online.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (k INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    writer = sqlite3.connect(db, timeout=0)
    try:
        locked = _raised(lambda: writer.execute("INSERT INTO t VALUES (1)"))
        assert "locked" in str(locked)
        assert unavailable_kind(locked) == "is busy or cannot be opened"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        writer.close()


def test_bugs_and_corrupt_data_are_not_the_store_being_down(tmp_path: Path) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp  # a stored timestamp, corrupt

    corrupt = _raised(lambda: Timestamp().ParseFromString(b"\xff\xff\xff\xff"))
    assert isinstance(corrupt, DecodeError)
    db = sqlite3.connect(tmp_path / "online.db")
    no_table = _raised(lambda: db.execute("SELECT * FROM missing_view"))
    wrong_type = _raised(lambda: _redis(6379).execute_command("NO-SUCH-COMMAND"))
    for error in (corrupt, no_table, KeyError("user_id"), ValueError("bad"), wrong_type,
                  PermissionError(13, "Permission denied")):
        assert unavailable_kind(error) is None, error


def test_the_cause_is_looked_at() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert unavailable_kind(wrapped) == "could not be reached"


def test_the_guard_opens_only_for_an_unreachable_store() -> None:
    guard = StoreGuard(retry_seconds=60)
    assert guard.unavailable(KeyError("user_id")) is None
    assert not guard.is_down
    down = guard.unavailable(TimeoutError("Timeout reading from 10.0.0.7:6379"))
    assert isinstance(down, OnlineStoreUnavailable) and guard.is_down
    assert down.kind == "timed out" and "10.0.0.7" in down.reason and "10.0.0.7" not in down.kind
    with pytest.raises(OnlineStoreUnavailable, match="failing fast"):
        guard.check()
