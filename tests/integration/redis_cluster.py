"""A real local Redis Cluster for the tests: 3 masters and 3 replicas on free ports of their own."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster


def all_hashes(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash one Redis server holds, field by field."""
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}


BUS_OFFSET = 10_000  # a node also listens on its port + 10000 (the cluster bus), so ports stay <= 55535


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster-bus port is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 65_535 - BUS_OFFSET:
            port -= 2 * BUS_OFFSET  # the ephemeral range sits above 32768: move below and check again
        if port in taken or port + BUS_OFFSET in taken or port < 1024:
            continue
        try:
            for candidate in (port, port + BUS_OFFSET):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


@dataclass
class LocalRedisCluster:
    """Six `redis-server --cluster-enabled yes` processes joined by `redis-cli --cluster create`."""

    workdir: Path
    ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def start_new(cls, workdir: Path, nodes: int = 6) -> LocalRedisCluster:
        taken: set[int] = set()
        chosen = []
        for _ in range(nodes):
            port = free_cluster_port(taken)
            chosen.append(port)
            taken |= {port, port + BUS_OFFSET}
        cluster = cls(workdir, chosen)
        try:
            for port in cluster.ports:
                cluster.start_node(port)
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in cluster.ports),
                 "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True, timeout=120)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}{created.stderr[-2000:]}")
            cluster.wait_until_ok()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def start_node(self, port: int) -> None:
        folder = self.workdir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(folder / "nodes.conf"), "--cluster-node-timeout", "2000",
             "--save", "", "--appendonly", "no", "--dir", str(folder), "--daemonize", "no"],
            stdout=(folder / "redis.log").open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=port).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {port} did not start: {(folder / 'redis.log').read_text()[-500:]}")

    def wait_until_ok(self, timeout: float = 60.0) -> None:
        """Every live node says cluster_state:ok and all 16384 slots are served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for port in self.live_ports():
                try:
                    info = redis.Redis(port=port).execute_command("CLUSTER", "INFO")
                except redis.RedisError:
                    states.append(False)
                    continue
                text = info.decode() if isinstance(info, bytes) else str(info)
                states.append("cluster_state:ok" in text and "cluster_slots_ok:16384" in text)
            if states and all(states):
                return
            time.sleep(0.1)
        raise RuntimeError("the local Redis Cluster did not reach cluster_state:ok")

    def wait_for_failover(self, victim: int, timeout: float = 60.0) -> None:
        """Until the live nodes mark `victim` failed, a replica serves its slots and the cluster is ok."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if victim not in self.masters():
                    self.wait_until_ok(max(1.0, deadline - time.monotonic()))
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no replica took over from the killed master on {victim}")

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.processes.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        """The ports of the nodes serving slots now, as a live node sees it."""
        for port in self.live_ports():
            try:
                slots = redis.Redis(port=port).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            return sorted({int(entry[2][1]) for entry in slots})
        raise RuntimeError("no node of the local Redis Cluster answers")

    @property
    def connection_string(self) -> str:
        """Feast's form: a few startup nodes, comma-separated."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.live_ports()])

    def keys(self) -> dict[bytes, dict[bytes, bytes]]:
        """Every hash in the cluster, read from each master."""
        return {key: fields for port in self.masters() for key, fields in all_hashes(redis.Redis(port=port)).items()}

    def flush(self) -> None:
        for port in self.masters():
            redis.Redis(port=port).flushall()

    def kill(self, port: int) -> None:
        self.processes[port].kill()
        self.processes[port].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.processes.values():
            proc.wait(timeout=10)
