"""Helpers for the serving tests: private copies of the shared deployment and a private Redis server."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from feastkit.settings import Settings
from tests.conftest import Deployment, free_port, make_settings


def private_copy(deployment: Deployment, target: Path, **extra: object) -> Settings:
    """Settings over a copy of the deployment's repo, registry and sqlite online store.

    Tests that write (push, generated requests) use it so the shared online store never changes;
    nothing is applied in the copy, the registry is only read (and written by push bookkeeping).
    """
    shutil.copytree(deployment.settings.repo_path, target / "repo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return make_settings(target, data_dir=deployment.settings.data_dir, **extra)


@dataclass
class PrivateRedis:
    """A redis-server process of our own on a free port, so stopping it never touches shared Redis."""

    port: int
    workdir: Path
    process: subprocess.Popen | None = None

    @classmethod
    def start_new(cls, workdir: Path) -> PrivateRedis:
        server = cls(free_port(), workdir)
        server.start()
        return server

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--dbfilename", "dump.rdb",
             "--daemonize", "no"],
            stdout=(self.workdir / "redis.log").open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server on {self.port} did not start: "
                           f"{(self.workdir / 'redis.log').read_text()[-500:]}")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def snapshot(self) -> None:
        """Write dump.rdb so a restart comes back with the same data."""
        self.client().save()

    def pause(self) -> None:
        """Freeze the server: connections stay open but nothing answers (a slow store)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
