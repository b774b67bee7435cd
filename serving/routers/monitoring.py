"""Read-only monitoring routes: the latest monitoring report and live feature-view freshness.

Serving does not import the `monitoring` package (the layers: serving and monitoring both sit on
`feastkit` core, and only the CLI sees both). The report is read through its documented file
contract (`<reports_dir>/latest.json` and `latest.html`, docs/monitoring.md), and freshness is a
callable handed in by whoever assembles the app: `feastkit serve` passes
`monitoring.freshness.check_freshness`. Without one, the freshness route answers 503 saying so.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, HTTPException, Query

from feastkit.errors import FeastkitError
from feastkit.settings import Settings

log = logging.getLogger("feastkit.serving")

# The files `feastkit drift` (monitoring.report.write_reports) replaces atomically after every run.
LATEST_REPORT_JSON = "latest.json"
LATEST_REPORT_HTML = "latest.html"


class ViewFreshness(Protocol):
    """What a freshness check returns per feature view (monitoring.freshness.ViewFreshness)."""

    view: str
    stale: bool

    def to_dict(self) -> dict[str, Any]: ...


# (feature store, as_of) -> one result per online feature view; FeastkitError when it cannot tell
FreshnessCheck = Callable[[Any, datetime], Sequence[ViewFreshness]]


def _relative(path: Path, root: Path) -> str | None:
    """`path` relative to the data folder (never an absolute path in a response), None outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def monitoring_router(settings: Settings, freshness: FreshnessCheck | None = None) -> APIRouter:
    """GET /v1/monitoring/drift/latest and GET /v1/monitoring/freshness, for this deployment."""
    router = APIRouter(prefix="/v1/monitoring", tags=["monitoring"])
    check = freshness  # the route below is named `freshness` too
    lock = threading.Lock()
    opened: dict[str, Any] = {}

    def store() -> Any:
        with lock:
            if "store" not in opened:
                from feastkit.store import open_store

                opened["store"] = open_store(settings)
            return opened["store"]

    @router.get("/drift/latest", summary="The latest monitoring report (JSON, schema in docs/monitoring.md)")
    def drift_latest() -> dict[str, Any]:
        path = settings.reports_dir / LATEST_REPORT_JSON
        if not path.is_file():
            raise HTTPException(404, detail="no monitoring report yet — run `feastkit drift` (or the "
                                            "drift_check DAG) first")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.error("monitoring report cannot be read", extra={"path": str(path), "error": type(exc).__name__})
            raise HTTPException(500, detail="the latest monitoring report cannot be read — run "
                                            "`feastkit drift` again") from None
        document["report_html"] = _relative(path.with_name(LATEST_REPORT_HTML), settings.data_dir)
        return document

    @router.get("/freshness", summary="Age of each feature view's materialized data vs its SLA")
    def freshness(as_of: datetime | None = Query(  # noqa: B008  (FastAPI's declaration style)
            None, description="Judge at this time (ISO 8601; default now, UTC).")) -> dict[str, Any]:
        if check is None:
            raise HTTPException(503, detail="freshness checks are not wired into this app — run it "
                                            "with `feastkit serve`")
        moment = as_of or datetime.now(UTC)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            results = check(store(), moment)
        except FeastkitError as exc:  # its text may name paths or hosts: the log has it, not the body
            log.error("freshness cannot be judged", extra={"reason": exc.message[:300]})
            raise HTTPException(503, detail="freshness cannot be judged now; the request id locates "
                                            "the reason in the server log") from None
        views = [r.to_dict() for r in results]
        return {"as_of": moment.isoformat(), "ok": not any(r.stale for r in results),
                "stale": [r.view for r in results if r.stale], "views": views}

    return router
