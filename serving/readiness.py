"""The readiness probe: a background thread that pings the online store; `/ready` reads its last result.

`/ready` never touches the store itself, so a frozen store cannot make readiness checks (or the
requests queued behind them) wait: the probe thread pings every `interval` seconds, and a ping
still running after `timeout` seconds counts as a failure from then on, even if the client
library has not given up yet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.features import OnlineStoreUnavailable, RegistryChanged

log = logging.getLogger("feastkit.serving")


@dataclass(frozen=True)
class ProbeResult:
    """The store's state as the last ping saw it: `check` is safe for any caller (no host, no path)."""

    ok: bool
    check: str


class ReadinessProbe:
    """Pings the store in its own thread; `result()` answers at once from what it last saw."""

    def __init__(self, ping: Callable[[], None], interval: float, timeout: float,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.ping = ping
        self.interval = max(0.05, interval)
        self.timeout = max(0.05, timeout)
        self.on_failure = on_failure
        self._lock = threading.Lock()
        self._last = ProbeResult(False, "starting")
        self._started_at: float | None = None   # monotonic start of the ping in flight
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the probe thread (idempotent); its first ping begins immediately."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="feastkit-ready-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.timeout + 1)

    def wait_first(self, within: float) -> None:
        """Block up to `within` seconds for the first ping to finish (start-up only, in a thread)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and self._last.check == "starting":
            time.sleep(0.01)

    def result(self) -> ProbeResult:
        """The last ping's result, or a failure when the ping in flight has run past the timeout."""
        with self._lock:
            started, last = self._started_at, self._last
        if started is not None and time.monotonic() - started > self.timeout:
            return ProbeResult(False, "unavailable: timed out")
        return last

    def probe_once(self) -> ProbeResult:
        """One ping now, in the calling thread; records and returns its result."""
        with self._lock:
            self._started_at = time.monotonic()
        try:
            self.ping()
            result = ProbeResult(True, "ok")
        except OnlineStoreUnavailable as exc:
            result = ProbeResult(False, f"unavailable: {exc.kind}")
            self._failed(exc.reason, result)
        except RegistryChanged:  # a `feast apply` under the server: the registry watcher reports it
            result = ProbeResult(False, "unavailable: the registry is changing")
            self._failed("registry changed", result)
        except Exception as exc:  # a bug in the probe path: not ready, traceback in the log
            result = ProbeResult(False, "unavailable: probe failed")
            log.error("readiness probe failed", exc_info=exc)
            self._failed(type(exc).__name__, result)
        with self._lock:
            self._started_at = None
            changed = result != self._last
            self._last = result
        if changed and result.ok:
            log.info("online store answers again")
        return result

    def _failed(self, reason: str, result: ProbeResult) -> None:
        if result != self._last:
            log.warning("readiness probe: online store unavailable", extra={"reason": reason[:300]})
        if self.on_failure is not None:
            self.on_failure(reason)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe_once()
            self._stop.wait(self.interval)
